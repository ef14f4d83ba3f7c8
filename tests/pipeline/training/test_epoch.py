"""One epoch: training pass, validation pass and their record."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.batches import EpochSchedule, TrainBatches
from medxfer.pipeline.training.epoch import EpochRunner
from medxfer.pipeline.training.execution import Execution
from medxfer.pipeline.training.optimisation import Optimisation
from medxfer.pipeline.training.prefix_cache import Inputs
from medxfer.pipeline.training.steps import SupervisedStep, TrainableNet

CPU = Execution(torch.device("cpu"), Distributed())


def runner(n_classes: int, head: nn.Linear | None = None, lr: float = 0.0) -> tuple[EpochRunner, Inputs]:
    """A runner whose network is a linear head on 2-D features (at ``lr`` 0 it never moves)."""
    torch.manual_seed(0)
    head = head or nn.Linear(2, n_classes)
    net = TrainableNet(nn.Identity(), nn.Sequential(head))
    labels = torch.arange(8) % n_classes
    train = Inputs(labels, views=[torch.randn(8, 2)])
    schedule = EpochSchedule(labels, batch_size=4, seed=0, balanced=False, dist=CPU.dist)
    optimisation = Optimisation(torch.optim.SGD([{"params": net.parameters(), "lr": lr, "name": "head"}]), grad_clip=0)
    optimisation.start(warmup=0, total=4, first_step=0)
    step = SupervisedStep(net, torch.ones(n_classes), label_smoothing=0.0, per_rank=4, execution=CPU)
    return EpochRunner(net, net, step, optimisation, schedule, seed=0, epochs=2, execution=CPU), train


def fixed_head(weights: list[list[float]], bias: list[float]) -> nn.Linear:
    head = nn.Linear(2, len(bias))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weights))
        head.bias.copy_(torch.tensor(bias))
    return head


def test_validation_auroc_ranks_logits_beyond_where_softmax_saturates():
    # logits (0, 40) ... (0, 70): float32 softmax rounds all four to P = 1.0 and would tie them
    run, train = runner(2, fixed_head([[0.0, 0.0], [10.0, 0.0]], [0.0, 0.0]))
    val = Inputs(torch.tensor([0, 0, 1, 1]), views=[torch.tensor([[4.0, 0], [5, 0], [6, 0], [7, 0]])])
    _, logits = run.validate(val)
    assert torch.softmax(torch.from_numpy(logits), 1)[:, 1].unique().numel() == 1
    record = run.run(0, TrainBatches(train, run.schedule, workers=0)(0), val)
    assert record.val_auroc == 1.0


def test_three_class_auroc_is_macro_one_vs_rest_and_nan_when_a_class_is_missing():
    run, train = runner(3, fixed_head([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], [0.0, 0.0, 0.0]))
    features = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]] * 2)
    record = run.run(0, TrainBatches(train, run.schedule, workers=0)(0), Inputs(torch.tensor([0, 1, 2] * 2),
                                                                                views=[features]))
    assert record.val_auroc == 1.0
    one_class = Inputs(torch.tensor([1, 1]), views=[features[:2]])
    assert math.isnan(run.run(1, TrainBatches(train, run.schedule, workers=0)(1), one_class).val_auroc)


def test_the_record_is_a_history_row_in_column_order():
    run, train = runner(2, lr=0.1)
    val = Inputs(torch.tensor([0, 1, 0, 1]), views=[torch.randn(4, 2)])
    record = run.run(0, TrainBatches(train, run.schedule, workers=0)(0), val)
    row = record.row()
    assert list(row) == ["epoch", "train_loss", "train_auroc", "val_loss", "val_auroc", "lr_head", "seconds",
                         "images_per_second"]
    assert row["epoch"] == 1 and row["lr_head"] == 0.1 * 0.5 * (1 + math.cos(math.pi / 4))  # the last step's rate
    loss, logits = run.validate(val)
    assert row["val_loss"] == loss and np.isfinite(logits).all()


def test_training_moves_the_weights_and_is_repeatable_from_the_seed():
    weights = []
    for _ in range(2):
        run, train = runner(2, lr=0.5)
        run.train(0, TrainBatches(train, run.schedule, workers=0)(0))
        weights.append(run.net.head[0].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], runner(2)[0].net.head[0].weight)
