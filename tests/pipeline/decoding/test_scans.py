"""Decoding a dataset once, resized to fit the network input."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from medxfer.pipeline.decoding.scans import DecodeSettings, decode_all, decode_scan
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import InputSpec


def test_kept_copy_gives_the_same_network_input_as_the_scan(cohort):
    spec = InputSpec(image_size=64)
    path = min((cohort.root / "images").rglob("*.dcm"))
    kept = decode_scan(path, DecodeSettings(spec))
    assert max(kept.shape[1:]) == 64
    from medxfer.datasets.reader import read_scan

    direct = XrayPipeline(spec, "standard")(read_scan(path).pixels, seed=5)
    assert torch.equal(XrayPipeline(spec, "standard")(kept, seed=5), direct)


def test_bad_files_are_listed_with_their_reason_and_the_rest_decoded(tmp_path, cohort):
    good = sorted((cohort.root / "images").rglob("*.dcm"))[:3]
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good[0].read_bytes()[:400])
    png = tmp_path / "ok.png"
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) % 256).astype(np.uint8)).save(png)
    paths = [good[0], truncated, png, good[1]]
    for workers in (0, 2):
        images, failed = decode_all(paths, DecodeSettings(InputSpec(image_size=32)), workers=workers)
        assert [image is None for image in images] == [False, True, False, False]
        assert [f.path for f in failed] == [truncated] and failed[0].reason
        assert images[2].shape == (1, 24, 32)


def test_blank_images_are_refused_instead_of_scored(tmp_path, cohort):
    import pydicom
    import pytest

    from medxfer.datasets.scan import UnreadableScanError

    flat = tmp_path / "flat.png"
    Image.new("L", (40, 30), 128).save(flat)
    empty_first_page = tmp_path / "pages.tif"
    Image.new("L", (40, 30), 0).save(empty_first_page, save_all=True,
                                     append_images=[Image.fromarray((np.arange(1200).reshape(30, 40) % 256)
                                                                    .astype(np.uint8))])
    flipped = tmp_path / "negative-slope.dcm"
    ds = pydicom.dcmread(min((cohort.root / "images").rglob("*.dcm")))
    ds.RescaleSlope = -1  # every value now falls below the file's window
    ds.save_as(flipped)
    settings = DecodeSettings(InputSpec(image_size=32))
    for path in (flat, empty_first_page, flipped):
        with pytest.raises(UnreadableScanError, match="blank image: every pixel has the value"):
            decode_scan(path, settings)
    images, failed = decode_all([flat, min((cohort.root / "images").rglob("*.dcm"))], settings)
    assert images[0] is None and images[1] is not None and "blank" in failed[0].reason
