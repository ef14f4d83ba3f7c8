"""Running under ``torchrun``: process group, rank-0-only writing, gathering results.

``torchrun --nproc_per_node=N -m medxfer train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment;
``Distributed.from_environment`` joins them into one process group (NCCL on CUDA, Gloo on
CPU). Without those variables everything runs in one process and every helper here is a
no-op, so the training code has a single path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: ``rank`` of ``world_size`` (0 of 1 alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collective operations run: "cuda" for NCCL

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> Distributed:
        """Join the process group ``torchrun`` describes, if any (NCCL for a CUDA ``device``,
        Gloo otherwise); a single process when ``WORLD_SIZE`` is unset or 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            gpus = torch.cuda.device_count()
            if local_rank >= gpus:
                raise ValueError(f"process {local_rank} of this machine needs GPU {local_rank}, and torch sees {gpus}; "
                                 f"start at most {gpus} process(es) per machine (torchrun --nproc_per_node={gpus}) "
                                 "or train on the CPU (--device cpu)")
            # The GPU is chosen before the group is formed, and named to NCCL, so that no
            # collective guesses its device from the global rank.
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            if device.type == "cuda":
                dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
            else:
                dist.init_process_group(backend="gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   device=f"cuda:{local_rank}" if device.type == "cuda" else "cpu")

    def shard(self, n: int) -> range:
        """The indices 0..n-1 this process handles when work is split by rank (every
        ``world_size``-th, starting at ``rank``)."""
        return range(self.rank, n, self.world_size)

    def gather_rows(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        """Reassemble a tensor whose rows each process computed for ``shard(n)``: returns the
        (n, ...) tensor in the original order, on every process."""
        if not self.enabled:
            return rows
        per_rank = -(-n // self.world_size)
        padded = torch.zeros((per_rank, *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        padded[: len(rows)] = rows.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        out = torch.empty((n, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
        for rank, part in enumerate(parts):
            count = len(range(rank, n, self.world_size))
            out[rank::self.world_size] = part[:count].to(rows.device)
        return out

    def gather_all(self, rows: torch.Tensor) -> torch.Tensor:
        """Every process's ``rows`` (the same shape on each), concatenated in rank order."""
        if not self.enabled:
            return rows
        parts = [torch.empty_like(rows, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(parts, rows.to(self.device))
        return torch.cat([part.to(rows.device) for part in parts])

    def all_true(self, value: bool) -> bool:
        """True on every process when ``value`` is true on every process (a barrier too), so that
        all stop together when one cannot go on."""
        if not self.enabled:
            return value
        flag = torch.tensor([1 if value else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
