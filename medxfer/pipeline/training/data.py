"""A run's data: the labelled scans decoded once, split by patient, and the target site's scans.

Every image is decoded once at the network's input size and kept in memory; files that cannot
be read stop the run, or with ``skip_unreadable`` are left out and listed. The split of each
image comes from the manifest or ``assign_splits``. A cross-fitted run (``validation:
crossfit``) trains on every non-test image, its ``train`` split, divided into patient-grouped
folds (``assign_folds``); its ``val`` split is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from medxfer.datasets.sources import ScanRecord, ScanSet, UnreadableFilesError, load_scans, with_splits
from medxfer.datasets.splits import assign_folds, assign_splits
from medxfer.filenames import shown
from medxfer.pipeline.decoding.scans import DecodeSettings, decode_all
from medxfer.pipeline.runs.config import TrainConfig
from medxfer.pipeline.runs.config_settings import AUTO_CROSSFIT_IMAGES

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TrainingData:
    """Decoded images of every split (kept in memory, resized to fit the input), the class
    names, each image's class index and record (patient key and metadata for the subgroup
    report), which images are in which split, and the target site's images for adaptation
    (``None`` without adaptation)."""

    classes: list[str]
    images: list[torch.Tensor]
    labels: torch.Tensor
    records: list[ScanRecord]
    by_split: dict[str, list[int]]
    target: list[torch.Tensor] | None
    folds: np.ndarray | None = None  # cross-fitting: each image's fold (0 to K - 1), -1 for test; None: holdout

    @property
    def n_folds(self) -> int:
        """The number of cross-fitting folds (0: a holdout run)."""
        return 0 if self.folds is None else int(self.folds.max()) + 1

    def fold_positions(self, fold: int) -> tuple[list[int], list[int]]:
        """Cross-fitting: the positions, within the ``train`` split (every non-test image), of the
        images fold ``fold`` trains on and of those it holds out."""
        pool = self.folds[self.by_split["train"]]
        return np.flatnonzero(pool != fold).tolist(), np.flatnonzero(pool == fold).tolist()

    def split_images(self, split: str) -> list[torch.Tensor]:
        return [self.images[i] for i in self.by_split[split]]

    def split_labels(self, split: str) -> torch.Tensor:
        return self.labels[self.by_split[split]]

    def split_records(self, split: str) -> list[ScanRecord]:
        return [self.records[i] for i in self.by_split[split]]


def load_training_data(labelled: ScanSet, config: TrainConfig, settings: DecodeSettings, *, workers: int,
                       unreadable_file: Path, log: Callable[[str], None]) -> tuple[ScanSet, TrainingData]:
    """Decode ``labelled`` (``workers`` processes), split it, and decode the target site when
    ``config.adapt`` needs one; returns the scans as kept (with the unreadable ones listed) and
    the data. Raises ``ValueError`` when the training split lacks a class."""
    log(f"decoding {len(labelled.records)} scans from {config.data}")
    images, failed = decode_all([r.path for r in labelled.records], settings, workers=workers)
    if failed and not config.skip_unreadable:
        raise UnreadableFilesError(failed)
    kept = [i for i, image in enumerate(images) if image is not None]
    scans = replace(labelled, records=[labelled.records[i] for i in kept], unreadable=[*labelled.unreadable, *failed])
    if scans.unreadable:
        log(f"skipped {len(scans.unreadable)} unreadable file(s) (skip_unreadable), listed in {shown(unreadable_file)}:")
        for item in scans.unreadable:
            log(f"  {shown(item.path)}: {item.reason}")
    scans = assign_splits(scans, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)
    folds = None
    if resolve_validation(config, sum(r.split != "test" for r in scans.records)) == "crossfit":
        # Every non-test image is cross-fitted: the validation split joins the training images.
        scans = with_splits(scans, ["test" if r.split == "test" else "train" for r in scans.records])
        folds = assign_folds(scans, folds=config.folds, seed=config.seed)
    target = load_target(config, settings, workers=workers, log=log) if config.adapt in ("adabn", "dann") else None
    index = {name: i for i, name in enumerate(labelled.classes)}
    labels = torch.tensor([index[r.label] for r in scans.records])
    by_split = {s: [i for i, r in enumerate(scans.records) if r.split == s] for s in SPLITS}
    data = TrainingData(list(labelled.classes), [images[i] for i in kept], labels, scans.records, by_split, target,
                        folds)
    if len(data.split_labels("train").unique()) < len(data.classes):
        raise ValueError(f"{config.data}: the training split lacks some classes; more data is needed")
    return scans, data


def resolve_validation(config: TrainConfig, n_pool: int) -> str:
    """The validation protocol of a run with ``n_pool`` non-test images: ``config.validation``, with
    ``auto`` resolved (crossfit up to ``AUTO_CROSSFIT_IMAGES`` images, holdout above or with
    ``adapt``)."""
    if config.validation != "auto":
        return config.validation
    return "crossfit" if n_pool <= AUTO_CROSSFIT_IMAGES and config.adapt == "none" else "holdout"


def load_target(config: TrainConfig, settings: DecodeSettings, *, workers: int,
                log: Callable[[str], None]) -> list[torch.Tensor]:
    """The readable scans of ``config.target_data`` (unlabelled), decoded as the training scans
    are; unreadable ones are listed and skipped. Raises ``ValueError`` when none is readable."""
    target = load_scans(config.target_data, layout="auto", max_pixels=settings.max_pixels)
    images, failed = decode_all([r.path for r in target.records], settings, workers=workers)
    images = [image for image in images if image is not None]
    skipped = [*target.unreadable, *failed]
    log(f"target site: {len(images)} unlabelled scans from {config.target_data}"
        + (f"; skipped {len(skipped)} unreadable file(s):" if skipped else ""))
    for item in skipped:
        log(f"  {shown(item.path)}: {item.reason}")
    if not images:
        raise ValueError(f"{config.target_data}: no readable scans to adapt to")
    return images
