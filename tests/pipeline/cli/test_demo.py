"""`medxfer demo` at a small size: every step runs and leaves what the demo promises."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from medxfer.datasets import phantom
from medxfer.pipeline.cli.demo import DemoSettings, brief, run_demo


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    lines: list[str] = []
    out = tmp_path_factory.mktemp("demo") / "out"
    result = run_demo(out, DemoSettings(patients=36, image_size=32, epochs=2, bootstrap=200), log=lines.append)
    return result, lines


def test_the_model_trains_on_site_a_and_is_adapted_to_site_b(demo):
    result, _ = demo
    recipe = json.loads((result.run_dir / "model.json").read_text())
    assert recipe["adaptation"] == "adabn" and recipe["backbone"] == "efficientnet_lite0"
    config = (result.run_dir / "config.yaml").read_text()
    assert "manifest-site-a.csv" in config and "manifest-site-b-unlabelled.csv" in config
    trained = {row["path"] for row in read_csv(result.run_dir / "splits.csv")}
    assert trained and all("site-a" in path for path in trained)


def test_both_reports_have_calibration_and_subgroup_sections(demo):
    result, _ = demo
    for folder in (result.run_dir, result.external_dir):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["calibration"]["temperature"] > 0
        assert {"ece", "ece_uncalibrated"} <= set(metrics["test"])
        # the DICOM headers' sex, age and view are reported, or skipped with the reason (one value in a tiny split)
        reported, skipped = set(metrics["test"]["subgroups"]), metrics["bias"]["skipped"]
        assert reported and {"sex", "age_band", "view"} <= reported | set(skipped)
        html = (folder / "report.html").read_text()
        assert "Calibration" in html and "Subgroups" in html
    assert result.external_metrics["kind"] == "external validation"
    assert result.external_metrics["test"]["n"] == result.study.n_target_test


def test_batch_inference_predicts_every_good_scan_and_lists_every_broken_file(demo):
    result, _ = demo
    rows = read_csv(result.predictions)
    assert len(rows) == result.predicted == result.study.n_target_test
    errors = read_csv(result.errors)
    assert sorted(row["path"] for row in errors) == sorted(f"broken/{name}" for name in phantom.BROKEN_FILES)
    assert result.failed == len(phantom.BROKEN_FILES) and all(row["reason"] for row in errors)
    assert Image.open(result.preview).format == "PNG"


def test_the_summary_names_the_figures_and_where_the_outputs_are(demo):
    result, lines = demo
    text = "\n".join(lines)
    assert "[5/5]" in text and "demo finished" in text
    assert str(result.run_dir / "report.html") in text and str(result.predictions) in text
    assert brief(result.metrics) in text and brief(result.external_metrics) in text
    assert f"{result.predicted} of {result.predicted + result.failed} files predicted" in text


def test_no_patient_identifier_reaches_an_output_or_the_log(demo):
    result, lines = demo
    identifiers = set()
    for path in (result.cohort.root / "images").rglob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate),
                        str(header.AccessionNumber), str(header.InstitutionName), str(header.Manufacturer)}
    out = result.run_dir.parent
    texts = ["\n".join(lines)] + [path.read_text(encoding="utf-8") for path in out.rglob("*")
                                  if path.suffix in (".csv", ".json", ".html", ".md", ".yaml")
                                  and "cohort" not in path.relative_to(out).parts]
    assert not [i for i in identifiers for text in texts if i in text]


def test_brief_says_n_a_for_an_undefined_auroc():
    metrics = {"test": {"n": 4, "auroc": None, "sensitivity": 0.5, "specificity": 1.0, "ece": 0.1,
                        "ece_uncalibrated": 0.2, "ci": {"sensitivity": [0.0, 1.0]}},
               "bias": {"flags": [{}]}, "overfitting": {"flag": True}}
    assert brief(metrics) == ("test AUROC n/a on 4 images; at the validated threshold sensitivity 0.500 "
                              "(0.000-1.000), specificity 1.000; ECE 0.200 before and 0.100 after calibration; "
                              "2 flag(s) in the report")


def test_a_folder_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        run_demo(tmp_path, DemoSettings(patients=4), log=lambda _: None)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_the_crossfit_demo_trains_an_ensemble_and_uses_it_in_every_step(tmp_path):
    from medxfer.pipeline.runs.trained_run import TrainedRun

    lines: list[str] = []
    result = run_demo(tmp_path / "out", DemoSettings(patients=36, image_size=32, epochs=2, bootstrap=0, crossfit=True),
                      log=lines.append)
    run = TrainedRun.load(result.run_dir)
    assert len(run.networks) == 5 and "crossfit" in result.metrics and "crossfit" in result.external_metrics
    assert [line for line in lines if "fold 5/5: training" in line]
    assert result.predicted == len(read_csv(result.predictions)) > 0
