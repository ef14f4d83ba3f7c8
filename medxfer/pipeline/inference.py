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
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxfer import __version__
from medxfer.datasets.sources import iter_files, read_manifest_rows
from medxfer.files import atomic_write_csv, atomic_write_text
from medxfer.pipeline.decoding import DecodeSettings, check_slice_strategy, prepared_batches
from medxfer.pipeline.distributed import Distributed
from medxfer.pipeline.evaluation import Evaluator
from medxfer.pipeline.external import CONFIG_FILE, check_run, load_evaluator
from medxfer.pipeline.outputs import CALIBRATION_FILE
from medxfer.pipeline.saving import load_model
from medxfer.pipeline.training import resolve_device, resolve_workers

META_COLUMNS = ("modality", "view", "study_key")  # non-identifying facts kept per row
CHUNK = 256  # scans per part file
PART_COLUMNS = ("index", "path", "slice", "status", "reason")
SLICE_AGGREGATES = ("mean", "max")
SETTINGS_FILE = "settings.json"  # in the parts folder: what the rows were computed with


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


def errors_path(out: Path) -> Path:
    """``predictions.csv`` -> ``predictions.errors.csv``."""
    return out.with_name(out.stem + ".errors" + out.suffix)


def slices_path(out: Path) -> Path:
    """``predictions.csv`` -> ``predictions.slices.csv`` (per-slice rows of ``--slices``)."""
    return out.with_name(out.stem + ".slices" + out.suffix)


def list_scans(scans: Path) -> tuple[Path, list[Path], list[tuple[Path, str]]]:
    """The root that output paths are relative to, every file to predict (sorted), and the
    entries that cannot be listed. ``scans`` is a folder (searched recursively) or a CSV
    manifest with a ``path`` column."""
    if scans.is_dir():
        files, problems = iter_files(scans)
        return scans, files, [(p.path, p.reason) for p in problems]
    if scans.is_file() and scans.suffix.lower() == ".csv":
        root = scans.parent.resolve()
        rows = read_manifest_rows(scans)
        files = sorted({(root / row["path"]).resolve() if not Path(row["path"]).is_absolute() else Path(row["path"])
                        for row in rows if row.get("path")})
        return root, files, []
    if not scans.exists():
        raise NoScansError(f"{scans}: no such folder or manifest")
    raise NoScansError(f"{scans}: not a folder of scans or a CSV manifest")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


class _Parts:
    """The part files of one output: ``<out>.parts/rank{R}-{N}.csv``, each written atomically."""

    def __init__(self, out: Path, classes: Sequence[str]) -> None:
        self.folder = out.with_name(out.name + ".parts")
        self.columns = [*PART_COLUMNS, *[f"p_{c}" for c in classes], "predicted", "slices", *META_COLUMNS]

    def done(self) -> set[str]:
        """Paths (relative) of the scans already in a part file (a scan's row is written with
        its slices' rows, in one part)."""
        return {row["path"] for part in self.files() for row in self.read(part) if row["status"] != "slice"}

    def record_settings(self, settings: dict[str, Any]) -> None:
        """Record ``settings`` when this job starts the parts (process 0, before the others check)."""
        if not (self.folder / SETTINGS_FILE).is_file() and not self.files():
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to add rows computed with other ``settings`` to parts left by an earlier job, or
        to parts that do not say what they were computed with."""
        path = self.folder / SETTINGS_FILE
        remedy = f"or delete {self.folder} to start again"
        if path.is_file():
            _same_settings(json.loads(path.read_text(encoding="utf-8")), settings,
                           f"{self.folder} (the parts of an interrupted job)", remedy)
        elif self.files():
            raise ValueError(f"{self.folder} holds the parts of an interrupted job without {SETTINGS_FILE} (an older "
                             f"medxfer), so their settings cannot be checked: write to another --out, {remedy}")

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("rank*.csv")) if self.folder.is_dir() else []

    def read(self, part: Path) -> Iterator[dict[str, str]]:
        with open(part, newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)

    def write(self, rank: int, rows: list[dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        number = len(list(self.folder.glob(f"rank{rank}-*.csv")))
        atomic_write_csv(self.folder / f"rank{rank}-{number:06d}.csv", self.columns, rows)


def _earlier_rows(out: Path, slices: bool) -> Iterator[dict[str, str]]:
    """The rows of an earlier complete output, as part rows (index filled in later); its slice
    rows only when it was written with ``slices`` (``_check_earlier`` has compared its settings)."""
    files = ((out, "ok"), (errors_path(out), "error"), *(((slices_path(out), "slice"),) if slices else ()))
    if not out.is_file():
        return
    for path, status in files:
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    yield {"slice": "", **row, "status": status}


def _check_earlier(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to merge an earlier complete ``out`` written with other settings, or without the
    sidecar that says what they were."""
    if not out.is_file():
        return
    remedy = "or delete it (and its .errors.csv, .slices.csv and .json) to predict every scan again"
    sidecar = out.with_suffix(".json")
    if not sidecar.is_file():
        raise ValueError(f"{out} exists without {sidecar.name}, which records what its rows were computed with: "
                         f"write to another --out, {remedy}")
    _same_settings(json.loads(sidecar.read_text(encoding="utf-8")), settings, f"{out}", remedy)


def _same_settings(earlier: dict[str, Any], settings: dict[str, Any], where: str, remedy: str) -> None:
    """Raise ValueError naming each setting of ``settings`` that ``earlier`` recorded otherwise."""
    defaults = {"slices": False, "slice_aggregate": None}  # sidecars written before --slices existed
    changed = [f"{key} {earlier.get(key, defaults.get(key))!r} there, {value!r} now" for key, value in settings.items()
               if earlier.get(key, defaults.get(key)) != value]
    if changed:
        raise ValueError(f"{where} was written with other settings ({'; '.join(changed)}): its rows cannot be "
                         f"mixed with this job's. Rerun with the same run and options, write to another --out, "
                         f"{remedy}")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
                  log: Callable[[str], None] = print) -> PredictSummary:
    """Predict every scan under ``scans`` (folder or manifest) with the finished run ``run_dir``
    and write ``out`` (CSV), its ``.errors.csv`` and its ``.json`` sidecar; see the module
    docstring for resume and ``torchrun``. ``threshold``: "validated" (the run's) or a
    probability for the positive class; ``batch_size``: images per network call;
    ``slices``: score every slice of a volume and aggregate them per volume with
    ``slice_aggregate`` ("mean" of the calibrated probabilities, or "max" of the positive
    class's for two classes), writing the slices to ``.slices.csv``; ``chunk``: scans per part
    file (what a crash can lose)."""
    run_dir, scans, out = Path(run_dir), Path(scans), Path(out)
    check_run(run_dir)
    evaluator = load_evaluator(run_dir)
    cut = _threshold(evaluator, threshold)
    if slice_aggregate not in SLICE_AGGREGATES:
        raise ValueError(f"--slice-aggregate must be one of {', '.join(SLICE_AGGREGATES)}, got {slice_aggregate!r}")
    if slices and slice_aggregate == "max" and evaluator.positive_ is None:
        raise ValueError("--slice-aggregate max takes the most suspicious slice of a two-class model; "
                         "this one has more classes: use mean")
    root, files, unlisted = list_scans(scans)
    if not files and not unlisted:
        raise NoScansError(f"{scans}: no files to predict")
    torch_device = resolve_device(device)
    dist = Distributed.from_environment(torch_device)
    if dist.enabled:
        torch_device = torch.device(dist.device)
    try:
        return _predict(run_dir, root, files, unlisted, out, evaluator, cut, batch_size,
                        max(1, resolve_workers(workers)) if workers == "auto" else int(workers),
                        torch_device, dist, chunk, slice_aggregate if slices else None, log)
    finally:
        dist.close()


def _predict(run_dir: Path, root: Path, files: list[Path], unlisted: list[tuple[Path, str]], out: Path,
             evaluator: Evaluator, cut: float | None, batch_size: int, workers: int, device: torch.device,
             dist: Distributed, chunk: int, aggregate: str | None, log: Callable[[str], None]) -> PredictSummary:
    model, spec, recipe = load_model(run_dir)
    classes = list(recipe["classes"])
    model.to(device).eval()
    decode = DecodeSettings(spec, recipe.get("window", "default"), recipe.get("volume_strategy", "middle"))
    if aggregate:
        try:
            check_slice_strategy(decode.volume_strategy)
        except ValueError as exc:
            raise ValueError(f"{run_dir}: {exc}") from None
    job = {"model_sha256": recipe["weights_sha256"], "calibration_sha256": _file_hash(run_dir / CALIBRATION_FILE),
           "threshold": cut, "slices": aggregate is not None, "slice_aggregate": aggregate}
    errors = errors_path(out)
    sidecar = out.with_suffix(".json")
    _check_earlier(out, job)
    parts = _Parts(out, classes)
    if dist.is_main:
        parts.record_settings(job)
    dist.barrier()
    parts.check_settings(job)  # every process, so that all of them stop together
    relative = [_relative(p, root) for p in files]
    done = parts.done() | {row["path"] for row in _earlier_rows(out, slices=False)}
    todo = [i for i in dist.shard(len(files)) if relative[i] not in done]
    already = sum(1 for i in dist.shard(len(files)) if relative[i] in done)
    if dist.is_main:
        log(f"predicting {len(files)} scan(s) under {root} with {run_dir.name}: {len(done & set(relative))} already "
            f"done, {workers} decoding worker(s), {device}" + (f" x {dist.world_size}" if dist.enabled else "")
            + (f", every slice of a volume ({aggregate} per volume)" if aggregate else ""))
    loader = prepared_batches(files, todo, decode, batch_size=batch_size, workers=workers, slices=aggregate is not None)
    scorer = _Scorer(model, evaluator, device, batch_size)
    predicted = failed = 0
    queue: list[_Item] = []
    queued_images = pending_scans = 0
    pending: list[dict[str, Any]] = []
    with torch.no_grad():
        for number, batch in enumerate(loader, 1):
            items = [_Item(*item) for item in batch]
            queue += items
            queued_images += sum(len(item.images) for item in items if item.images is not None)
            if queued_images < batch_size and len(queue) < batch_size and number < len(loader):
                continue  # too few images for a full network batch yet (slices: one file per loader batch)
            rows = _rows(queue, scorer.score(queue), relative, classes, evaluator, cut, aggregate)
            predicted += sum(row["status"] == "ok" for row in rows)
            failed += sum(row["status"] == "error" for row in rows)
            pending += rows
            pending_scans += len(queue)
            queue, queued_images = [], 0
            if pending_scans >= chunk:
                parts.write(dist.rank, pending)
                pending, pending_scans = [], 0
        if pending:
            parts.write(dist.rank, pending)
    dist.barrier()
    summary = PredictSummary(predicted, failed, already, out, errors, sidecar)
    try:
        if dist.is_main:
            rows_written, unreadable = _merge(out, parts, relative, unlisted, root, recipe, run_dir, evaluator, job,
                                              device)
            log(f"{rows_written} scan(s) predicted, {unreadable} could not be read"
                + (f" (listed in {errors})" if unreadable else "") + f": {out}")
    finally:
        dist.barrier()  # the other processes wait for the merge, and are released if it fails
    return summary


@dataclass
class _Item:
    """One file from the loader: its index in the file list, its images ((n, C, S, S), one per
    slice with ``--slices``, else n = 1) or None with the ``reason`` it cannot be read, its
    metadata, and the slice numbers (None: a 2D scan, or a volume reduced to one image)."""

    index: int
    images: torch.Tensor | None
    meta: dict
    reason: str | None
    slices: list[int] | None = None

    def __post_init__(self) -> None:
        if self.images is not None and self.slices is None and self.images.dim() == 3:
            self.images = self.images.unsqueeze(0)  # PreparedScans gives one (C, S, S) image


class _Scorer:
    """The network and the run's calibration: calibrated probabilities of the images of several
    files, run through the network ``batch_size`` images at a time."""

    def __init__(self, model: torch.nn.Module, evaluator: Evaluator, device: torch.device, batch_size: int) -> None:
        self.model, self.evaluator, self.device, self.batch_size = model, evaluator, device, batch_size

    def score(self, items: Sequence[_Item]) -> list[np.ndarray | None]:
        """Per item, its images' calibrated probabilities (n, K), or None for an unreadable file."""
        stacks = [item.images for item in items if item.images is not None]
        if not stacks:
            return [None] * len(items)
        images = torch.cat(stacks)
        logits = [self.model(images[i:i + self.batch_size].to(self.device)).float().cpu()
                  for i in range(0, len(images), self.batch_size)]
        probabilities = self.evaluator.predict_proba(torch.cat(logits).numpy().astype(np.float64))
        result: list[np.ndarray | None] = []
        start = 0
        for item in items:
            if item.images is None:
                result.append(None)
            else:
                result.append(probabilities[start:start + len(item.images)])
                start += len(item.images)
        return result


def _rows(items: Sequence[_Item], probabilities: Sequence[np.ndarray | None], relative: list[str],
          classes: list[str], evaluator: Evaluator, cut: float | None, aggregate: str | None) -> list[dict[str, Any]]:
    """Part rows of ``items``: per file its row ("ok" or "error"), and with ``aggregate`` the
    rows of a volume's slices ("slice") after it."""
    rows: list[dict[str, Any]] = []
    for item, p in zip(items, probabilities, strict=True):
        row: dict[str, Any] = {"index": item.index, "path": relative[item.index], "slice": ""}
        if p is None:
            rows.append({**row, "status": "error", "reason": item.reason})
            continue
        combined = _aggregate(p, aggregate, evaluator.positive_)
        rows.append({**row, "status": "ok", **_scores(combined, classes, evaluator, cut),
                     **{k: "" if item.meta.get(k) is None else item.meta[k] for k in META_COLUMNS},
                     **({"slices": len(p)} if aggregate else {})})
        for number, slice_p in zip(item.slices or [], p, strict=False):
            rows.append({"index": item.index, "path": relative[item.index], "slice": number, "status": "slice",
                         **_scores(slice_p, classes, evaluator, cut)})
    return rows


def _aggregate(probabilities: np.ndarray, aggregate: str | None, positive: int | None) -> np.ndarray:
    """One probability vector from a file's (n, K) calibrated probabilities: the mean over the
    slices, or for "max" the slice with the highest probability of the ``positive`` class."""
    if aggregate == "max" and positive is not None:
        return probabilities[int(np.argmax(probabilities[:, positive]))]
    return probabilities.mean(axis=0)


def _scores(p: np.ndarray, classes: list[str], evaluator: Evaluator, cut: float | None) -> dict[str, str]:
    """The probability columns and the predicted label of one probability vector."""
    label = evaluator.predict(p[None, :], threshold=cut)[0]
    return {"predicted": classes[label], **{f"p_{c}": f"{v:.6f}" for c, v in zip(classes, p, strict=True)}}


def _order(row: dict[str, Any]) -> tuple[int, int]:
    """Merge order: by scan, a scan's own row before its slices, slices by number."""
    return row["index"], -1 if row["slice"] == "" else int(row["slice"])


def _merge(out: Path, parts: _Parts, relative: list[str], unlisted: list[tuple[Path, str]], root: Path,
           recipe: dict[str, Any], run_dir: Path, evaluator: Evaluator, job: dict[str, Any],
           device: torch.device) -> tuple[int, int]:
    """One row per scan, in the order of the file list: parts and earlier output merged
    (streaming), written atomically, then the sidecar; the parts are removed last. Returns the
    rows written to the predictions and to the errors file."""
    classes = list(recipe["classes"])
    position = {path: i for i, path in enumerate(relative)}
    earlier = [{**row, "index": position[row["path"]]} for row in _earlier_rows(out, job["slices"])
               if row["path"] in position]
    streams = [parts.read(part) for part in parts.files()]
    merged = heapq.merge(sorted(earlier, key=_order), *[_indexed(stream, position) for stream in streams], key=_order)
    probability_columns = [f"p_{c}" for c in classes]
    columns = ["path", *probability_columns, "predicted", *(["slices"] if job["slices"] else []), *META_COLUMNS]
    writers = {
        "ok": _Table(columns),
        "error": _Table(["path", "reason"]),
        "slice": _Table(["path", "slice", *probability_columns, "predicted"]),
    }
    last = None
    for row in merged:
        key = _order(row)
        if key == last:  # a scan an interrupted process wrote twice keeps its first rows (sorted: adjacent)
            continue
        last = key
        writers[row["status"]].add(row)
    missing = len(relative) - writers["ok"].count - writers["error"].count
    if missing:  # a process's parts are not here (``--out`` not on a file system every process shares)
        raise IncompleteJobError(f"{missing} of {len(relative)} scans have no row in {parts.folder}: with several "
                                 "processes, --out must be on a file system they all share. Nothing was written and "
                                 "the parts are kept: run the command again with --out on a shared file system (or "
                                 "in one process), and it predicts only what is missing.")
    for path, reason in unlisted:
        writers["error"].add({"path": _relative(path, root), "reason": reason})
    predicted, unreadable = writers["ok"].count, writers["error"].count
    atomic_write_text(out, writers["ok"].text())
    atomic_write_text(errors_path(out), writers["error"].text())
    if job["slices"]:
        atomic_write_text(slices_path(out), writers["slice"].text())
    sidecar = {
        "medxfer_version": __version__,
        "written_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": run_dir.resolve().name,
        **job,
        "config_sha256": _file_hash(run_dir / CONFIG_FILE),
        "classes": classes,
        "positive_class": None if evaluator.positive_ is None else classes[evaluator.positive_],
        "threshold_source": "validated" if job["threshold"] == evaluator.threshold_ else "given",
        "predicted": predicted,
        "unreadable": unreadable,
        "device": device.type,
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    shutil.rmtree(parts.folder, ignore_errors=True)
    return predicted, unreadable


class _Table:
    """CSV text of one output file, built row by row."""

    def __init__(self, columns: list[str]) -> None:
        self.buffer = io.StringIO()
        self.writer = csv.DictWriter(self.buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        self.writer.writeheader()
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.count += 1

    def text(self) -> str:
        return self.buffer.getvalue()


def _indexed(rows: Iterator[dict[str, str]], position: dict[str, int]) -> Iterator[dict[str, Any]]:
    for row in rows:
        if row["path"] in position:
            yield {"slice": "", **row, "index": position[row["path"]]}
