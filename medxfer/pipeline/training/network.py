"""The network a run trains, how much of it is cached, and the settings left at ``auto``.

The network is seen as ``prefix -> suffix -> head``: the *prefix* is the leading part of the
backbone whose parameters are all frozen (the whole backbone for ``linear``, the stem and early
stages for ``partial``, nothing for ``full`` and ``adapters``). With caching on (the default
whenever there is such a prefix), it runs once per image (``prefix_cache``) and the loop trains
the suffix and head from the stored activations.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from medxfer.pipeline.models.adaptation import add_adapters
from medxfer.pipeline.models.classifier import XrayClassifier, build_classifier
from medxfer.pipeline.models.finetune import apply_strategy
from medxfer.pipeline.models.prefix import frozen_stage_count, split_backbone
from medxfer.pipeline.runs.config import TrainConfig
from medxfer.transforms.pipeline import XrayPipeline

CACHE_BUDGET = 4 * 2**30  # bytes of cached prefix outputs that "auto" views stay under


def build_network(config: TrainConfig, n_classes: int) -> XrayClassifier:
    """The classifier with the configuration's backbone, head, adapters and fine-tuning
    strategy, initialised from ``config.seed``. Raises ``ValueError`` for AdaBN on a backbone
    without BatchNorm."""
    torch.manual_seed(config.seed)
    model = build_classifier(config.backbone, n_classes, weights=config.weights, in_channels=config.in_channels,
                             dropout=config.dropout)
    if config.strategy == "adapters":
        add_adapters(model)
    model = apply_strategy(model, config.strategy, trainable_stages=config.trainable_stages)
    if config.adapt == "adabn" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"adapt 'adabn' re-estimates BatchNorm statistics, and {config.backbone} has no BatchNorm "
                         "layer; use another backbone or adapt 'dann'")
    return model


def cached_stages(model: XrayClassifier, config: TrainConfig) -> int:
    """Stages computed once and cached (``len(model.info.stages) + 1``: the whole backbone; 0: no
    cache), as ``config.cache`` asks. Raises ``ValueError`` for ``cache: on`` without a frozen prefix."""
    frozen = frozen_stage_count(model)
    if config.cache == "off" or (config.cache == "auto" and frozen == 0):
        return 0
    if frozen == 0:
        raise ValueError(f"cache: on needs a frozen part of the backbone, and strategy {config.strategy!r} "
                         "trains all of it; use cache: auto or off")
    return frozen


def cached_part(model: XrayClassifier, frozen: int) -> str:
    """What ``frozen`` cached stages are, for a log line."""
    n = len(model.info.stages)
    return "the whole backbone" if frozen > n else f"the first {frozen} of {n} stages"


def auto_epochs(n_train: int) -> int:
    """Epochs when the configuration says ``auto``: about 6,000 image passes, at least 5 and
    at most 30 epochs (30 for 200 training images, 9 for 700, 5 from 1,200 on). On the NIH set
    (715 training images) holdout runs with the default settings peaked at epoch 2 and early
    stopping ended them at epoch 7; small sets need more passes for the same number of optimiser steps, and
    large ones fewer epochs to stay within 15 minutes for 5,000 images on 2 cores."""
    return int(min(30, max(5, math.ceil(6000 / max(n_train, 1)))))


def auto_views(n_train: int, bytes_per_view: int) -> int:
    """Cached augmented views per training image when the configuration says ``auto``: 4 up to
    2,000 training images, then fewer (2 at 3,500, 1 from 8,000 on), so that the cache costs
    about 8,000 prefix passes and a 5,000-image set stays within its time budget; and never
    more than fit in ``CACHE_BUDGET`` bytes (``bytes_per_view``: one image's prefix output)."""
    n = max(n_train, 1)
    return int(max(1, min(4, 8000 // n, CACHE_BUDGET // (n * max(bytes_per_view, 1)))))


def resolve_auto(config: TrainConfig, model: XrayClassifier, frozen: int, n_train: int, image: torch.Tensor,
                 plain: XrayPipeline) -> TrainConfig:
    """``config`` with ``epochs`` and ``cache_views`` resolved when ``auto``; ``image`` through
    ``plain`` is run through the prefix to size one cached output."""
    epochs = config.epochs if config.epochs != "auto" else auto_epochs(n_train)
    views = config.cache_views
    if views == "auto":
        prefix = split_backbone(model, frozen)[0] if frozen else None
        with torch.no_grad():
            view_bytes = prefix.eval()(plain(image)[None]).numel() * 4 if prefix else 0
        views = auto_views(n_train, view_bytes)
    return replace(config, epochs=epochs, cache_views=views)

