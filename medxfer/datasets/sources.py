"""Where scans come from: a folder of class subfolders, a CSV manifest, or an unlabelled folder.

Every source becomes a ``ScanSet``: one ``ScanRecord`` per readable file (headers only, pixels
are not decoded) and one ``UnreadableFile`` per file that could not be read, with the reason.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medxfer.csvfiles import from_cell
from medxfer.datasets import budget
from medxfer.datasets.metadata import normalise_sex, parse_age, patient_key, pseudonym_salt
from medxfer.datasets.reader import read_header, read_scan
from medxfer.datasets.scan import MedxferWarning, UnreadableScanError
from medxfer.filenames import shown

LAYOUTS = ("auto", "classes", "manifest", "unlabelled")
MANIFEST_NAME = "manifest.csv"
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "tune": "val",
    "test": "test", "testing": "test", "holdout": "test",
}
# Manifest columns that hold a patient identifier: read as ``patient_id``, which is replaced by a
# pseudonymous key on reading. Compared after removing everything but letters and digits.
PATIENT_ID_COLUMNS = frozenset({
    "patientid", "patient", "pid", "mrn", "patientmrn", "patientnumber", "patientno", "subject",
    "subjectid", "medicalrecordnumber", "idpatient",
})


def _compact(column: str) -> str:
    """A column name reduced to lower-case letters and digits, for matching spelling variants."""
    return re.sub(r"[^a-z0-9]", "", column.lower())


def is_identifying_column(column: str) -> bool:
    """True for manifest columns that identify a patient directly (names, birth dates, accession
    and national numbers, contact details): they are dropped on reading, never copied anywhere."""
    key = _compact(column)
    return (
        ("patient" in key and "name" in key)
        or key in {"name", "firstname", "lastname", "surname", "givenname", "familyname", "fullname"}
        or "birth" in key or key == "dob" or key.endswith("dob")
        or "accession" in key
        or key in {"ssn", "nhsnumber", "nationalid", "address", "phone", "telephone", "email"}
    )


class ManifestError(ValueError):
    """A manifest whose structure is wrong (missing column, repeated path, unknown split)."""


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


def _normalise_split(value: str, where: str) -> str | None:
    text = value.strip().lower()
    if not text:
        return None
    if text not in SPLIT_NAMES:
        raise ManifestError(f"{where}: unknown split {value!r} (use train, val or test)")
    return SPLIT_NAMES[text]


_MANIFEST_PARSERS: dict[str, Callable[[str], Any]] = {"sex": normalise_sex, "age": parse_age}


def _manifest_meta(row: dict[str, str]) -> dict[str, Any]:
    """Non-empty metadata columns of a manifest row; sex and age normalised like header values."""
    meta = {}
    for column, value in row.items():
        if column in ("path", "label", "patient_id", "split") or value is None or not value.strip():
            continue
        parse = _MANIFEST_PARSERS.get(column)
        meta[column] = parse(value) if parse else value.strip()
    return meta


def _is_utf8(text: str) -> bool:
    return not any("\udc80" <= c <= "\udcff" for c in text)


def normalise_column(name: str) -> str:
    """``Patient ID``, ``PatientID``, ``MRN`` and the like become ``patient_id``; other names are
    lower-cased with runs of spaces and hyphens turned into ``_``."""
    column = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return "patient_id" if _compact(column) in PATIENT_ID_COLUMNS else column


def read_manifest_rows(manifest: Path) -> list[dict[str, str]]:
    """Rows of a manifest keyed by normalised column names; identifying columns are dropped; a
    path's bytes that are not UTF-8 are kept as the file system's own (with a warning), while any
    other value must be UTF-8 text; and a value's leading apostrophe (the mark medxfer's own CSVs put before a cell a spreadsheet
    would run as a formula, ``medxfer.csvfiles``) is removed, so they can serve as manifests.

    Raises ``ManifestError`` naming the manifest (and row) for anything that is not a readable
    CSV with a ``path`` column and distinct column names.
    """
    try:
        with open(manifest, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ManifestError(f"{manifest}: empty manifest (no header row)")
            columns = [normalise_column(name) for name in header]
            named = [c for c in columns if c]  # spreadsheets often add empty trailing columns
            repeated = sorted({c for c in named if named.count(c) > 1})
            if repeated:
                originals = [h.strip() for h, c in zip(header, columns, strict=True) if c in repeated]
                raise ManifestError(
                    f"{manifest}: columns {', '.join(originals)} all mean {', '.join(repeated)}; keep one"
                )
            if "path" not in columns:
                raise ManifestError(f"{manifest}: no 'path' column (columns: {', '.join(named)})")
            dropped = sorted(c for c in named if is_identifying_column(c))
            if dropped:
                warnings.warn(
                    f"{manifest}: identifying column(s) {', '.join(dropped)} ignored; "
                    "medxfer never copies names, birth dates or accession numbers",
                    MedxferWarning,
                    stacklevel=3,
                )
            rows = []
            undecodable = 0
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # blank line
                for column, value in zip(columns, values, strict=False):
                    if not _is_utf8(value):
                        if column != "path":  # only a path may name bytes: every other value is text
                            raise ManifestError(f"{manifest}, line {reader.line_num}: the {column or 'unnamed'} column "
                                                "is not UTF-8 text; save the manifest as UTF-8 CSV")
                        undecodable = undecodable or reader.line_num
                if len(values) > len(columns):
                    raise ManifestError(
                        f"{manifest}, line {reader.line_num}: {len(values)} values but {len(columns)} "
                        "columns (a comma inside an unquoted value?)"
                    )
                padded = values + [""] * (len(columns) - len(values))
                if any(v.strip() for c, v in zip(columns, padded, strict=True) if not c):
                    raise ManifestError(f"{manifest}, line {reader.line_num}: a value in a column without a name")
                rows.append({c: from_cell(v) for c, v in zip(columns, padded, strict=True)
                             if c and not is_identifying_column(c)})
            if undecodable:
                warnings.warn(f"{manifest}, line {undecodable}: a path holds bytes that are not UTF-8, read as the "
                              "file system's own bytes (medxfer's outputs carry such file names); if the manifest "
                              "was saved in another encoding (Latin-1, Windows-1252), save it as UTF-8",
                              MedxferWarning, stacklevel=3)
    except csv.Error as exc:
        raise ManifestError(f"{manifest}: not a valid CSV file, line {reader.line_num}: {exc}") from None
    return rows


def manifest_path(root: Path, value: str, where: str) -> Path:
    """The file a manifest's ``path`` cell names: surrounding spaces dropped, ``\\`` read as ``/``
    (paths written on Windows), relative to the manifest's folder ``root``, normalised with
    symbolic links kept as named. Raises ``ManifestError`` for an empty path or a NUL character."""
    raw = value.strip().replace("\\", "/")
    if not raw:
        raise ManifestError(f"{where}: empty path")
    if "\x00" in raw:
        raise ManifestError(f"{where}: the path contains a NUL character")
    return Path(os.path.abspath(root / raw))


def missing_reason(path: Path) -> str:
    """Why a listed file cannot be read before opening it: not found, or not a regular file."""
    return "listed in the manifest but not found" if not path.exists() else "not a regular file"


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
        entries.append((path, row, _normalise_split(row.get("split", ""), where)))
    present = [path for path, _, _ in entries if path.exists() and not path.is_dir()]
    headers, unreadable = scan_headers(present, decode=decode, max_pixels=max_pixels)  # special files: by sniffing
    unreadable += [UnreadableFile(p, missing_reason(p)) for p, _, _ in entries if p not in present]
    records = []
    for path, row, split in entries:
        if path not in headers:
            continue
        meta = {**headers[path], **_manifest_meta(row)}
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
