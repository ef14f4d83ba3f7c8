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

from medxfer import csvfiles
from medxfer.datasets import phantom
from medxfer.datasets.reader import read_scan
from medxfer.pipeline.cli.main import main
from medxfer.pipeline.inference.external import evaluate_run
from medxfer.pipeline.inference.predict import predict_scans
from medxfer.pipeline.runtime.distributed import Distributed

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
                            str(header.AccessionNumber), str(header.StudyInstanceUID),
                            str(header.InstitutionName), str(header.Manufacturer)}  # free text: can hold a name
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


# --- hostile inputs and faults ---------------------------------------------------------------


def copy_of(scans, folder: Path, names: dict[str, bytes]) -> Path:
    """The good scans copied to ``folder``, plus the first DICOM again under each of ``names``
    (file names as raw bytes)."""
    root, good = scans
    shutil.copytree(root, folder)
    sample = next(path for path in good if path.endswith(".dcm"))
    for name in names.values():
        shutil.copy(root / sample, os.path.join(os.fsencode(folder), name))
    return folder


def test_an_out_whose_sidecar_is_a_file_predict_did_not_write_is_refused(run, scans, tmp_path, capsys):
    copied = tmp_path / "run"
    shutil.copytree(run, copied)
    recipe = (copied / "model.json").read_bytes()
    assert main(["predict", str(copied), str(scans[0]), "--out", str(copied / "model.csv"), "--workers", "0"]) == 1
    assert "which medxfer predict did not write" in capsys.readouterr().err
    assert (copied / "model.json").read_bytes() == recipe and not (copied / "model.csv").exists()
    assert not (copied / "model.csv.parts").exists()
    for out in ("preds.json", "preds.CSV", "preds.errors.csv"):  # would share files with preds.csv's job
        assert main(["predict", str(copied), str(scans[0]), "--out", str(tmp_path / out)]) == 1
        assert "must go to a file ending in .csv (lower case)" in capsys.readouterr().err
        assert not (tmp_path / out).exists()


def test_a_file_in_the_way_of_the_errors_file_or_the_parts_is_not_replaced(run, scans, tmp_path, capsys):
    (tmp_path / "p.errors.csv").write_text("mine\n")
    assert main(["predict", str(run), str(scans[0]), "--out", str(tmp_path / "p.csv"), "--workers", "0"]) == 1
    assert "p.errors.csv exists without p.json" in capsys.readouterr().err
    assert (tmp_path / "p.errors.csv").read_text() == "mine\n"
    (tmp_path / "q.csv.parts").write_text("mine\n")  # a file where the parts folder goes
    mine = tmp_path / "mine"
    mine.mkdir()
    (tmp_path / "r.csv.parts").symlink_to(mine)  # a link: the job would fill the folder it points to
    for out in ("q.csv", "r.csv"):
        assert main(["predict", str(run), str(scans[0]), "--out", str(tmp_path / out), "--workers", "0"]) == 1
        assert "is in the way of --out" in capsys.readouterr().err
    assert (tmp_path / "q.csv.parts").read_text() == "mine\n" and not any(mine.iterdir())


def test_a_rerun_with_another_pixel_budget_is_refused(run, scans, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(scans[0]), "--out", str(out), "--workers", "0", "--max-pixels",
                 "1000"]) == 0
    assert "max_pixels 1000 there, 1000000 now" in (main(["predict", str(run), str(scans[0]), "--out", str(out),
                                                          "--workers", "0", "--max-pixels", "1000000"]),
                                                    capsys.readouterr().err)[1]


def test_an_invalid_pixel_budget_in_the_environment_is_one_error_before_any_file(run, scans, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.setenv("MEDXFER_MAX_PIXELS", "0")
    assert main(["predict", str(run), str(scans[0]), "--out", str(tmp_path / "p.csv")]) == 1
    assert "MEDXFER_MAX_PIXELS must be a whole number of pixels, 1 or more" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert main(["inspect", str(scans[0])]) == 1


def test_a_second_job_on_the_same_out_is_refused_while_the_first_holds_it(run, scans, tmp_path, capsys):
    from medxfer.pipeline.inference.job_claim import JobClaim

    out = tmp_path / "predictions.csv"
    first = JobClaim(tmp_path / "predictions.csv.parts", "the test").acquire()
    assert main(["predict", str(run), str(scans[0]), "--out", str(out), "--workers", "0"]) == 1
    assert "another job is writing" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in (tmp_path / "predictions.csv.parts").iterdir()] == ["lock"]
    first.release()
    assert main(["predict", str(run), str(scans[0]), "--out", str(out), "--workers", "0"]) == 0  # free again


def test_two_jobs_started_together_on_one_out_leave_one_consistent_output(run, scans, tmp_path):
    out = tmp_path / "predictions.csv"
    jobs = [subprocess.Popen([sys.executable, "-m", "medxfer", "predict", str(run), str(scans[0]), "--out", str(out),
                              "--workers", "0", "--threshold", threshold], stderr=subprocess.PIPE, text=True)
            for threshold in ("0.0", "1.0")]
    outcomes = [(job.wait(timeout=300), job.stderr.read()) for job in jobs]
    assert sorted(code for code, _ in outcomes) == [0, 1], outcomes
    refused = next(error for code, error in outcomes if code == 1)
    assert "another job is writing" in refused or "threshold" in refused
    threshold = json.loads(out.with_suffix(".json").read_text())["threshold"]
    assert {row["predicted"] for row in read_csv(out)} == {"opacity" if threshold == 0.0 else "normal"}


def test_file_names_of_any_bytes_round_trip_and_a_rerun_finds_them_done(run, scans, tmp_path):
    names = {"carriage return": b"a\rb.dcm", "not utf-8": b"x\xff\xfe.dcm", "formula": b"=cmd.dcm"}
    folder = copy_of(scans, tmp_path / "scans", names)
    out = folder / "predictions.csv"  # inside SCANS: its own files are never taken for scans
    predict_scans(run, folder, out, workers=1, log=quiet)
    paths = [row["path"] for row in csvfiles.read_csv(out)]
    assert {os.fsdecode(name) for name in names.values()} <= set(paths)
    assert len(paths) == len(scans[1]) + len(names) and len(set(paths)) == len(paths)
    assert b"\n'=cmd.dcm," in out.read_bytes()  # a spreadsheet shows it as text, never runs it
    assert b'"a\rb.dcm"' in out.read_bytes()
    again = predict_scans(run, folder, out, workers=0, log=quiet)
    assert again.predicted == again.failed == 0 and again.already_done == len(paths) + len(BAD_FILES)
    assert [row["path"] for row in csvfiles.read_csv(out)] == paths


def test_a_fifo_a_bomb_and_a_blank_image_become_error_rows_and_the_job_carries_on(run, scans, tmp_path):
    import nibabel as nib
    from PIL import Image

    folder = copy_of(scans, tmp_path / "scans", {})
    os.mkfifo(folder / "pipe.dcm")
    nib.save(nib.Nifti1Image(np.zeros((128, 128, 64), np.uint8), np.eye(4)), folder / "bomb.nii.gz")
    Image.new("L", (64, 64), 0).save(folder / "blank.png")
    out = tmp_path / "p.csv"
    command = [sys.executable, "-m", "medxfer", "predict", str(run), str(folder), "--out", str(out),
               "--workers", "1", "--max-pixels", "500000"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    errors = {row["path"]: row["reason"] for row in read_csv(tmp_path / "p.errors.csv")}
    assert "FIFO" in errors["pipe.dcm"] and "pixel budget of 500,000" in errors["bomb.nii.gz"]
    assert errors["blank.png"].startswith("blank image")
    assert [row["path"] for row in read_csv(out)] == scans[1]  # the films and the phantom volume fit the budget


def test_a_worker_killed_while_decoding_costs_only_its_file(run, scans, tmp_path, monkeypatch):
    from torch.utils.data import get_worker_info

    from medxfer.pipeline.decoding import scans as decoding
    from medxfer.pipeline.decoding.recovering_loader import WORKER_DIED

    root, good = scans
    deadly = root / good[2]
    real = decoding.decode_with_meta

    def killed_on_the_deadly_file(path, settings):  # as the out-of-memory killer would
        if path == deadly and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, settings)

    monkeypatch.setattr(decoding, "decode_with_meta", killed_on_the_deadly_file)  # the forked workers inherit it
    out = tmp_path / "p.csv"
    summary = predict_scans(run, root, out, workers=1, batch_size=4, log=quiet)
    errors = {row["path"]: row["reason"] for row in read_csv(tmp_path / "p.errors.csv")}
    assert errors[good[2]] == WORKER_DIED
    assert [row["path"] for row in read_csv(out)] == [p for p in good if p != good[2]]
    assert summary.predicted == len(good) - 1


def test_manifest_paths_with_backslashes_and_spaces_are_found(run, scans, tmp_path):
    root, good = scans
    dicom = [path for path in good if path.endswith(".dcm")][:3]
    manifest = root.parent / f"{root.name}-windows.csv"
    manifest.write_text("path\n" + "".join(f"  {root.name}\\{path.replace('/', chr(92))} \n" for path in dicom)
                        + f"{root.name}/missing.dcm\n")
    out = tmp_path / "p.csv"
    assert predict_scans(run, manifest, out, workers=0, log=quiet).predicted == 3
    assert [row["path"] for row in read_csv(out)] == [f"{root.name}/{path}" for path in dicom]
    assert read_csv(tmp_path / "p.errors.csv") == [{"path": f"{root.name}/missing.dcm",
                                                     "reason": "listed in the manifest but not found"}]


def test_an_earlier_output_saved_again_by_a_spreadsheet_is_merged(run, scans, tmp_path):
    folder = copy_of(scans, tmp_path / "scans", {})
    out = tmp_path / "p.csv"
    predict_scans(run, folder, out, workers=0, log=quiet)
    first = read_csv(out)
    out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes().replace(b"\n", b"\r\n"))  # Excel: a BOM, CRLF
    shutil.copy(folder / scans[1][0], folder / "images" / "added.dcm")
    assert predict_scans(run, folder, out, workers=0, log=quiet).predicted == 1
    assert [row["path"] for row in read_csv(out)] == sorted([row["path"] for row in first] + ["images/added.dcm"])


def test_a_full_disk_during_the_merge_replaces_nothing_and_a_rerun_finishes(run, scans, tmp_path, monkeypatch,
                                                                            capsys):
    from medxfer import files
    from medxfer.pipeline.inference import predict as inference

    root, good = scans
    out = tmp_path / "p.csv"
    real_many = inference.atomic_write_many

    def disk_fills_after_the_first_file(contents):
        real_fsync, calls = files.os.fsync, []

        def fsync(fd):
            calls.append(fd)
            if len(calls) > 1:
                raise OSError(28, "No space left on device")
            real_fsync(fd)

        with monkeypatch.context() as patch:
            patch.setattr(files.os, "fsync", fsync)
            real_many(contents)

    with monkeypatch.context() as patch:
        patch.setattr(inference, "atomic_write_many", disk_fills_after_the_first_file)
        assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0"]) == 1
    error = capsys.readouterr().err
    assert "No space left on device" in error and "none was replaced and the parts" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv.parts"]  # no output, no temporary file
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0"]) == 0
    assert [row["path"] for row in read_csv(out)] == good
    assert not (tmp_path / "p.csv.parts").exists()


def test_ctrl_c_stops_with_a_message_and_the_rerun_finishes(run, scans, tmp_path):
    root, good = scans
    out = tmp_path / "p.csv"
    # a shell without job control starts background jobs with SIGINT ignored, and Python keeps it
    # ignored (as it should: nohup and & mean it): the job gets the handler a terminal gives it
    start = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from medxfer.pipeline.cli.main import main; sys.exit(main())")
    command = [sys.executable, "-c", start, "predict", str(run), str(root), "--out", str(out),
               "--workers", "0", "--batch-size", "2", "--chunk", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "p.csv.parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(parts.glob("rank*.csv")) and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the job finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    error = process.communicate(timeout=120)[1]
    assert process.returncode == 130 and "interrupted" in error and "run the same command again" in error
    assert "Traceback" not in error
    assert main(["predict", str(run), str(root), "--out", str(out), "--workers", "0"]) == 0
    assert [row["path"] for row in read_csv(out)] == good
