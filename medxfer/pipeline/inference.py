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
from medxfer.files import atomic_write_text
from medxfer.pipeline.decoding import DecodeSettings, prepared_batches
from medxfer.pipeline.distributed import Distributed
from medxfer.pipeline.evaluation import Evaluator
from medxfer.pipeline.external import CONFIG_FILE, check_run, load_evaluator
from medxfer.pipeline.outputs import CALIBRATION_FILE
from medxfer.pipeline.saving import load_model
from medxfer.pipeline.training import resolve_device, resolve_workers

META_COLUMNS = ("modality", "view", "study_key")  # non-identifying facts kept per row
CHUNK = 256  # scans per part file
PART_COLUMNS = ("index", "path", "status", "reason")


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


def errors_path(out: Path) -> Path:
    """``predictions.csv`` -> ``predictions.errors.csv``."""
    return out.with_name(out.stem + ".errors" + out.suffix)


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
        self.columns = [*PART_COLUMNS, *[f"p_{c}" for c in classes], "predicted", *META_COLUMNS]

    def done(self) -> set[str]:
        """Paths (relative) already in a part file."""
        return {row["path"] for part in self.files() for row in self.read(part)}

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("rank*.csv")) if self.folder.is_dir() else []

    def read(self, part: Path) -> Iterator[dict[str, str]]:
        with open(part, newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)

    def write(self, rank: int, rows: list[dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        number = len(list(self.folder.glob(f"rank{rank}-*.csv")))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.folder / f"rank{rank}-{number:06d}.csv", buffer.getvalue())


def _earlier_rows(out: Path, errors: Path) -> Iterator[dict[str, str]]:
    """The rows of an earlier complete output, as part rows (index filled in later)."""
    for path, status in ((out, "ok"), (errors, "error")):
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    yield {**row, "status": status}


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
                  chunk: int = CHUNK, log: Callable[[str], None] = print) -> PredictSummary:
    """Predict every scan under ``scans`` (folder or manifest) with the finished run ``run_dir``
    and write ``out`` (CSV), its ``.errors.csv`` and its ``.json`` sidecar; see the module
    docstring for resume and ``torchrun``. ``threshold``: "validated" (the run's) or a
    probability for the positive class; ``chunk``: scans per part file (what a crash can lose)."""
    run_dir, scans, out = Path(run_dir), Path(scans), Path(out)
    check_run(run_dir)
    evaluator = load_evaluator(run_dir)
    cut = _threshold(evaluator, threshold)
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
                        torch_device, dist, chunk, log)
    finally:
        dist.close()


def _predict(run_dir: Path, root: Path, files: list[Path], unlisted: list[tuple[Path, str]], out: Path,
             evaluator: Evaluator, cut: float | None, batch_size: int, workers: int, device: torch.device,
             dist: Distributed, chunk: int, log: Callable[[str], None]) -> PredictSummary:
    model, spec, recipe = load_model(run_dir)
    classes = list(recipe["classes"])
    model.to(device).eval()
    settings = DecodeSettings(spec, recipe.get("window", "default"), recipe.get("volume_strategy", "middle"))
    errors = errors_path(out)
    parts = _Parts(out, classes)
    relative = [_relative(p, root) for p in files]
    done = parts.done() | {row["path"] for row in _earlier_rows(out, errors)}
    todo = [i for i in dist.shard(len(files)) if relative[i] not in done]
    already = sum(1 for i in dist.shard(len(files)) if relative[i] in done)
    if dist.is_main:
        log(f"predicting {len(files)} scan(s) under {root} with {run_dir.name}: {len(done & set(relative))} already "
            f"done, {workers} decoding worker(s), {device}" + (f" x {dist.world_size}" if dist.enabled else ""))
    loader = prepared_batches(files, todo, settings, batch_size=batch_size, workers=workers)
    predicted = failed = 0
    pending: list[dict[str, Any]] = []
    with torch.no_grad():
        for batch in loader:
            good = [item for item in batch if item[1] is not None]
            probabilities = np.empty((0, len(classes)))
            if good:
                x = torch.stack([item[1] for item in good]).to(device)
                probabilities = evaluator.predict_proba(model(x).float().cpu().numpy().astype(np.float64))
            labels = _labels(evaluator, probabilities, cut)
            scored = {item[0]: (p, label) for item, p, label in zip(good, probabilities, labels, strict=True)}
            for index, _, meta, reason in batch:
                row: dict[str, Any] = {"index": index, "path": relative[index]}
                if index in scored:
                    p, label = scored[index]
                    row.update(status="ok", predicted=classes[label], **{f"p_{c}": f"{v:.6f}" for c, v in
                                                                         zip(classes, p, strict=True)})
                    row.update({k: "" if meta.get(k) is None else meta[k] for k in META_COLUMNS})
                    predicted += 1
                else:
                    row.update(status="error", reason=reason)
                    failed += 1
                pending.append(row)
            if len(pending) >= chunk:
                parts.write(dist.rank, pending)
                pending = []
        if pending:
            parts.write(dist.rank, pending)
    dist.barrier()
    summary = PredictSummary(predicted, failed, already, out, errors, out.with_suffix(".json"))
    if dist.is_main:
        rows, unreadable = _merge(out, errors, parts, relative, unlisted, root, recipe, run_dir, evaluator, cut,
                                  device)
        log(f"{rows} scan(s) predicted, {unreadable} could not be read"
            + (f" (listed in {errors})" if unreadable else "") + f": {out}")
    dist.barrier()
    return summary


def _labels(evaluator: Evaluator, probabilities: np.ndarray, cut: float | None) -> np.ndarray:
    if evaluator.positive_ is None or cut is None:
        return evaluator.predict(probabilities) if len(probabilities) else np.empty(0, int)
    positive = evaluator.positive_
    return np.where(probabilities[:, positive] >= cut, positive, 1 - positive)


def _merge(out: Path, errors: Path, parts: _Parts, relative: list[str], unlisted: list[tuple[Path, str]],
           root: Path, recipe: dict[str, Any], run_dir: Path, evaluator: Evaluator, cut: float | None,
           device: torch.device) -> tuple[int, int]:
    """One row per scan, in the order of the file list: parts and earlier output merged
    (streaming), written atomically, then the sidecar; the parts are removed last. Returns the
    rows written to the predictions and to the errors file."""
    classes = list(recipe["classes"])
    position = {path: i for i, path in enumerate(relative)}
    earlier = [{**row, "index": position[row["path"]]} for row in _earlier_rows(out, errors)
               if row["path"] in position]
    streams = [parts.read(part) for part in parts.files()]
    merged = heapq.merge(sorted(earlier, key=lambda r: r["index"]),
                         *[_indexed(stream, position) for stream in streams], key=lambda r: r["index"])
    columns = ["path", *[f"p_{c}" for c in classes], "predicted", *META_COLUMNS]
    ok, bad = io.StringIO(), io.StringIO()
    ok_writer = csv.DictWriter(ok, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    bad_writer = csv.DictWriter(bad, fieldnames=["path", "reason"], extrasaction="ignore", lineterminator="\n")
    ok_writer.writeheader()
    bad_writer.writeheader()
    seen: set[str] = set()
    predicted = 0
    for row in merged:
        if row["path"] in seen:  # a scan an interrupted process wrote twice keeps its first row
            continue
        seen.add(row["path"])
        predicted += row["status"] == "ok"
        (ok_writer if row["status"] == "ok" else bad_writer).writerow(row)
    for path, reason in unlisted:
        bad_writer.writerow({"path": _relative(path, root), "reason": reason})
    unreadable = len(seen) - predicted + len(unlisted)
    atomic_write_text(out, ok.getvalue())
    atomic_write_text(errors, bad.getvalue())
    sidecar = {
        "medxfer_version": __version__,
        "written_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": run_dir.resolve().name,
        "model_sha256": recipe["weights_sha256"],
        "config_sha256": _file_hash(run_dir / CONFIG_FILE),
        "calibration_sha256": _file_hash(run_dir / CALIBRATION_FILE),
        "classes": classes,
        "positive_class": None if evaluator.positive_ is None else classes[evaluator.positive_],
        "threshold": cut,
        "threshold_source": "validated" if cut == evaluator.threshold_ else "given",
        "predicted": predicted,
        "unreadable": unreadable,
        "device": device.type,
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    shutil.rmtree(parts.folder, ignore_errors=True)
    return predicted, unreadable


def _indexed(rows: Iterator[dict[str, str]], position: dict[str, int]) -> Iterator[dict[str, Any]]:
    for row in rows:
        if row["path"] in position:
            yield {**row, "index": position[row["path"]]}
