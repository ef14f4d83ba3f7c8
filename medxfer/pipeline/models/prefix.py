"""Splitting a backbone at a stage boundary: a frozen prefix and a trainable suffix.

When the first stages of a network are frozen, their output for a given image never
changes, so a training engine can compute it once per image and train the rest of the
network from cached tensors. ``split_backbone`` cuts ``XrayClassifier.backbone`` after
one of its stages into ``(prefix, suffix)`` with ``suffix(prefix(x)) ==
model.backbone(x)``; ``frozen_stage_count`` says how many stages may go into a prefix,
that is, how far the frozen part of the network reaches.

The cut follows ``BackboneInfo.sequence``, the registry's description of the backbone's
forward pass as a chain of modules. Both halves hold the model's own modules, not
copies: training the suffix trains the model. They are plain ``nn.Sequential``
containers, so set train/eval mode on the model (``model.train()``, ``model.eval()``),
which keeps frozen BatchNorm layers and dropout in eval mode, never on the halves.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medxfer.pipeline.models.classifier import XrayClassifier

# The steps a backbone's forward does without a module. The ReLU is not in place
# (DenseNet's forward uses F.relu(inplace=True)): same values, and a cached input is
# never overwritten.
_FUNCTIONAL: dict[str, Callable[[], nn.Module]] = {
    "@relu": nn.ReLU,
    "@avgpool": lambda: nn.AdaptiveAvgPool2d(1),
    "@flatten": lambda: nn.Flatten(1),
}


def _chain(model: XrayClassifier) -> list[tuple[str, nn.Module]]:
    """``model.info.sequence`` as ``(item, module)`` pairs: the backbone's own
    submodules, and a fresh parameter-free module for each ``"@"`` token."""
    info = model.info
    if not info.sequence:
        raise ValueError(
            f"{info.name}: the registry gives no sequence (the backbone's forward "
            "pass as a chain of modules), so its backbone cannot be split"
        )
    missing = [stage for stage in info.stages if stage not in info.sequence]
    if missing:
        raise ValueError(f"{info.name}: stages {missing} are not in its sequence")
    chain = []
    for item in info.sequence:
        if item.startswith("@"):
            if item not in _FUNCTIONAL:
                raise ValueError(
                    f"{info.name}: unknown step {item!r} in its sequence "
                    f"(known: {', '.join(_FUNCTIONAL)})"
                )
            chain.append((item, _FUNCTIONAL[item]()))
        else:
            chain.append((item, model.backbone.get_submodule(item)))
    return chain


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def frozen_stage_count(model: XrayClassifier) -> int:
    """How many stages of ``model`` can go into a frozen prefix (``split_backbone``).

    With N = ``len(model.info.stages)``, the result is:

    - ``N + 1`` when every parameter of the backbone is frozen (``requires_grad``
      False): the whole backbone can be the prefix (the ``linear`` strategy);
    - k in 1..N when the backbone's chain (``BackboneInfo.sequence``) is frozen from
      the input up to and including stage k and its first trainable parameter comes
      after stage k: between stages k and k + 1, in stage k + 1, or after the last
      stage. ``partial`` with t trainable stages gives N - t;
    - 0 when not even stage 1 is frozen, or when the stem already has a trainable
      parameter (``full``; ``adapters``, which trains the stem's normalisation layers):
      no prefix.

    Modules without parameters count as frozen; their train-time behaviour is no
    concern, since ``XrayClassifier.train`` keeps the BatchNorm layers and the dropout
    of frozen blocks in eval mode. A stage wrapped with a trainable adapter
    (``medxfer.pipeline.models.adaptation.add_adapters``) is not frozen, so a prefix ends
    before it. Raises ``ValueError`` when the registry entry has no usable sequence.
    """
    stages = model.info.stages
    chain = _chain(model)  # first, so that a backbone that cannot be split is an error
    if _frozen(model.backbone):
        return len(stages) + 1
    count = 0
    for item, module in chain:
        if not _frozen(module):
            break
        if item in stages:
            count += 1
    return count


def split_backbone(
    model: XrayClassifier, frozen_stages: int
) -> tuple[nn.Module, nn.Module]:
    """``(prefix, suffix)`` with ``suffix(prefix(x))`` equal to ``model.backbone(x)``,
    the (B, feature_dim) pooled features.

    ``frozen_stages``, from 1 to N + 1 with N = ``len(model.info.stages)``:

    - k in 1..N: the prefix runs the backbone's chain (``BackboneInfo.sequence``) up
      to and including stage k, giving that stage's feature map, and the suffix runs
      the rest (for k = N only what follows the last stage: final convolution,
      normalisation, pooling);
    - N + 1: the whole backbone is the prefix, giving the pooled features, and the
      suffix is an ``nn.Identity`` (a linear probe: the head trains on cached
      features).

    Both are ``nn.Sequential`` containers (or the identity) of the model's own modules,
    shared, not copied: an optimizer step on ``suffix.parameters()`` changes the model,
    and the model's own forward stays as it was. ``"@"`` steps of the sequence become
    parameter-free modules. Nothing here checks that the prefix is frozen: caching its
    output is sound only when ``frozen_stages <= frozen_stage_count(model)``, computed
    with the model in eval mode (e.g. under ``torch.no_grad()``), which for a frozen
    prefix gives the values of train mode. Gradient checkpointing that the backbone's
    own forward may do (timm's ``set_grad_checkpointing``) does not apply to the halves.

    Raises ``ValueError`` when ``frozen_stages`` is out of range or the registry entry
    has no usable sequence.
    """
    stages = model.info.stages
    n_stages = len(stages)
    if (
        isinstance(frozen_stages, bool)
        or not isinstance(frozen_stages, int)
        or not 1 <= frozen_stages <= n_stages + 1
    ):
        raise ValueError(
            f"frozen_stages must be an integer from 1 to {n_stages + 1} for "
            f"{model.info.name} (1 to {n_stages}: split after that stage; "
            f"{n_stages + 1}: the whole backbone is the prefix), got {frozen_stages!r}"
        )
    chain = _chain(model)
    if frozen_stages == n_stages + 1:
        cut = len(chain)
    else:
        cut = model.info.sequence.index(stages[frozen_stages - 1]) + 1
    prefix = nn.Sequential(*(module for _, module in chain[:cut]))
    rest = [module for _, module in chain[cut:]]
    suffix = nn.Sequential(*rest) if rest else nn.Identity()
    return prefix, suffix
