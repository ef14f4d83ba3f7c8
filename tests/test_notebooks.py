"""The notebooks in notebooks/ run end to end with small settings, and are stored without outputs.

Each notebook is executed by nbclient in a ``python3`` kernel of this interpreter (the kernel
spec is written for ``sys.executable``, so a user's own ``python3`` spec cannot redirect it),
with a cell inserted after its ``parameters`` cell that makes it small and writes into
pytest's tmp_path. The kernel inherits the environment, so the test salt of conftest.py is
used there too.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = {"01_quickstart.ipynb", "02_domain_shift.ipynb", "03_reading_the_report.ipynb"}
CELL_TIMEOUT = 600  # seconds per cell; the three notebooks take about two minutes in all on 2 cores
METHODS = ["no adaptation", "AdaBN", "adapters", "DANN"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def parameters_cell(nb: nbformat.NotebookNode) -> int:
    """Index of the first code cell, which must be the one tagged ``parameters``."""
    index = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    assert "parameters" in nb.cells[index].metadata.get("tags", []), "the first code cell is not tagged parameters"
    return index


def assigned(source: str) -> dict[str, object]:
    """The plain ``NAME = literal`` assignments of a cell (anything else fails)."""
    values = {}
    for statement in ast.parse(source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, ast.unparse(statement)
        values[statement.targets[0].id] = ast.literal_eval(statement.value)
    return values


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> Path:
    """A folder holding a ``python3`` kernel spec that runs this interpreter."""
    folder = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(folder / "python3")
    return folder


def run_notebook(name: str, kernel_specs: Path, overrides: dict[str, object],
                 probe: dict[str, str]) -> tuple[nbformat.NotebookNode, str, dict]:
    """Execute ``name`` with its parameters replaced by ``overrides``; return the executed
    notebook, everything it printed, and the values of the ``probe`` expressions at the end
    (with the kernel's interpreter and medxfer's location)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = parameters_cell(nb)
    assert set(assigned(nb.cells[index].source)) == set(overrides), "every parameter gets a small test value"
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in overrides.items())))
    probe = {"executable": "__import__('sys').executable", "medxfer": "__import__('medxfer').__file__", **probe}
    nb.cells.append(nbformat.v4.new_code_cell(
        "print('PROBE', __import__('json').dumps({" + ", ".join(f"{k!r}: {v}" for k, v in probe.items()) + "}))"))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_specs)])
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    NotebookClient(nb, km=manager, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    printed = "".join(output.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")
    line = next(line for line in printed.splitlines() if line.startswith("PROBE "))
    values = json.loads(line.removeprefix("PROBE "))
    # the kernel is this environment's Python, with this checkout's medxfer
    assert Path(values["executable"]).resolve() == Path(sys.executable).resolve()
    assert Path(values["medxfer"]).resolve().is_relative_to(ROOT)
    return nb, printed, values


def small(out: Path, bootstrap: int = 0) -> dict[str, object]:
    return {"PATIENTS": 40, "IMAGE_SIZE": 32, "EPOCHS": 2, "BOOTSTRAP": bootstrap, "SEED": 0, "OUT": str(out)}


def test_the_notebooks_are_the_three_tested_here():
    assert {path.name for path in NOTEBOOKS.glob("*.ipynb")} == EXPECTED


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.name)
def test_a_notebook_is_stored_without_outputs_and_has_plain_parameters(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    index = parameters_cell(nb)
    assert [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])] == [index]
    values = assigned(nb.cells[index].source)
    assert {"PATIENTS", "IMAGE_SIZE", "EPOCHS", "BOOTSTRAP", "OUT"} <= set(values)
    assert Path(values["OUT"]).parts[0] == "notebook-output"  # ignored by git


def test_quickstart_trains_reports_and_predicts_a_folder_with_broken_files(kernel_specs, tmp_path):
    out = tmp_path / "quickstart"
    _, printed, values = run_notebook("01_quickstart.ipynb", kernel_specs, small(out), {
        "predicted": "summary.predicted", "failed": "summary.failed", "rows": "len(predictions)",
        "correct": "correct"})
    run = out / "run"
    assert "Calibration" in (run / "report.html").read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["kind"] == "training run" and metrics["test"]["n"] > 0
    # one row per new scan, every broken file listed with its reason, probabilities that sum to 1
    new_scans = read_csv(out / "new-scans" / "manifest.csv")
    rows = read_csv(out / "predictions.csv")
    assert sorted(row["path"] for row in rows) == sorted(row["path"].removeprefix("images/") for row in new_scans)
    assert values["predicted"] == values["rows"] == len(rows) == len(new_scans)
    errors = read_csv(out / "predictions.errors.csv")
    assert sorted(row["path"] for row in errors) == sorted(["broken/empty.dcm", "broken/notes.txt",
                                                           "broken/random.dcm", "broken/truncated.dcm"])
    assert values["failed"] == 4 and all(row["reason"] for row in errors)
    for row in rows:
        assert math.isclose(float(row["p_normal"]) + float(row["p_opacity"]), 1.0, abs_tol=2e-6)
        assert row["predicted"] in ("normal", "opacity")
    truth = {row["path"].removeprefix("images/"): row["label"] for row in new_scans}
    assert values["correct"] == sum(truth[row["path"]] == row["predicted"] for row in rows)
    assert f"{values['correct']} of {len(rows)} predicted labels are right" in printed
    assert str((run / "report.html").resolve()) in printed


def test_domain_shift_compares_four_methods_on_the_same_site_b_patients(kernel_specs, tmp_path):
    out = tmp_path / "domain-shift"
    _, printed, values = run_notebook("02_domain_shift.ipynb", kernel_specs, small(out), {
        "methods": "list(results)", "site_b": "{k: v['site B']['auroc'] for k, v in results.items()}"})
    assert values["methods"] == METHODS
    test_rows = read_csv(out / "cohort" / "manifest-site-b-test.csv")
    for method, folder, strategy, adaptation in [("no adaptation", "no-adaptation", "partial", "none"),
                                                 ("AdaBN", "adabn", "partial", "adabn"),
                                                 ("adapters", "adapters", "adapters", "none"),
                                                 ("DANN", "dann", "partial", "dann")]:
        run = out / "runs" / folder
        recipe = json.loads((run / "model.json").read_text(encoding="utf-8"))
        assert (recipe["strategy"], recipe["adaptation"]) == (strategy, adaptation)
        assert all("site-a" in row["path"] for row in read_csv(run / "splits.csv"))
        external = json.loads((run / "evaluations" / "site-b" / "metrics.json").read_text(encoding="utf-8"))
        assert external["kind"] == "external validation" and external["test"]["n"] == len(test_rows)
        assert (run / "evaluations" / "site-b" / "report.html").is_file()
        # the table prints what the site-B report holds
        auroc = external["test"]["auroc"]
        assert values["site_b"][method] == auroc
        shown = "n/a" if auroc is None else f"{auroc:.3f}"
        assert any(line.startswith(method) and line.split()[len(method.split())] == shown
                   for line in printed.splitlines())
    config = (out / "runs" / "dann" / "config.yaml").read_text(encoding="utf-8")
    assert "manifest-site-b-unlabelled.csv" in config


def test_reading_the_report_shows_the_sections_from_metrics_json(kernel_specs, tmp_path):
    out = tmp_path / "report"
    nb, printed, values = run_notebook("03_reading_the_report.ipynb", kernel_specs, small(out, bootstrap=200), {
        "figures": "sorted(figures)"})
    metrics = json.loads((out / "run" / "metrics.json").read_text(encoding="utf-8"))
    calibration = metrics["calibration"]
    assert f"T = {calibration['temperature']:.3f}, fitted on the val split ({calibration['n']} images)" in printed
    assert f"{'test':<6} {metrics['test']['ece_uncalibrated']:>10.3f} {metrics['test']['ece']:>6.3f}" in printed
    assert metrics["overfitting"]["sentence"] in printed
    for attribute, groups in metrics["test"]["subgroups"].items():
        assert all(f"{attribute} = {group}" in printed for group in groups)
    assert f"{metrics['bias']['comparisons']} comparison(s)" in printed
    assert all(flag["sentence"] in printed for flag in metrics["bias"]["flags"])
    # the report's own figures are displayed: reliability diagrams, learning curves, forest plot
    shown = {"Reliability diagrams", "Learning curves", "Subgroup forest plot"} & set(values["figures"])
    assert {"Reliability diagrams", "Learning curves"} <= shown
    images = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "display_data" and "image/png" in output.data]
    assert len(images) == len(shown)
