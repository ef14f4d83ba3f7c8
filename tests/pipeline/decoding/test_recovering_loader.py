"""A decoding worker that dies costs only the file it was reading; the rest are delivered."""

from __future__ import annotations

import os
import signal

import pytest
from torch.utils.data import Dataset

from medxfer.pipeline.decoding.recovering_loader import WORKER_DIED, RecoveringLoader


class Files(Dataset):
    """Items ``(index, "ok")``; reading a file in ``deadly`` kills the process reading it."""

    def __init__(self, indices, in_flight, deadly=(13, 29)):
        self.indices, self.in_flight, self.deadly = list(indices), in_flight, deadly

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        index = self.indices[position]
        if self.in_flight is not None:
            self.in_flight.start(index)
        try:
            if index in self.deadly and self.in_flight is not None:
                os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does
            return index, "ok"
        finally:
            if self.in_flight is not None:
                self.in_flight.done()

    def failed_item(self, index, reason):
        return index, reason


@pytest.mark.parametrize("workers", [1, 2])
def test_only_the_files_being_read_when_workers_died_are_lost(workers):
    items = [item for batch in RecoveringLoader(Files, range(40), batch_size=4, workers=workers) for item in batch]
    assert sorted(index for index, _ in items) == list(range(40))  # each file exactly once
    assert sorted(index for index, status in items if status != "ok") == [13, 29]
    assert {status for index, status in items if index in (13, 29)} == {WORKER_DIED}


def test_without_workers_every_file_is_delivered_in_order():
    items = [item for batch in RecoveringLoader(Files, range(10), batch_size=3, workers=0) for item in batch]
    assert items == [(i, "ok") for i in range(10)]


def test_a_dead_worker_is_off_pytorch_s_registry_before_the_next_batch_is_used():
    """PyTorch's SIGCHLD handler raises the death of any worker still registered, in whatever runs
    when some other child process exits. Once the lost file is reported, the failed loader must
    be shut down, so that nothing outside the loop can be interrupted by that death."""
    from torch.utils.data._utils.signal_handling import _error_if_any_worker_fails

    seen = []
    before = signal.signal(signal.SIGCHLD, lambda *_: seen.append("caller's handler"))
    try:
        for batch in RecoveringLoader(Files, range(20), batch_size=4, workers=1):
            if any(status != "ok" for _, status in batch):
                _error_if_any_worker_fails()  # raised "DataLoader worker (pid ...) is killed by signal" before
            assert signal.getsignal(signal.SIGCHLD) is signal.SIG_DFL  # deaths are noticed inside the loop
        os.kill(os.getpid(), signal.SIGCHLD)  # the caller's handler is back (PyTorch's may run first)
        assert seen == ["caller's handler"]
    finally:
        signal.signal(signal.SIGCHLD, before)


def test_an_error_that_is_not_a_worker_s_death_is_raised_as_it_is():
    class Failing(Files):
        def __getitem__(self, position):
            raise RuntimeError("can't allocate memory")  # what PyTorch raises for a tensor too large

    with pytest.raises(RuntimeError, match="can't allocate memory"):
        list(RecoveringLoader(Failing, range(8), batch_size=4, workers=1))
