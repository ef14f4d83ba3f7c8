"""The classifier: a pretrained backbone's pooled features, then medxfer's own head.

``XrayClassifier`` keeps the backbone whole (its ImageNet classifier replaced by an identity)
so every registry entry works the same way: ``features(x)`` gives (B, feature_dim) pooled
features and ``forward(x)`` the logits of the head, one per class (softmax) or one per finding
(``multi_label``, sigmoid).
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.layers import DropPath
from torch import nn
from torchvision.ops import StochasticDepth

from medxfer.pipeline.models.backbones import DEFAULT_BACKBONE, BackboneInfo, backbone_info, build_backbone
from medxfer.transforms.preparation import InputSpec


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` with ``module``."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def grayscale_first_conv(backbone: nn.Module, info: BackboneInfo) -> tuple[float, float]:
    """Turn the backbone's RGB first convolution into a single-channel one, in place.

    For a grayscale image replicated to RGB and normalised per channel with ``info.mean``/
    ``info.std``, the RGB convolution equals a one-channel convolution on the image normalised
    with the channel averages (m, s), with kernel sum_c W_c * s / s_c and a constant
    sum_c sum(W_c) * (m - m_c) / s_c added per output channel (exact away from the zero-padded
    border; exact everywhere when the channels share one mean and std, as EfficientNet-Lite's
    do). Returns (m, s), the normalisation the adapted network takes.
    """
    conv = backbone.get_submodule(info.first_conv)
    mean = sum(info.mean) / 3
    std = sum(info.std) / 3
    with torch.no_grad():
        weight = conv.weight  # (out, 3, kh, kw)
        scale = torch.tensor([std / s for s in info.std], dtype=weight.dtype).view(1, 3, 1, 1)
        offset = torch.tensor([(mean - m) / s for m, s in zip(info.mean, info.std)], dtype=weight.dtype)
        constant = (weight.sum(dim=(2, 3)) * offset).sum(dim=1)  # (out,)
        conv.weight = nn.Parameter((weight * scale).sum(dim=1, keepdim=True))
        if len(set(info.mean)) > 1 or len(set(info.std)) > 1:  # decided by the entry, so a rebuild matches
            bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(constant)
            conv.bias = nn.Parameter(bias + constant)
    conv.in_channels = 1
    return mean, std


# Layers that make a forward pass random in train mode.
_STOCHASTIC = (nn.modules.dropout._DropoutNd, StochasticDepth, DropPath)


def _drop_dropout_before(backbone: nn.Module, classifier: str) -> None:
    """Remove the backbone's own dropout right before its (replaced) classifier: the head brings
    its own, and two in a row would drop more than asked for."""
    parent_path, _, name = classifier.rpartition(".")
    parent = backbone.get_submodule(parent_path) if parent_path else backbone
    if isinstance(parent, nn.Sequential) and name.isdigit() and int(name) > 0:
        previous = str(int(name) - 1)
        if isinstance(parent.get_submodule(previous), nn.modules.dropout._DropoutNd):
            setattr(parent, previous, nn.Identity())


class XrayClassifier(nn.Module):
    """Backbone features (B, ``info.feature_dim``) -> dropout -> linear -> (B, ``num_outputs``).

    ``in_channels`` is 3 (grayscale replicated to RGB) or 1 (first convolution folded to one
    channel, see ``grayscale_first_conv``); ``mean``/``std`` are the input normalisation
    that goes with it, one value per input channel.
    """

    def __init__(
        self,
        backbone: nn.Module,
        info: BackboneInfo,
        num_outputs: int,
        *,
        dropout: float = 0.2,
        multi_label: bool = False,
        in_channels: int = 3,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if num_outputs < 1:
            raise ValueError(f"a classifier needs at least one output, got {num_outputs}")
        set_module(backbone, info.classifier, nn.Identity())
        _drop_dropout_before(backbone, info.classifier)
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(info.feature_dim, num_outputs))
        self.info = info
        self.multi_label = multi_label
        self.in_channels = in_channels
        self.mean = tuple(mean) if mean is not None else info.mean
        self.std = tuple(std) if std is not None else info.std
        self.adapter_reduction: int | None = None  # set by adaptation.add_adapters
        self.trained_spec: InputSpec | None = None  # the input a saved model was trained on (set on load)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, (B, feature_dim)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, (B, num_outputs)."""
        return self.head(self.features(x))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes, or per-finding sigmoid for a multi-label head."""
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def input_spec(self, image_size: int | None = None, fit: str | None = None) -> InputSpec:
        """What ``medxfer.transforms`` must produce for this network: by default the input a
        loaded model was trained on, else the backbone's own size with letterboxing."""
        default = self.trained_spec
        return InputSpec(
            image_size=image_size or (default.image_size if default else self.info.input_size),
            fit=fit or (default.fit if default else "letterbox"),
            channels=self.in_channels, mean=self.mean, std=self.std,
        )

    def train(self, mode: bool = True) -> XrayClassifier:
        """Train mode, except in frozen parts of the network, which stay the network they were:
        a BatchNorm layer whose parameters are all frozen keeps its running statistics, and
        dropout or stochastic depth inside a block whose parameters are all frozen stays off
        (eval mode), so a frozen backbone gives the same features on every pass."""
        super().train(mode)
        if mode:
            for name, module in self.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    owner = module
                elif isinstance(module, _STOCHASTIC):
                    owner = self.get_submodule(name.rpartition(".")[0])
                else:
                    continue
                params = list(owner.parameters())
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self


def build_classifier(
    backbone: str = DEFAULT_BACKBONE,
    num_outputs: int = 2,
    *,
    weights: str | Path = "imagenet",
    in_channels: int = 3,
    dropout: float = 0.2,
    multi_label: bool = False,
) -> XrayClassifier:
    """A classifier on a registry backbone (``weights`` as in ``build_backbone``)."""
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    info = backbone_info(backbone)
    net = build_backbone(backbone, weights)
    mean, std = info.mean, info.std
    if in_channels == 1:
        m, s = grayscale_first_conv(net, info)
        mean, std = (m,), (s,)
    return XrayClassifier(
        net, info, num_outputs, dropout=dropout, multi_label=multi_label, in_channels=in_channels,
        mean=mean, std=std,
    )
