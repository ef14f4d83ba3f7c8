"""What is in a folder or dataset: the numbers ``medxfer inspect`` prints."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from medxfer.datasets.sources import ScanSet, load_scans

# Metadata whose coverage is reported; manifest-only columns are added per dataset.
COVERAGE_KEYS = ("patient_key", "sex", "age", "site", "view", "manufacturer", "modality", "pixel_spacing")


# Technical header fields: summarised by format, photometric and size counts, not as metadata coverage.
_HEADER_ONLY = frozenset({
    "format", "photometric_interpretation", "bits_stored", "rows", "columns", "frames", "shape",
    "transfer_syntax", "sop_class", "pixel_spacing_tag", "window", "inverted", "frame", "mode",
    "orientation", "slice_spacing", "nonfinite_voxels", "pages", "body_part", "volumes", "volume_index",
})


def _counts(values: list[Any]) -> dict[str, int]:
    return dict(sorted(Counter("unknown" if v is None else str(v) for v in values).items()))


def _size(meta: dict[str, Any]) -> str | None:
    shape = meta.get("shape")
    if shape is None and meta.get("rows") is not None:
        shape = (meta["rows"], meta["columns"]) if meta.get("frames", 1) == 1 else (
            meta["frames"], meta["rows"], meta["columns"])
    return "x".join(str(n) for n in shape) if shape else None


def summarise(scans: ScanSet) -> dict[str, Any]:
    """A JSON-ready summary: counts by format, modality, photometric interpretation and size,
    labels and metadata coverage when labelled, and every unreadable file with its reason.
    Holds no patient identifier (patient keys are only counted)."""
    metas = [r.meta for r in scans.records]
    keys = list(COVERAGE_KEYS) + sorted({k for m in metas for k in m} - set(COVERAGE_KEYS) - _HEADER_ONLY)
    summary: dict[str, Any] = {
        "path": str(scans.root),
        "layout": scans.layout,
        "files": len(scans.records) + len(scans.unreadable),
        "readable": len(scans.records),
        "unreadable": [{"path": str(u.path), "reason": u.reason} for u in scans.unreadable],
        "by_format": _counts([m.get("format") for m in metas]),
        "by_modality": _counts([m.get("modality") for m in metas]),
        "by_photometric": _counts([m.get("photometric_interpretation") for m in metas]),
        "by_size": _counts([_size(m) for m in metas]),
        "patients": len({r.patient_key for r in scans.records if r.patient_key is not None}),
        "coverage": {
            key: sum(1 for r in scans.records if (r.patient_key if key == "patient_key" else r.meta.get(key)) is not None)
            for key in keys
        },
    }
    if scans.layout != "unlabelled":
        summary["labels"] = _counts([r.label for r in scans.records])
    if any(r.split is not None for r in scans.records):
        summary["splits"] = _counts([r.split for r in scans.records])
    return summary


def inspect_path(path: str | Path, *, layout: str = "auto", decode: bool = False,
                 max_pixels: int | None = None) -> dict[str, Any]:
    """Index ``path`` (headers only unless ``decode``) and summarise it; never fails on a bad file.
    ``max_pixels``: the pixel budget (``medxfer.datasets.budget``)."""
    return summarise(load_scans(path, layout=layout, decode=decode, max_pixels=max_pixels))
