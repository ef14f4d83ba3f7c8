"""A finished training run as one object: everything ``evaluate``, ``predict``, ``export`` and the
demo need from a run directory, read and checked in one place.

``TrainedRun.load(directory)`` refuses a folder that is not a finished run (naming what is
missing), checks that the files belong together (the weights are the ones ``model.json`` was
written with, ``calibration.json`` and ``model.json`` name the same classes, ``config.yaml``
parses) and gives:

- ``networks``: the trained network(s), in eval mode: one for a holdout run, the K fold networks
  of a cross-fitted run (an ensemble); ``logits`` is the one place that combines them (the mean of
  the members' logits, which the calibration was fitted for). Members whose first stages hold the
  same weights (the frozen prefix of ``linear`` and ``partial``, never trained) share one pass
  through them;
- ``spec`` and ``decode_settings``: the input the networks take and how a scan is decoded for them
  (window, volume strategy), the same for every command;
- ``decision``: the calibration and the operating threshold fitted on the run's validation split,
  or on the out-of-fold logits of a cross-fitted run (an ``Evaluator``); ``probabilities`` applies the calibration to logits;
- ``classes``, ``recipe`` (``model.json``), ``config``, ``metrics`` (``metrics.json``),
  ``history`` (``history.csv``) and the SHA-256 of the files a prediction depends on. The
  configuration and the metrics are parsed when first used (``predict`` and ``export`` need
  neither when the recipe records the decoding settings), so a run stays usable for prediction
  even if a later medxfer tightens a configuration rule;
- ``file(name)``: the path of any other artefact stored with the run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medxfer.csvfiles import read_csv
from medxfer.pipeline.calibration.calibrators import TemperatureScaling, VectorScaling
from medxfer.pipeline.decoding.scans import DecodeSettings
from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.evaluation.schema import Metrics
from medxfer.pipeline.models.classifier import XrayClassifier
from medxfer.pipeline.models.prefix import split_backbone
from medxfer.pipeline.runs.config import TrainConfig, load_config
from medxfer.pipeline.runs.files import (
    CALIBRATION_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    REQUIRED_FILES,
)
from medxfer.pipeline.runs.saving import load_networks
from medxfer.transforms.preparation import InputSpec


class RunNotFoundError(ValueError):
    """A folder that is not a finished medxfer training run, or whose files do not belong together."""


def read_json(path: Path) -> dict[str, Any]:
    """A run's JSON file; one that cannot be read or parsed is a ``RunNotFoundError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunNotFoundError(f"{path}: cannot be read ({exc})") from None


def check_run(directory: Path) -> None:
    """Refuse a folder that is not a finished training run, saying what is missing."""
    if not directory.is_dir():
        raise RunNotFoundError(f"{directory}: no such run folder")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise RunNotFoundError(f"{directory}: not a finished medxfer training run (missing {', '.join(missing)}); "
                               "train one with medxfer train, or let an interrupted run finish with --resume")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class TrainedRun:
    """A finished run, loaded and checked (see the module docstring); build it with ``load``."""

    directory: Path
    networks: tuple[XrayClassifier, ...]
    spec: InputSpec
    recipe: dict[str, Any]
    classes: tuple[str, ...]
    decision: Evaluator
    calibration_state: dict[str, Any]  # calibration.json as read
    calibration_sha256: str
    config_sha256: str

    @classmethod
    def load(cls, directory: str | Path) -> TrainedRun:
        """Read the run in ``directory``. Raises ``RunNotFoundError`` for a folder that is not a
        finished run or files that do not belong together, ``ValueError`` for a network that
        ``model.json`` does not describe."""
        directory = Path(directory)
        check_run(directory)
        calibration_path = directory / CALIBRATION_FILE
        calibration_state = read_json(calibration_path)
        try:
            decision = Evaluator.from_dict(calibration_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise RunNotFoundError(f"{calibration_path}: {exc}") from None
        networks, spec, recipe = load_networks(directory)
        classes = tuple(recipe["classes"])
        if classes != tuple(decision.classes):
            raise RunNotFoundError(f"{directory}: {CALIBRATION_FILE} and {RECIPE_FILE} name different classes")
        return cls(directory=directory, networks=networks, spec=spec, recipe=recipe, classes=classes,
                   decision=decision, calibration_state=calibration_state,
                   calibration_sha256=_sha256(calibration_path), config_sha256=_sha256(directory / CONFIG_FILE))

    @cached_property
    def config(self) -> TrainConfig:
        """The run's resolved training configuration (``config.yaml``); a ``ConfigError`` when it
        does not parse."""
        return load_config(self.file(CONFIG_FILE))

    @cached_property
    def metrics(self) -> Metrics:
        """The run's ``metrics.json``; a ``RunNotFoundError`` when it cannot be read."""
        return read_json(self.file(METRICS_FILE))

    @property
    def weights_sha256(self) -> str:
        """The SHA-256 of the weights, as recorded in ``model.json`` and checked on loading."""
        return self.recipe["weights_sha256"]

    @property
    def multi_label(self) -> bool:
        return bool(self.recipe.get("multi_label"))

    def file(self, name: str) -> Path:
        """The path of the artefact ``name`` (one of ``runs.files``'s names) in the run."""
        return self.directory / name

    def decode_settings(self, max_pixels: int | None = None) -> DecodeSettings:
        """How a scan is decoded for the networks: the window and volume strategy recorded in
        ``model.json`` (the configuration's, for a recipe that does not record them) and the pixel
        budget ``max_pixels`` (None: the default, see ``medxfer.datasets.budget``)."""
        return DecodeSettings(self.spec, self._recorded("window"), self._recorded("volume_strategy"), max_pixels)

    def _recorded(self, key: str) -> Any:
        """``model.json``'s ``key``, or the configuration's for a recipe without it (read only then)."""
        value = self.recipe.get(key)
        return getattr(self.config, key) if value is None else value

    def to(self, device: torch.device) -> TrainedRun:
        """Move the networks to ``device``; returns the run."""
        for network in self.networks:
            network.to(device)
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of network inputs (N, C, S, S) on the networks' device: the one network's,
        or the mean of the members' for an ensemble (the same as ``combined_logits``, with the
        members' shared prefix run once)."""
        return combined_logits(self.networks, images, self.shared_prefix)

    @cached_property
    def shared_prefix(self) -> SharedPrefix | None:
        """The members' shared prefix (``find_shared_prefix``), found when first needed."""
        return find_shared_prefix(self.networks)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, K), each in [0, 1], of logits (N, K)."""
        return self.decision.predict_proba(logits)

    def calibrated_module(self) -> CalibratedClassifier:
        """The networks followed by the calibration and a softmax, as one ``nn.Module`` (what an
        export holds). Raises ``ValueError`` for a calibration that is not a per-class affine map
        of the logits followed by a softmax."""
        if self.multi_label:
            raise ValueError("a multi-label model's sigmoid outputs are not a softmax calibration")
        return CalibratedClassifier.from_evaluator(self.networks, self.decision)

    def history(self) -> list[dict[str, Any]] | None:
        """The rows of ``history.csv`` (epoch and a cross-fitted run's fold as int, every other
        column as float; empty cells left out), or None for a run without one."""
        path = self.file(HISTORY_FILE)
        if not path.is_file():
            return None
        return [{k: (int(v) if k in ("epoch", "fold") else float(v)) for k, v in row.items() if v not in ("", None)}
                for row in read_csv(path)]


SharedPrefix = tuple[nn.Module, tuple[nn.Module, ...]]  # (prefix run once, each member's suffix)


def find_shared_prefix(networks: Sequence[XrayClassifier]) -> SharedPrefix | None:
    """For an ensemble, the longest backbone prefix (``split_backbone``) whose weights and buffers
    are equal in every member, and each member's suffix; None for one network or when the members
    share no stage. Equal weights in eval mode compute equal outputs, so running the prefix once
    changes nothing but the time: K - 1 fewer passes through it."""
    if len(networks) < 2:
        return None
    for stages in range(len(networks[0].info.stages) + 1, 0, -1):
        try:
            halves = [split_backbone(network, stages) for network in networks]
        except ValueError:  # a backbone without a usable stage sequence: no prefix to share
            return None
        first = halves[0][0].state_dict()
        if all(_equal_states(first, prefix.state_dict()) for prefix, _ in halves[1:]):
            return halves[0][0], tuple(suffix for _, suffix in halves)
    return None


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def combined_logits(networks: Sequence[nn.Module], images: torch.Tensor,
                    shared: SharedPrefix | None = None) -> torch.Tensor:
    """The logits (N, K) of a run's networks on ``images`` (N, C, S, S): the one network's own,
    or the mean of an ensemble's members', each run whole or, given their ``shared`` prefix
    (``find_shared_prefix``), from one pass through it."""
    if len(networks) == 1:
        return networks[0](images)
    if shared is None:
        return torch.stack([network(images) for network in networks]).mean(dim=0)
    prefix, suffixes = shared
    features = prefix(images)
    return torch.stack([network.head(suffix(features))
                        for network, suffix in zip(networks, suffixes, strict=True)]).mean(dim=0)


class CalibratedClassifier(nn.Module):
    """Networks and a softmax calibration as one module: image (N, C, S, S) float32 ->
    softmax(logits * scale + bias) (N, K) float32, with ``scale`` and ``bias`` (K,) and the logits
    of ``combined_logits``."""

    def __init__(self, networks: Sequence[nn.Module], scale: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.register_buffer("scale", scale.to(torch.float32))
        self.register_buffer("bias", bias.to(torch.float32))

    @classmethod
    def from_evaluator(cls, networks: nn.Module | Sequence[nn.Module], evaluator: Evaluator) -> CalibratedClassifier:
        """The network(s) with the evaluator's calibration: temperature T gives scale 1 / T and bias
        0, vector scaling its own scale and bias, no calibration scale 1 and bias 0."""
        calibrator = evaluator.calibrator_
        k = int(calibrator.n_classes_)
        scale, bias = torch.ones(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        if isinstance(calibrator, TemperatureScaling):
            scale /= float(calibrator.temperature_)
        elif isinstance(calibrator, VectorScaling):
            scale = torch.as_tensor(calibrator.scale_, dtype=torch.float64)
            bias = torch.as_tensor(calibrator.bias_, dtype=torch.float64)
        members = [networks] if isinstance(networks, nn.Module) else list(networks)
        return cls(members, scale, bias).eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities (N, K) of network inputs (N, C, S, S)."""
        return torch.softmax(combined_logits(self.networks, image) * self.scale + self.bias, dim=1)
