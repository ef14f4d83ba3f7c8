"""Fine-tuning strategies and layer-wise learning-rate decay.

Which parameters of an ``XrayClassifier`` train, and at which learning rate:

- ``apply_strategy`` sets ``requires_grad`` for one of ``STRATEGIES``: ``linear`` (head only,
  the backbone frozen and its BatchNorm layers kept in eval mode), ``partial`` (the head and
  the last N stages), ``full`` (everything) and ``adapters`` (the head, the adapter modules
  added by ``medxfer.pipeline.models.adaptation.add_adapters`` and the normalisation layers);
- ``parameter_groups`` gives torch optimizer groups with layer-wise learning-rate decay
  (smaller rates towards the input) and no weight decay on biases and normalisation layers.

Both see the network as the same ordered layer groups (``layer_groups``): the stem,
the registry's stages (``BackboneInfo.stages``), then the head. A stage owns everything from
its first parameter up to where the next stage begins, in the order the backbone registers
its parameters (its forward order for every registry network; a test checks this), so the
modules between two stages (ConvNeXt's downsampling layers, DenseNet's transitions) belong
to the stage before them, and the modules after the last stage (EfficientNet's ``bn2``,
DenseNet's ``norm5``, ConvNeXt's final LayerNorm) to the last stage.
"""

from __future__ import annotations

from torch import nn

from medxfer.pipeline.models.classifier import XrayClassifier

STRATEGIES = ("linear", "partial", "full", "adapters")

# Normalisation layers: their affine parameters train with adapters and get no weight decay.
# _NormBase covers BatchNorm (timm's BatchNormAct2d too) and InstanceNorm; nn.LayerNorm covers
# torchvision's LayerNorm2d.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def layer_groups(model: XrayClassifier) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """The model's parameters as ordered layer groups, input side first: ``("stem", ...)``,
    ``("stage 1", ...)`` ... ``("stage N", ...)`` with N = ``len(model.info.stages)``, then
    ``("head", ...)``; each group lists ``(name, parameter)`` with names as in
    ``model.named_parameters()``. Every parameter is in exactly one group.

    Raises ``RuntimeError`` if the backbone registers the parameters of its stages out of the
    registry's order (no registry network does), since groups would then be wrong.
    """
    stages = model.info.stages
    groups: list[tuple[str, list[tuple[str, nn.Parameter]]]] = [("stem", [])]
    groups += [(f"stage {i}", []) for i in range(1, len(stages) + 1)]
    current = 0
    for name, param in model.backbone.named_parameters(prefix="backbone"):
        owner = next((i for i, stage in enumerate(stages, 1) if name.startswith(f"backbone.{stage}.")), current)
        if owner < current:
            raise RuntimeError(
                f"{model.info.name}: parameter {name} of stage {stages[owner - 1]!r} comes after stage "
                f"{stages[current - 1]!r}; the registry's stages must follow the network's parameter order"
            )
        current = owner
        groups[current][1].append((name, param))
    groups.append(("head", list(model.head.named_parameters(prefix="head"))))
    return groups


def apply_strategy(model: XrayClassifier, strategy: str, *, trainable_stages: int = 2) -> XrayClassifier:
    """Set which parameters of ``model`` train (``requires_grad``), in place; returns ``model``.

    - ``"linear"``: the head only. The frozen backbone's BatchNorm layers stay in eval mode
      (``XrayClassifier.train``), so its running statistics never change;
    - ``"partial"``: the head and the last ``trainable_stages`` stages (1 to
      ``len(model.info.stages)``), with the modules after the last stage (see ``layer_groups``);
      the stem and earlier stages are frozen;
    - ``"full"``: every parameter;
    - ``"adapters"``: the head, every parameter whose name contains ``"adapter"`` (the modules
      ``medxfer.pipeline.models.adaptation.add_adapters`` adds) and the affine parameters of all
      normalisation layers (``NORM_TYPES``); the model must already hold adapters.

    The train/eval mode of BatchNorm layers is brought in line at once (frozen ones in eval
    mode when the model is training); ``model.train()`` keeps doing so afterwards.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    groups = layer_groups(model)
    n_stages = len(model.info.stages)
    if strategy == "partial" and not 1 <= trainable_stages <= n_stages:
        raise ValueError(
            f"trainable_stages must be 1 to {n_stages} for {model.info.name} (stages: "
            f"{', '.join(model.info.stages)}), got {trainable_stages}; use 'full' to train everything"
        )
    if strategy == "adapters":
        if not any("adapter" in name for name, _ in model.named_parameters()):
            raise ValueError(
                "the 'adapters' strategy needs adapter modules in the model: add them first with "
                "medxfer.pipeline.models.adaptation.add_adapters(model)"
            )
        norms = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("head.") or "adapter" in name or id(param) in norms)
    else:
        opened = {"linear": 0, "partial": trainable_stages, "full": n_stages + 1}[strategy]
        for depth, (_, params) in enumerate(reversed(groups)):  # head 0, last stage 1, ..., stem N + 1
            for _, param in params:
                param.requires_grad_(depth <= opened)
    return model.train(model.training)


def parameter_groups(
    model: XrayClassifier,
    *,
    lr: float,
    layer_decay: float = 1.0,
    weight_decay: float = 1e-4,
) -> list[dict]:
    """Parameter groups for a torch optimizer (``torch.optim.AdamW(parameter_groups(...))``).

    Layer-wise learning-rate decay: the head trains at ``lr``, the last stage (with the modules
    after it) at ``lr * layer_decay``, the stage before at ``lr * layer_decay**2``, and so on
    down to the stem at ``lr * layer_decay**(N + 1)`` for N stages. ``layer_decay`` is in
    (0, 1]; 1.0 gives every parameter ``lr``. Schedulers that multiply every group's initial
    rate by one factor (``LambdaLR``, ``StepLR``, ``CosineAnnealingLR`` with ``eta_min=0``) keep
    these ratios; give ``OneCycleLR`` the groups' rates as a list (``max_lr=[g["lr"] ...]``).

    ``weight_decay`` (>= 0, the optimizer's coefficient) applies to weights only: biases and
    the affine parameters of normalisation layers get none ("no bias decay", He et al. 2019,
    Bag of Tricks for Image Classification; timm does the same).

    Only trainable parameters are included.

    Each group is a dict with ``params``, ``lr``, ``weight_decay`` and a unique ``name``
    (``"head"``, ``"stage 3"``, ``"stem"``, with ``" no_decay"`` appended for the group without
    weight decay) for logging; groups with no parameters are left out. Input side first.
    """
    # Hand-written, not timm's param_groups_layer_decay (create_optimizer_v2's layer_decay), which
    # gives other groups and rates (checked with timm 1.0.31): its layers come from a timm
    # model's group_matcher, a layer per block (17 layers for EfficientNet-Lite0 against 9 here:
    # with decay 0.7 its stem gets lr * 0.7**16, here lr * 0.7**8), and torchvision backbones or
    # this wrapper, having no group_matcher, fall into one layer (no decay at all); it leaves the rate
    # to timm's schedulers as an "lr_scale"; it names no group; and it exempts every 1-D
    # parameter from weight decay rather than biases and normalisation layers.
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1] (1.0: one learning rate for all), got {layer_decay}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    norms = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    groups = layer_groups(model)
    result = []
    for index, (group, named) in enumerate(groups):
        rate = lr * layer_decay ** (len(groups) - 1 - index)
        chosen = [(name, p) for name, p in named if p.requires_grad]
        decayed = [p for name, p in chosen if not (name.endswith(".bias") or id(p) in norms)]
        plain = [p for name, p in chosen if name.endswith(".bias") or id(p) in norms]
        for params, decay, label in ((decayed, weight_decay, group), (plain, 0.0, f"{group} no_decay")):
            if params:
                result.append({"params": params, "lr": rate, "weight_decay": decay, "name": label})
    return result

