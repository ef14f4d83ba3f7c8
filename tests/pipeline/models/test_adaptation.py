"""Domain adaptation: AdaBN touches only BatchNorm statistics, adapters start as the identity,
gradient reversal flips and scales gradients, DANN losses train both sides."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medxfer.pipeline.models.adaptation import (
    AdaptedStage,
    DomainClassifier,
    GradientReversal,
    GradientReversalLayer,
    ResidualAdapter,
    adapt_batchnorm,
    add_adapters,
    dann_weight,
    domain_loss,
)
from medxfer.pipeline.models.backbones import BACKBONES
from medxfer.pipeline.models.classifier import build_classifier

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These small CPU passes run fastest on one thread, and stay fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def target_batches(sizes: tuple[int, ...] = (3, 5), seed: int = 0) -> list[torch.Tensor]:
    """'Another site': brighter, lower-contrast inputs than the standard-normal ones."""
    generator = torch.Generator().manual_seed(seed)
    return [0.5 + 0.3 * torch.randn(n, 3, 64, 64, generator=generator) for n in sizes]


def bn_buffer_keys(model: nn.Module) -> set[str]:
    return {
        f"{name}.{buffer}"
        for name, module in model.named_modules()
        if isinstance(module, _BatchNorm)
        for buffer in BN_BUFFERS
    }


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- AdaBN -------------------------------------------------------------------------------------


def test_adabn_changes_batchnorm_statistics_and_nothing_else():
    model = build_classifier("efficientnet_lite0", 2, weights="imagenet")
    model.eval()
    before = clone_state(model)
    momenta = {name: m.momentum for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    first_bn = next(m for m in model.modules() if isinstance(m, _BatchNorm))
    seen_by_first_bn = []
    hook = first_bn.register_forward_pre_hook(lambda module, args: seen_by_first_bn.append(args[0].clone()))
    batches = target_batches()

    assert adapt_batchnorm(model, iter(batches)) == 8
    hook.remove()

    after = model.state_dict()
    bn_keys = bn_buffer_keys(model)
    assert bn_keys and bn_keys < after.keys()
    for key in after.keys() - bn_keys:
        assert torch.equal(after[key], before[key]), key
    for key in bn_keys:
        assert not torch.equal(after[key], before[key]), key
    assert {name: m.momentum for name, m in model.named_modules() if isinstance(m, _BatchNorm)} == momenta
    assert not any(m.training for m in model.modules())

    # The first BatchNorm's running statistics are those of its inputs pooled over all 8 target
    # images: their mean and their unbiased variance (not an average of per-batch variances).
    assert [len(x) for x in seen_by_first_bn] == [3, 5]
    pooled = torch.cat(seen_by_first_bn).double()
    torch.testing.assert_close(first_bn.running_mean, pooled.mean(dim=(0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    variance = pooled.var(dim=(0, 2, 3), unbiased=True).float()
    torch.testing.assert_close(first_bn.running_var, variance, rtol=1e-5, atol=1e-6)
    assert int(first_bn.num_batches_tracked) == 2  # the number of batches


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k in bn_buffer_keys(model)}


def test_adabn_does_not_depend_on_how_the_images_are_batched():
    """The first BatchNorm layer sees the same inputs whatever the batching, so its statistics,
    pooled over all images, are the same for one batch, batches of 3 and 5, sorted or shuffled;
    and shuffling the images within one batch changes no layer's statistics."""
    images = torch.cat(target_batches((3, 5)))
    shuffled = images[torch.randperm(8, generator=torch.Generator().manual_seed(1))]
    model = build_classifier("resnet18", 2, weights="random")
    bn1 = model.backbone.bn1
    stats = {}
    for name, batches in {
        "one batch": [images],
        "3 then 5": list(images.split((3, 5))),
        "shuffled, 5 then 3": list(shuffled.split((5, 3))),
        "shuffled, one batch": [shuffled],
    }.items():
        adapt_batchnorm(model, batches)
        stats[name] = bn_state(model)
        assert int(bn1.num_batches_tracked) == len(batches)
    reference = stats["one batch"]
    for name, state in stats.items():
        for buffer in ("running_mean", "running_var"):
            key = f"backbone.bn1.{buffer}"
            torch.testing.assert_close(state[key], reference[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
    for key in reference:  # every layer: a permutation within one batch gives the same statistics
        torch.testing.assert_close(stats["shuffled, one batch"][key], reference[key], rtol=1e-5, atol=1e-6)


def test_adabn_pools_the_variance_of_label_sorted_homogeneous_batches():
    """A target loader without shuffling over a manifest sorted by label gives homogeneous
    batches: here a dark cluster of images, then a bright one. Each batch's own variance is
    small; the running variance must be that of all images together, which is far larger."""
    generator = torch.Generator().manual_seed(2)
    dark = -1.0 + 0.1 * torch.randn(4, 3, 64, 64, generator=generator)
    bright = 2.0 + 0.1 * torch.randn(4, 3, 64, 64, generator=generator)
    torch.manual_seed(0)
    model = build_classifier("resnet18", 2, weights="random")
    bn1 = model.backbone.bn1
    seen = []
    hook = bn1.register_forward_pre_hook(lambda module, args: seen.append(args[0].double()))
    assert adapt_batchnorm(model, [dark, bright]) == 8
    hook.remove()

    pooled = torch.cat(seen)
    pooled_var = pooled.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn1.running_mean, pooled.mean(dim=(0, 2, 3)).float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn1.running_var, pooled_var.float(), rtol=1e-5, atol=1e-6)
    # The old estimate, the average of the per-batch variances, is far too small.
    within = sum(x.var(dim=(0, 2, 3), unbiased=True) for x in seen) / 2
    assert bn1.running_var.double().sum() > 5 * within.sum()
    assert (bn1.running_var.double() / within).median() > 3

    adapt_batchnorm(model, [torch.cat([dark, bright])])  # the same as one big batch
    torch.testing.assert_close(bn1.running_var, pooled_var.float(), rtol=1e-5, atol=1e-6)


def test_adabn_on_a_single_batch_gives_that_batch_s_exact_statistics():
    model = build_classifier("resnet18", 2, weights="random")
    seen = []
    model.backbone.bn1.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    adapt_batchnorm(model, target_batches((4,)))
    torch.testing.assert_close(model.backbone.bn1.running_mean, seen[0].mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model.backbone.bn1.running_var, seen[0].var(dim=(0, 2, 3), unbiased=True))


def test_adabn_updates_frozen_batchnorm_and_restores_each_module_s_mode():
    """A frozen backbone's BatchNorm layers sit in eval mode inside a model in train mode
    (XrayClassifier.train); AdaBN still re-estimates them and leaves every flag as it was."""
    model = build_classifier("resnet18", 2, weights="random")
    for param in model.backbone.parameters():
        param.requires_grad_(False)
    model.train()
    modes = {name: m.training for name, m in model.named_modules()}
    assert model.training and not model.backbone.bn1.training
    adapt_batchnorm(model, target_batches((4,)))
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert not torch.equal(model.backbone.bn1.running_mean, torch.zeros(64))


def test_adabn_switches_stochastic_depth_off():
    """torchvision's EfficientNet-B0 drops residual branches at random in train mode, before
    BatchNorm layers; AdaBN runs them in eval mode, so its statistics are reproducible."""
    model = build_classifier("efficientnet_b0", 2, weights="random").train()
    batches = target_batches((4,))
    adapt_batchnorm(model, batches)
    first = {k: v.clone() for k, v in model.state_dict().items() if k in bn_buffer_keys(model)}
    adapt_batchnorm(model, batches)
    second = {k: v for k, v in model.state_dict().items() if k in bn_buffer_keys(model)}
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_adabn_refuses_models_without_batchnorm_and_empty_or_wrong_input():
    layer_norm_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(1, 4))  # as ConvNeXt
    with pytest.raises(ValueError, match="Sequential has no BatchNorm .* AdaBN does not apply"):
        adapt_batchnorm(layer_norm_only, target_batches((2,)))

    model = build_classifier("resnet18", 2, weights="random")
    before = clone_state(model)
    with pytest.raises(ValueError, match="no target batch given"):
        adapt_batchnorm(model, [])
    with pytest.raises(ValueError, match=r"non-empty image tensor \(B, C, H, W\), got tuple"):
        adapt_batchnorm(model, [target_batches((2,))[0], (torch.zeros(2, 3, 64, 64), torch.zeros(2))])
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)  # failed runs put everything back
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, _BatchNorm))


# --- Residual adapters -------------------------------------------------------------------------


def test_residual_adapter_is_the_identity_with_a_small_bottleneck():
    adapter = ResidualAdapter(512)
    assert adapter.down.out_channels == 32 and adapter.up.out_channels == 512
    assert ResidualAdapter(64).down.out_channels == 8  # never narrower than 8
    x = torch.randn(2, 512, 4, 4)
    assert torch.equal(adapter(x), x)
    with pytest.raises(ValueError, match="positive"):
        ResidualAdapter(64, reduction=0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_adapters_leave_the_output_unchanged_then_train(name):
    torch.manual_seed(0)
    model = build_classifier(name, 2, weights="random").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
    original = clone_state(model)

    assert add_adapters(model) is model and model.adapter_reduction == 16
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=0, atol=1e-6)

    stages = [model.backbone.get_submodule(path) for path in model.info.stages]
    assert all(isinstance(stage, AdaptedStage) for stage in stages)
    adapter_params = [p for n, p in model.named_parameters() if "adapter" in n]
    assert len(adapter_params) == 4 * len(stages)  # down and up, weight and bias
    for param_name, param in model.named_parameters():
        param.requires_grad_("adapter" in param_name)  # only the adapters train (and backward is cheaper)
    # The original parameters are all still there, only moved under "<stage>.stage.".
    renamed = {k: v for k, v in model.state_dict().items() if ".adapter." not in k}
    for path in model.info.stages:
        renamed = {k.replace(f"backbone.{path}.stage.", f"backbone.{path}."): v for k, v in renamed.items()}
    assert renamed.keys() == original.keys()
    assert all(torch.equal(renamed[k], original[k]) for k in original)

    optimizer = torch.optim.Adam(adapter_params, lr=1e-3)
    F.cross_entropy(model(x), torch.tensor([1])).backward()
    assert all(stage.adapter.up.weight.grad.abs().sum() > 0 for stage in stages)  # each one in the path
    optimizer.step()
    with torch.no_grad():
        assert not torch.allclose(model(x), reference, rtol=0, atol=1e-6)


def test_adapters_fit_a_one_channel_network_and_are_added_only_once():
    model = build_classifier("resnet18", 2, weights="random", in_channels=1).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        reference = model(x)
    add_adapters(model, reduction=4)
    assert [model.backbone.get_submodule(p).adapter.down.out_channels for p in model.info.stages] == [16, 32, 64, 128]
    with torch.no_grad():
        assert torch.equal(model(x), reference)
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model)


# --- DANN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_gradient_reversal_flips_and_scales_the_gradient(weight):
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = GradientReversal.apply(x, weight)
    assert torch.equal(y, x)
    (y * upstream).sum().backward()
    assert torch.equal(x.grad, -weight * upstream)

    layer = GradientReversalLayer(1.0)
    layer.weight = weight
    x.grad = None
    (layer(x) * upstream).sum().backward()
    assert torch.equal(x.grad, -weight * upstream)


def test_gradient_reversal_weight_must_be_finite_and_not_negative():
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite and 0 or more"):
            GradientReversalLayer(bad)


def test_reversal_weight_ramp():
    assert dann_weight(0.0) == 0.0
    assert dann_weight(0.5) == pytest.approx(0.98661, abs=1e-5)
    assert dann_weight(1.0) == pytest.approx(1.0, abs=1e-4) and dann_weight(1.0) < 1.0
    ramp = [dann_weight(p / 20) for p in range(21)]
    assert all(a < b for a, b in itertools.pairwise(ramp))
    assert dann_weight(0.5, gamma=1.0) < dann_weight(0.5)
    for bad in (-0.01, 1.01):
        with pytest.raises(ValueError, match=r"progress must be in \[0, 1\]"):
            dann_weight(bad)
    with pytest.raises(ValueError, match="gamma must be positive"):
        dann_weight(0.5, gamma=0.0)


@pytest.fixture
def dann_setup():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 2, weights="random")
    domain_classifier = DomainClassifier(model.info.feature_dim, hidden=32)
    source_x, target_x = torch.randn(2, 3, 64, 64), 0.5 + 0.3 * torch.randn(2, 3, 64, 64)
    return model, domain_classifier, source_x, torch.tensor([0, 1]), target_x


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_reversed_domain_loss_gradient_is_scaled_for_the_backbone_only(dann_setup):
    """Against the same loss without reversal (eval mode: deterministic): the backbone gets
    -weight times the gradient, the domain classifier the gradient itself."""
    model, domain_classifier, source_x, _, target_x = dann_setup
    model.eval()
    domain_classifier.eval()
    weight = 0.7
    features = model.features(torch.cat([source_x, target_x]))
    domain_loss(domain_classifier(GradientReversalLayer(weight)(features)), len(source_x)).backward()
    reversed_backbone, reversed_domain = gradients(model.backbone), gradients(domain_classifier)
    model.zero_grad()
    domain_classifier.zero_grad()

    logits = domain_classifier(model.features(torch.cat([source_x, target_x])))
    F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 0.0, 1.0, 1.0])).backward()
    plain_backbone, plain_domain = gradients(model.backbone), gradients(domain_classifier)

    assert reversed_backbone.keys() == plain_backbone.keys() and len(plain_backbone) > 0
    for name, grad in plain_backbone.items():
        torch.testing.assert_close(reversed_backbone[name], -weight * grad, rtol=1e-4, atol=1e-7)
    for name, grad in plain_domain.items():
        torch.testing.assert_close(reversed_domain[name], grad, rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in model.head.parameters())  # the domain loss never reaches the head
    assert domain_classifier(torch.zeros(4, model.info.feature_dim)).shape == (4,)
