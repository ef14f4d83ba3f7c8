"""A run directory read as one object, with every consistency check in one place."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from medxfer.pipeline.calibration.calibrators import make_calibrator
from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.runs.files import REQUIRED_FILES
from medxfer.pipeline.runs.saving import load_model
from medxfer.pipeline.runs.trained_run import CalibratedClassifier, RunNotFoundError, TrainedRun


@pytest.fixture
def copied(run, tmp_path):
    """A copy of the shared run that a test may damage."""
    return shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("exports", "evaluations"))


def test_a_run_gives_its_network_input_classes_decision_rule_and_files(run):
    loaded = TrainedRun.load(run)
    recipe = json.loads((run / "model.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    assert loaded.classes == tuple(recipe["classes"]) == ("normal", "opacity")
    assert len(loaded.networks) == 1 and not loaded.networks[0].training
    assert loaded.spec.image_size == recipe["image_size"] == 32
    assert loaded.decision.threshold_ == calibration["threshold"]["value"]
    assert loaded.calibration_state == calibration
    assert loaded.weights_sha256 == recipe["weights_sha256"]
    assert loaded.metrics == json.loads((run / "metrics.json").read_text())
    assert loaded.config.image_size == 32 and loaded.config.epochs == 2
    history = loaded.history()
    assert [row["epoch"] for row in history] == [1, 2]
    settings = loaded.decode_settings(1000)
    assert (settings.window, settings.volume_strategy, settings.max_pixels) == (
        recipe["window"], recipe["volume_strategy"], 1000)


def test_the_runs_probabilities_are_its_networks_logits_through_its_calibration(run):
    loaded = TrainedRun.load(run)
    images = torch.randn((5, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    network, _, _ = load_model(run)
    with torch.no_grad():
        expected = Evaluator.from_dict(json.loads((run / "calibration.json").read_text())).predict_proba(
            network(images).numpy())
        logits = loaded.logits(images).numpy()
        module = loaded.calibrated_module()(images).numpy()
    np.testing.assert_allclose(loaded.probabilities(logits), expected, atol=1e-9)
    np.testing.assert_allclose(module, expected, atol=1e-5)


def test_an_ensemble_averages_its_members_logits(run):
    loaded = TrainedRun.load(run)
    other, _, _ = load_model(run)
    with torch.no_grad():
        for parameter in other.head.parameters():
            parameter.mul_(-2.0)  # a member that disagrees
        ensemble = replace(loaded, networks=(loaded.networks[0], other))
        images = torch.randn((4, 3, 32, 32), generator=torch.Generator().manual_seed(1))
        mean = (loaded.networks[0](images) + other(images)) / 2
        np.testing.assert_allclose(ensemble.logits(images).numpy(), mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(ensemble.calibrated_module()(images).numpy(),
                                   torch.softmax(mean / loaded.decision.calibrator_.temperature_, 1).numpy(),
                                   atol=1e-5)


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_a_run_missing_a_file_is_refused_naming_it(copied, missing):
    (copied / missing).unlink()
    with pytest.raises(RunNotFoundError, match=rf"not a finished medxfer training run \(missing {missing}\)"):
        TrainedRun.load(copied)


def test_a_calibration_for_other_classes_is_refused(copied):
    state = json.loads((copied / "calibration.json").read_text())
    (copied / "calibration.json").write_text(json.dumps({**state, "classes": ["normal", "effusion"],
                                                         "positive_class": "effusion"}))
    with pytest.raises(RunNotFoundError, match="calibration.json and model.json name different classes"):
        TrainedRun.load(copied)


def test_weights_that_are_not_the_recipes_are_refused(copied):
    weights = bytearray((copied / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copied / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        TrainedRun.load(copied)


def test_a_recipe_without_decoding_settings_falls_back_to_the_runs_configuration(copied):
    recipe = json.loads((copied / "model.json").read_text())
    del recipe["window"], recipe["volume_strategy"]
    (copied / "model.json").write_text(json.dumps(recipe))
    config = (copied / "config.yaml").read_text()
    assert "window: default\n" in config
    (copied / "config.yaml").write_text(config.replace("window: default\n", "window: minmax\n"))
    settings = TrainedRun.load(copied).decode_settings()
    assert (settings.window, settings.volume_strategy) == ("minmax", "middle")


@pytest.mark.parametrize("method", ["temperature", "vector", "none"])
def test_the_calibrated_module_applies_each_calibration_as_the_evaluator_does(method):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (200, 3))
    labels = (logits + rng.normal(0, 3, logits.shape)).argmax(1)  # a noisy link: the fit is not the identity
    evaluator = Evaluator(["a", "b", "c"])
    evaluator.calibrator_ = make_calibrator(method).fit(logits, labels)
    module = CalibratedClassifier.from_evaluator(nn.Identity(), evaluator)  # the "network" passes logits on
    with torch.no_grad():
        probabilities = module(torch.tensor(logits, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(probabilities, evaluator.predict_proba(logits), atol=1e-6)
