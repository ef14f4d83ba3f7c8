"""The classifier: backbone features, head, single-channel first convolution, frozen parts."""

from __future__ import annotations

import pytest
import torch

from medxfer.pipeline.models.backbones import BACKBONES
from medxfer.pipeline.models.classifier import build_classifier


def replicated_and_single(model3, model1, gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same grayscale batch normalised for the RGB network and for the folded one."""
    mean3, std3 = (torch.tensor(v).view(1, 3, 1, 1) for v in (model3.mean, model3.std))
    return (gray.expand(-1, 3, -1, -1) - mean3) / std3, (gray - model1.mean[0]) / model1.std[0]


def test_single_channel_lite0_equals_replicated_grayscale_exactly():
    rgb = build_classifier("efficientnet_lite0", 2).eval()
    gray = build_classifier("efficientnet_lite0", 2, in_channels=1).eval()
    x = torch.rand(2, 1, 96, 96)
    x3, x1 = replicated_and_single(rgb, gray, x)
    with torch.no_grad():
        assert torch.allclose(rgb.features(x3), gray.features(x1), atol=1e-4)
    assert gray.input_spec().channels == 1 and gray.input_spec().mean == (0.5,)


def test_single_channel_resnet_first_conv_matches_away_from_the_border():
    """ImageNet statistics differ per channel: the folded kernel plus a bias reproduces them."""
    torch.manual_seed(0)
    rgb = build_classifier("resnet18", 2, weights="random").eval()
    torch.manual_seed(0)
    gray = build_classifier("resnet18", 2, weights="random", in_channels=1).eval()
    x3, x1 = replicated_and_single(rgb, gray, torch.rand(2, 1, 64, 64))
    with torch.no_grad():
        a, b = rgb.backbone.conv1(x3), gray.backbone.conv1(x1)
    assert torch.allclose(a[..., 2:-2, 2:-2], b[..., 2:-2, 2:-2], atol=1e-4)
    assert not torch.allclose(a, b, atol=1e-4)  # the zero-padded border differs, as documented


def test_head_gives_one_logit_per_class_and_multi_label_uses_sigmoid():
    model = build_classifier("resnet18", 14, weights="random", multi_label=True).eval()
    logits = model(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 14)
    assert torch.allclose(model.probabilities(logits), torch.sigmoid(logits))
    single = build_classifier("resnet18", 3, weights="random")
    assert torch.allclose(single.probabilities(logits[:, :3]).sum(-1), torch.ones(3))


@pytest.mark.parametrize("name", list(BACKBONES))
def test_features_have_the_registered_width_and_no_stray_dropout(name):
    model = build_classifier(name, 2, weights="random").eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 64, 64)).shape == (1, BACKBONES[name].feature_dim)
    dropouts = [n for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Dropout)]
    assert not [n for n in dropouts if n.startswith("classifier")]


def test_frozen_backbone_gives_the_same_features_on_every_pass_in_train_mode():
    """Stochastic depth and dropout inside a frozen block stay off; BatchNorm keeps its statistics."""
    model = build_classifier("convnext_tiny", 2, weights="random")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.features(x), model.features(x))
    assert model.head.training


def test_zero_outputs_is_refused():
    with pytest.raises(ValueError, match="at least one output"):
        build_classifier("resnet18", 0, weights="random")
