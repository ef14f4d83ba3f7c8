"""`medxfer predict`: one row per readable scan, one error row per bad file, resume after kill -9,
no patient identifiers, the same probabilities as `medxfer evaluate`, and torchrun."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxfer.datasets import phantom
from medxfer.datasets.reader import read_scan
from medxfer.pipeline.cli import main
from medxfer.pipeline.distributed import Distributed
from medxfer.pipeline.external import evaluate_run
from medxfer.pipeline.inference import predict_scans

BAD_FILES = phantom.BROKEN_FILES  # empty, truncated, random bytes, a text file


def quiet(_: str) -> None:
    pass


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_same_predictions(rows: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    """The same scans, labels and metadata, and probabilities equal up to float32 rounding (the
    network's sums round differently when the images are batched differently)."""
    assert [row["path"] for row in rows] == [row["path"] for row in expected]
    for a, b in zip(rows, expected, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("p_")} == {k: v for k, v in b.items()
                                                                          if not k.startswith("p_")}
        for key in (k for k in a if k.startswith("p_")):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), (a["path"], key)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder of phantom scans (DICOM and NIfTI) with broken files mixed in, and the good
    files' paths relative to it."""
    root = tmp_path_factory.mktemp("scans")
    summary = phantom.generate_cohort(root, n_patients=14, seed=5, n_volumes=1)
    (root / "manifest.csv").unlink()
    good = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    first = root / good[0]
    phantom.write_broken_files(root / "images", first, seed=5)
    assert summary.n_images + 1 == len(good)  # the images and one volume
    return root, good


def test_good_scans_get_rows_and_bad_files_error_rows(run, scans, tmp_path, capsys):
    root, good = scans
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0", "--batch-size", "4"]) == 0
    rows = read_csv(out)
    assert [row["path"] for row in rows] == good
    errors = read_csv(tmp_path / "predictions.errors.csv")
    assert sorted(row["path"] for row in errors) == sorted(f"images/{n}" for n in BAD_FILES)
    assert all(row["reason"] for row in errors)
    threshold = json.loads((run / "calibration.json").read_text())["threshold"]["value"]
    for row in rows:
        assert float(row["p_normal"]) + float(row["p_opacity"]) == pytest.approx(1, abs=2e-6)
        assert row["predicted"] == ("opacity" if float(row["p_opacity"]) >= threshold else "normal")
    dicom = [row for row in rows if row["path"].endswith(".dcm")]
    assert all(row["modality"] in ("CR", "DX") and row["view"] in ("AP", "PA") for row in dicom)
    assert all(row["study_key"].startswith("s") for row in dicom)
    sidecar = json.loads((tmp_path / "predictions.json").read_text())
    recipe = json.loads((run / "model.json").read_text())
    assert sidecar["model_sha256"] == recipe["weights_sha256"] and sidecar["predicted"] == len(good)
    assert sidecar["unreadable"] == len(BAD_FILES) and sidecar["threshold_source"] == "validated"
    assert not (tmp_path / "predictions.csv.parts").exists()
    assert f"{len(good)} scan(s) predicted, {len(BAD_FILES)} could not be read" in capsys.readouterr().out


def test_no_identifier_from_the_headers_reaches_any_output(run, scans, tmp_path):
    root, good = scans
    out = tmp_path / "predictions.csv"
    predict_scans(run, root, out, workers=0, log=quiet)
    identifiers = set()
    for path in good:
        if path.endswith(".dcm"):
            header = pydicom.dcmread(root / path, stop_before_pixels=True)
            identifiers |= {str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate),
                            str(header.AccessionNumber), str(header.StudyInstanceUID)}
    identifiers.discard("")
    for name in ("predictions.csv", "predictions.errors.csv", "predictions.json"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert not [i for i in identifiers if i in text], name


def test_a_killed_job_rerun_ends_with_exactly_one_row_per_scan(run, scans, tmp_path):
    root, _ = scans
    reference = tmp_path / "reference.csv"
    predict_scans(run, root, reference, workers=0, batch_size=2, log=quiet)
    out = tmp_path / "killed.csv"
    command = [sys.executable, "-m", "medxfer", "predict", str(run), str(root), "--out", str(out),
               "--workers", "0", "--batch-size", "2", "--chunk", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "killed.csv.parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("rank*.csv"))) < 2 and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the job finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists() and parts.is_dir()
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0", "--batch-size", "2",
                 "--chunk", "4"]) == 0
    assert_same_predictions(read_csv(out), read_csv(reference))
    assert read_csv(tmp_path / "killed.errors.csv") == read_csv(tmp_path / "reference.errors.csv")
    assert not parts.exists()


def test_rerunning_a_finished_job_predicts_only_new_scans(run, scans, tmp_path):
    root, good = scans
    folder = tmp_path / "scans"
    shutil.copytree(root, folder)
    out = tmp_path / "predictions.csv"
    predict_scans(run, folder, out, workers=0, log=quiet)
    first = read_csv(out)
    shutil.copy(folder / good[0], folder / "images" / "added.dcm")
    summary = predict_scans(run, folder, out, workers=0, log=quiet)
    assert summary.predicted == 1 and summary.already_done == len(good) + len(BAD_FILES)
    rows = read_csv(out)
    assert len(rows) == len(first) + 1 and len({row["path"] for row in rows}) == len(rows)


def test_predictions_equal_the_probabilities_evaluate_computes(run, cohort, tmp_path):
    evaluate_run(run, cohort.manifest, tmp_path / "evaluation", bootstrap=0, log=quiet)
    evaluated = {row["path"]: row for row in read_csv(tmp_path / "evaluation" / "predictions.csv")}
    predict_scans(run, cohort.manifest, tmp_path / "predictions.csv", workers=0, log=quiet)
    predicted = read_csv(tmp_path / "predictions.csv")
    assert len(predicted) == len(evaluated)
    for row in predicted:
        assert float(row["p_opacity"]) == pytest.approx(float(evaluated[row["path"]]["p_opacity"]), abs=2e-6)
        assert row["predicted"] == evaluated[row["path"]]["predicted"]


def test_a_given_threshold_replaces_the_validated_one(run, scans, tmp_path):
    root, _ = scans
    predict_scans(run, root, tmp_path / "all.csv", workers=0, threshold=0.0, log=quiet)
    assert {row["predicted"] for row in read_csv(tmp_path / "all.csv")} == {"opacity"}
    assert json.loads((tmp_path / "all.json").read_text())["threshold_source"] == "given"


def test_two_processes_write_the_same_predictions_as_one(run, scans, tmp_path):
    root, _ = scans
    predict_scans(run, root, tmp_path / "one.csv", workers=0, log=quiet)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "medxfer",
               "predict", str(run), str(root), "--out", str(tmp_path / "two.csv"), "--workers", "0", "--chunk", "3"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                               env={**os.environ, "MEDXFER_SALT": "medxfer-tests-salt-0123456789"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert_same_predictions(read_csv(tmp_path / "two.csv"), read_csv(tmp_path / "one.csv"))
    assert read_csv(tmp_path / "two.errors.csv") == read_csv(tmp_path / "one.errors.csv")


@pytest.mark.parametrize(("setup", "message"), [
    ("no-run", "no such run folder"),
    ("empty-scans", "no files to predict"),
    ("missing-scans", "no such folder or manifest"),
])
def test_a_missing_run_or_empty_scans_is_a_clear_error(run, tmp_path, capsys, setup, message):
    folder, scans = (tmp_path / "nothing" if setup == "no-run" else run), tmp_path / "scans"
    if setup != "missing-scans":
        scans.mkdir()
    assert main(["predict", str(folder), str(scans), "--out", str(tmp_path / "p.csv")]) == 1
    assert message in capsys.readouterr().err


def test_a_threshold_that_is_not_a_probability_is_a_usage_error(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["predict", str(run), str(tmp_path), "--threshold", "1.5"])
    assert stopped.value.code == 2 and "probability" in capsys.readouterr().err


@pytest.fixture(scope="module")
def by_slice(run, scans, tmp_path_factory) -> tuple[Path, Path]:
    """``medxfer predict`` over the scans as training saw them (a volume's middle slice), and
    ``--slices`` (every slice, mean per volume)."""
    root, _ = scans
    folder = tmp_path_factory.mktemp("by-slice")
    predict_scans(run, root, folder / "plain.csv", workers=0, batch_size=4, log=quiet)
    assert main(["predict", str(run), str(root), "--out", str(folder / "slices.csv"), "--workers", "0",
                 "--batch-size", "4", "--slices"]) == 0
    return folder / "plain.csv", folder / "slices.csv"


def volume_depth(scans) -> int:
    root, good = scans
    (volume,) = [path for path in good if path.endswith(".nii.gz")]
    return read_scan(root / volume).pixels.shape[0]


def test_slices_mode_keeps_one_row_per_scan_and_writes_every_slice_of_a_volume(by_slice, scans):
    plain, slices = by_slice
    rows = read_csv(slices)
    assert [row["path"] for row in rows] == [row["path"] for row in read_csv(plain)]
    depth = volume_depth(scans)
    assert depth > 3
    assert {row["path"]: int(row["slices"]) for row in rows} == {
        row["path"]: depth if row["path"].endswith(".nii.gz") else 1 for row in rows}
    slice_rows = read_csv(slices.with_name("slices.slices.csv"))
    assert [int(row["slice"]) for row in slice_rows] == list(range(depth))
    assert {row["path"] for row in slice_rows} == {"volumes/phantom-chest-00.nii.gz"}
    assert read_csv(slices.with_name("slices.errors.csv")) == read_csv(plain.with_name("plain.errors.csv"))
    sidecar = json.loads(slices.with_suffix(".json").read_text())
    assert sidecar["slices"] is True and sidecar["slice_aggregate"] == "mean"


def test_a_volume_row_is_the_mean_of_its_slices_and_its_middle_slice_is_what_training_saw(by_slice, scans):
    plain, slices = by_slice
    (volume,) = [row for row in read_csv(slices) if row["path"].endswith(".nii.gz")]
    slice_rows = read_csv(slices.with_name("slices.slices.csv"))
    p = np.array([float(row["p_opacity"]) for row in slice_rows])
    assert float(volume["p_opacity"]) == pytest.approx(p.mean(), abs=2e-6)
    assert p.max() - p.min() > 1e-4  # the slices differ, so the check above is not trivial
    threshold = json.loads(slices.with_suffix(".json").read_text())["threshold"]
    assert volume["predicted"] == ("opacity" if float(volume["p_opacity"]) >= threshold else "normal")
    for row in slice_rows:
        assert row["predicted"] == ("opacity" if float(row["p_opacity"]) >= threshold else "normal")
    (trained_view,) = [row for row in read_csv(plain) if row["path"].endswith(".nii.gz")]
    middle = slice_rows[volume_depth(scans) // 2]
    assert float(middle["p_opacity"]) == pytest.approx(float(trained_view["p_opacity"]), abs=1e-5)


def test_a_2d_scan_gets_the_same_prediction_with_or_without_slices(by_slice):
    plain, slices = by_slice
    flat = [{k: v for k, v in row.items() if k != "slices"} for row in read_csv(slices)
            if not row["path"].endswith(".nii.gz")]
    assert_same_predictions(flat, [row for row in read_csv(plain) if not row["path"].endswith(".nii.gz")])


def test_the_max_aggregate_takes_the_most_suspicious_slice(run, scans, tmp_path):
    root, _ = scans
    out = tmp_path / "max.csv"
    predict_scans(run, root, out, workers=0, batch_size=4, slices=True, slice_aggregate="max", log=quiet)
    (volume,) = [row for row in read_csv(out) if row["path"].endswith(".nii.gz")]
    slice_rows = read_csv(tmp_path / "max.slices.csv")
    highest = max(slice_rows, key=lambda row: float(row["p_opacity"]))
    assert (volume["p_opacity"], volume["p_normal"]) == (highest["p_opacity"], highest["p_normal"])


def test_slices_are_refused_for_a_run_trained_on_projections_of_whole_volumes(run, scans, tmp_path, capsys):
    mip_run = tmp_path / "mip-run"
    shutil.copytree(run, mip_run)
    recipe = json.loads((mip_run / "model.json").read_text())
    (mip_run / "model.json").write_text(json.dumps({**recipe, "volume_strategy": "mip"}))
    assert main(["predict", str(mip_run), str(scans[0]), "--out", str(tmp_path / "p.csv"), "--slices"]) == 1
    assert "volume_strategy middle or 2.5d" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_a_rerun_with_other_settings_is_refused_instead_of_mixing_rows(run, scans, tmp_path, capsys):
    root, _ = scans
    out = tmp_path / "predictions.csv"
    predict_scans(run, root, out, workers=0, log=quiet)
    before = out.read_text()
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0", "--slices"]) == 1
    assert "slices False there, True now" in capsys.readouterr().err
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0", "--threshold", "0.2"]) == 1
    assert "threshold" in capsys.readouterr().err
    assert out.read_text() == before


def test_parts_left_by_a_job_with_another_threshold_are_not_merged(run, scans, tmp_path, capsys):
    root, _ = scans
    out = tmp_path / "predictions.csv"
    parts = tmp_path / "predictions.csv.parts"
    parts.mkdir()
    (parts / "settings.json").write_text(json.dumps({"threshold": 0.9}))
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0"]) == 1
    error = capsys.readouterr().err
    assert "interrupted job" in error and "threshold 0.9 there" in error and str(parts) in error
    assert not out.exists()


def test_a_merge_that_misses_scans_writes_nothing_and_keeps_the_parts(run, scans, tmp_path, monkeypatch, capsys):
    """As when another process's parts are on a file system this one cannot see: the merge finds
    scans without a row, says so, and leaves everything for a rerun to finish."""
    root, good = scans
    out = tmp_path / "predictions.csv"
    with monkeypatch.context() as patch:
        patch.setattr(Distributed, "shard", lambda self, n: range(0, n, 2))  # this process's half only
        assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0"]) == 1
    assert "have no row" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "predictions.errors.csv").exists()
    assert (tmp_path / "predictions.csv.parts").is_dir()
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0"]) == 0  # the rest, then merged
    assert [row["path"] for row in read_csv(out)] == good


def test_parts_that_do_not_say_their_settings_are_not_merged(run, scans, tmp_path, capsys):
    root, good = scans
    out = tmp_path / "predictions.csv"
    parts = tmp_path / "predictions.csv.parts"
    parts.mkdir()
    (parts / "rank0-000000.csv").write_text(f"index,path,status\n0,{good[0]},ok\n")
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0"]) == 1
    assert "cannot be checked" in capsys.readouterr().err and not out.exists()


def test_an_earlier_output_without_its_sidecar_is_not_merged(run, scans, tmp_path, capsys):
    root, _ = scans
    out = tmp_path / "predictions.csv"
    predict_scans(run, root, out, workers=0, log=quiet)
    out.with_suffix(".json").unlink()
    before = out.read_text()
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0"]) == 1
    assert "exists without predictions.json" in capsys.readouterr().err
    assert out.read_text() == before
