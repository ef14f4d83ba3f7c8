"""Decoding in worker processes that survives a worker's death: the file it was reading becomes
an error, and the job carries on.

A file can kill the process decoding it: the kernel's out-of-memory killer stops a worker that
decodes a bomb the pixel budget could not see, and a decoder written in C or Rust can crash.
PyTorch's DataLoader then raises ``RuntimeError`` and the batches in flight are lost; left at
that, every rerun would stop at the same file. ``RecoveringLoader`` notes, in memory shared with
the workers, which file each worker is reading; when the loader fails it shuts the others down
(they finish the file in hand), turns the file of each dead worker (named by its process id in
PyTorch's message; every file still marked when that cannot be read) into an error item, and
starts a new loader over the files not yet delivered. Files decoded in the main process
(``workers=0``) are not protected: a process cannot outlive its own death.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torch.utils.data._utils import signal_handling

WORKER_DIED = ("the decoding process died while reading this file (killed, most often for lack of memory: "
               "see --max-pixels; or a crash in a decoder)")
_PIDS = re.compile(r"pid(?:\(s\))? ([\d, ]+)")
# PyTorch's messages for a worker that died: "exited unexpectedly" (noticed by the loader), "is killed by
# signal" / "exited unexpectedly with exit code" (raised by its SIGCHLD handler)
_DEATH = re.compile(r"DataLoader worker \(pid.*(exited unexpectedly|killed by signal)")


class InFlight:
    """Which file (index) each worker process is reading, and the worker's process id, in shared
    memory; -1 when idle. Set by the dataset in the worker, read by the main process."""

    def __init__(self, workers: int) -> None:
        self.files = torch.full((max(workers, 1),), -1, dtype=torch.long).share_memory_()
        self.pids = torch.full((max(workers, 1),), -1, dtype=torch.long).share_memory_()

    def start(self, index: int) -> None:
        info = get_worker_info()
        if info is not None:
            self.pids[info.id] = os.getpid()
            self.files[info.id] = index

    def done(self) -> None:
        info = get_worker_info()
        if info is not None:
            self.files[info.id] = -1

    def lost(self, message: str) -> list[int]:
        """The files the dead workers were reading: those of the process ids PyTorch's
        ``message`` names, or every file still marked when it names none of them."""
        marked = {int(pid): int(index) for pid, index in zip(self.pids.tolist(), self.files.tolist(), strict=True)
                  if index >= 0}
        named = {int(n) for match in _PIDS.findall(message) for n in re.findall(r"\d+", match)}
        dead = [index for pid, index in marked.items() if pid in named]
        return sorted(dead or marked.values())


class _DeathsNoticedByTheLoader:
    """PyTorch's SIGCHLD handler raises a worker's death in whatever the main thread runs at that
    moment (the network's forward pass, say), outside the loop over batches, where it cannot be
    told apart or recovered. While a ``RecoveringLoader`` runs, SIGCHLD keeps its default
    disposition instead: the DataLoader then notices the death itself the next time it waits for
    a batch (it checks its workers every 5 seconds) and raises there, inside the loop.

    PyTorch installs its handler once a process, when the first loader starts its workers,
    chained to the handler that was there. It is installed here first, so that no loader can
    install it mid-run, and it is what is restored on exit (still chained to any handler of the
    caller's). Where PyTorch lacks that function, ``after_start`` takes a handler installed by a
    loader back to the default. Only the main thread may change a signal handler; elsewhere
    nothing changes."""

    def __enter__(self) -> Self:
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            install = getattr(signal_handling, "_set_SIGCHLD_handler", None)  # not public; present since 0.4
            if install is not None:
                install()
            self.previous = signal.getsignal(signal.SIGCHLD)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        return self

    def after_start(self) -> None:
        if self.active and signal.getsignal(signal.SIGCHLD) is not signal.SIG_DFL:
            self.previous = signal.getsignal(signal.SIGCHLD)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def __exit__(self, *_: object) -> None:
        if self.active:
            signal.signal(signal.SIGCHLD, self.previous if self.previous is not None else signal.SIG_DFL)


def _shut_down(batches: Iterator) -> None:
    """Stop a failed loader's other workers (they finish, and unmark, the file in hand) and take
    its workers off PyTorch's SIGCHLD registry now, not whenever the iterator is collected.
    PyTorch offers no public call for this; its iterator's own clean-up is used where present."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _as_list(batch: list) -> list:
    return batch


class RecoveringLoader:
    """Batches (lists of items, ``batch_size`` each) of ``make_dataset(indices, in_flight)``,
    decoded in ``workers`` processes; see the module docstring for what happens when one dies.
    The dataset's items start with the file's index; it marks the file it reads in ``in_flight``
    and gives ``failed_item(index, reason)`` for a file it could not deliver. Every index yields
    exactly one item, in order within each loader."""

    def __init__(self, make_dataset: Callable[[Sequence[int], InFlight | None], Dataset],
                 indices: Sequence[int], *, batch_size: int, workers: int, **loader_options: Any) -> None:
        self.make_dataset, self.indices = make_dataset, list(indices)
        self.batch_size, self.workers, self.loader_options = batch_size, workers, loader_options

    def __iter__(self) -> Iterator[list]:
        with _DeathsNoticedByTheLoader() as deaths:
            remaining = self.indices
            while remaining:
                in_flight = InFlight(self.workers) if self.workers else None
                dataset = self.make_dataset(remaining, in_flight)
                loader = DataLoader(dataset, batch_size=self.batch_size, num_workers=self.workers,
                                    collate_fn=_as_list, **self.loader_options)
                delivered: set[int] = set()
                batches = iter(loader)
                deaths.after_start()
                try:
                    for batch in batches:
                        delivered.update(item[0] for item in batch)
                        yield batch
                    return
                except RuntimeError as exc:
                    if in_flight is None or not _DEATH.search(str(exc)):
                        raise  # not a worker's death (decoding errors are items): nothing to recover
                    # a new exception: the frames of PyTorch's (and of its cause) would keep the failed
                    # loader alive, and with it the dead worker's process id in PyTorch's SIGCHLD
                    # registry, whose handler would then raise that death in whatever runs next
                    failure = RuntimeError(str(exc))
                _shut_down(batches)
                del batches
                lost = [index for index in in_flight.lost(str(failure)) if index not in delivered]
                if not lost:
                    raise failure
                yield [dataset.failed_item(index, WORKER_DIED) for index in lost]
                remaining = [index for index in remaining if index not in delivered and index not in lost]
