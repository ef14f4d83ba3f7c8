"""Where scans come from: a folder of class subfolders, a CSV manifest, or an unlabelled folder.

Every source becomes a ``ScanSet``: one ``ScanRecord`` per readable file (headers only, pixels
are not decoded) and one ``UnreadableFile`` per file that could not be read, with the reason.
This module owns the records, walking folders, reading headers and loading a dataset (with its
layout detected); reading and checking a manifest's rows is ``medxfer.datasets.manifest``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medxfer.datasets import budget
from medxfer.datasets.manifest import (
    MANIFEST_NAME,
    ManifestError,
    manifest_meta,
    manifest_path,
    missing_reason,
    normalise_split,
    read_manifest_rows,
)
from medxfer.datasets.metadata import patient_key, pseudonym_salt
from medxfer.datasets.reader import read_header, read_scan
from medxfer.datasets.scan import UnreadableScanError
from medxfer.filenames import shown

LAYOUTS = ("auto", "classes", "manifest", "unlabelled")


class UnreadableFilesError(ValueError):
    """A labelled dataset with files that could not be read; ``unreadable`` lists every one."""

    def __init__(self, unreadable: list[UnreadableFile]) -> None:
        self.unreadable = unreadable
        lines = "\n".join(f"  {shown(item.path)}: {item.reason}" for item in unreadable)
        super().__init__(
            f"{len(unreadable)} file(s) of the dataset cannot be read "
            f"(pass skip_unreadable=True / --skip-unreadable to leave them out):\n{lines}"
        )


@dataclass(frozen=True)
class UnreadableFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class ScanRecord:
    """One readable file: absolute ``path``, ``label`` (None when unlabelled), pseudonymous
    ``patient_key`` (None when unknown), ``split`` (train/val/test or None) and ``meta``
    (header metadata with manifest values overriding it)."""

    path: Path
    label: str | None = None
    patient_key: str | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanSet:
    """The readable records and unreadable files of one source, and how it was interpreted."""

    root: Path
    layout: str
    records: list[ScanRecord]
    unreadable: list[UnreadableFile]

    @property
    def classes(self) -> tuple[str, ...]:
        """Sorted distinct labels (empty for an unlabelled set)."""
        return tuple(sorted({r.label for r in self.records if r.label is not None}))

    def relative(self, path: Path) -> str:
        """``path`` relative to the source's root (``../`` for files outside it), with POSIX
        separators, for CSV outputs that must stay valid when the data folder moves."""
        return Path(os.path.relpath(path, self.root)).as_posix()


def iter_files(root: Path) -> tuple[list[Path], list[UnreadableFile]]:
    """Every file below ``root`` in sorted order, skipping hidden files and folders, and the
    folders that could not be listed.

    Symbolic links to folders are followed, except one that leads back into a folder on its own
    path (a loop); a broken link is listed, so that it is reported as unreadable rather than
    silently dropped. The walk is sorted, so the result does not depend on the file system.
    """
    found: list[Path] = []
    problems: list[UnreadableFile] = []

    def record(error: OSError) -> None:
        problems.append(UnreadableFile(Path(error.filename or root), f"folder cannot be listed: {error.strerror}"))

    for folder, subfolders, files in os.walk(root, followlinks=True, onerror=record):
        here = Path(folder)
        chain = {os.path.realpath(p) for p in [here, *here.parents] if p == root or root in p.parents}
        subfolders[:] = sorted(
            name for name in subfolders
            if not name.startswith(".") and os.path.realpath(here / name) not in chain
        )
        found.extend(here / name for name in files if not name.startswith("."))
    return sorted(found), problems


def _same_file_groups(paths: list[Path]) -> list[list[Path]]:
    """Groups of paths (reached through links) that name one and the same file, each sorted."""
    by_target: dict[str, list[Path]] = {}
    for path in paths:
        by_target.setdefault(os.path.realpath(path), []).append(path)
    return [sorted(names) for names in by_target.values() if len(names) > 1]


def _probe(path: Path, decode: bool, max_pixels: int | None) -> dict[str, Any]:
    """Header metadata of ``path``; with ``decode`` the whole image is decoded as a check."""
    if decode:
        return dict(read_scan(path, max_pixels=max_pixels).meta)
    return read_header(path, max_pixels=max_pixels)


def scan_headers(
    paths: Iterable[Path], *, decode: bool = False, max_pixels: int | None = None
) -> tuple[dict[Path, dict[str, Any]], list[UnreadableFile]]:
    """Read the header of every path; never raises for a bad file, records it instead.

    Memory stays flat whatever the number of files: pixels are not kept (with ``decode`` each
    image is decoded and dropped before the next). ``max_pixels``: the pixel budget.
    """
    headers: dict[Path, dict[str, Any]] = {}
    unreadable: list[UnreadableFile] = []
    for path in paths:
        try:
            headers[path] = _probe(path, decode, max_pixels)
        except UnreadableScanError as exc:
            unreadable.append(UnreadableFile(path, exc.reason))
        except Exception as exc:  # noqa: BLE001 - a bug or an exotic file must not end a scan of thousands
            unreadable.append(UnreadableFile(path, f"unexpected error: {type(exc).__name__}"))
    return headers, unreadable


def _record(path: Path, header: dict[str, Any], label: str | None) -> ScanRecord:
    return ScanRecord(path=path, label=label, patient_key=header.get("patient_key"), meta=header)


def from_class_folders(root: str | Path, *, decode: bool = False, max_pixels: int | None = None) -> ScanSet:
    """A folder with one subfolder per class; every file below a subfolder has that label.

    A file reachable under two names (through a link) is read once if both names are in one
    class, and is unreadable if they are in different classes: its label would be ambiguous.
    """
    root = Path(os.path.abspath(root))
    files, unreadable = iter_files(root)
    label_of = {path: path.relative_to(root).parts[0] for path in files if path.parent != root}
    unreadable += [UnreadableFile(p, "file beside the class folders, so it has no label") for p in files if p not in label_of]
    for names in _same_file_groups(list(label_of)):
        labels = sorted({label_of[n] for n in names})
        if len(labels) > 1:
            reason = f"the same file is also under class(es) {', '.join(labels)} (through a link)"
            unreadable += [UnreadableFile(n, reason) for n in names]
        for name in names if len(labels) > 1 else names[1:]:  # one class: keep the first name
            del label_of[name]
    labelled = [p for p in files if p in label_of]
    headers, failed = scan_headers(labelled, decode=decode, max_pixels=max_pixels)
    records = [_record(p, headers[p], label_of[p]) for p in labelled if p in headers]
    return ScanSet(root, "classes", records, sorted(unreadable + failed, key=lambda u: u.path))


def from_unlabelled_folder(root: str | Path, *, decode: bool = False, max_pixels: int | None = None) -> ScanSet:
    """Every file below ``root`` (recursively), without labels: for inference and adaptation.
    A file reachable under several names (through links) is read once, under its first name."""
    root = Path(os.path.abspath(root))
    files, unreadable = iter_files(root)
    repeats = {name for names in _same_file_groups(files) for name in names[1:]}
    files = [p for p in files if p not in repeats]
    headers, failed = scan_headers(files, decode=decode, max_pixels=max_pixels)
    records = [_record(p, headers[p], None) for p in files if p in headers]
    return ScanSet(root, "unlabelled", records, sorted(unreadable + failed, key=lambda u: u.path))


def from_manifest(manifest: str | Path, *, decode: bool = False, max_pixels: int | None = None) -> ScanSet:
    """A CSV with ``path`` (relative to the manifest), optional ``label``, ``patient_id``,
    ``split`` and any metadata columns (sex, age, site, view...), whose values override the
    files' headers. ``patient_id`` is replaced by its pseudonymous key on reading."""
    manifest = Path(os.path.abspath(manifest))
    root = manifest.parent
    rows = read_manifest_rows(manifest)
    seen: dict[str, int] = {}
    entries = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"{manifest}, row {number}"
        path = manifest_path(root, row["path"], where)
        target = os.path.realpath(path)
        if target in seen:
            raise ManifestError(f"{where}: {row['path']} is the same file as row {seen[target]}")
        seen[target] = number
        entries.append((path, row, normalise_split(row.get("split", ""), where)))
    present = [path for path, _, _ in entries if path.exists() and not path.is_dir()]
    headers, unreadable = scan_headers(present, decode=decode, max_pixels=max_pixels)  # special files: by sniffing
    unreadable += [UnreadableFile(p, missing_reason(p)) for p, _, _ in entries if p not in present]
    records = []
    for path, row, split in entries:
        if path not in headers:
            continue
        meta = {**headers[path], **manifest_meta(row)}
        key = patient_key(row.get("patient_id")) or headers[path].get("patient_key")
        records.append(ScanRecord(path, row.get("label", "").strip() or None, key, split, meta))
    return ScanSet(root, "manifest", records, sorted(unreadable, key=lambda u: u.path))


def detect_layout(path: Path, *, labelled: bool = False) -> str:
    """``manifest`` for a .csv file or a folder holding ``manifest.csv``; for a folder whose top
    level holds only subfolders, ``classes`` when ``labelled`` (the caller needs labels) and
    otherwise ``unlabelled``: a PACS export's patient folders must not be taken for classes and
    their names printed as labels. Everything else is ``unlabelled``."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise ValueError(f"{path}: a dataset is a folder or a .csv manifest, not a single file")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if (path / MANIFEST_NAME).is_file():
        return "manifest"
    if labelled and _only_folders(path):
        return "classes"
    return "unlabelled"


def _only_folders(path: Path) -> bool:
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(p.is_dir() for p in entries)


def looks_like_class_folders(path: Path) -> bool:
    """True for a folder whose top level holds only subfolders (class folders, or a PACS export
    organised by patient: only the user can tell)."""
    return path.is_dir() and not (path / MANIFEST_NAME).is_file() and _only_folders(path)


def load_scans(path: str | Path, *, layout: str = "auto", decode: bool = False, labelled: bool = False,
               max_pixels: int | None = None) -> ScanSet:
    """Index a dataset from any source, recording unreadable files instead of failing.

    ``layout="auto"`` reads a folder of subfolders as class folders only when ``labelled``;
    ``max_pixels``: the pixel budget (``medxfer.datasets.budget``) files are refused beyond.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    pseudonym_salt()  # a bad salt is one error now, not one unreadable file per DICOM later
    budget.max_pixels(max_pixels)  # so is a bad pixel budget
    if layout == "auto":
        layout = detect_layout(path, labelled=labelled)
    if layout == "manifest":
        manifest = path / MANIFEST_NAME if path.is_dir() else path
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no such manifest")
        return from_manifest(manifest, decode=decode, max_pixels=max_pixels)
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: layout {layout!r} needs a folder")
    if layout == "classes":
        return from_class_folders(path, decode=decode, max_pixels=max_pixels)
    return from_unlabelled_folder(path, decode=decode, max_pixels=max_pixels)


def load_labelled(path: str | Path, *, layout: str = "auto", skip_unreadable: bool = False,
                  max_pixels: int | None = None) -> ScanSet:
    """A labelled training set: every record must have a label, and unreadable files stop it
    early, all listed at once, unless ``skip_unreadable`` (they stay listed in ``unreadable``)."""
    scans = load_scans(path, layout=layout, labelled=True, max_pixels=max_pixels)
    if layout == "auto" and scans.layout == "classes":
        _refuse_patient_folders(scans)
    if scans.layout == "unlabelled":
        raise ValueError(f"{path}: no labels found (give a folder of class subfolders or a manifest with a label column)")
    missing = [r.path for r in scans.records if r.label is None]
    if missing:
        raise ManifestError(f"{path}: {len(missing)} file(s) have no label, e.g. {missing[0]}")
    unprintable = sorted({r.label for r in scans.records if not is_printable_text(r.label)})
    if unprintable:
        raise ValueError(f"{path}: the label(s) {', '.join(shown(label) for label in unprintable)} hold a control "
                         "character or bytes that are not UTF-8; labels become class names in every report, so "
                         "rename the class folder (or the manifest's label) with printable text")
    if scans.unreadable and not skip_unreadable:
        raise UnreadableFilesError(scans.unreadable)
    if len(scans.classes) < 2:
        raise ValueError(f"{path}: a classifier needs at least two classes, found {list(scans.classes)}")
    return scans


def is_printable_text(text: str) -> bool:
    """True for text without control characters and without bytes that were not UTF-8."""
    return text.isprintable()  # lone surrogates (undecodable bytes) are not printable either


def _refuse_patient_folders(scans: ScanSet) -> None:
    """Stop when guessed class folders look like one folder per patient (a PACS export), whose
    names would otherwise become labels in every output. Folder names are not repeated here."""
    patients: dict[str, set[str]] = {}
    for record in scans.records:
        if record.patient_key is not None:
            patients.setdefault(record.label or "", set()).add(record.patient_key)
    single = sum(len(keys) == 1 for keys in patients.values())
    if len(patients) >= 3 and single >= 0.8 * len(patients):
        raise ValueError(
            f"{scans.root}: {single} of its {len(patients)} subfolders each hold a single patient, so they "
            "look like one folder per patient, not per class; give a manifest with a label column, or "
            "--layout classes (layout='classes') if they really are classes"
        )


def with_splits(scans: ScanSet, splits: list[str]) -> ScanSet:
    """A copy of ``scans`` whose records carry the given split names (same order)."""
    records = [replace(r, split=s) for r, s in zip(scans.records, splits, strict=True)]
    return replace(scans, records=records)
