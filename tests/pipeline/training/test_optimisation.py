"""The optimiser's groups and the per-step learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medxfer.pipeline.models.classifier import build_classifier
from medxfer.pipeline.models.finetune import apply_strategy
from medxfer.pipeline.training.optimisation import Optimisation, build_optimizer, learning_rate_schedule


def reference_rate(base: float, step: int, warmup: int, total: int) -> float:
    """The loop's former hand-written rate: base times (step + 1) / warmup during the warm-up,
    then base times 0.5 (1 + cos(pi (step - warmup) / (total - warmup)))."""
    if step < warmup:
        factor = (step + 1) / warmup
    else:
        factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return base * factor


def rates_per_step(bases: list[float], warmup: int, total: int, first_step: int = 0,
                   optimizer: torch.optim.Optimizer | None = None) -> list[list[float]]:
    """Each group's rate at every step from ``first_step`` to ``total``, as the loop uses them."""
    if optimizer is None:
        optimizer = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "lr": b} for b in bases])
    scheduler = learning_rate_schedule(optimizer, warmup=warmup, total=total, first_step=first_step)
    seen = []
    for _ in range(first_step, total):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize(("warmup", "total"), [(0, 12), (1, 7), (3, 20), (12, 40), (5, 5)])
def test_per_step_rates_equal_the_warmup_cosine_formula_exactly(warmup, total):
    bases = [3e-3, 3e-3 * 0.7, 3e-3 * 0.7**5]
    seen = rates_per_step(bases, warmup, total)
    assert seen == [[reference_rate(b, s, warmup, total) for b in bases] for s in range(total)]
    if warmup:
        assert seen[warmup - 1] == bases  # the peak, at the last warm-up step
    assert all(0 < r <= b for row in seen for r, b in zip(row, bases))


def test_a_resumed_schedule_continues_where_the_whole_one_was():
    bases = [1e-3, 5e-4]
    whole = rates_per_step(bases, warmup=4, total=30)
    parameters = [nn.Parameter(torch.zeros(1)) for _ in bases]
    first = torch.optim.AdamW([{"params": [p], "lr": b} for p, b in zip(parameters, bases)])
    rates_per_step(bases, warmup=4, total=30, optimizer=first)
    restored = torch.optim.AdamW([{"params": [p], "lr": b} for p, b in zip(parameters, bases)])
    restored.load_state_dict(first.state_dict())  # holds each group's initial_lr, as a checkpoint does
    assert rates_per_step(bases, warmup=4, total=30, first_step=18, optimizer=restored) == whole[18:]


def test_groups_decay_towards_the_input_and_the_domain_classifier_trains_at_the_head_rate():
    torch.manual_seed(0)
    model = apply_strategy(build_classifier("resnet18", 2, weights="random"), "partial", trainable_stages=2)
    domain = nn.Linear(512, 1)
    optimizer = build_optimizer(model, domain, lr=1e-2, layer_decay=0.5, weight_decay=0.1)
    rates = Optimisation(optimizer, grad_clip=0.0).rates()
    assert rates == {"stage 3": 1e-2 * 0.25, "stage 4": 1e-2 * 0.5, "head": 1e-2, "domain classifier": 1e-2}
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in [*model.parameters(), *domain.parameters()] if p.requires_grad}


def test_a_step_clips_the_global_gradient_norm_then_moves_the_schedule():
    weight = nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([{"params": [weight], "lr": 1.0, "name": "head"}])
    optimisation = Optimisation(optimizer, grad_clip=0.5)
    optimisation.start(warmup=2, total=4, first_step=0)
    assert optimisation.rates() == {"head": 0.5}
    optimisation.step((weight * torch.tensor([30.0, 40.0, 0.0])).sum())  # gradient norm 50
    torch.testing.assert_close(weight.detach(), -0.5 * 0.5 * torch.tensor([0.6, 0.8, 0.0]))
    assert optimisation.rates() == {"head": 1.0}
