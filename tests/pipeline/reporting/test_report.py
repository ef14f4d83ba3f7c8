"""report.html and model_card.md: self-contained, flags first, n/a with reasons, escaped, no identifiers.

The metrics dicts are written by hand after the metrics.json schema (``evaluation.schema.Metrics``,
every required key present): a binary NIH-like training run
(a view subgroup flagged for AUROC, an age band with one class only, a skipped attribute) and a
three-class external validation; the score arrays are random but tied to the labels.
"""

from __future__ import annotations

import base64
import copy
import csv
import itertools
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxfer.pipeline.evaluation.flags import guarantee
from medxfer.pipeline.evaluation.inputs import SplitScores
from medxfer.pipeline.evaluation.wording import interval, number
from medxfer.pipeline.reporting.model_card import write_model_card
from medxfer.pipeline.reporting.report import write_report
from medxfer.pipeline.runs.files import MODEL_CARD_FILE, REPORT_FILE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VIEW_FLAG = "AUROC in view AP is 0.710 (0.600–0.820), 0.151 below the overall 0.861; the interval of the gap excludes zero."
OVERFIT = "The train AUROC (0.990) is 0.070 above the validation AUROC (0.920) at the kept epoch: the model has partly memorised its training images."
SMALL_TEST = "The test set holds 143 images from 120 patients: an AUROC difference under about 0.05 is within noise."
SHORTCUT = "The view may be a shortcut: the share of PNEUMONIA differs between its groups (AP 40%, PA 63%)."
SINGLE_CLASS = "one class only (all NORMAL)"
EVIL = "<script>alert(1)</script>"


def _bins(shift: float) -> list[dict]:
    """15 equal-width reliability bins, the lowest empty (top-label confidence is at least 1/K)."""
    edges = np.linspace(0, 1, 16)
    bins = []
    for lower, upper in itertools.pairwise(edges):
        if upper <= 0.5:
            bins.append({"lower": lower, "upper": upper, "confidence": None, "accuracy": None, "count": 0})
            continue
        middle = (lower + upper) / 2
        bins.append({"lower": lower, "upper": upper, "confidence": middle,
                     "accuracy": max(0.0, middle - shift), "count": int(40 * middle)})
    return bins


def _group(n: int, prevalence: float | None, auroc: float | None, na: dict | None = None) -> dict:
    values = {"auroc": auroc, "sensitivity": 0.8 if auroc else None, "specificity": 0.75, "ece": 0.06}
    ci = {k: None if v is None else [max(0.0, v - 0.1), min(1.0, v + 0.1)] for k, v in values.items()}
    gap = {"auroc": None if auroc is None else auroc - 0.861, "sensitivity": -0.02, "specificity": 0.01, "ece": 0.02}
    gap_ci = {k: None if v is None else [v - 0.09, v + 0.09] for k, v in gap.items()}
    positives = round(n * (prevalence or 0))
    return {"n": n, "n_patients": n - 5, "counts": {"NORMAL": n - positives, "PNEUMONIA": positives},
            "prevalence": prevalence, **values, "ci": ci, "ci_method": {}, "ci_note": {}, "gap": gap, "gap_ci": gap_ci,
            "gap_rest": dict.fromkeys(gap), "gap_rest_ci": dict.fromkeys(gap), "na": na or {}}


def _binary_split(n: int) -> dict:
    single = {"auroc": SINGLE_CLASS, "sensitivity": "no PNEUMONIA image", "ci.auroc": SINGLE_CLASS,
              "ci.sensitivity": SINGLE_CLASS}
    per_class = {
        name: {"precision": 0.82, "recall": 0.8, "specificity": 0.84, "f1": 0.81, "auroc": 0.861,
               "average_precision": 0.85, "support": n // 2,
               "ci": {k: [0.7, 0.9] for k in ("precision", "recall", "specificity", "f1", "auroc", "average_precision")},
               "ci_method": {}, "ci_note": {}, "na": {}}
        for name in ("NORMAL", "PNEUMONIA")
    }
    return {
        "n": n, "n_patients": n - 23, "counts": {"NORMAL": n // 2, "PNEUMONIA": n - n // 2},
        "prevalence": (n - n // 2) / n,
        "auroc": 0.861, "average_precision": 0.848, "accuracy": 0.79, "balanced_accuracy": 0.788,
        "sensitivity": 0.812, "specificity": 0.764,
        "ece": 0.041, "ece_uncalibrated": 0.123, "adaptive_ece": 0.045, "adaptive_ece_uncalibrated": 0.118,
        "mce": 0.11, "mce_uncalibrated": 0.25, "brier": 0.15, "brier_uncalibrated": 0.19,
        "nll": 0.45, "nll_uncalibrated": 0.61,
        "ci": {"auroc": [0.801, 0.912], "average_precision": [0.78, 0.9], "accuracy": [0.72, 0.85],
               "balanced_accuracy": [0.72, 0.85], "sensitivity": [0.72, 0.89], "specificity": [0.66, 0.85],
               "ece": [0.02, 0.07], "brier": [0.12, 0.18]},
        "ci_method": {}, "ci_note": {}, "na": {},
        "per_class": per_class,
        "confusion_matrix": {"labels": ["NORMAL", "PNEUMONIA"], "counts": [[55, 15], [14, 59]],
                             "share_ci": [[None, None], [None, None]]},
        "reliability": {"before": _bins(0.12), "after": _bins(0.03)},
        "subgroups": {
            "sex": {"F": _group(70, 0.46, 0.85), "M": _group(73, 0.55, 0.87)},
            "age_band": {"<18": _group(6, 0.0, None, single), "18-39": _group(40, 0.5, 0.84),
                         "40-64": _group(60, 0.52, 0.88), "65+": _group(37, 0.49, 0.83)},
            "view": {"AP": _group(80, 0.40, 0.71), "PA": _group(63, 0.63, 0.90)},
        },
    }


def binary_metrics() -> dict:
    """A binary NIH-like training run: overfitting flagged, view AP flagged, a single-class age band."""
    return {
        "medxfer_version": "0.1.0", "kind": "training run", "data_name": "nih-pneumonia-256",
        "classes": ["NORMAL", "PNEUMONIA"], "positive_class": "PNEUMONIA", "best_epoch": 7, "epochs_run": 12,
        "threshold": {"method": "youden", "target_sensitivity": None, "value": 0.43, "chosen_on": "val",
                      "placement": "midpoint", "note": None},
        "calibration": {"method": "temperature", "n_classes": 2, "temperature": 1.7, "scale": None, "bias": None,
                        "fitted_on": "val", "n": 143, "note": None},
        "bootstrap": {"resamples": 1000, "level": 0.95, "unit": "patient", "seed": 0, "used_for": [], "defined": {}},
        "intervals": {"level": 0.95, "methods": {}},
        "train": {"n": 700, "n_patients": 640, "counts": {"NORMAL": 350, "PNEUMONIA": 350}, "auroc": 0.99, "na": {}},
        "val": _binary_split(143),
        "test": _binary_split(143),
        "overfitting": {"train_val_auroc_gap": 0.07, "limit": 0.05, "flag": True, "sentence": OVERFIT,
                        "best_epoch": 7, "epochs_run": 12},
        "transfer": {"compared_with": "validation", "warnings": [], "kinds": []},
        "warnings": [SMALL_TEST],
        "bias": {
            "split": "test", "attributes": ["sex", "age_band", "view"],
            "skipped": {"manufacturer": "one value only (MEDXFER PHANTOM)", "site": "not recorded"},
            "comparisons": 36, "control": "Holm", "family_wise_error": 0.05, "min_group_patients": 15,
            "min_class_patients": 8, "min_gap": 0.05,
            "guarantee": guarantee(36, 0.05), "tests": [], "flagged_metrics": ["auroc", "sensitivity", "specificity"],
            "flags": [{"split": "test", "attribute": "view", "group": "AP", "metric": "auroc", "kind": "gap",
                       "value": 0.71, "rest": 0.861, "gap": -0.151, "ci": [-0.25, -0.05], "p_value": 0.001,
                       "adjusted_p": 0.03, "sentence": VIEW_FLAG},
                      {"split": "test", "attribute": "view", "group": None, "metric": "confounding",
                       "kind": "confounder", "shortcut": False, "value": None, "gap": None, "ci": None,
                       "p_value": 0.001, "adjusted_p": 0.03, "sentence": SHORTCUT}],
        },
    }


def three_class_metrics() -> dict:
    """A three-class external validation: argmax decisions, vector scaling, no flag, prevalence null."""
    metrics = binary_metrics()
    classes = ["NORMAL", "BACTERIAL", "VIRAL"]
    metrics.update(kind="external validation", data_name="site-b", classes=classes, positive_class=None,
                   threshold={"method": "argmax", "target_sensitivity": None, "value": None, "chosen_on": "val",
                              "placement": "midpoint", "note": None},
                   calibration={"method": "vector", "n_classes": 3, "temperature": None, "scale": [1.2, 0.9, 1.1],
                                "bias": [0.1, -0.2, 0.05], "fitted_on": "val", "n": 143, "note": None},
                   warnings=[])
    for key in ("best_epoch", "epochs_run", "train"):
        metrics.pop(key)
    metrics["overfitting"] = {"train_val_auroc_gap": None, "limit": 0.05, "flag": False,
                              "sentence": "Not checked: an external validation has no training split.",
                              "best_epoch": None, "epochs_run": None}
    metrics["bias"]["flags"] = []
    for split in ("val", "test"):
        block = metrics[split]
        block["counts"] = {"NORMAL": 50, "BACTERIAL": 50, "VIRAL": 43}
        block["prevalence"] = None
        block["per_class"] = {c: {**block["per_class"]["NORMAL"], "support": block["counts"][c]} for c in classes}
        block["confusion_matrix"] = {"labels": classes, "counts": [[40, 6, 4], [5, 38, 7], [6, 9, 28]],
                                     "share_ci": [[None] * 3] * 3}
        for groups in block["subgroups"].values():
            for group in groups.values():
                group["prevalence"] = None
    return metrics


def _scores(n: int, k: int, rng: np.random.Generator) -> SplitScores:
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    calibrated = np.exp(logits / 1.7) / np.exp(logits / 1.7).sum(axis=1, keepdims=True)
    raw = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return SplitScores(labels=labels, probabilities=calibrated, uncalibrated=raw)


HISTORY = [{"epoch": e, "train_loss": 0.7 - 0.05 * e, "train_auroc": 0.7 + 0.025 * e, "val_loss": 0.6 - 0.01 * e,
            "val_auroc": 0.8 + 0.01 * min(e, 7), "lr_head": 1e-3, "seconds": 12.0, "images_per_second": 60.0}
           for e in range(1, 13)]
CONFIG = {"data": "/home/alice/hospital-x/manifest.csv", "target_data": None, "out": "/home/alice/runs/first",
          "backbone": "efficientnet_lite0", "weights": "/srv/models/chexpert-init.safetensors", "strategy": "partial",
          "trainable_stages": 3, "adapt": "none", "augment": "standard", "image_size": 224, "epochs": 12, "seed": 0}
ENVIRONMENT = {"medxfer": "0.1.0", "python": {"version": "3.11.2", "implementation": "CPython"},
               "packages": {"torch": "2.4.1"}, "git": {"commit": "131134b" + "0" * 33, "dirty": True}, "seed": 0,
               "data_hash": "ab" * 32, "hardware": {"device": "cpu"}, "started_at": "2026-11-22T10:00:00Z"}


def _write(tmp_path: Path, metrics: dict, *, history: list | None = HISTORY, splits=("val", "test")) -> str:
    rng = np.random.default_rng(0)
    k = len(metrics["classes"])
    scores = {split: _scores(143, k, rng) for split in splits}
    path = write_report(tmp_path, metrics, scores=scores, history=history, config=CONFIG, environment=ENVIRONMENT)
    assert path == tmp_path / REPORT_FILE
    return path.read_text(encoding="utf-8")


class Page(HTMLParser):
    """Tags with their attributes, the visible text (style excluded), the prose (also without the YAML
    configuration block) and the text of each table cell."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.prose: list[str] = []
        self.cells: list[str] = []
        self._in_style = self._in_pre = False
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"
        self._in_pre = tag == "pre"
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        self._in_style = self._in_pre = False
        if tag == "td" and self._cell is not None:
            self.cells.append(" ".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if not self._in_style:
            self.text.append(data)
            if not self._in_pre:
                self.prose.append(data)
            if self._cell is not None:
                self._cell.append(data.strip())

    @property
    def visible(self) -> str:
        return " ".join(self.text)


@pytest.fixture(scope="module")
def binary_html(tmp_path_factory) -> str:
    return _write(tmp_path_factory.mktemp("binary"), binary_metrics())


@pytest.fixture(scope="module")
def three_class_html(tmp_path_factory) -> str:
    return _write(tmp_path_factory.mktemp("three"), three_class_metrics(), history=None, splits=("test",))


def test_the_report_is_one_self_contained_file(tmp_path):
    html = _write(tmp_path, binary_metrics())
    assert [p.name for p in tmp_path.iterdir()] == [REPORT_FILE]
    page = Page(html)
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith(("data:", "#")), (tag, attrs[name][:80])
    assert "@import" not in html and "url(" not in html


def test_the_figures_are_embedded_as_matplotlib_pngs(binary_html):
    images = [attrs for tag, attrs in Page(binary_html).tags if tag == "img"]
    assert len(images) == 6  # ROC, PR, confusion matrix, reliability, learning curves, forest plot
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,") and attrs["alt"]
        png = base64.b64decode(attrs["src"].split(",", 1)[1])
        assert png.startswith(PNG_SIGNATURE)
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 600 and height >= 400 and len(png) > 20_000
        assert b"Matplotlib" in png[:200]  # the tEXt "Software" chunk matplotlib writes


def test_flags_are_in_the_summary_before_the_first_figure(binary_html):
    summary_start, first_figure = binary_html.index('id="summary"'), binary_html.index("<img")
    for sentence in ("AUROC in view AP is 0.710", "the model has partly memorised", SMALL_TEST[:40], SHORTCUT[:40]):
        assert summary_start < binary_html.index(sentence) < first_figure, sentence
    summary = Page(binary_html[summary_start:first_figure]).visible
    assert "Test AUROC for PNEUMONIA against NORMAL: 0.861 (0.801–0.912)" in summary
    assert "chosen on the validation set by Youden's J" in summary and "applied unchanged" in summary
    assert "ECE 0.123 before, 0.041 (0.020–0.070) after temperature scaling (T = 1.70)" in summary
    assert "No flags" not in summary


def test_without_flags_the_summary_says_so_in_one_line(three_class_html):
    summary = three_class_html[three_class_html.index('id="summary"'):three_class_html.index("<img")]
    assert "No flags" in summary and "36 subgroup comparisons" in summary
    assert 'role="alert"' not in summary


def test_na_cells_show_their_reason_as_text(binary_html):
    cells = Page(binary_html).cells
    assert any(cell.startswith("n/a") and SINGLE_CLASS in cell for cell in cells)
    assert "one value only (MEDXFER PHANTOM)" in Page(binary_html).visible  # a skipped attribute and why


def test_the_subgroup_table_shows_prevalence_next_to_auroc_and_highlights_the_flag(binary_html):
    section = binary_html[binary_html.index('id="subgroups"'):binary_html.index('id="reproducibility"')]
    ap_row = re.search(r"<tr class=\"flagged-row\">.*?</tr>", section, re.DOTALL).group(0)
    assert "AP" in ap_row and "40 %" in ap_row and "0.710 (0.610–0.810)" in ap_row
    assert "36 comparison(s) were tested together" in section and "at most 5%" in section
    assert "Flagged: 1 group gap, 1 attribute flag." in Page(section).visible
    view = section.index("<h4>view</h4>")
    assert view < section.index(SHORTCUT[:40]) < section.index("<table", view)  # an attribute-wide flag heads its table


def test_user_supplied_names_are_escaped(tmp_path):
    metrics = binary_metrics()
    metrics["test"]["subgroups"]["view"][EVIL] = metrics["test"]["subgroups"]["view"].pop("AP")
    metrics["bias"]["skipped"] = {EVIL: "not recorded"}
    html = _write(tmp_path, metrics)
    page = Page(html)
    assert not any(tag == "script" for tag, _ in page.tags)
    assert EVIL in page.visible  # shown as text
    card = write_model_card(tmp_path, metrics, config=CONFIG, environment=ENVIRONMENT).read_text(encoding="utf-8")
    assert "<script>" not in card and "&lt;script&gt;" in card


def test_no_none_or_nan_is_shown_outside_the_yaml_configuration(binary_html, three_class_html, tmp_path):
    card = write_model_card(tmp_path, binary_metrics(), config=CONFIG, environment=ENVIRONMENT).read_text("utf-8")
    for text in (" ".join(Page(binary_html).prose), " ".join(Page(three_class_html).prose), card):
        assert not re.search(r"\b(None|nan|NaN|null)\b", text)


def test_three_classes_render_with_argmax_and_vector_scaling(three_class_html):
    page = Page(three_class_html)
    assert "macro average of each class against the rest" in page.visible
    assert "most probable class" in page.visible and "vector scaling" in page.visible
    for name in ("NORMAL", "BACTERIAL", "VIRAL"):
        assert f">{name}</th>" in three_class_html


def test_an_external_validation_renders_without_history(three_class_html):
    page = Page(three_class_html)
    assert "medxfer evaluation report: external validation on site-b" in page.visible
    assert "No learning curves" in page.visible
    assert sum(tag == "img" for tag, _ in page.tags) == 5


def test_the_model_card_names_metrics_with_intervals_and_known_biases(tmp_path):
    card = write_model_card(tmp_path, binary_metrics(), config=CONFIG, environment=ENVIRONMENT)
    assert card == tmp_path / MODEL_CARD_FILE
    text = card.read_text(encoding="utf-8")
    assert "Not a medical device" in text
    assert "| AUROC | 0.861 (0.801–0.912) |" in text
    assert "## Known biases" in text and "AUROC in view AP is 0.710" in text
    assert "Not checked: manufacturer: one value only (MEDXFER PHANTOM)." in text
    assert SMALL_TEST[:40] in text and "partly memorised" in text  # limitations
    assert "medxfer train --config config.yaml" in text


def test_the_model_card_without_bias_flags_does_not_claim_fairness(tmp_path):
    text = write_model_card(tmp_path, three_class_metrics(), config=CONFIG, environment=ENVIRONMENT).read_text("utf-8")
    assert ("None detected in 36 comparisons (Holm's procedure: at most a 5 % chance of any false flag); absence of a "
            "flag is not evidence of fairness: small groups are not tested.") in text


def test_no_paths_or_patient_identifiers_reach_the_outputs(binary_html, tmp_path):
    card = write_model_card(tmp_path, binary_metrics(), config=CONFIG, environment=ENVIRONMENT).read_text("utf-8")
    for text in (binary_html, card):
        for leak in ("/home/alice", "hospital-x", "manifest.csv", "/srv/models", "chexpert-init", "patient_id"):
            assert leak not in text
        assert "path withheld" in text or "withheld" in text
    assert "ab" * 32 in binary_html and "131134b" in binary_html  # what identifies the run is kept


def test_numbers_have_three_decimals_and_intervals_an_en_dash():
    assert number(0.86123) == "0.861" and number(None) == "n/a" and number(float("nan")) == "n/a"
    assert number(1000) == "1,000"
    assert interval([0.8, 0.91]) == "0.800–0.910"
    assert interval([-0.25, -0.05]) == "−0.250 to −0.050"
    assert interval(None) is None


def test_metrics_are_not_modified(tmp_path):
    metrics = binary_metrics()
    before = copy.deepcopy(metrics)
    _write(tmp_path, metrics)
    write_model_card(tmp_path, metrics, config=CONFIG, environment=ENVIRONMENT)
    assert metrics == before


def test_a_run_without_a_test_split_reports_its_validation_split_as_such(tmp_path):
    metrics = binary_metrics()
    del metrics["test"]
    metrics["bias"]["flags"] = [{**f, "split": "val"} for f in metrics["bias"]["flags"]]
    page = Page(_write(tmp_path, metrics, splits=("val",)))
    assert "Validation (no test split; optimistic, see below) AUROC" in page.visible
    assert "Subgroups of the validation set" in page.visible
    assert "there is no test split to check them" in page.visible


def test_a_bias_check_that_tested_nothing_does_not_say_ok(tmp_path):
    metrics = binary_metrics()
    metrics["bias"].update(flags=[], comparisons=0)
    metrics["overfitting"]["flag"] = False
    metrics["warnings"] = []
    page = Page(_write(tmp_path, metrics))
    assert "Subgroups not checked" in page.visible and "15 or more patients" in page.visible
    assert "No flags" not in page.visible


def test_a_training_run_writes_no_identifier_of_its_own_patients(run, cohort):
    """The phantom cohort's DICOM headers carry synthetic names, ids, birth dates and accession
    numbers, and its manifest the patient ids: none reaches the run's report, card or metrics."""
    identifiers = set()
    for path in (cohort.root / "images").rglob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate),
                        str(header.AccessionNumber)}
    with open(cohort.manifest, newline="", encoding="utf-8") as handle:
        identifiers |= {row["patient_id"] for row in csv.DictReader(handle)}
    identifiers.discard("")
    assert len(identifiers) > 40
    for name in (REPORT_FILE, MODEL_CARD_FILE, "metrics.json", "calibration.json"):
        text = (run / name).read_text(encoding="utf-8")
        leaked = sorted(i for i in identifiers if i in text)
        assert not leaked, f"{name} holds {leaked[:3]}"


def test_an_interval_under_a_gap_does_not_break_after_its_en_dash(tmp_path):
    metrics = binary_metrics()
    metrics["test"]["subgroups"]["sex"]["F"]["gap"]["ece"] = 0.243
    metrics["test"]["subgroups"]["sex"]["F"]["gap_ci"]["ece"] = [0.108, 0.388]
    html = _write(tmp_path, metrics)
    assert "vs all +0.243 (0.108\u2013\u20600.388)" in html  # a word joiner holds the interval together


def test_the_overfitting_section_says_what_each_train_auroc_measures(binary_html):
    section = Page(binary_html[binary_html.index('id="overfitting"'):binary_html.index('id="subgroups"')]).visible
    assert "kept weights on the plain, un-augmented training images" in section
    assert "measured during each epoch, on augmented images" in section


def test_a_prevalence_gap_reads_as_points_held_to_their_number(tmp_path):
    metrics = binary_metrics()
    view = metrics["test"]["subgroups"]["view"]
    view["AP"]["gap"]["prevalence"], view["AP"]["gap_ci"]["prevalence"] = -0.12, [-0.21, -0.02]
    view["PA"]["gap"]["prevalence"], view["PA"]["gap_ci"]["prevalence"] = 0.012, [-0.08, 0.1]
    html = _write(tmp_path, metrics)
    assert "gap \u221212\u00a0points (\u221221\u00a0to\u00a0\u22122)" in html  # no line break between number and unit
    assert "gap +1\u00a0point (" in html and "+1\u00a0points" not in html


def test_the_calibration_section_says_which_cells_have_an_interval(binary_html, tmp_path):
    def calibration_prose(html: str) -> str:
        return " ".join(Page(html[html.index('id="calibration"'):html.index('id="overfitting"')]).prose)

    assert ("Only the calibrated top-label ECE and Brier score carry a 95 % interval (the ECEs' marked approximate); the "
            'other cells, including every "before" value, are point estimates.') in calibration_prose(binary_html)
    metrics = binary_metrics()
    for split in ("val", "test"):
        metrics[split]["ci"] = {}  # no bootstrap: no cell has an interval, nothing to explain
    assert "carry a 95 % interval" not in calibration_prose(_write(tmp_path, metrics))


def test_an_external_report_of_an_adabn_run_says_only_validation_was_scored_before_adabn(tmp_path):
    trained = binary_metrics()
    trained["scored_before"] = "AdaBN to the target site"
    training_page = Page(_write(tmp_path / "run", trained)).visible
    assert "Validation and test were scored before AdaBN to the target site." in training_page
    external = {**copy.deepcopy(trained), "kind": "external validation"}
    page = Page(_write(tmp_path / "external", external)).visible
    assert "Validation and test were scored before" not in page
    assert "The validation figures, carried from the training run, were scored before AdaBN" in page
    assert "this set was scored with the network as saved, after it" in page


def test_transfer_warnings_head_the_summary_and_no_ok_box_is_shown(tmp_path):
    metrics = binary_metrics()
    metrics.update(kind="external validation", data_name="site-b")
    chance = "The model cannot be shown to rank the images at this site better than chance: AUROC 0.560."
    warning = "Sensitivity at this site is 0.345, against 0.792 on validation."
    metrics["transfer"] = {"compared_with": "validation split of the training run", "warnings": [chance, warning],
                           "kinds": ["not shown better than chance", "does not transfer"]}
    metrics["warnings"] = [chance, warning]
    metrics["bias"]["flags"] = []
    metrics["overfitting"]["flag"] = False
    page = Page(_write(tmp_path, metrics)).visible
    assert page.index("Not shown to work here") < page.index(chance) < page.index("Does not transfer") \
        < page.index(warning) < page.index("External test AUROC for PNEUMONIA")
    assert page.count(warning) == 1 and page.count(chance) == 1 and "No flags" not in page


def test_the_comparisons_nearest_a_flag_are_listed_with_both_p_values(tmp_path):
    metrics = binary_metrics()
    metrics["bias"]["tests"] = [
        {"kind": "prevalence", "attribute": "view", "group": "AP", "metric": "prevalence", "difference": -0.28,
         "p_value": 0.029, "adjusted_p": 0.72, "flagged": False},
        {"kind": "performance", "attribute": "sex", "group": "F", "metric": "auroc", "difference": -0.03,
         "p_value": 0.32, "adjusted_p": 1.0, "flagged": False}]
    section = Page(_write(tmp_path, metrics)).visible
    assert "view AP prevalence differs from the rest \u221228 points 0.029 0.720 no" in " ".join(section.split())


def test_the_model_card_escapes_user_text_for_markdown_once_not_as_html_too(tmp_path):
    metrics = binary_metrics()
    metrics["data_name"] = "St Mary's & St_John <east>"
    text = write_model_card(tmp_path, metrics, config=CONFIG, environment=ENVIRONMENT).read_text("utf-8")
    assert "trained on St Mary's &amp; St\\_John &lt;east&gt;" in text
    assert "&amp;amp;" not in text and "&#39;" not in text
