"""Patient-grouped, label-stratified train/val/test splits, the leakage check, and ``splits.csv``.

A patient's images all land in one split, so a model is never tested on a patient it was trained
on. The assignment depends only on the files' paths, labels and which files share a patient, not
on the pseudonymous keys' values, so the same data and seed give the same split on any machine,
whatever salt the keys were made with.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from medxfer.csvfiles import write_csv
from medxfer.datasets.scan import MedxferWarning
from medxfer.datasets.sources import ScanRecord, ScanSet, with_splits
from medxfer.filenames import shown

SPLITS = ("train", "val", "test")
SPLITS_CSV_COLUMNS = ("path", "label", "split", "patient_key")


class SplitWarning(MedxferWarning):
    """Something about a split that a reviewer should know (no patient ids, no test split...)."""


class SplitError(ValueError):
    """The data cannot be split as asked (too few patients, a half-filled split column...)."""


class PatientLeakageError(ValueError):
    """A patient has images in more than one split."""


def _group_ids(records: list[ScanRecord]) -> np.ndarray:
    """Integer group per record: records sharing a patient key share a group; records without
    a key are groups of their own. Numbered by first appearance in path order (salt-independent)."""
    order = sorted(range(len(records)), key=lambda i: records[i].path.as_posix())
    numbers: dict[object, int] = {}
    groups = np.empty(len(records), dtype=np.int64)
    for i in order:
        key = records[i].patient_key if records[i].patient_key is not None else ("file", i)
        groups[i] = numbers.setdefault(key, len(numbers))
    return groups


def _carve(
    candidates: np.ndarray, groups: np.ndarray, labels: np.ndarray | None, fraction: float, seed: int, name: str
) -> np.ndarray:
    """Indices (a subset of ``candidates``) forming about ``fraction`` of them, whole patients only,
    with label proportions kept (StratifiedGroupKFold: the first of round(1/fraction) folds)."""
    n_groups = len(np.unique(groups[candidates]))
    folds = max(2, round(1.0 / fraction))
    if n_groups < folds:
        raise SplitError(
            f"only {n_groups} patient(s) to split: too few for a {fraction:.0%} {name} split "
            f"(needs at least {folds})"
        )
    x = np.zeros(len(candidates))
    if labels is None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=1.0 / folds, random_state=seed)
        _, picked = next(splitter.split(x, groups=groups[candidates]))
    else:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # a class missing from a split is reported by _checked
            warnings.simplefilter("ignore", UserWarning)
            try:
                _, picked = next(splitter.split(x, labels[candidates], groups=groups[candidates]))
            except ValueError as exc:  # e.g. every class smaller than the number of folds
                raise SplitError(f"cannot make a {fraction:.0%} {name} split stratified by label: {exc}") from None
    return candidates[np.sort(picked)]


def _validate_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val", val_fraction), ("test", test_fraction)):
        if not 0.0 < value < 1.0:
            raise SplitError(f"the {name} fraction must be between 0 and 1 (exclusive), got {value}")
    if val_fraction + test_fraction >= 0.9:
        raise SplitError(
            f"val ({val_fraction}) and test ({test_fraction}) fractions leave less than 10% for training"
        )


def _warn_about_coverage(scans: ScanSet) -> None:
    """Warn when records lack a patient id, or a class is missing from a split."""
    anonymous = sum(r.patient_key is None for r in scans.records)
    if anonymous:
        warnings.warn(
            f"{scans.root}: {anonymous} of {len(scans.records)} file(s) have no patient id (manifest "
            "patient_id column or DICOM PatientID); each is split on its own, so images of one patient "
            "may fall in different splits",
            SplitWarning,
            stacklevel=4,
        )
    present = {split: {r.label for r in scans.records if r.split == split} for split in SPLITS}
    for split, labels in present.items():
        missing = [c for c in scans.classes if c not in labels] if labels else []
        if missing:
            warnings.warn(
                f"{scans.root}: class(es) {', '.join(missing)} have no images in {split}: metrics "
                f"on {split} cannot cover them (too few patients of that class?)",
                SplitWarning,
                stacklevel=4,
            )


def check_no_leakage(records: list[ScanRecord]) -> None:
    """Raise ``PatientLeakageError`` if any patient has images in two splits, naming them."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    files_of: dict[str, list[Path]] = defaultdict(list)
    for record in records:
        if record.patient_key is not None and record.split is not None:
            splits_of[record.patient_key].add(record.split)
            files_of[record.patient_key].append(record.path)
    leaked = sorted(key for key, splits in splits_of.items() if len(splits) > 1)
    if leaked:
        lines = [
            f"  patient {key} in {', '.join(sorted(splits_of[key]))}: "
            + ", ".join(shown(p) for p in files_of[key][:4])
            for key in leaked[:10]
        ]
        more = f"\n  ... and {len(leaked) - 10} more" if len(leaked) > 10 else ""
        raise PatientLeakageError(
            f"{len(leaked)} patient(s) have images in more than one split:\n" + "\n".join(lines) + more
        )


def assign_splits(
    scans: ScanSet, *, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> ScanSet:
    """Give every record a split, grouped by patient and stratified by label.

    With no split column, test and then val are carved out by patient (actual fractions are
    1/round(1/fraction) of what is split, e.g. 14.3% for 0.15). A split column present on every
    record is honoured and checked for leakage; when it names no ``val``, val is carved out of
    train by patient; when it names no ``test``, a ``SplitWarning`` says so.
    """
    _validate_fractions(val_fraction, test_fraction)
    records = scans.records
    if not records:
        raise SplitError(f"{scans.root}: no readable scans to split")
    groups = _group_ids(records)
    labels = np.array([r.label for r in records], dtype=object) if scans.classes else None
    given = [r.split for r in records]
    if all(s is None for s in given):
        split = np.array(["train"] * len(records), dtype=object)
        test = _carve(np.arange(len(records)), groups, labels, test_fraction, seed, "test")
        split[test] = "test"
        rest = np.flatnonzero(split == "train")
        val = _carve(rest, groups, labels, min(val_fraction / (1.0 - len(test) / len(records)), 0.5), seed, "val")
        split[val] = "val"
        return _checked(with_splits(scans, list(split)))
    blank = [r.path for r in records if r.split is None]
    if blank:
        raise SplitError(
            f"{scans.root}: the split column is blank for {len(blank)} of {len(records)} file(s), "
            f"e.g. {blank[0]}; fill it for every row or remove it"
        )
    check_no_leakage(records)
    split = np.array(given, dtype=object)
    if "val" not in given:
        train = np.flatnonzero(split == "train")
        if len(train) == 0:
            raise SplitError(f"{scans.root}: the split column names no train or val files")
        share = min(val_fraction * len(records) / len(train), 0.5)
        split[_carve(train, groups, labels, share, seed, "val")] = "val"
    if "test" not in given:
        warnings.warn(f"{scans.root}: the split column names no test files", SplitWarning, stacklevel=2)
    return _checked(with_splits(scans, list(split)))


def _checked(scans: ScanSet) -> ScanSet:
    check_no_leakage(scans.records)
    _warn_about_coverage(scans)
    return scans


def assign_folds(scans: ScanSet, *, folds: int, seed: int = 0) -> np.ndarray:
    """Cross-fitting folds of the non-test records: an int array, one entry per record, holding
    the fold (0 to ``folds`` - 1) of every record not in ``test`` and -1 for the test records.
    Folds are grouped by patient (a patient's images share a fold) and stratified by label
    (scikit-learn's ``StratifiedGroupKFold``, shuffled with ``seed``). Raises ``SplitError`` when
    there are fewer patients than folds."""
    records = scans.records
    pool = np.array([i for i, r in enumerate(records) if r.split != "test"], dtype=np.int64)
    groups = _group_ids(records)[pool]
    if len(np.unique(groups)) < folds:
        raise SplitError(f"{scans.root}: {len(np.unique(groups))} patient(s) outside the test split, too few for "
                         f"{folds} cross-fitting folds; use fewer folds or validation: holdout")
    labels = np.array([r.label for r in records], dtype=object)[pool]
    names, counts = np.unique(labels, return_counts=True)
    if counts.min() < folds:
        raise SplitError(f"{scans.root}: class {names[counts.argmin()]} has {counts.min()} image(s) outside the test "
                         f"split, too few for {folds} cross-fitting folds; use fewer folds or validation: holdout")
    fold_of = np.full(len(records), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class missing from a fold is reported when it trains
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(pool)), labels, groups=groups)):
            fold_of[pool[held_out]] = fold
    return fold_of


def split_counts(scans: ScanSet) -> dict[str, dict[str, int]]:
    """Images per split and label, e.g. ``{"train": {"normal": 40, "opacity": 38}, ...}``."""
    counts: dict[str, dict[str, int]] = {}
    for record in scans.records:
        by_label = counts.setdefault(record.split or "none", {})
        label = record.label if record.label is not None else "unlabelled"
        by_label[label] = by_label.get(label, 0) + 1
    return counts


def write_splits_csv(scans: ScanSet, path: str | Path, folds: Sequence[int] | None = None) -> Path:
    """Write ``path,label,split,patient_key`` for every record (paths relative to the data root),
    atomically, after checking for leakage; with ``folds`` (one per record, as ``assign_folds``
    gives), a ``fold`` column too: 1 to K for a cross-fitted image, blank for a test image. The
    patient key is the pseudonym, never the raw id. File names of any bytes round-trip, and no
    cell runs as a spreadsheet formula (``medxfer.csvfiles``)."""
    check_no_leakage(scans.records)
    fold_of = dict(zip((id(r) for r in scans.records), folds, strict=True)) if folds is not None else {}
    rows = ({"path": scans.relative(record.path), "label": record.label, "split": record.split,
             "patient_key": record.patient_key,
             **({"fold": fold_of[id(record)] + 1 if fold_of[id(record)] >= 0 else ""} if fold_of else {})}
            for record in sorted(scans.records, key=lambda r: r.path.as_posix()))
    return write_csv(path, (*SPLITS_CSV_COLUMNS, "fold") if fold_of else SPLITS_CSV_COLUMNS, rows)
