"""The CSV manifest: reading its rows and checking them, before any file it lists is opened.

A manifest names one scan a row: ``path`` (relative to the manifest), optional ``label``,
``patient_id``, ``split`` and metadata columns. This module owns how its columns are recognised
(spelling variants of the patient identifier, identifying columns that are dropped), how its rows
are read and checked (``ManifestError`` for anything malformed), and how a row's path, split and
metadata are interpreted. Turning the rows into a ``ScanSet`` is ``sources.from_manifest``.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medxfer.csvfiles import from_cell
from medxfer.datasets.metadata import normalise_sex, parse_age
from medxfer.datasets.scan import MedxferWarning

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


def normalise_split(value: str, where: str) -> str | None:
    """A manifest's ``split`` cell as ``train``, ``val`` or ``test`` (None when empty); ``where`` names
    the row in the ``ManifestError`` an unknown split raises."""
    text = value.strip().lower()
    if not text:
        return None
    if text not in SPLIT_NAMES:
        raise ManifestError(f"{where}: unknown split {value!r} (use train, val or test)")
    return SPLIT_NAMES[text]


_MANIFEST_PARSERS: dict[str, Callable[[str], Any]] = {"sex": normalise_sex, "age": parse_age}


def manifest_meta(row: dict[str, str]) -> dict[str, Any]:
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
