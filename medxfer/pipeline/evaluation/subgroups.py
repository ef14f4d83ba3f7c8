"""Which images form which group: the attributes worth reporting (sex, age band, site,
manufacturer, view, the user's own columns and their intersections), each image's group in
them, the attributes skipped with the reason, and the order groups are listed in."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from medxfer.pipeline.evaluation.inputs import EvaluationSettings

# Attributes reported whenever the scans carry them (DICOM header or manifest column).
STANDARD_ATTRIBUTES = ("sex", "age_band", "site", "manufacturer", "view")
MAX_GROUPS = 20  # an attribute with more distinct values is skipped: bin it first


class SubgroupColumns(NamedTuple):
    """``columns``: for each attribute reported, the group of every image (n,), unknown values
    in the group "unknown"; ``skipped``: the attributes not reported, with the reason."""

    columns: dict[str, list[str]]
    skipped: dict[str, str]


def age_band(age: Any, edges: Sequence[float]) -> str | None:
    """The band of ``age`` (years) between ``edges``: "<18", "18-39", "40-64", "65+" for
    edges (18, 40, 65) (whole-year edges label their last whole year); None when unknown."""
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return None
    age = float(age)
    edges = sorted(edges)
    if not edges or age < edges[0]:
        return f"<{edges[0]:g}" if edges else "all"
    for low, high in itertools.pairwise(edges):
        if age < high:
            upper = f"{high - 1:g}" if float(high).is_integer() and float(low).is_integer() else f"<{high:g}"
            return f"{low:g}-{upper}"
    return f"{edges[-1]:g}+"


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def subgroup_columns(meta: Sequence[Mapping[str, Any]], settings: EvaluationSettings) -> SubgroupColumns:
    """The group of every image for each attribute worth reporting (unknown values form the
    group "unknown"), and the attributes skipped with the reason."""
    values: dict[str, list[str | None]] = {}
    for attribute in dict.fromkeys([*STANDARD_ATTRIBUTES, *settings.subgroups]):
        if attribute == "age_band":
            values[attribute] = [age_band(m.get("age"), settings.age_bands) for m in meta]
        else:
            values[attribute] = [_text(m.get(attribute)) for m in meta]
    groups: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}

    def consider(attribute: str, column: list[str | None]) -> None:
        known = sorted({v for v in column if v is not None})
        if not known:
            skipped[attribute] = ("not recorded" if attribute in STANDARD_ATTRIBUTES
                                  else "no such column, or no value in it, in the data")
        elif len(known) == 1:
            skipped[attribute] = f"one value only ({known[0]})"
        elif len(known) > MAX_GROUPS:
            skipped[attribute] = (f"{len(known)} distinct values; group them into at most {MAX_GROUPS} "
                                  "(e.g. a new manifest column) to report them")
        else:
            groups[attribute] = [v if v is not None else "unknown" for v in column]

    for attribute, column in values.items():
        consider(attribute, column)
    for pair in settings.intersections:
        first, second = parse_intersection(pair)
        name = f"{first} x {second}"
        if first not in values or second not in values:
            skipped[name] = "an attribute of the pair is not reported"
            continue
        column = [None if a is None or b is None else f"{a}, {b}" for a, b in zip(values[first], values[second])]
        consider(name, column)
    return SubgroupColumns(groups, skipped)


def parse_intersection(text: str) -> tuple[str, str]:
    """``"sex x age_band"`` -> ("sex", "age_band")."""
    parts = [p.strip() for p in re.split(r"\s+x\s+|\s*\*\s*", text.strip()) if p.strip()]
    if len(parts) != 2:
        raise ValueError(f"an intersection names two attributes as 'A x B', got {text!r}")
    return parts[0], parts[1]



def group_order(group: str) -> tuple:
    """Groups in reading order: by the first number in the name when there is one (age bands:
    "<18" before "18-39" before "65+"), else alphabetically; "unknown" last. The groups of an
    intersection ("F, <18") are ordered part by part: by the first attribute, then the second."""
    return (group == "unknown", tuple(_part_order(part) for part in group.split(", ")))


def _part_order(part: str) -> tuple:
    """The sort key of one group name (or one part of an intersection's): see ``group_order``."""
    number = re.search(r"\d+(\.\d+)?", part)
    return (number is None, float(number.group()) if number else 0.0, not part.startswith("<"), part)

