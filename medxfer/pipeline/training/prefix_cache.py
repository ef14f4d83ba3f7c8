"""What feeds the trainable part of the network: cached prefix outputs, or images augmented on the fly.

With a frozen prefix and caching on, the prefix runs once per image, on ``cache_views``
augmented views of each training image and on the plain validation images, and the loop trains
the suffix and head from those stored activations: epoch e reads view e mod ``cache_views``.
This is what makes CPU training fast; the trained network is the same network, saved whole.
Without a prefix (or with ``cache: off``) images are augmented on the fly every epoch (in
DataLoader workers when there are cores to spare). The prefix cache is computed by all
processes (each a share) and gathered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from medxfer.pipeline.models.classifier import XrayClassifier
from medxfer.pipeline.models.prefix import split_backbone
from medxfer.pipeline.training.data import TrainingData
from medxfer.pipeline.training.execution import Execution, one_thread
from medxfer.transforms.loading import AugmentedDataset
from medxfer.transforms.pipeline import XrayPipeline


@dataclass(frozen=True)
class Inputs:
    """Inputs of one set of images for the trainable part: cached prefix outputs (``views``,
    one (n, ...) tensor per augmented view) or images augmented on the fly (``dataset``, read
    with ``(epoch, index)`` keys); ``labels`` (n,) class indices, ``None`` for the target site."""

    labels: torch.Tensor | None
    views: list[torch.Tensor] | None = None
    dataset: AugmentedDataset | None = None

    def __len__(self) -> int:
        return len(self.views[0]) if self.views is not None else len(self.dataset)

    def subset(self, indices: list[int]) -> Inputs:
        """The inputs of images ``indices`` only (cached rows copied, never recomputed)."""
        labels = None if self.labels is None else self.labels[indices]
        if self.views is not None:
            return Inputs(labels, views=[view[indices] for view in self.views])
        images = [self.dataset.images[i] for i in indices]
        own = None if self.dataset.labels is None else [self.dataset.labels[i] for i in indices]
        return Inputs(labels, dataset=AugmentedDataset(images, own, self.dataset.pipeline, seed=self.dataset.seed))

    def rows(self, indices: list[int], epoch: int = 0) -> torch.Tensor:
        """The inputs of images ``indices`` in ``epoch``, stacked: view ``epoch`` mod the number
        of views, or each image's augmentation drawn for ``epoch``."""
        if self.views is not None:
            return self.views[epoch % len(self.views)][indices]
        return torch.stack([self._image(epoch, i) for i in indices])

    def _image(self, epoch: int, index: int) -> torch.Tensor:
        item = self.dataset[(epoch, index)]
        return item if self.dataset.labels is None else item[0]


@dataclass(frozen=True)
class LoopInputs:
    """The trainable part of the backbone (the suffix; the whole backbone without a cache) and
    what feeds it: training and validation inputs, and the target site's for DANN."""

    suffix: nn.Module
    train: Inputs
    val: Inputs
    target: Inputs | None


def build_inputs(model: XrayClassifier, data: TrainingData, frozen: int, *, plain: XrayPipeline,
                 augment: XrayPipeline, views: int, seed: int, dann: bool, execution: Execution,
                 log: Callable[[str], None]) -> LoopInputs:
    """Cached prefix outputs when ``frozen`` stages are cached (``views`` augmented views of the
    training images when ``augment`` augments, else one), else images augmented on the fly;
    the DANN target inputs when ``dann``."""
    train_images, val_images = data.split_images("train"), data.split_images("val")
    train_labels, val_labels = data.split_labels("train"), data.split_labels("val")
    if not frozen:
        train = Inputs(train_labels, dataset=AugmentedDataset(train_images, train_labels.tolist(), augment, seed=seed))
        val = Inputs(val_labels, dataset=AugmentedDataset(val_images, None, plain, seed=seed))
        target = Inputs(None, dataset=AugmentedDataset(data.target, None, augment, seed=seed)) if dann else None
        return LoopInputs(model.backbone, train, val, target)
    prefix, suffix = split_backbone(model, frozen)
    views = views if augment.augments else 1
    log(f"computing the frozen part of the network once: {views} view(s) of "
        f"{len(train_images)} training images, {len(val_images)} validation images")
    start = time.perf_counter()
    train = Inputs(train_labels, views=[prefix_outputs(prefix, train_images, augment, v, seed=seed, execution=execution)
                                        for v in range(views)])
    val = Inputs(val_labels, views=[prefix_outputs(prefix, val_images, plain, 0, seed=seed, execution=execution)])
    # Target images are augmented like the source's, so the domain classifier cannot tell the
    # sites apart by augmentation alone.
    target = (Inputs(None, views=[prefix_outputs(prefix, data.target, augment, 0, seed=seed, execution=execution)])
              if dann else None)
    log(f"  done in {time.perf_counter() - start:.1f} s")
    return LoopInputs(suffix, train, val, target)


@torch.no_grad()
def prefix_outputs(prefix: nn.Module, images: Sequence[torch.Tensor], pipeline: XrayPipeline, view: int, *,
                   seed: int, execution: Execution) -> torch.Tensor:
    """Prefix activations (n, ...) of every image, view ``view`` of the augmentation (seeded
    from ``seed``), computed by all processes, each for its share, and gathered."""
    dist = execution.dist
    shard = list(dist.shard(len(images)))
    dataset = AugmentedDataset(images, None, pipeline, seed=seed)
    loader = DataLoader(dataset, batch_size=execution.forward_batch, sampler=[(view, i) for i in shard],
                        num_workers=execution.workers if pipeline.augments else 0)
    prefix.eval()
    batches = loader if loader.num_workers else one_thread(iter(loader))
    outputs = [prefix(execution.to_device(x)).float().cpu() for x in batches]
    local = torch.cat(outputs) if outputs else torch.empty(0)
    if not outputs:  # a process with no share still needs the shape to gather
        probe = prefix(execution.to_device(dataset[(view, 0)][None])).float().cpu()
        local = probe[:0]
    return dist.gather_rows(local, len(images))
