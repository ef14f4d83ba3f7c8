"""Where and how the training's tensors are computed: device, processes, precision, batching.

``Execution`` gathers what every part of a run needs to move inputs and run forward passes the
same way: the torch device, the ``torchrun`` process group, channels-last memory, bfloat16
autocast on CUDA and the number of DataLoader workers. It also runs the whole network on plain
images (``logits``), each process a share, as the prefix cache and the finishing evaluation do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.transforms.pipeline import XrayPipeline

EVAL_BATCH = 64  # images per forward pass in eval mode on a GPU, and per AdaBN batch
# Images per forward pass of the frozen prefix. On CPU small channels-last batches stay in the
# caches: measured on the 2-core development machine at 224 pixels, EfficientNet-Lite0's
# prefix ran at ~85 images/s in channels-last batches of 8, ~40 in batches of 32 and ~20 in
# contiguous batches of 64.
CPU_PREFIX_BATCH = 8


@dataclass(frozen=True)
class Execution:
    """How a run computes: ``device``; ``dist``, the process group (one process outside
    ``torchrun``); ``channels_last`` memory for 4-D inputs; ``amp``, bfloat16 autocast (CUDA only);
    ``workers``, DataLoader worker processes for augmentation (0: in the training process)."""

    device: torch.device
    dist: Distributed
    channels_last: bool = False
    amp: bool = False
    workers: int = 0

    @property
    def forward_batch(self) -> int:
        """Images per forward pass outside the training steps."""
        return CPU_PREFIX_BATCH if self.device.type == "cpu" else EVAL_BATCH

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast when asked for and on CUDA; a no-op otherwise."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and self.amp)

    @torch.no_grad()
    def logits(self, model: nn.Module, images: Sequence[torch.Tensor], pipeline: XrayPipeline,
               n_outputs: int) -> np.ndarray:
        """(n, ``n_outputs``) float32 logits of the whole network on ``images`` (in eval mode,
        full precision), each process computing a share."""
        model.eval()
        shard = list(self.dist.shard(len(images)))
        chunks = [model(self.to_device(batch)).float().cpu()
                  for batch in plain_batches([images[i] for i in shard], pipeline, self.forward_batch)]
        local = torch.cat(chunks) if chunks else torch.empty(0, n_outputs)
        return self.dist.gather_rows(local, len(images)).numpy()


def plain_batches(images: Sequence[torch.Tensor], pipeline: XrayPipeline, size: int) -> Iterator[torch.Tensor]:
    """``images`` through ``pipeline`` (unseeded: a plain pipeline draws nothing), stacked in
    batches of ``size`` in their order."""
    for start in range(0, len(images), size):
        yield torch.stack([pipeline(image) for image in images[start : start + size]])


def shuffled_batches(images: Sequence[torch.Tensor], pipeline: XrayPipeline, seed: int) -> Iterator[torch.Tensor]:
    """Plain images in batches of ``EVAL_BATCH``, shuffled with ``seed``: what
    ``adapt_batchnorm`` asks for."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    return plain_batches([images[i] for i in order], pipeline, EVAL_BATCH)


def one_thread(batches: Iterator) -> Iterator:
    """``batches`` produced on one thread. Augmenting in the training process (no loader
    workers, as on 2 cores) is faster on one thread than on the network's two: the standard
    preset ran at 142 against 114 images/s at 224 px, its many small operations gaining nothing
    from a second thread but its synchronisation."""
    threads = torch.get_num_threads()
    while True:
        torch.set_num_threads(1)
        try:
            batch = next(batches)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(threads)
        yield batch
