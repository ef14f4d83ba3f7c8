"""Domain adaptation for a classifier moving to a new site's scanners.

Three tools, from the cheapest to the most involved:

- ``adapt_batchnorm`` (AdaBN, Li et al. 2016): re-estimate every BatchNorm layer's running
  statistics on unlabelled scans from the target site; no training, no labels.
- ``add_adapters`` (residual adapters, Rebuffi et al. 2017): a small 1x1-convolution bottleneck
  after each backbone stage, initialised to the identity so the network is unchanged until it
  trains; ``finetune``'s ``adapters`` strategy then trains only adapters, norms and head.
- DANN (Ganin & Lempitsky 2015): a gradient-reversal layer and a domain classifier on the pooled
  features; ``domain_loss`` is the domain classifier's loss on source and unlabelled target
  scans, added to the task loss by the training step (``medxfer.pipeline.training.steps``), the
  reversal weight ramped with ``dann_weight``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medxfer.pipeline.models.classifier import XrayClassifier, set_module

# Side of the square dummy input of the dry run that finds each stage's output channels, pixels:
# small, yet large enough for every registry backbone (stride 32 leaves a 2x2 map).
_DRY_RUN_SIZE = 64


@contextmanager
def _modes_kept(model: nn.Module) -> Iterator[None]:
    """Restore every module's own train/eval flag on exit (not just the model's: a frozen
    BatchNorm may sit in eval mode inside a model in train mode)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


# --- AdaBN -------------------------------------------------------------------------------------


class _PooledInputMoments:
    """Exact per-channel count, sum and sum of squares (float64) of everything a BatchNorm layer
    is fed, channel dim 1, accumulated by a forward pre-hook."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        dims = [d for d in range(x.ndim) if d != 1]
        x = x.to(torch.float64)
        total, total_sq = x.sum(dim=dims), x.square().sum(dim=dims)
        if self.total is None:
            self.total, self.total_sq = total, total_sq
        else:
            self.total += total
            self.total_sq += total_sq
        self.count += x.numel() // x.shape[1]

    def mean_and_variance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled mean and unbiased pooled variance (sumsq - n mean^2) / (n - 1), per channel."""
        assert self.total is not None and self.total_sq is not None
        n = self.count
        mean = self.total / n
        variance = (self.total_sq - n * mean.square()).clamp_min(0.0) / max(n - 1, 1)
        return mean, variance


def adapt_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], *, device: torch.device | str | None = None) -> int:
    """Re-estimate the running statistics of every BatchNorm layer on target-site images (AdaBN).

    ``batches``: unlabelled target images already prepared as network inputs, each a tensor
    (B, C, H, W) normalised as for training (e.g. ``(x for x, _ in loader)``); moved to
    ``device`` (default: the model's). Each BatchNorm layer's input is pooled over all the
    target images, every image weighing the same: a forward pre-hook accumulates, in float64,
    the exact per-channel count n, sum and sum of squares of the layer's input (every dim but
    the channel dim 1), and at the end ``running_mean`` is sum / n and ``running_var`` the
    unbiased pooled variance (sumsq - n mean^2) / (n - 1), cast back to the buffers' dtype;
    ``num_batches_tracked`` is the number of batches the layer saw. The variance is thus that
    of all target images together, not an average of within-batch variances, so batches sorted
    by label (a loader without shuffling), each homogeneous, do not make it too small.

    During the passes every BatchNorm layer normalises with the current batch's statistics, so
    a deeper layer's input, hence its statistics, still depends somewhat on how the images are
    batched (as in any AdaBN estimation pass; the first BatchNorm layer's statistics do not, nor
    does any layer's depend on the order of the images within a batch): use shuffled batches of
    at least ~32 images.

    Only ``running_mean``, ``running_var`` and ``num_batches_tracked`` change; a layer the
    passes never reach keeps its statistics. During the passes the BatchNorm layers run in
    train mode (also frozen ones) and every other module in eval mode (dropout and stochastic
    depth off, so activations are those of inference); afterwards each module's own train/eval
    flag and each layer's momentum are restored. On any error, including an empty ``batches``,
    the original statistics are put back. Returns the number of images seen.
    Raises ``ValueError`` when the model has no BatchNorm layer keeping running statistics.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layer with running statistics (ConvNeXt, for one, "
            "normalises with LayerNorm): AdaBN does not apply"
        )
    if device is None:
        device = next(model.parameters()).device
    momenta = [layer.momentum for layer in layers]
    saved = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in layers]
    moments = [_PooledInputMoments() for _ in layers]
    hooks = [layer.register_forward_pre_hook(acc) for layer, acc in zip(layers, moments)]
    seen = 0
    with _modes_kept(model), torch.no_grad():
        model.eval()
        for layer in layers:
            layer.reset_running_stats()  # num_batches_tracked from 0: it counts this run's batches
            layer.momentum = 0.0  # the pooled statistics are set at the end, not averaged per batch
            layer.train()
        try:
            for batch in batches:
                if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or len(batch) == 0:
                    raise ValueError(
                        "each target batch must be a non-empty image tensor (B, C, H, W), got "
                        f"{tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__}"
                    )
                model(batch.to(device))
                seen += len(batch)
            if seen == 0:
                raise ValueError("no target batch given: AdaBN needs unlabelled scans from the target site")
            for layer, acc, state in zip(layers, moments, saved):
                if acc.count == 0:  # never reached by the forward pass: keep what it had
                    layer.load_state_dict(state)
                    continue
                mean, variance = acc.mean_and_variance()
                layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
                layer.running_var.copy_(variance.to(layer.running_var.dtype))
        except BaseException:
            for layer, state in zip(layers, saved):
                layer.load_state_dict(state)
            raise
        finally:
            for hook in hooks:
                hook.remove()
            for layer, momentum in zip(layers, momenta):
                layer.momentum = momentum
    return seen


# --- Residual adapters -------------------------------------------------------------------------


class ResidualAdapter(nn.Module):
    """``x + up(relu(down(x)))`` on a feature map (B, channels, H, W), with 1x1 convolutions
    ``down`` (channels -> max(channels // reduction, 8)) and ``up`` (back to channels).

    ``up`` starts at zero (weight and bias), so the adapter is exactly the identity until it
    trains; ``down`` keeps PyTorch's default initialisation so that ``up`` gets a gradient.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}")
        hidden = max(channels // reduction, 8)
        self.down = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.up = nn.Conv2d(hidden, channels, kernel_size=1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class AdaptedStage(nn.Module):
    """A backbone stage followed by its adapter: ``adapter(stage(x))``."""

    def __init__(self, stage: nn.Module, adapter: ResidualAdapter) -> None:
        super().__init__()
        self.stage = stage
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.stage(x))


def _stage_output_shapes(model: XrayClassifier) -> list[torch.Size]:
    """Output shape of each stage in ``model.info.stages``, from one eval-mode forward pass of a
    dummy (1, in_channels, 64, 64) input; the model is left as it was."""
    shapes: dict[str, torch.Size] = {}
    handles = []
    for path in model.info.stages:
        def record(module: nn.Module, args: tuple, output: torch.Tensor, path: str = path) -> None:
            shapes[path] = output.shape
        handles.append(model.backbone.get_submodule(path).register_forward_hook(record))
    param = next(model.parameters())
    dummy = torch.zeros(1, model.in_channels, _DRY_RUN_SIZE, _DRY_RUN_SIZE, device=param.device, dtype=param.dtype)
    try:
        with _modes_kept(model), torch.no_grad():
            model.eval()
            model(dummy)
    finally:
        for handle in handles:
            handle.remove()
    for path in model.info.stages:
        if path not in shapes or len(shapes[path]) != 4:
            raise ValueError(f"{model.info.name}: stage {path} gives no (B, C, H, W) feature map for an adapter")
    return [shapes[path] for path in model.info.stages]


def add_adapters(model: XrayClassifier, *, reduction: int = 16) -> XrayClassifier:
    """Insert a ``ResidualAdapter`` after every stage of ``model.info.stages``, in place.

    Each stage module is replaced by ``AdaptedStage(stage, adapter)``, so the stage paths in
    ``model.info`` stay valid (they now include the stage's adapter), the stage's own parameters
    move under ``<stage>.stage.`` and the adapters' under ``<stage>.adapter.`` (every adapter
    parameter name contains "adapter"). The output is unchanged until the adapters train.
    ``model.adapter_reduction`` records ``reduction`` (1 or more) so that a saved model can be
    rebuilt before its weights load. Adding adapters twice is refused. Returns ``model``.
    """
    if model.adapter_reduction is not None:
        raise ValueError(f"{model.info.name} already has adapters (reduction {model.adapter_reduction})")
    param = next(model.parameters())
    for path, shape in zip(model.info.stages, _stage_output_shapes(model)):
        adapter = ResidualAdapter(shape[1], reduction).to(device=param.device, dtype=param.dtype)
        set_module(model.backbone, path, AdaptedStage(model.backbone.get_submodule(path), adapter))
    model.adapter_reduction = reduction
    return model


# --- DANN --------------------------------------------------------------------------------------


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-weight``.

    ``GradientReversal.apply(x, weight)``; ``weight`` (lambda, >= 0) is a float, not a tensor.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


class GradientReversalLayer(nn.Module):
    """``GradientReversal`` as a module; ``weight`` (lambda, 0 or more) may be set between steps,
    e.g. to ``dann_weight(progress)``."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    @property
    def weight(self) -> float:
        return self._weight

    @weight.setter
    def weight(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"the gradient-reversal weight must be finite and 0 or more, got {value}")
        self._weight = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GradientReversal.apply(x, self._weight)

    def extra_repr(self) -> str:
        return f"weight={self._weight}"


class DomainClassifier(nn.Module):
    """Pooled features (B, feature_dim) -> one domain logit per sample (B,): source 0, target 1.

    Two hidden layers of width ``hidden`` with ReLU and dropout (probability ``dropout`` in
    [0, 1)), as in Ganin & Lempitsky's domain classifier.
    """

    def __init__(self, feature_dim: int, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


def dann_weight(progress: float, gamma: float = 10.0) -> float:
    """The reversal weight ramp of Ganin & Lempitsky, 2 / (1 + exp(-gamma * progress)) - 1.

    ``progress``: fraction of training done, in [0, 1]; ``gamma`` > 0 sets how fast the weight
    rises from 0 (at 0) towards 1 (0.9866 halfway with the default 10).
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def domain_loss(domain_logits: torch.Tensor, n_source: int) -> torch.Tensor:
    """Binary cross-entropy of a domain classifier's logits (B,) whose first ``n_source``
    images come from the source site (label 0) and the rest from the target site (label 1)."""
    domains = torch.ones_like(domain_logits)
    domains[:n_source] = 0.0
    return F.binary_cross_entropy_with_logits(domain_logits, domains)
