"""The training step's loss: class weights, label smoothing, and DANN's domain loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medxfer.pipeline.models.adaptation import DomainClassifier, dann_weight
from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.execution import Execution
from medxfer.pipeline.training.prefix_cache import Inputs
from medxfer.pipeline.training.steps import DannStep, SupervisedStep, TrainableNet, imbalance_weights

CPU = Execution(torch.device("cpu"), Distributed())


def net(domain: bool = False) -> TrainableNet:
    torch.manual_seed(0)
    return TrainableNet(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 2)),
                        DomainClassifier(8, hidden=16, dropout=0.0) if domain else None)


def dann_step(model: TrainableNet, target: torch.Tensor, *, weight: float = 1.0, execution: Execution = CPU,
              per_rank: int = 4) -> DannStep:
    return DannStep(model, torch.ones(2), label_smoothing=0.0, per_rank=per_rank, execution=execution,
                    target=Inputs(None, views=[target]), weight=weight, total_steps=10, seed=0)


def test_class_weights_are_balanced_and_average_one():
    labels = torch.tensor([0] * 30 + [1] * 6)
    weights = imbalance_weights(labels, 2, "weighted")
    torch.testing.assert_close(weights, torch.tensor([36 / 60, 36 / 12]))
    assert weights[labels].mean().item() == pytest.approx(1.0)
    # Each class then contributes equally to the loss: 30 x 0.6 == 6 x 3.0.
    assert (weights[labels] * (labels == 0)).sum().item() == pytest.approx((weights[labels] * (labels == 1)).sum().item())
    assert torch.equal(imbalance_weights(labels, 2, "none"), torch.ones(2))


def test_supervised_loss_is_the_weighted_sum_over_the_per_process_batch():
    model, x, y = net(), torch.randn(4, 6), torch.tensor([0, 1, 1, 0])
    weights = torch.tensor([0.5, 2.0])
    out = SupervisedStep(model, weights, label_smoothing=0.1, per_rank=4, execution=CPU)(x, y, 0, 0)
    expected = (F.cross_entropy(model(x)[0], y, reduction="none", label_smoothing=0.1) * weights[y]).sum() / 4
    torch.testing.assert_close(out.loss, expected)
    assert out.logits.shape == (4, 2)


def test_dann_adds_the_domain_loss_and_trains_suffix_head_and_domain_classifier():
    model, x, y = net(domain=True), torch.randn(4, 6), torch.tensor([0, 1, 1, 0])
    out = dann_step(model, torch.randn(10, 6) + 1.0)(x, y, 0, 5)
    task = F.cross_entropy(out.logits, y, reduction="sum") / 4
    assert out.loss.item() > task.item()  # the domain classifier's cross-entropy is added
    out.loss.backward()
    for module in (model.suffix, model.head, model.domain):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_the_backbone_gets_the_domain_gradient_reversed_and_ramped():
    """Only the domain loss flows back when the head is cut off: the suffix's gradient is
    -weight x ramp times the one the same loss gives without reversal."""
    model = net(domain=True)
    x, target = torch.randn(4, 6), torch.randn(10, 6)
    step = dann_step(model, target, weight=0.5)
    out = step(x, torch.tensor([0, 1, 1, 0]), 0, 5)
    domain_part = out.loss - F.cross_entropy(out.logits, torch.tensor([0, 1, 1, 0]), reduction="sum") / 4
    reversed_grad = torch.autograd.grad(domain_part, model.suffix[0].weight)[0]
    features = model.suffix(torch.cat([x, step.target_batch(0, 5, 4)]))
    logits = model.domain(features)
    plain = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0] * 4 + [1.0] * 4))
    plain_grad = torch.autograd.grad(plain, model.suffix[0].weight)[0]
    torch.testing.assert_close(reversed_grad, -0.5 * dann_weight(0.5) * plain_grad, rtol=1e-4, atol=1e-7)


def test_target_batches_of_two_processes_are_slices_of_one_draw():
    target = torch.arange(50, dtype=torch.float32)[:, None].expand(50, 6)
    one = dann_step(net(domain=True), target, per_rank=8).target_batch(2, 7, 8)
    ranks = [dann_step(net(domain=True), target, execution=Execution(torch.device("cpu"), Distributed(rank=r, world_size=2)),
                       per_rank=4).target_batch(2, 7, 4) for r in range(2)]
    assert torch.equal(torch.cat(ranks), one)
    assert not torch.equal(one, dann_step(net(domain=True), target).target_batch(2, 8, 8))
