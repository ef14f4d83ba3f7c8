"""Batch inference (``medxfer predict RUN_DIR SCANS --out predictions.csv``) over folders of scans.

Every scan is prepared exactly as in training (the run's reader settings, window, volume
strategy, resize and normalisation from ``model.json``), scored by the trained network, and
calibrated with the run's ``calibration.json``; the predicted label uses the threshold the run
validated (or one given). One CSV row per readable scan: its path relative to SCANS, the
calibrated probability of each class, the predicted label and non-identifying metadata
(modality, view, pseudonymous study key). Every file that cannot be read gets a row in
``<out stem>.errors.csv`` with the reason, and the job carries on.

Crash safety and resume: results are written in chunks, each an atomic part file in
``<out>.parts/`` holding the rows of a run of scans (by their index in the sorted file list).
Re-running the same command reads the parts (and an earlier complete output), skips the scans
already done and, once every scan is done, merges the parts into the output files atomically,
one row per scan, then removes the parts. Under ``torchrun`` each process takes every N-th scan
and writes its own parts; process 0 merges. Memory does not grow with the number of scans beyond
the file list and the CSV text (about 150 bytes per scan): images are decoded batch by batch in
DataLoader workers while the network runs, and rows go to disk chunk by chunk.

Volumes (NIfTI, multi-frame DICOM) are reduced to one 2D image as in training by default. With
``slices=True`` (``--slices``) every slice is scored instead, as the run's volume strategy
builds it around that slice ("middle" or "2.5d"), and the volume keeps one row in the
predictions, holding the per-slice calibrated probabilities aggregated (``mean``, or ``max`` of
the positive class for two classes) with the threshold applied to the aggregate; the slices'
own rows go to ``<out stem>.slices.csv``. The settings that shape the rows (model, calibration,
threshold, slices, aggregate) are recorded with the parts and in the sidecar: a rerun with
other settings is refused rather than mixing rows of two different jobs.

Safety: one job at a time per output (``job_claim``), no file outside the job's own replaced
(``prediction_files``), a worker that dies costs only the file it was reading
(``recovering_loader``), and outputs replaced all together or not at all.
"""

from __future__ import annotations

import heapq
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from medxfer import __version__
from medxfer.csvfiles import CsvText
from medxfer.datasets import budget
from medxfer.datasets.manifest import manifest_path, missing_reason, read_manifest_rows
from medxfer.datasets.sources import iter_files
from medxfer.filenames import shown
from medxfer.files import atomic_write_many
from medxfer.pipeline.decoding.scans import DecodeSettings, check_slice_strategy, prepared_batches
from medxfer.pipeline.evaluation.decision import Evaluator
from medxfer.pipeline.inference.job_claim import JobClaim
from medxfer.pipeline.inference.prediction_files import WRITTEN_BY, Parts, PredictionFiles
from medxfer.pipeline.inference.rows import META_COLUMNS, ScanItem, Scorer, part_rows
from medxfer.pipeline.runs.trained_run import TrainedRun
from medxfer.pipeline.runtime.device import resolve_device, resolve_workers
from medxfer.pipeline.runtime.distributed import Distributed

CHUNK = 256  # scans per part file
SLICE_AGGREGATES = ("mean", "max")


@dataclass(frozen=True)
class PredictSummary:
    """What a ``predict`` call did: scans ``predicted`` and ``failed`` in this call, scans
    ``already_done`` by an earlier (interrupted) call, and the files written."""

    predicted: int
    failed: int
    already_done: int
    out: Path
    errors: Path
    sidecar: Path


class NoScansError(ValueError):
    """SCANS holds no file to predict."""


class IncompleteJobError(ValueError):
    """Some scans have no row when the parts are merged (another process's parts are not here)."""


def list_scans(scans: Path) -> tuple[Path, list[Path], list[tuple[Path, str]]]:
    """The root that output paths are relative to, every file to predict (sorted), and the
    entries that cannot be predicted, with the reason (a folder that cannot be listed, a file a
    manifest names that is missing or not a regular file). ``scans`` is a folder (searched
    recursively) or a CSV manifest with a ``path`` column, whose paths are read as every command
    reads them (``manifest.manifest_path``)."""
    if scans.is_dir():
        files, problems = iter_files(scans)
        return scans, files, [(p.path, p.reason) for p in problems]
    if scans.is_file() and scans.suffix.lower() == ".csv":
        root = scans.parent.absolute()
        listed = sorted({manifest_path(root, row["path"], f"{scans}, row {number}")
                         for number, row in enumerate(read_manifest_rows(scans), start=2)})
        present = [p for p in listed if p.exists() and not p.is_dir()]
        return root, present, [(p, missing_reason(p)) for p in listed if p not in present]
    if not scans.exists():
        raise NoScansError(f"{scans}: no such folder or manifest")
    raise NoScansError(f"{scans}: not a folder of scans or a CSV manifest")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _threshold(evaluator: Evaluator, threshold: str | float) -> float | None:
    if threshold == "validated":
        return evaluator.threshold_
    if evaluator.positive_ is None:
        raise ValueError("--threshold FLOAT applies to two-class models; this one predicts the most probable class")
    value = float(threshold)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--threshold must be 'validated' or a probability from 0 to 1, got {threshold}")
    return value


def predict_scans(run_dir: str | Path, scans: str | Path, out: str | Path, *, batch_size: int = 32,
                  workers: int | str = "auto", device: str = "auto", threshold: str | float = "validated",
                  slices: bool = False, slice_aggregate: str = "mean", chunk: int = CHUNK,
                  max_pixels: int | None = None, log: Callable[[str], None] = print) -> PredictSummary:
    """Predict every scan under ``scans`` (folder or manifest) with the finished run ``run_dir``
    and write ``out`` (CSV), its ``.errors.csv`` and its ``.json`` sidecar; see the module
    docstring for resume and ``torchrun``. ``threshold``: "validated" (the run's) or a
    probability for the positive class; ``batch_size``: images per network call;
    ``slices``: score every slice of a volume and aggregate them per volume with
    ``slice_aggregate`` ("mean" of the calibrated probabilities, or "max" of the positive
    class's for two classes), writing the slices to ``.slices.csv``; ``chunk``: scans per part
    file (what a crash can lose); ``max_pixels``: the pixel budget, over which a file is an error
    (``medxfer.datasets.budget``)."""
    run_dir, scans = Path(run_dir), Path(scans)
    paths = PredictionFiles.for_out(Path(out))
    budget.max_pixels(max_pixels)
    run = TrainedRun.load(run_dir)
    evaluator = run.decision
    cut = _threshold(evaluator, threshold)
    if slice_aggregate not in SLICE_AGGREGATES:
        raise ValueError(f"--slice-aggregate must be one of {', '.join(SLICE_AGGREGATES)}, got {slice_aggregate!r}")
    if slices and slice_aggregate == "max" and evaluator.positive_ is None:
        raise ValueError("--slice-aggregate max takes the most suspicious slice of a two-class model; "
                         "this one has more classes: use mean")
    root, files, unlisted = list_scans(scans)
    files = [f for f in files if not paths.is_own(f)]  # an --out inside SCANS: its own files are not scans
    if not files and not unlisted:
        raise NoScansError(f"{scans}: no files to predict")
    torch_device = resolve_device(device)
    dist = Distributed.from_environment(torch_device)
    if dist.enabled:
        torch_device = torch.device(dist.device)
    job = _Job(run=run.to(torch_device), root=root, files=files, unlisted=unlisted, paths=paths, cut=cut,
               batch_size=batch_size,
               workers=max(1, resolve_workers(workers)) if workers == "auto" else int(workers),
               device=torch_device, dist=dist, chunk=chunk, aggregate=slice_aggregate if slices else None,
               max_pixels=max_pixels, log=log)
    try:
        return job.execute()
    finally:
        dist.close()


@dataclass(frozen=True, kw_only=True)
class _Job:
    """One ``predict_scans`` call, once its arguments are checked: the run (on ``device``), the
    scans (every file under ``root``, and the entries that could not be listed with the reason),
    the output files, the threshold ``cut`` (None: the most probable class), network batch size,
    decoding workers, process group, scans per part file, slice aggregate (None: one image per
    volume), pixel budget and where progress lines go."""

    run: TrainedRun
    root: Path
    files: list[Path]
    unlisted: list[tuple[Path, str]]
    paths: PredictionFiles
    cut: float | None
    batch_size: int
    workers: int
    device: torch.device
    dist: Distributed
    chunk: int
    aggregate: str | None
    max_pixels: int | None
    log: Callable[[str], None]

    def execute(self) -> PredictSummary:
        decode = self.run.decode_settings(self.max_pixels)
        if self.aggregate:
            try:
                check_slice_strategy(decode.volume_strategy)
            except ValueError as exc:
                raise ValueError(f"{self.run.directory}: {exc}") from None
        settings = {"model_sha256": self.run.weights_sha256, "calibration_sha256": self.run.calibration_sha256,
                    "threshold": self.cut, "slices": self.aggregate is not None, "slice_aggregate": self.aggregate,
                    # files over the budget are error rows, which a rerun does not retry: another budget is
                    # another job
                    "max_pixels": budget.max_pixels(self.max_pixels)}
        parts = Parts(self.paths.parts, list(self.run.classes), META_COLUMNS)
        claim = JobClaim(self.paths.parts, str(self.paths.out))
        self.paths.check_layout()
        try:
            self._start(claim, parts, settings)
            return self._predict(decode, parts, settings)
        finally:
            claim.release()

    def _start(self, claim: JobClaim, parts: Parts, settings: dict[str, Any]) -> None:
        """Process 0 claims the output, checks every path the job will write and records the
        settings; all processes stop together if it cannot."""
        failure: Exception | None = None
        if self.dist.is_main:
            try:
                claim.acquire()
                self.paths.check(settings)
                parts.record_settings(settings)
            except (OSError, ValueError) as exc:
                failure = exc
        if not self.dist.all_true(failure is None):
            if failure is not None:
                raise failure
            raise ValueError("process 0 could not start the job (see its message)")

    def _predict(self, decode: DecodeSettings, parts: Parts, settings: dict[str, Any]) -> PredictSummary:
        classes, dist, evaluator = list(self.run.classes), self.dist, self.run.decision
        relative = [_relative(p, self.root) for p in self.files]
        done = parts.done() | {row["path"] for row in self.paths.earlier_rows(slices=False)}
        todo = [i for i in dist.shard(len(self.files)) if relative[i] not in done]
        already = sum(1 for i in dist.shard(len(self.files)) if relative[i] in done)
        if dist.is_main:
            self.log(f"predicting {len(self.files)} scan(s) under {shown(self.root)} with {self.run.directory.name}: "
                     f"{len(done & set(relative))} already done, {self.workers} decoding worker(s), {self.device}"
                     + (f" x {dist.world_size}" if dist.enabled else "")
                     + (f", every slice of a volume ({self.aggregate} per volume)" if self.aggregate else ""))
        loader = prepared_batches(self.files, todo, decode, batch_size=self.batch_size, workers=self.workers,
                                  slices=self.aggregate is not None)
        scorer = Scorer(self.run, self.device, self.batch_size)
        predicted = failed = 0
        queue: list[ScanItem] = []
        pending: list[dict[str, Any]] = []
        pending_scans = 0

        def flush_queue() -> None:
            nonlocal queue, predicted, failed, pending, pending_scans
            rows = part_rows(queue, scorer.score(queue), relative, classes, evaluator, self.cut, self.aggregate)
            predicted += sum(row["status"] == "ok" for row in rows)
            failed += sum(row["status"] == "error" for row in rows)
            pending += rows
            pending_scans += len(queue)
            queue = []
            if pending_scans >= self.chunk:
                parts.write(dist.rank, pending)
                pending, pending_scans = [], 0

        with torch.no_grad():
            for batch in loader:
                queue += [ScanItem(*item) for item in batch]
                images = sum(len(item.images) for item in queue if item.images is not None)
                if images >= self.batch_size or len(queue) >= self.batch_size:
                    flush_queue()  # else too few images for a full network batch yet (slices: one file per batch)
            if queue:
                flush_queue()
            if pending:
                parts.write(dist.rank, pending)
        dist.barrier()
        summary = PredictSummary(predicted, failed, already, self.paths.out, self.paths.errors, self.paths.sidecar)
        try:
            if dist.is_main:
                rows_written, unreadable = _merge(self, parts, relative, settings)
                self.log(f"{rows_written} scan(s) predicted, {unreadable} could not be read"
                         + (f" (listed in {shown(self.paths.errors)})" if unreadable else "")
                         + f": {shown(self.paths.out)}")
        finally:
            dist.barrier()  # the other processes wait for the merge, and are released if it fails
        return summary


def _order(row: dict[str, Any]) -> tuple[int, int]:
    """Merge order: by scan, a scan's own row before its slices, slices by number."""
    return row["index"], -1 if row["slice"] == "" else int(row["slice"])


def _merge(job: _Job, parts: Parts, relative: list[str], settings: dict[str, Any]) -> tuple[int, int]:
    """One row per scan, in the order of the file list: parts and earlier output merged
    (streaming) and the outputs and sidecar written together (``files.atomic_write_many``: a
    full disk replaces none of them); the parts are removed last. Returns the rows written to the
    predictions and to the errors file."""
    paths, classes = job.paths, list(job.run.classes)
    tables = _merged_tables(paths, parts, relative, classes, settings["slices"])
    missing = len(relative) - tables["ok"].count - tables["error"].count
    if missing:  # a process's parts are not here (``--out`` not on a file system every process shares)
        raise IncompleteJobError(f"{missing} of {len(relative)} scans have no row in {parts.folder}: with several "
                                 "processes, --out must be on a file system they all share. Nothing was written and "
                                 "the parts are kept: run the command again with --out on a shared file system (or "
                                 "in one process), and it predicts only what is missing.")
    for path, reason in job.unlisted:
        tables["error"].add({"path": _relative(path, job.root), "reason": reason})
    predicted, unreadable = tables["ok"].count, tables["error"].count
    decision = job.run.decision
    sidecar = {
        "written_by": WRITTEN_BY,
        "medxfer_version": __version__,
        "written_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": job.run.directory.resolve().name,
        **settings,
        "config_sha256": job.run.config_sha256,
        "classes": classes,
        "positive_class": None if decision.positive_ is None else classes[decision.positive_],
        "threshold_source": "validated" if settings["threshold"] == decision.threshold_ else "given",
        "predicted": predicted,
        "unreadable": unreadable,
        "device": job.device.type,
    }
    contents = {paths.out: tables["ok"].data(), paths.errors: tables["error"].data(),
                **({paths.slices: tables["slice"].data()} if settings["slices"] else {}),
                paths.sidecar: (json.dumps(sidecar, indent=2) + "\n").encode("utf-8")}
    try:
        atomic_write_many(contents)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror or exc} while writing {shown(paths.out)} and the files beside it: "
                                 f"none was replaced and the parts in {shown(parts.folder)} are kept; free some "
                                 "space and run the same command again") from None
    shutil.rmtree(parts.folder, ignore_errors=True)  # the claim's lock goes with it; the job still holds it
    return predicted, unreadable


def _merged_tables(paths: PredictionFiles, parts: Parts, relative: list[str], classes: list[str],
                   slices: bool) -> dict[str, CsvText]:
    """The rows of the parts and of an earlier output, merged in file-list order, one per scan (and
    per slice), as the text of the predictions ("ok"), errors ("error") and slices ("slice") files."""
    position = {path: i for i, path in enumerate(relative)}
    earlier = [{**row, "index": position[row["path"]]} for row in paths.earlier_rows(slices)
               if row["path"] in position]
    streams = [parts.read(part) for part in parts.files()]
    merged = heapq.merge(sorted(earlier, key=_order), *[_indexed(stream, position) for stream in streams], key=_order)
    probability_columns = [f"p_{c}" for c in classes]
    columns = ["path", *probability_columns, "predicted", *(["slices"] if slices else []), *META_COLUMNS]
    tables = {
        "ok": CsvText(columns, ignore_extra=True),
        "error": CsvText(["path", "reason"], ignore_extra=True),
        "slice": CsvText(["path", "slice", *probability_columns, "predicted"], ignore_extra=True),
    }
    last = None
    for row in merged:
        key = _order(row)
        if key == last:  # a scan an interrupted process wrote twice keeps its first rows (sorted: adjacent)
            continue
        last = key
        tables[row["status"]].add(row)
    return tables


def _indexed(rows: Iterator[dict[str, str]], position: dict[str, int]) -> Iterator[dict[str, Any]]:
    for row in rows:
        if row["path"] in position:
            yield {"slice": "", **row, "index": position[row["path"]]}
