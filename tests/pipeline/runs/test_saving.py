"""Saving and loading classifiers: safetensors + JSON recipe, identical outputs after reload."""

from __future__ import annotations

import json

import pytest
import torch

from medxfer.pipeline.models.adaptation import add_adapters
from medxfer.pipeline.models.classifier import build_classifier
from medxfer.pipeline.models.finetune import apply_strategy
from medxfer.pipeline.runs.files import RECIPE_FILE, WEIGHTS_FILE
from medxfer.pipeline.runs.saving import load_model, read_recipe, save_model
from medxfer.transforms.preparation import InputSpec


def trained_a_little(model: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter and BatchNorm statistic away from its initial value."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.mul_(1 + 0.1 * torch.rand_like(tensor))  # stays positive
            elif tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn_like(tensor))
    return model.eval()


@pytest.mark.parametrize(
    "backbone,in_channels,adapters,multi_label",
    [("efficientnet_lite0", 3, False, False), ("efficientnet_lite0", 1, True, True), ("resnet18", 1, False, False)],
)
def test_a_saved_model_reloads_to_identical_outputs(tmp_path, backbone, in_channels, adapters, multi_label):
    weights = "imagenet" if backbone == "efficientnet_lite0" else "random"
    model = build_classifier(backbone, 3, weights=weights, in_channels=in_channels, multi_label=multi_label)
    if adapters:
        add_adapters(model, reduction=8)
    trained_a_little(model)
    spec = model.input_spec(96)
    save_model(model, tmp_path, classes=["a", "b", "c"], spec=spec, strategy="adapters" if adapters else "full")
    loaded, loaded_spec, recipe = load_model(tmp_path)
    assert loaded_spec == spec and recipe["classes"] == ["a", "b", "c"] and loaded.multi_label == multi_label
    x = torch.randn(2, in_channels, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training


def test_recipe_records_how_the_model_was_built_and_trained(tmp_path):
    model = apply_strategy(build_classifier("efficientnet_lite0", 2), "linear")
    save_model(model, tmp_path, classes=["normal", "opacity"], spec=model.input_spec(), strategy="linear",
               adaptation="adabn", extra={"seed": 3})
    recipe = json.loads((tmp_path / RECIPE_FILE).read_text())
    assert recipe["backbone"] == "efficientnet_lite0" and recipe["strategy"] == "linear"
    assert recipe["adaptation"] == "adabn" and recipe["seed"] == 3
    assert recipe["image_size"] == 224 and recipe["mean"] == [0.5, 0.5, 0.5] and recipe["fit"] == "letterbox"
    assert (tmp_path / WEIGHTS_FILE).read_bytes()[:8] != b"PK\x03\x04"  # safetensors, not a pickle zip
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECIPE_FILE, WEIGHTS_FILE]


def test_swapped_weights_file_is_detected(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    for folder in (first, second):
        model = trained_a_little(build_classifier("resnet18", 2, weights="random"))
        save_model(model, folder, classes=["a", "b"], spec=model.input_spec(), strategy="full")
    (first / WEIGHTS_FILE).write_bytes((second / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        load_model(first)


def test_missing_or_broken_recipe_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is .* a medxfer model or run folder"):
        load_model(tmp_path)
    (tmp_path / RECIPE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_recipe(tmp_path)
    (tmp_path / RECIPE_FILE).write_text(json.dumps({"format": 1, "backbone": "resnet18"}))
    with pytest.raises(ValueError, match="missing classes"):
        read_recipe(tmp_path)


def test_class_names_must_match_the_head(tmp_path):
    model = build_classifier("resnet18", 2, weights="random")
    with pytest.raises(ValueError, match="3 class names for a head with 2 outputs"):
        save_model(model, tmp_path, classes=["a", "b", "c"], spec=model.input_spec(), strategy="full")


def test_a_loaded_model_reports_the_input_it_was_trained_on(tmp_path):
    model = build_classifier("resnet18", 2, weights="random")
    spec = model.input_spec(96, fit="crop")
    save_model(model, tmp_path, classes=["a", "b"], spec=spec, strategy="full")
    loaded, loaded_spec, _ = load_model(tmp_path)
    assert loaded.input_spec() == loaded_spec == spec


def test_a_spec_with_other_normalisation_is_refused(tmp_path):
    model = build_classifier("resnet18", 2, weights="random")
    other = InputSpec(image_size=96, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="the network expects"):
        save_model(model, tmp_path, classes=["a", "b"], spec=other, strategy="full")


def test_a_recipe_that_does_not_fit_its_weights_names_the_file(tmp_path):
    model = build_classifier("resnet18", 2, weights="random")
    save_model(model, tmp_path, classes=["a", "b"], spec=model.input_spec(), strategy="full")
    recipe = json.loads((tmp_path / RECIPE_FILE).read_text())
    for change in ({"classes": ["a", "b", "c"]}, {"backbone": "resnet34"}):
        (tmp_path / RECIPE_FILE).write_text(json.dumps({**recipe, **change}))
        with pytest.raises(ValueError, match="model.json does not describe the network"):
            load_model(tmp_path)
    (tmp_path / RECIPE_FILE).write_text(json.dumps({**recipe, "format": 2}))
    with pytest.raises(ValueError, match="upgrade medxfer"):
        load_model(tmp_path)


def test_extra_facts_cannot_replace_the_recipe(tmp_path):
    """An extra entry named like a recipe field would change how the model is rebuilt."""
    model = build_classifier("resnet18", 2, weights="random")
    with pytest.raises(ValueError, match="may not replace the recipe's own entries: fit, image_size"):
        save_model(model, tmp_path, classes=["a", "b"], spec=model.input_spec(224), strategy="full",
                   extra={"image_size": 512, "fit": "squash"})
    assert not (tmp_path / RECIPE_FILE).exists()


def test_an_ensemble_is_saved_in_one_file_and_each_member_reloads_to_its_own_outputs(tmp_path):
    from medxfer.pipeline.runs.saving import load_networks

    members = [trained_a_little(build_classifier("efficientnet_lite0", 2)) for _ in range(3)]
    spec = members[0].input_spec(64)
    save_model(members, tmp_path, classes=["normal", "opacity"], spec=spec, strategy="partial")
    recipe = read_recipe(tmp_path)
    assert recipe["members"] == 3 and sorted(p.name for p in tmp_path.iterdir()) == [RECIPE_FILE, WEIGHTS_FILE]
    networks, loaded_spec, _ = load_networks(tmp_path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert loaded_spec == spec and len(networks) == 3
        assert all(torch.equal(n(x), m(x)) for n, m in zip(networks, members, strict=True))
        assert not torch.equal(networks[0](x), networks[1](x))
    with pytest.raises(ValueError, match="an ensemble of 3 networks; read it with load_networks"):
        load_model(tmp_path)


def test_a_single_network_recipe_records_one_member(tmp_path):
    model = build_classifier("efficientnet_lite0", 2)
    save_model(model, tmp_path, classes=["normal", "opacity"], spec=model.input_spec(64), strategy="partial")
    assert read_recipe(tmp_path)["members"] == 1 and load_model(tmp_path)[0] is not None
