"""Fine-tuning strategies: what trains, what stays exactly as it was, and at which rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medxfer.pipeline.models.backbones import BACKBONES
from medxfer.pipeline.models.classifier import build_classifier
from medxfer.pipeline.models.finetune import (
    NORM_TYPES,
    STRATEGIES,
    apply_strategy,
    layer_groups,
    parameter_groups,
)


class Adapted(nn.Module):
    """A stage followed by a residual 1x1 adapter, standing in for add_adapters."""

    def __init__(self, stage: nn.Module, channels: int) -> None:
        super().__init__()
        self.stage = stage
        self.adapter = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stage(x)
        return y + self.adapter(y)


def classifier(name: str = "efficientnet_lite0", strategy: str | None = None, **kwargs):
    torch.manual_seed(0)
    model = build_classifier(name, 2, weights="random")
    if strategy == "adapters":
        model.backbone.layer4 = Adapted(model.backbone.layer4, 512)
    return apply_strategy(model, strategy, **kwargs) if strategy else model


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def under(model, prefixes: list[str]) -> set[str]:
    """Names of the parameters under the given module paths ("backbone.layer4", "head")."""
    return {name for name, _ in model.named_parameters() if any(name.startswith(p + ".") for p in prefixes)}


def frozen_batchnorms(model) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and not any(p.requires_grad for p in m.parameters())]


@pytest.mark.parametrize(("backbone", "strategy", "kwargs"), [
    ("efficientnet_lite0", "linear", {}),
    ("resnet18", "partial", {"trainable_stages": 1}),
    ("resnet18", "adapters", {}),
])
def test_frozen_parameters_get_no_gradient_and_do_not_change_after_a_step(backbone, strategy, kwargs):
    """A real AdamW step with strong weight decay over every parameter, frozen ones included:
    frozen parameters get no gradient and keep their values, and frozen BatchNorm layers
    their running statistics; the trainable ones get gradients and move."""
    model = classifier(backbone, strategy, **kwargs).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_bn = frozen_batchnorms(model)
    assert frozen_bn or strategy == "adapters"  # adapters train every normalisation layer

    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()

    after = model.state_dict()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            assert not torch.equal(after[name], before[name]), name
        else:
            assert param.grad is None, name
            assert torch.equal(after[name], before[name]), name
    for bn in frozen_bn:
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(after[f"{bn}.{buffer}"], before[f"{bn}.{buffer}"]), f"{bn}.{buffer}"


def test_linear_strategy_keeps_backbone_batchnorm_in_eval_mode():
    model = classifier("efficientnet_lite0").train()
    apply_strategy(model, "linear")  # on a model already in train mode: takes effect at once
    batchnorms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)
    model.eval().train()
    assert model.training and model.head.training
    assert not any(m.training for m in batchnorms)
    assert trainable(model) == under(model, ["head"])


# For every registry network, the module paths that train with the last one and two stages,
# besides the head: the stages themselves, what lies between them (ConvNeXt downsampling,
# DenseNet transitions) and what follows the last one.
EXPECTED_PARTIAL = {
    "efficientnet_lite0": (["blocks.6", "conv_head", "bn2"], ["blocks.5", "blocks.6", "conv_head", "bn2"]),
    "resnet18": (["layer4"], ["layer3", "layer4"]),
    "densenet121": (["features.denseblock4", "features.norm5"],
                    ["features.denseblock3", "features.transition3", "features.denseblock4", "features.norm5"]),
    "efficientnet_b0": (["features.8"], ["features.7", "features.8"]),
    "mobilenet_v3_large": (["features.16", "classifier.0"], ["features.15", "features.16", "classifier.0"]),
    "convnext_tiny": (["features.7", "classifier.0"], ["features.5", "features.6", "features.7", "classifier.0"]),
}


@pytest.mark.parametrize("backbone", list(EXPECTED_PARTIAL))
def test_partial_strategy_trains_exactly_the_last_n_stages_and_the_head(backbone):
    model = classifier(backbone)
    for stages, modules in zip((1, 2), EXPECTED_PARTIAL[backbone]):
        apply_strategy(model, "partial", trainable_stages=stages)
        assert trainable(model) == under(model, ["head"] + [f"backbone.{m}" for m in modules]), stages


def test_layer_groups_follow_the_registry_stages_for_every_backbone():
    """Each stage's own parameters are in its group, the first convolution in the stem, and
    every parameter in exactly one group."""
    for name, info in BACKBONES.items():
        model = classifier(name)
        groups = dict(layer_groups(model))
        assert list(groups) == ["stem"] + [f"stage {i}" for i in range(1, len(info.stages) + 1)] + ["head"]
        for i, stage in enumerate(info.stages, 1):
            own = under(model, [f"backbone.{stage}"])
            assert own and own <= {n for n, _ in groups[f"stage {i}"]}, (name, stage)
        assert f"backbone.{info.first_conv}.weight" in {n for n, _ in groups["stem"]}, name
        names = [n for params in groups.values() for n, _ in params]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters()), name

        apply_strategy(model, "partial", trainable_stages=1)
        assert under(model, ["head", f"backbone.{info.stages[-1]}"]) <= trainable(model), name
        assert not model.backbone.get_submodule(info.first_conv).weight.requires_grad, name


def test_full_strategy_trains_everything():
    model = classifier("resnet18", "linear")
    apply_strategy(model, "full").train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_adapters_strategy_trains_adapters_norms_and_head():
    model = classifier("resnet18", "adapters")
    norms = {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, NORM_TYPES)
             for p, _ in module.named_parameters(recurse=False)}
    assert norms and trainable(model) == under(model, ["head", "backbone.layer4.adapter"]) | norms


def test_adapters_strategy_requires_adapters():
    with pytest.raises(ValueError, match=r"add_adapters"):
        apply_strategy(classifier("resnet18"), "adapters")


def test_layer_decay_gives_geometrically_smaller_rates_towards_the_input():
    model = classifier("resnet18", "full")
    groups = parameter_groups(model, lr=1e-3, layer_decay=0.5)
    rates = {g["name"].removesuffix(" no_decay"): g["lr"] for g in groups}
    assert rates == pytest.approx({"head": 1e-3, "stage 4": 5e-4, "stage 3": 2.5e-4, "stage 2": 1.25e-4,
                                   "stage 1": 6.25e-5, "stem": 3.125e-5})
    assert len({g["name"] for g in groups}) == len(groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter exactly once

    assert {g["lr"] for g in parameter_groups(model, lr=1e-3)} == {1e-3}  # layer_decay 1: one rate


def test_parameter_groups_hold_only_trainable_parameters_and_no_empty_groups():
    model = classifier("resnet18", "partial", trainable_stages=1)
    groups = parameter_groups(model, lr=1e-3, layer_decay=0.8)
    assert {g["name"] for g in groups} == {"head", "head no_decay", "stage 4", "stage 4 no_decay"}
    assert all(g["params"] and all(p.requires_grad for p in g["params"]) for g in groups)


@pytest.mark.parametrize("backbone", ["resnet18", "convnext_tiny"])
def test_no_weight_decay_on_biases_and_norms(backbone):
    model = classifier(backbone, "full")
    decay = {id(p): g["weight_decay"] for g in parameter_groups(model, lr=1e-3, weight_decay=0.05)
             for p in g["params"]}
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    assert norm_params
    for name, param in model.named_parameters():
        expected = 0.0 if name.endswith(".bias") or id(param) in norm_params else 0.05
        assert decay[id(param)] == expected, name


def test_bad_strategy_names_the_valid_ones():
    model = classifier("resnet18")
    with pytest.raises(ValueError, match="linear, partial, full, adapters"):
        apply_strategy(model, "lora")
    assert STRATEGIES == ("linear", "partial", "full", "adapters")
    for stages in (0, 5):
        with pytest.raises(ValueError, match=r"1 to 4 .*layer1, layer2, layer3, layer4"):
            apply_strategy(model, "partial", trainable_stages=stages)
    with pytest.raises(ValueError, match=r"layer_decay must be in \(0, 1\]"):
        parameter_groups(model, lr=1e-3, layer_decay=1.5)
