"""The training loop: epochs in order, callbacks in order, stopping on a callback's word."""

from __future__ import annotations

from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.epoch import EpochRecord
from medxfer.pipeline.training.loop import Callback, TrainingLoop


class FakeRunner:
    def __init__(self, events: list) -> None:
        self.events = events

    def run(self, epoch: int, batches, val) -> EpochRecord:
        self.events.append(("run", epoch, batches))
        return EpochRecord(epoch + 1, 0.0, 0.5, 0.0, 0.5, {}, 1.0, 1.0)


class Recorder(Callback):
    def __init__(self, name: str, events: list, stop_after: int | None = None) -> None:
        self.name, self.events, self.stop_after, self.seen = name, events, stop_after, 0

    def on_fit_start(self, loop) -> None:
        self.events.append((self.name, "start", loop.epoch))

    def on_epoch_end(self, loop, record) -> None:
        self.seen += 1
        self.events.append((self.name, record.epoch, loop.epoch))

    def on_fit_end(self, loop) -> None:
        self.events.append((self.name, "end", loop.epoch))

    @property
    def should_stop(self) -> bool:
        return self.stop_after is not None and self.seen >= self.stop_after


def loop_with(events: list, callbacks: list[Callback], epochs: int = 3) -> TrainingLoop:
    def batches(epoch: int) -> str:
        events.append(("batches", epoch))
        return f"batches of {epoch}"
    return TrainingLoop(FakeRunner(events), batches, None, callbacks, epochs=epochs, dist=Distributed())


def test_each_epoch_makes_its_batches_runs_then_calls_the_callbacks_in_order():
    events: list = []
    loop = loop_with(events, [])
    loop.callbacks = [Recorder("a", events), Recorder("b", events)]
    loop.fit()
    assert events[:2] == [("a", "start", 0), ("b", "start", 0)]
    assert events[2:6] == [("batches", 0), ("run", 0, "batches of 0"), ("a", 1, 1), ("b", 1, 1)]
    assert events[-2:] == [("a", "end", 3), ("b", "end", 3)] and loop.epoch == 3


def test_a_callback_stops_the_run_and_a_resumed_loop_starts_at_its_epoch():
    events: list = []
    loop = loop_with(events, [Recorder("a", events, stop_after=1)], epochs=5)
    loop.load_state_dict({"epoch": 2, "history": []})
    loop.fit()
    assert [e for e in events if e[0] == "run"] == [("run", 2, "batches of 2")]
    assert loop.state_dict() == {"epoch": 3}
