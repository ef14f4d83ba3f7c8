"""`medxfer export`: a finished run as one TorchScript or ONNX file that reproduces its calibrated
probabilities, checked against PyTorch before it is written."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medxfer.pipeline.cli.main import main
from medxfer.pipeline.decoding.scans import DecodeSettings, decode_scan
from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.inference import export as export_module
from medxfer.pipeline.inference.export import (
    ExportError,
    export_run,
    sidecar_path,
)
from medxfer.pipeline.runs.saving import load_model
from medxfer.pipeline.runs.trained_run import CalibratedClassifier, RunNotFoundError
from medxfer.transforms.pipeline import XrayPipeline

# PyTorch 2.14 marks torch.jit as deprecated; the tests load TorchScript files on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def quiet(_: str) -> None:
    pass




@pytest.fixture(scope="module")
def torchscript(run) -> export_module.ExportResult:
    """The run exported as TorchScript into a folder of the run itself (allowed)."""
    return export_run(run, "torchscript", run / "exports" / "model.pt")


def evaluator_of(run: Path) -> Evaluator:
    return Evaluator.from_dict(json.loads((run / "calibration.json").read_text()))


def pytorch_module(run: Path) -> CalibratedClassifier:
    model, _, _ = load_model(run)
    return CalibratedClassifier.from_evaluator(model, evaluator_of(run))


def prepared_scans(run: Path, cohort, n: int = 6) -> torch.Tensor:
    """The first ``n`` scans of the cohort as medxfer prepares them for this run's network."""
    _, spec, recipe = load_model(run)
    settings = DecodeSettings(spec, recipe["window"], recipe["volume_strategy"])
    with open(cohort.manifest, newline="", encoding="utf-8") as handle:
        paths = [cohort.root / row["path"] for row in csv.DictReader(handle)][:n]
    plain = XrayPipeline(spec, "none")
    return torch.stack([plain(decode_scan(path, settings)) for path in paths])


def expected_probabilities(run: Path, images: torch.Tensor) -> np.ndarray:
    """What medxfer itself reports: the network's logits through the run's calibration."""
    model, _, _ = load_model(run)
    with torch.no_grad():
        logits = model(images).numpy()
    return evaluator_of(run).predict_proba(logits)


def test_torchscript_export_gives_the_runs_calibrated_probabilities_on_real_scans(run, cohort, torchscript):
    assert torchscript.format == "torchscript" and torchscript.tolerance == 1e-5
    assert torchscript.max_abs_difference < 1e-5
    calibration = json.loads((run / "calibration.json").read_text())["calibration"]
    assert calibration["method"] == "temperature" and abs(calibration["temperature"] - 1) > 0.05  # not a no-op
    loaded = torch.jit.load(str(torchscript.path))
    images = prepared_scans(run, cohort)
    with torch.no_grad():
        probabilities = loaded(images).numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(images), 2)
    np.testing.assert_allclose(probabilities, expected_probabilities(run, images), atol=1e-5)


def test_the_torchscript_file_takes_any_batch_size(run, torchscript):
    loaded = torch.jit.load(str(torchscript.path))
    reference = pytorch_module(run)
    generator = torch.Generator().manual_seed(3)
    for n in (1, 7):
        images = torch.randn((n, 3, 32, 32), generator=generator)
        with torch.no_grad():
            np.testing.assert_allclose(loaded(images).numpy(), reference(images).numpy(), atol=1e-5)


def test_the_sidecar_records_classes_input_calibration_threshold_and_weights_hash(run, torchscript):
    sidecar = json.loads(sidecar_path(torchscript.path).read_text())
    recipe = json.loads((run / "model.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    assert sidecar_path(torchscript.path).name == "model.pt.json"
    assert sidecar["format"] == "torchscript" and sidecar["file"] == "model.pt"
    assert sidecar["file_sha256"] == hashlib.sha256(torchscript.path.read_bytes()).hexdigest()
    assert sidecar["model_sha256"] == recipe["weights_sha256"]
    assert sidecar["classes"] == recipe["classes"] == ["normal", "opacity"]
    spec = sidecar["input"]
    assert (spec["name"], spec["shape"], spec["dtype"]) == ("image", ["N", 3, 32, 32], "float32")
    assert (spec["image_size"], spec["fit"], spec["channels"]) == (32, recipe["fit"], recipe["in_channels"])
    assert (spec["mean"], spec["std"]) == (recipe["mean"], recipe["std"])
    assert (sidecar["output"]["name"], sidecar["output"]["shape"]) == ("probabilities", ["N", 2])
    assert sidecar["calibration"] == calibration["calibration"]
    assert sidecar["threshold"] == calibration["threshold"]
    assert sidecar["positive_class"] == calibration["positive_class"] == "opacity"
    assert sidecar["parity"]["max_abs_difference"] == torchscript.max_abs_difference
    assert sidecar["parity"]["tolerance"] == 1e-5 and sidecar["parity"]["batch_sizes"] == [4, 7]


def test_an_export_that_differs_from_pytorch_is_refused_and_leaves_no_file(run, tmp_path, monkeypatch):
    def slightly_warmer(*args, **kwargs) -> nn.Module:
        module = pytorch_module(run)
        module.scale *= 1.02  # 2 % off the fitted temperature
        return module

    monkeypatch.setattr(torch.jit, "load", slightly_warmer)
    out = tmp_path / "exports" / "model.pt"
    with pytest.raises(ExportError, match=r"does not reproduce PyTorch.*tolerance 1e-05.*nothing written") as info:
        export_run(run, "torchscript", out)
    assert str(out) in str(info.value)
    assert list(tmp_path.rglob("*")) == []  # no export, sidecar, temporary file or folder


def test_an_exporter_failure_names_the_file_and_writes_nothing(run, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tracing went wrong")

    monkeypatch.setattr(torch.jit, "trace", broken)
    out = tmp_path / "model.pt"
    with pytest.raises(ExportError, match="tracing went wrong") as info:
        export_run(run, "torchscript", out)
    assert str(out) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_lists_the_formats(run, tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'tflite': use one of torchscript, onnx"):
        export_run(run, "tflite", tmp_path / "model.tflite")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_or_unfinished_run_is_refused(run, tmp_path):
    with pytest.raises(RunNotFoundError, match="no such run folder"):
        export_run(tmp_path / "nowhere", "torchscript", tmp_path / "model.pt")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("model.safetensors", "model.json", "config.yaml", "calibration.json"):  # no metrics.json
        shutil.copy(run / name, unfinished / name)
    with pytest.raises(RunNotFoundError, match=r"not a finished medxfer training run \(missing metrics.json\)"):
        export_run(unfinished, "torchscript", tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("name", ["model.safetensors", "model"])  # "model" would put its sidecar over model.json
def test_an_export_may_not_replace_a_file_of_the_run(run, name):
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    with pytest.raises(ExportError, match="is a file of the run"):
        export_run(run, "torchscript", run / name)
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_onnx_without_its_packages_says_how_to_install_them(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ExportError, match=r"needs onnxruntime, which is not installed: pip install 'medxfer\[onnx\]'"):
        export_run(run, "onnx", tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_gives_the_runs_calibrated_probabilities_at_any_batch_size(run, cohort, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    result = export_run(run, "onnx", tmp_path / "model.onnx")
    assert result.format == "onnx" and result.tolerance == 1e-4 and result.max_abs_difference < 1e-4
    assert json.loads(sidecar_path(result.path).read_text())["format"] == "onnx"
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert graph_input.name == "image" and graph_input.shape[1:] == [3, 32, 32]
    assert graph_output.name == "probabilities" and graph_output.shape[1:] == [2]
    assert isinstance(graph_input.shape[0], str)  # a named, dynamic batch dimension
    images = prepared_scans(run, cohort, n=7)
    expected = expected_probabilities(run, images)
    for n in (1, 7):
        (probabilities,) = session.run(["probabilities"], {"image": images[:n].numpy()})
        np.testing.assert_allclose(probabilities, expected[:n], atol=1e-4)


def test_the_export_command_writes_the_file_and_its_sidecar(run, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file() and sidecar_path(out).is_file() and "wrote" in capsys.readouterr().out
