"""Export a finished run as one self-contained TorchScript or ONNX file (``medxfer export``).

Outside medxfer (a PACS plug-in, a C++ or ONNX Runtime service) nobody should have to rebuild the
network from ``model.json``, re-implement the calibration or guess the preprocessing. The exported
graph is the run's network (or, for a cross-fitted run, its K fold networks with their logits
averaged, all in the one file) followed by the calibration in ``calibration.json`` and a softmax:

- input ``image``: float32 (N, C, S, S), the network input exactly as medxfer prepares it (the
  scan decoded to [0, 1], resized to fit, given C channels and normalised with the run's mean and
  std: ``XrayPipeline(spec, "none")``); C and S are the run's ``in_channels`` and ``image_size``;
- output ``probabilities``: float32 (N, K), the calibrated class probabilities (each row sums to
  1), in the order of the run's classes; the same numbers ``Evaluator.predict_proba`` gives;
- N, the batch dimension, is dynamic: any batch size from 1 up works.

Temperature scaling is applied as logits * (1 / T), vector scaling as logits * scale + bias, and
no calibration as the plain softmax. The operating threshold is not part of the graph: it is in the
sidecar ``<FILE>.json``, with the classes, the input specification, the calibration, the SHA-256
of the run's weights and the parity result.

Before anything is written the exported file is loaded back (``torch.jit.load``, or an ONNX
Runtime session) and run beside the PyTorch module on a random batch and on a batch of another
size; the export is refused, and nothing is left behind, when the largest difference in a
probability exceeds the format's tolerance. Both files are written atomically.

TorchScript needs nothing beyond PyTorch (PyTorch 2.14 marks ``torch.jit`` as deprecated; it still
traces, saves and loads). ONNX uses PyTorch's ``torch.export``-based exporter, which needs
``onnx`` and ``onnxscript``, and the parity check needs ``onnxruntime``: the optional extra
``medxfer[onnx]`` installs the three.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medxfer import __version__
from medxfer.files import atomic_write_bytes, atomic_write_text
from medxfer.pipeline.calibration.calibrators import CALIBRATION_METHODS
from medxfer.pipeline.runs.files import CALIBRATION_FILE, REQUIRED_FILES
from medxfer.pipeline.runs.trained_run import CalibratedClassifier, TrainedRun, check_run
from medxfer.transforms.preparation import InputSpec

EXPORT_FORMATS = ("torchscript", "onnx")
# Largest tolerated |exported - PyTorch| of a calibrated probability. TorchScript runs PyTorch's
# own kernels (differences are rounding only); ONNX Runtime has its own, which order sums differently.
TOLERANCES = {"torchscript": 1e-5, "onnx": 1e-4}
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
SIDECAR_FORMAT = 1


class ExportError(ValueError):
    """An export that cannot be made or did not match PyTorch. A ValueError, so that the command
    line reports it as a clear error about the input (exit 1)."""


@dataclass(frozen=True)
class ExportResult:
    """A written export: ``path`` (the model file; its sidecar is ``path`` + ".json"), ``format``
    (one of ``EXPORT_FORMATS``), ``max_abs_difference`` (the largest |exported - PyTorch| over
    the parity batches, on the calibrated probabilities) and the ``tolerance`` it passed."""

    path: Path
    format: str
    max_abs_difference: float
    tolerance: float


def sidecar_path(path: str | Path) -> Path:
    """The sidecar JSON of an exported file: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_run(run_dir: str | Path, fmt: str, out: str | Path, *, batch: int = 4, seed: int = 0) -> ExportResult:
    """Export the finished run ``run_dir`` as ``fmt`` (``"torchscript"`` or ``"onnx"``) to ``out``
    and write the sidecar ``<out>.json``; returns what was written and the parity result.

    The parity check runs the PyTorch module and the exported file, loaded back, on ``batch``
    random inputs and on ``batch`` + 3 more (another batch size), drawn with ``seed`` as uniform
    [0, 1] pixels normalised with the run's mean and std. Raises ``ExportError`` (nothing written)
    for an unknown format, missing ONNX packages, a calibration that cannot be exported, an
    exporter failure or a difference above ``TOLERANCES[fmt]``; ``RunNotFoundError`` for a
    folder that is not a finished run.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"the parity batch must hold at least one image, got {batch!r}")
    run_dir, out = Path(run_dir), Path(out)
    check_run(run_dir)
    _check_destination(run_dir, out)
    if fmt == "onnx":
        _require_onnx()
    run = TrainedRun.load(run_dir)
    _check_calibration(run)
    module = run.calibrated_module()
    spec, recipe, state, decode = run.spec, run.recipe, run.calibration_state, run.decode_settings()
    first, second = _parity_batches(spec, batch, seed)
    save, load = (_save_torchscript, _load_torchscript) if fmt == "torchscript" else (_save_onnx, _load_onnx)
    try:
        data = save(module, first)
        exported = load(data)
        difference = _largest_difference(module, exported, (first, second))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{out}: the {fmt} export of {run_dir} failed, nothing written ({reason})") from exc
    tolerance = TOLERANCES[fmt]
    if not difference <= tolerance:  # NaN fails too
        raise ExportError(
            f"{out}: the {fmt} export of {run_dir} does not reproduce PyTorch: its probabilities differ by up to "
            f"{difference:.3g} (tolerance {tolerance:g}) on batches of {batch} and {batch + 3}; nothing written")
    atomic_write_bytes(out, data)
    sidecar = {
        "sidecar_format": SIDECAR_FORMAT,
        "format": fmt,
        "file": out.name,
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "medxfer_version": __version__,
        "torch_version": torch.__version__,
        "model_sha256": recipe["weights_sha256"],
        "backbone": recipe["backbone"],
        "networks": len(run.networks),
        "combined": "mean of the networks' logits, then the calibration" if len(run.networks) > 1 else "one network",
        "classes": list(run.classes),
        "input": {
            "name": INPUT_NAME, "dtype": "float32", "shape": ["N", spec.channels, spec.image_size, spec.image_size],
            "image_size": spec.image_size, "fit": spec.fit, "channels": spec.channels,
            "mean": list(spec.mean), "std": list(spec.std),
            "window": decode.window, "volume_strategy": decode.volume_strategy,
        },
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", len(run.classes)],
                   "meaning": "calibrated class probabilities, one column per class in the order of classes"},
        "dynamic_axes": {"N": "batch size, any from 1 up"},
        "calibration": state["calibration"],
        "positive_class": state["positive_class"],
        "threshold": state["threshold"],
        "parity": {"max_abs_difference": difference, "tolerance": tolerance, "batch_sizes": [batch, batch + 3],
                   "seed": seed},
    }
    atomic_write_text(sidecar_path(out), json.dumps(sidecar, indent=2, allow_nan=False) + "\n")
    return ExportResult(path=out, format=fmt, max_abs_difference=difference, tolerance=tolerance)


def _check_destination(run_dir: Path, out: Path) -> None:
    """Refuse an ``out`` that is a folder, or that (or its sidecar) would replace a file the run needs."""
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give the path of the file to write, e.g. {out / 'model.pt'}")
    needed = {(run_dir / name).resolve() for name in REQUIRED_FILES}  # an export never replaces these
    for path in (out, sidecar_path(out)):
        if path.resolve() in needed:
            raise ExportError(f"{path}: is a file of the run {run_dir} itself; write the export elsewhere")


def _require_onnx() -> None:
    """Raise ``ExportError`` naming the ONNX packages that are not installed."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          "not installed: pip install 'medxfer[onnx]'")


def _check_calibration(run: TrainedRun) -> None:
    """Refuse a run whose calibration the exported graph cannot hold (a multi-label model's, or a
    method other than ``CALIBRATION_METHODS``)."""
    method = run.calibration_state["calibration"]["method"]
    if run.multi_label or method not in CALIBRATION_METHODS:
        raise ExportError(f"{run.file(CALIBRATION_FILE)}: calibration {method!r} of a "
                          f"{'multi-label ' if run.multi_label else ''}model; export handles softmax classifiers "
                          f"with {', '.join(CALIBRATION_METHODS)}")


def _parity_batches(spec: InputSpec, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 batches of network inputs, (``batch``, C, S, S) and (``batch`` + 3, C, S, S):
    uniform [0, 1] pixels normalised with ``spec``'s mean and std, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    return tuple(
        (torch.rand((n, spec.channels, spec.image_size, spec.image_size), generator=generator) - mean) / std
        for n in (batch, batch + 3)
    )


# Exporters and loaders. A saver turns the module (and an example batch) into the file's bytes; a
# loader turns those bytes back into a function from a batch (N, C, S, S) to probabilities (N, K).
Predictor = Callable[[torch.Tensor], np.ndarray]


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Hide PyTorch's notice that ``torch.jit`` is deprecated (nothing a user of ``medxfer export``
    can act on); other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def _save_torchscript(module: CalibratedClassifier, example: torch.Tensor) -> bytes:
    """The module traced on ``example`` and saved as TorchScript. Tracing records the operations
    of one eval-mode pass; the parity check on another batch size shows the batch stayed dynamic."""
    buffer = io.BytesIO()
    with _quiet_jit(), torch.no_grad():
        torch.jit.save(torch.jit.trace(module, (example,), check_trace=False), buffer)
    return buffer.getvalue()


def _load_torchscript(data: bytes) -> Predictor:
    with _quiet_jit():
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def predict(batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(batch).numpy()

    return predict


def _save_onnx(module: CalibratedClassifier, example: torch.Tensor) -> bytes:
    """The module exported by ``torch.export`` to ONNX (the opset PyTorch recommends), weights
    inside the file, the batch dimension dynamic."""
    program = torch.onnx.export(
        module, (example,), dynamo=True, verbose=False, external_data=False,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("N", min=1)}},  # forward's argument
    )
    return program.model_proto.SerializeToString()


def _load_onnx(data: bytes) -> Predictor:
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])

    def predict(batch: torch.Tensor) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]

    return predict


def _largest_difference(module: nn.Module, exported: Predictor, batches: tuple[torch.Tensor, ...]) -> float:
    """The largest |exported - PyTorch| over ``batches``. Raises ValueError when the exported file
    gives another shape or a value that is not finite."""
    largest = 0.0
    for batch in batches:
        with torch.no_grad():
            expected = module(batch).numpy()
        got = np.asarray(exported(batch))
        if got.shape != expected.shape:
            raise ValueError(f"it gives probabilities of shape {got.shape} for a batch of {len(batch)}, "
                             f"PyTorch {expected.shape}")
        if not np.isfinite(got).all():
            raise ValueError(f"it gives probabilities that are not finite for a batch of {len(batch)}")
        largest = max(largest, float(np.abs(got.astype(np.float64) - expected).max()))
    return largest
