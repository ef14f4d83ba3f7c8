"""The folder a training run writes: refusing the wrong one, its set-up files, undoing a failed start.

A new run goes into a new or empty folder; ``--resume`` needs a run that has not finished, with
the same settings and the same data. A new run that fails before its first epoch ends leaves
nothing behind, so the same command can simply run again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from medxfer.csvfiles import write_csv
from medxfer.datasets.sources import ScanSet
from medxfer.datasets.splits import write_splits_csv
from medxfer.pipeline.runs.config import TrainConfig, diff_configs, load_config, write_config
from medxfer.pipeline.runs.environment import environment_info, records_manifest_hash, write_environment
from medxfer.pipeline.runs.files import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    SPLITS_FILE,
    UNREADABLE_FILE,
)
from medxfer.pipeline.runtime.distributed import Distributed


class RunDirectoryError(ValueError):
    """The run directory cannot be used as asked (an existing run without --resume, or the reverse)."""


class RunDirectory:
    """The run folder ``path`` of one training call; ``resume``: continue the run in it.
    Every process checks; rank 0 alone writes (``dist``)."""

    def __init__(self, path: str | Path, *, resume: bool, dist: Distributed) -> None:
        self.path, self.resume, self.dist = Path(path), resume, dist
        self.written_: list[Path] = []  # set-up files this call wrote, removed if it fails before training

    def file(self, name: str) -> Path:
        return self.path / name

    def check(self, config: TrainConfig) -> TrainConfig:
        """The configuration to train with: ``config`` for a new run, the saved one when resuming
        (after checking that ``config`` asks for the same run). Raises ``RunDirectoryError``."""
        try:
            return self._check_alone(config)
        finally:
            # Rank 0 writes config.yaml next: every process must have looked at the folder first.
            self.dist.barrier()

    def _check_alone(self, config: TrainConfig) -> TrainConfig:
        has_run = self.file(CONFIG_FILE).is_file()
        if self.resume and not has_run:
            raise RunDirectoryError(f"{self.path}: no run to resume here (no {CONFIG_FILE}); start one without --resume")
        if self.resume and not self.file(CHECKPOINT_FILE).is_file() and self.file(METRICS_FILE).is_file():
            raise RunDirectoryError(f"{self.path}: this run has already finished; there is nothing to resume")
        if not self.resume and has_run:
            raise RunDirectoryError(f"{self.path} already holds a run; continue it with --resume or choose another --out")
        if not self.resume and self.path.exists():
            if not self.path.is_dir():
                raise RunDirectoryError(f"--out {self.path} is a file; a run is written into a folder")
            if any(self.path.iterdir()):
                raise RunDirectoryError(f"--out {self.path} holds files that are not a medxfer run: a new run goes "
                                        "into a new or empty folder")
        if not self.resume:
            return config
        saved = load_config(self.file(CONFIG_FILE))
        wanted = config
        for key in ("epochs", "cache_views", "validation", "selection"):  # "auto" was resolved when the run started
            if getattr(wanted, key) == "auto":
                wanted = replace(wanted, **{key: getattr(saved, key)})
        # The folder may be named differently from another working directory, and the number of
        # loader workers changes no result.
        changed = {k: v for k, v in diff_configs(saved, wanted).items() if k not in ("out", "workers")}
        if changed:
            items = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise RunDirectoryError(f"{self.path}: --resume continues the run as configured; these settings differ: {items}")
        return saved

    def write_setup(self, config: TrainConfig, scans: ScanSet, device: torch.device,
                    folds: Sequence[int] | None = None) -> None:
        """The set-up files: configuration (new runs), splits (with each image's cross-fitting
        fold, ``folds``), unreadable files, environment. Raises ``RunDirectoryError`` when a
        resumed run's data changed."""
        data_hash = records_manifest_hash(scans)
        saved_environment = self.file(ENVIRONMENT_FILE)
        if self.resume and saved_environment.is_file() and data_hash != json.loads(
                saved_environment.read_text(encoding="utf-8")).get("data_hash"):
            raise RunDirectoryError(
                f"{config.data} is not the data this run started on (its files, labels, splits or sizes "
                "changed), so the run cannot be resumed; start a new run"
            )
        if self.dist.is_main:
            if not self.path.exists():
                self.written_.append(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                self.written_ += [path for path in (self.file(name) for name in (
                    CONFIG_FILE, SPLITS_FILE, ENVIRONMENT_FILE, UNREADABLE_FILE, HISTORY_FILE)) if not path.exists()]
                write_config(config, self.file(CONFIG_FILE))
            write_splits_csv(scans, self.file(SPLITS_FILE), folds)
            if scans.unreadable:
                write_csv(self.file(UNREADABLE_FILE), ("path", "reason"),
                          [{"path": scans.relative(u.path), "reason": u.reason} for u in scans.unreadable])
            write_environment(saved_environment, environment_info(
                seed=config.seed, device=device, data_hash=data_hash,
                extra={"world_size": self.dist.world_size, "resumed": self.resume}))
        self.dist.barrier()

    def environment(self) -> dict:
        """The saved record of the environment (``ENVIRONMENT_FILE``)."""
        return json.loads(self.file(ENVIRONMENT_FILE).read_text(encoding="utf-8"))

    def guarded(self, work: Callable[[], object]) -> object:
        """``work()``; if it fails before any epoch is saved (no checkpoint, no metrics), the
        set-up files this call wrote are removed, and the run folder if this call created it and
        nothing else is in it (a plain rerun would otherwise be refused as "already holds a run")."""
        try:
            return work()
        except BaseException:
            if not self.file(CHECKPOINT_FILE).is_file() and not self.file(METRICS_FILE).is_file():
                for path in sorted(self.written_, key=lambda p: p == self.path):
                    if path == self.path:
                        with contextlib.suppress(OSError):
                            path.rmdir()  # only when empty
                    else:
                        path.unlink(missing_ok=True)
                self.written_ = []
            raise
