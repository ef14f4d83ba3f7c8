"""The loss of one training step: supervised, or with DANN's domain loss.

Class imbalance is handled by a class-weighted loss (weights n / (K n_k), scikit-learn's
"balanced") or by sampling classes equally often (``batches``). Under ``torchrun`` the loss of
each process's slice is divided by the per-process batch size, so that DistributedDataParallel's
gradient average is the global batch's mean, and DANN's target batch is drawn once for all
processes and sliced alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from medxfer.pipeline.models.adaptation import GradientReversalLayer, dann_weight, domain_loss
from medxfer.pipeline.training.execution import Execution
from medxfer.pipeline.training.prefix_cache import Inputs
from medxfer.transforms.loading import derived_seed

TARGET_SEED = 13  # purpose of the derived seeds of DANN's target batches


class TrainableNet(nn.Module):
    """What the loop trains: the backbone's suffix and the head, plus the DANN domain
    classifier when there is one. ``forward`` returns the logits, and the domain logits of
    every image seen through a gradient-reversal layer of weight ``reversal`` when given
    (inside ``forward``, so DistributedDataParallel averages the domain classifier's gradients
    too)."""

    def __init__(self, suffix: nn.Module, head: nn.Module, domain: nn.Module | None = None) -> None:
        super().__init__()
        self.suffix, self.head, self.domain = suffix, head, domain

    def forward(self, x: torch.Tensor, reversal: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.suffix(x)
        if reversal is None or self.domain is None:
            return self.head(features), None
        return self.head(features), self.domain(GradientReversalLayer(reversal)(features))


def imbalance_weights(labels: torch.Tensor, n_classes: int, imbalance: str) -> torch.Tensor:
    """Per-class loss weights: n / (K n_k) for ``weighted`` (scikit-learn's "balanced": every
    class contributes equally and the weights average 1 over the training images), else 1."""
    if imbalance != "weighted":
        return torch.ones(n_classes)
    weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=labels.numpy())
    return torch.tensor(weights, dtype=torch.float32)


@dataclass(frozen=True)
class StepOutput:
    """The step's loss (a scalar to back-propagate) and the float32 logits (B, K) of its source images."""

    loss: torch.Tensor
    logits: torch.Tensor


class SupervisedStep:
    """Class-weighted cross-entropy (``class_weights`` (K,), ``label_smoothing`` in [0, 1)) of
    ``net`` (a ``TrainableNet``, possibly wrapped in DistributedDataParallel) on a batch,
    summed and divided by ``per_rank``, the per-process batch size."""

    def __init__(self, net: nn.Module, class_weights: torch.Tensor, *, label_smoothing: float, per_rank: int,
                 execution: Execution) -> None:
        self.net, self.label_smoothing, self.per_rank, self.execution = net, label_smoothing, per_rank, execution
        self.class_weights = class_weights.to(execution.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> StepOutput:
        """The loss of source inputs ``x`` with class indices ``y`` at 0-based ``epoch`` and
        global ``step``."""
        x, y = self.execution.to_device(x), y.to(self.execution.device)
        n_source = len(x)
        x, reversal = self._with_target(x, epoch, step)
        with self.execution.autocast():
            logits, domain_logits = self.net(x, reversal)
        logits = logits[:n_source].float()
        per_image = F.cross_entropy(logits, y, reduction="none", label_smoothing=self.label_smoothing)
        loss = (per_image * self.class_weights[y]).sum() / self.per_rank
        if domain_logits is not None:
            loss = loss + domain_loss(domain_logits.float(), n_source)
        return StepOutput(loss, logits)

    def _with_target(self, x: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, float | None]:
        """The network's input and gradient-reversal weight (None: no domain classifier)."""
        return x, None


class DannStep(SupervisedStep):
    """``SupervisedStep`` plus DANN (Ganin & Lempitsky 2015): each step appends as many target
    images (drawn from ``target`` with a seed derived from (``seed``, epoch, step)) as the batch
    has source images, and adds the domain classifier's binary cross-entropy, seen through a
    gradient reversal of weight ``weight`` times ``dann_weight``'s ramp over ``total_steps``."""

    def __init__(self, net: nn.Module, class_weights: torch.Tensor, *, label_smoothing: float, per_rank: int,
                 execution: Execution, target: Inputs, weight: float, total_steps: int, seed: int) -> None:
        super().__init__(net, class_weights, label_smoothing=label_smoothing, per_rank=per_rank, execution=execution)
        self.target, self.weight, self.total_steps, self.seed = target, weight, total_steps, seed

    def _with_target(self, x: torch.Tensor, epoch: int, step: int) -> tuple[torch.Tensor, float | None]:
        target = self.execution.to_device(self.target_batch(epoch, step, len(x)))
        return torch.cat([x, target]), self.weight * dann_weight(min(1.0, step / max(1, self.total_steps)))

    def target_batch(self, epoch: int, step: int, size: int) -> torch.Tensor:
        """This process's slice (``size`` images) of the step's target batch, drawn for all
        processes together."""
        dist = self.execution.dist
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, step, TARGET_SEED))
        chosen = torch.randint(len(self.target), (size * dist.world_size,), generator=generator)
        return self.target.rows(chosen[dist.rank * size : (dist.rank + 1) * size].tolist(), epoch)
