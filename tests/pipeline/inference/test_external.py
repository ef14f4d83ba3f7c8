"""`medxfer evaluate`: a finished run scored on another labelled set with its own calibration."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxfer.datasets import phantom
from medxfer.pipeline.cli.main import main
from medxfer.pipeline.inference.external import evaluate_run


def quiet(_: str) -> None:
    pass




@pytest.fixture(scope="module")
def other_site(tmp_path_factory):
    """Another phantom cohort (other patients), with a broken file beside its scans."""
    summary = phantom.generate_cohort(tmp_path_factory.mktemp("other"), n_patients=16, seed=7, n_volumes=0)
    return summary


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_run_split_scored_externally_gives_the_runs_test_figures(run, cohort, tmp_path):
    """The run's own test images, given as an external set, score exactly as the run scored them."""
    test_paths = {row["path"] for row in read_csv(run / "splits.csv") if row["split"] == "test"}
    rows = [row for row in read_csv(cohort.manifest) if row["path"] in test_paths]
    manifest = cohort.root / "test-only.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    evaluation = evaluate_run(run, manifest, tmp_path / "out", bootstrap=200, log=quiet)
    ours, theirs = evaluation.metrics["test"], json.loads((run / "metrics.json").read_text())["test"]
    assert ours["n"] == theirs["n"] == len(rows)
    for key in ("auroc", "accuracy", "balanced_accuracy", "ece", "ece_uncalibrated", "brier", "nll"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key
    assert ours["confusion_matrix"]["counts"] == theirs["confusion_matrix"]["counts"]


def test_evaluate_writes_every_output_with_the_runs_calibration(run, other_site, tmp_path):
    out = tmp_path / "external"
    assert main(["evaluate", str(run), "--data", str(other_site.manifest), "--out", str(out),
                 "--bootstrap", "200"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "report.html", "model_card.md", "predictions.csv", "environment.json"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kind"] == "external validation"
    assert metrics["calibration"]["temperature"] == calibration["calibration"]["temperature"]
    assert metrics["threshold"]["value"] == calibration["threshold"]["value"]
    assert metrics["val"] == run_metrics["val"] and metrics["train"] == run_metrics["train"]
    assert metrics["test"]["n"] == other_site.n_images
    assert metrics["bootstrap"]["resamples"] == 200
    predictions = read_csv(out / "predictions.csv")
    assert len(predictions) == other_site.n_images
    threshold, positive = metrics["threshold"]["value"], metrics["positive_class"]
    for row in predictions:
        probability = float(row[f"p_{positive}"])
        assert float(row["p_normal"]) + float(row["p_opacity"]) == pytest.approx(1, abs=1e-5)
        assert (row["predicted"] == positive) == (probability >= threshold)
    labels = [row["label"] for row in predictions]
    accuracy = np.mean([row["predicted"] == label for row, label in zip(predictions, labels, strict=True)])
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy)


def test_a_run_trained_before_the_transfer_statistics_says_which_checks_were_made(run, other_site, tmp_path):
    """An older run's metrics.json lacks validation's clustered standard errors: the evaluation
    still compares the AUROC and the rates' intervals and says the other checks were not made."""
    assert "partial" not in evaluate_run(run, other_site.manifest, tmp_path / "now", bootstrap=0,
                                         log=quiet).metrics["transfer"]
    older = tmp_path / "older"
    shutil.copytree(run, older)
    metrics = json.loads((older / "metrics.json").read_text())
    del metrics["val"]["transfer_statistics"]
    (older / "metrics.json").write_text(json.dumps(metrics))
    evaluated = evaluate_run(older, other_site.manifest, tmp_path / "then", bootstrap=0, log=quiet).metrics
    assert evaluated["transfer"]["partial"] is True
    assert any("trained by an earlier medxfer" in w and "were not made" in w for w in evaluated["warnings"])


def test_unreadable_files_are_listed_and_the_rest_scored(run, other_site, tmp_path, capsys):
    data = tmp_path / "data"
    for label in ("normal", "opacity"):
        (data / label).mkdir(parents=True)
    rows = read_csv(other_site.manifest)
    for row in rows:
        source = other_site.root / row["path"]
        (data / row["label"] / source.name).write_bytes(source.read_bytes())
    (data / "normal" / "truncated.dcm").write_bytes((other_site.root / rows[0]["path"]).read_bytes()[:400])
    (data / "opacity" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["evaluate", str(run), "--data", str(data), "--out", str(out), "--bootstrap", "200"]) == 0
    unreadable = read_csv(out / "unreadable.csv")
    assert sorted(Path(row["path"]).name for row in unreadable) == ["notes.txt", "truncated.dcm"]
    assert all(row["reason"] for row in unreadable)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == len(rows) and metrics["unreadable_files"] == 2
    assert "2 unreadable" in capsys.readouterr().out
    (data / "normal" / "truncated.dcm").unlink()
    (data / "opacity" / "notes.txt").unlink()
    assert main(["evaluate", str(run), "--data", str(data), "--out", str(out), "--bootstrap", "0"]) == 0
    assert not (out / "unreadable.csv").exists()  # the earlier list would read as this evaluation's


def test_an_out_folder_holding_other_files_is_refused(run, other_site, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "report.html").write_text("mine")
    assert main(["evaluate", str(run), "--data", str(other_site.manifest), "--out", str(mine)]) == 1
    assert "holds files an evaluation did not write (notes.txt)" in capsys.readouterr().err
    assert (mine / "report.html").read_text() == "mine"
    another_run = tmp_path / "another-run"
    another_run.mkdir()
    for name in ("metrics.json", "report.html"):
        (another_run / name).write_bytes((run / name).read_bytes())
    assert main(["evaluate", str(run), "--data", str(other_site.manifest), "--out", str(another_run)]) == 1
    assert "metrics.json of a training run" in capsys.readouterr().err


def test_no_patient_identifier_reaches_any_output(run, other_site, tmp_path):
    out = tmp_path / "out"
    evaluate_run(run, other_site.manifest, out, bootstrap=200, log=quiet)
    identifiers = set()
    for row in read_csv(other_site.manifest):
        header = pydicom.dcmread(other_site.root / row["path"], stop_before_pixels=True)
        identifiers |= {str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate),
                        str(header.AccessionNumber), row["patient_id"],
                        str(header.InstitutionName), str(header.Manufacturer)}  # free text: can hold a name
    identifiers.discard("")
    for folder in (out, run):
        for path in folder.iterdir():
            if path.is_file() and path.suffix in (".json", ".html", ".md", ".csv", ".yaml"):
                text = path.read_text(encoding="utf-8")
                leaked = [i for i in identifiers if i in text]
                assert not leaked, f"{path.name} holds {leaked[:3]}"


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "no such run folder"),
    ("unfinished", "not a finished medxfer training run"),
])
def test_a_missing_or_unfinished_run_is_a_clear_error(run, other_site, tmp_path, capsys, setup, message):
    folder = tmp_path / "run"
    if setup == "unfinished":
        folder.mkdir()
        for name in ("model.safetensors", "model.json", "config.yaml"):
            (folder / name).write_bytes((run / name).read_bytes())
    assert main(["evaluate", str(folder), "--data", str(other_site.manifest)]) == 1
    assert message in capsys.readouterr().err


def test_labels_the_model_does_not_know_are_refused(run, other_site, tmp_path, capsys):
    rows = read_csv(other_site.manifest)
    manifest = other_site.root / "renamed.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{**row, "label": "effusion" if i == 0 else row["label"]} for i, row in enumerate(rows)])
    assert main(["evaluate", str(run), "--data", str(manifest), "--out", str(tmp_path / "out")]) == 1
    assert "effusion" in capsys.readouterr().err


def test_the_out_folder_may_not_be_the_run_itself(run, other_site, capsys):
    assert main(["evaluate", str(run), "--data", str(other_site.manifest), "--out", str(run)]) == 1
    assert "run folder itself" in capsys.readouterr().err


def test_a_damaged_calibration_record_is_an_error_naming_the_file(run, other_site, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    state = json.loads((folder / "calibration.json").read_text())
    state["threshold"]["value"] = 7.0
    (folder / "calibration.json").write_text(json.dumps(state))
    assert main(["evaluate", str(folder), "--data", str(other_site.manifest), "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "calibration.json" in error and "not a probability" in error
