"""Splitting a backbone into a frozen prefix and a trainable suffix: the halves compose
to the backbone's forward pass, share its parameters, and end where the frozen part
ends."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medxfer.pipeline.models.adaptation import add_adapters
from medxfer.pipeline.models.backbones import BACKBONES, build_backbone
from medxfer.pipeline.models.classifier import build_classifier
from medxfer.pipeline.models.finetune import apply_strategy
from medxfer.pipeline.models.prefix import frozen_stage_count, split_backbone

TOKENS = {
    "@relu": F.relu,
    "@avgpool": lambda x: F.adaptive_avg_pool2d(x, 1),
    "@flatten": lambda x: torch.flatten(x, 1),
}
SIDE = 64  # pixels: small, yet enough for every registry backbone
# Every entry, and one-channel networks: one without a first-convolution bias (equal
# channel means) and two that get one.
CASES = [(name, 3) for name in BACKBONES]
CASES += [("efficientnet_lite0", 1), ("resnet18", 1), ("densenet121", 1)]
# One network of each family, for the (slower) training step.
FAMILIES = [
    "efficientnet_lite0",
    "resnet18",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "convnext_tiny",
]


def model_for(name: str, *, in_channels: int = 3):
    torch.manual_seed(0)
    return build_classifier(name, 2, weights="random", in_channels=in_channels)


def images(channels: int = 3, batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch, channels, SIDE, SIDE, generator=torch.Generator().manual_seed(1)
    )


def split_points(n_stages: int) -> list[int]:
    """First stage, second, middle, last stage, whole backbone."""
    return sorted({1, 2, n_stages // 2, n_stages, n_stages + 1})


@pytest.mark.parametrize("name", list(BACKBONES))
def test_sequence_lists_every_stage_in_order(name):
    info = BACKBONES[name]
    sequence = info.sequence
    assert len(set(sequence)) == len(sequence)
    positions = [sequence.index(stage) for stage in info.stages]  # stages are items
    assert positions == sorted(positions)
    assert sequence[-1] == info.classifier
    assert {item for item in sequence if item.startswith("@")} <= set(TOKENS)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_sequence_composes_to_the_backbone_forward_and_covers_every_parameter(name):
    """Applied one after the other to the raw network (ImageNet classifier included),
    the sequence's items give the network's logits, and own every parameter once."""
    info = BACKBONES[name]
    torch.manual_seed(0)
    net = build_backbone(name, weights="random")
    x = images()
    with torch.no_grad():
        expected = net(x)
        y = x
        for item in info.sequence:
            y = TOKENS[item](y) if item in TOKENS else net.get_submodule(item)(y)
    torch.testing.assert_close(y, expected)
    assert y.shape == (2, 1000)

    modules = [net.get_submodule(item) for item in info.sequence if item not in TOKENS]
    owned = [id(p) for module in modules for p in module.parameters()]
    assert len(owned) == len(set(owned))
    assert set(owned) == {id(p) for p in net.parameters()}


@pytest.mark.parametrize(("name", "in_channels"), CASES)
def test_prefix_then_suffix_equals_backbone_for_every_registry_entry(name, in_channels):
    model = model_for(name, in_channels=in_channels).eval()
    n_stages = len(model.info.stages)
    x = images(in_channels)
    with torch.no_grad():
        expected = model.features(x)
        for frozen_stages in split_points(n_stages):
            prefix, suffix = split_backbone(model, frozen_stages)
            cached = prefix(x)
            kept = cached.clone()
            torch.testing.assert_close(suffix(cached), expected)
            assert torch.equal(cached, kept), "the suffix overwrote its input"
            if frozen_stages <= n_stages:
                assert cached.ndim == 4  # a stage's feature map
            else:
                assert isinstance(suffix, nn.Identity)
                assert cached.shape == (2, model.info.feature_dim)


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_prefix_trains_the_suffix_like_the_whole_network(name):
    """With ``partial`` training, the prefix's eval-mode output computed once under
    no_grad gives, in train mode (batch statistics, stochastic depth drawn from the same
    seed), the loss and the gradients of the whole network's training step."""
    model = apply_strategy(model_for(name), "partial", trainable_stages=1)
    frozen = frozen_stage_count(model)
    prefix, suffix = split_backbone(model, frozen)
    x, y = images(batch=3), torch.tensor([0, 1, 1])
    trainable = [p for p in model.parameters() if p.requires_grad]

    model.train()
    torch.manual_seed(2)
    F.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in trainable]
    model.zero_grad()

    model.eval()
    with torch.no_grad():
        cached = prefix(x)
    model.train()
    torch.manual_seed(2)
    F.cross_entropy(model.head(suffix(cached)), y).backward()
    for p, grad in zip(trainable, expected, strict=True):
        torch.testing.assert_close(p.grad, grad)


def test_suffix_shares_parameters_with_model():
    model = apply_strategy(
        model_for("efficientnet_lite0"), "partial", trainable_stages=2
    )
    prefix, suffix = split_backbone(model, frozen_stage_count(model))
    prefix_ids = {id(p) for p in prefix.parameters()}
    suffix_ids = {id(p) for p in suffix.parameters()}
    assert not prefix_ids & suffix_ids
    assert prefix_ids | suffix_ids == {id(p) for p in model.backbone.parameters()}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(
        [p for p in suffix.parameters() if p.requires_grad], lr=0.1
    )
    x = images()
    with torch.no_grad():
        cached = prefix(x)
    model.train()
    suffix(cached).square().mean().backward()
    optimizer.step()

    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert any(k.startswith("backbone.blocks.6.") for k in changed)
    assert not any(
        k.startswith(("backbone.conv_stem.", "backbone.blocks.0.")) for k in changed
    )
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(suffix(prefix(x)), model.features(x))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "densenet121", "convnext_tiny"])
def test_frozen_stage_count_follows_strategy(name):
    """``partial`` with t trainable stages leaves N - t for the prefix, ``linear`` the
    whole backbone (N + 1), ``full`` nothing; the prefix that fits is all frozen."""
    model = model_for(name)
    n_stages = len(model.info.stages)
    assert frozen_stage_count(apply_strategy(model, "full")) == 0
    assert frozen_stage_count(apply_strategy(model, "linear")) == n_stages + 1
    for t in range(1, n_stages + 1):
        count = frozen_stage_count(apply_strategy(model, "partial", trainable_stages=t))
        assert count == n_stages - t
        if count:
            prefix, _ = split_backbone(model, count)
            assert not any(p.requires_grad for p in prefix.parameters())


def test_a_trainable_stem_or_adapter_ends_the_prefix():
    model = apply_strategy(model_for("resnet18"), "linear")
    model.backbone.conv1.weight.requires_grad_(True)
    assert frozen_stage_count(model) == 0

    model = add_adapters(model_for("resnet18"))
    assert frozen_stage_count(apply_strategy(model, "adapters")) == 0  # norms train
    apply_strategy(model, "linear")
    assert frozen_stage_count(model) == 5  # adapters frozen too: the whole backbone
    adapter = model.backbone.get_submodule("layer3.adapter")
    adapter.requires_grad_(True)
    assert frozen_stage_count(model) == 2
    with torch.no_grad():
        adapter.up.weight.normal_()  # no longer the identity
    model.eval()
    prefix, suffix = split_backbone(model, 2)
    with torch.no_grad():
        torch.testing.assert_close(suffix(prefix(images())), model.features(images()))


@pytest.mark.parametrize("frozen_stages", [0, -1, 10, True, 2.0, None])
def test_split_backbone_refuses_out_of_range_stage_counts(frozen_stages):
    model = model_for("efficientnet_b0")  # 8 stages: 1 to 9 allowed
    with pytest.raises(
        ValueError, match="frozen_stages must be an integer from 1 to 9"
    ):
        split_backbone(model, frozen_stages)


def test_a_backbone_without_sequence_cannot_be_split():
    model = model_for("resnet18")
    model.info = dataclasses.replace(model.info, sequence=())
    with pytest.raises(ValueError, match="no sequence"):
        split_backbone(model, 1)
    with pytest.raises(ValueError, match="no sequence"):
        frozen_stage_count(model)
