"""The files one ``medxfer predict`` job owns, checked before anything is written, and its parts.

For ``--out predictions.csv`` a job writes ``predictions.csv``, ``predictions.errors.csv``,
``predictions.slices.csv`` (with ``--slices``), the sidecar ``predictions.json`` and, while it
runs, ``predictions.csv.parts/``; nothing else. Before it writes anything it checks that each of
them is either absent or its own: an existing file is replaced only when the sidecar beside it
says that ``medxfer predict`` wrote it with the same settings, or when the parts folder shows
that this job's own merge was interrupted. So ``--out RUN/model.csv`` cannot replace the run's
``model.json``, and ``--out preds.json`` is refused (the output must be a ``.csv``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medxfer.csvfiles import iter_csv, write_csv
from medxfer.files import atomic_write_text

SETTINGS_FILE = "settings.json"  # in the parts folder: what the rows were computed with
PART_COLUMNS = ("index", "path", "slice", "status", "reason")
WRITTEN_BY = "medxfer predict"  # the sidecar's "written_by": how a job recognises its own files
RESERVED_ENDINGS = (".errors.csv", ".slices.csv")


def _is_sidecar(path: Path) -> bool:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(value, dict) and value.get("written_by") == WRITTEN_BY


def _same_settings(earlier: dict[str, Any], settings: dict[str, Any], where: str, remedy: str) -> None:
    """Raise ValueError naming each setting of ``settings`` that ``earlier`` recorded otherwise."""
    changed = [f"{key} {earlier.get(key)!r} there, {value!r} now" for key, value in settings.items()
               if earlier.get(key) != value]
    if changed:
        raise ValueError(f"{where} was written with other settings ({'; '.join(changed)}): its rows cannot be "
                         f"mixed with this job's. Rerun with the same run and options, write to another --out, "
                         f"{remedy}")


@dataclass(frozen=True)
class PredictionFiles:
    """Every path a job with this ``out`` may write."""

    out: Path
    errors: Path
    slices: Path
    sidecar: Path
    parts: Path

    @classmethod
    def for_out(cls, out: Path) -> PredictionFiles:
        """``predictions.csv`` -> ``predictions.errors.csv``, ``.slices.csv``, ``.json``, ``.csv.parts``.
        Raises ValueError unless ``out`` ends in ``.csv`` (lower case) and not in ``.errors.csv`` or
        ``.slices.csv``: so the files of two different ``--out`` never overlap (``a.CSV`` would share
        ``a.json`` with ``a.csv``; ``a.errors.csv`` is ``a.csv``'s errors file), and two jobs that
        could write the same file always take the same lock."""
        if out.suffix != ".csv" or out.name.endswith(RESERVED_ENDINGS):
            raise ValueError(f"--out {out}: the predictions must go to a file ending in .csv (lower case), and not in "
                             f"{' or '.join(RESERVED_ENDINGS)}, which name the files beside another output")
        return cls(out, out.with_name(out.stem + ".errors" + out.suffix),
                   out.with_name(out.stem + ".slices" + out.suffix), out.with_suffix(".json"),
                   out.with_name(out.name + ".parts"))

    @property
    def outputs(self) -> tuple[Path, ...]:
        return self.out, self.errors, self.slices, self.sidecar

    def is_own(self, path: Path) -> bool:
        """True for one of these files or a file in the parts folder (never predicted as a scan)."""
        path = path.absolute()
        return path in {p.absolute() for p in self.outputs} or self.parts.absolute() in path.parents

    @property
    def merge_interrupted(self) -> bool:
        """True while parts recorded by a job exist: any output beside them is that job's own."""
        return (self.parts / SETTINGS_FILE).is_file()

    def check_layout(self) -> None:
        """Refuse, before the job claims its parts folder, paths that are in the way: a folder
        where a file goes, a file (or a link, whose target the job would fill) where the parts
        folder goes."""
        for path in (*self.outputs, self.parts):
            wrong = path.is_symlink() if path == self.parts else path.is_dir()
            if path == self.parts and path.exists() and not path.is_dir():
                wrong = True
            if wrong:
                kind = "link" if path.is_symlink() else "folder" if path.is_dir() else "file"
                raise ValueError(f"{path} is in the way of --out {self.out.name}: it is a {kind}; move it or write "
                                 "to another --out")

    def check(self, settings: dict[str, Any]) -> None:
        """Refuse, before anything is written, to replace a file this job does not own, or to mix
        rows of an earlier output or earlier parts computed with other ``settings``."""
        self.check_layout()
        sidecar_is_ours = self.sidecar.is_file() and _is_sidecar(self.sidecar)
        if self.sidecar.exists() and not sidecar_is_ours:
            raise ValueError(f"--out {self.out} would replace {self.sidecar} (its sidecar), which medxfer predict did "
                             "not write: write to another --out")
        remedy = (f"or delete {self.out.name} and the files beside it ({self.errors.name}, {self.slices.name}, "
                  f"{self.sidecar.name}, {self.parts.name}) to predict every scan again")
        if not sidecar_is_ours and not self.merge_interrupted:
            for path in (self.out, self.errors, self.slices):
                if path.exists():
                    raise ValueError(f"{path} exists without {self.sidecar.name}, which records what medxfer predict "
                                     f"computed its rows with: write to another --out, {remedy}")
        if sidecar_is_ours:
            _same_settings(json.loads(self.sidecar.read_text(encoding="utf-8")), settings, f"{self.out}", remedy)
        if self.merge_interrupted:
            _same_settings(json.loads((self.parts / SETTINGS_FILE).read_text(encoding="utf-8")), settings,
                           f"{self.parts} (the parts of an interrupted job)", remedy)
        elif self.parts.is_dir() and any(self.parts.glob("rank*.csv")):
            raise ValueError(f"{self.parts} holds the parts of an interrupted job without {SETTINGS_FILE}, so their "
                             f"settings cannot be checked: write to another --out, {remedy}")

    def earlier_rows(self, slices: bool) -> Iterator[dict[str, str]]:
        """The rows of an earlier output (checked by ``check``), as part rows with no index yet; its
        slice rows only with ``slices``."""
        if not self.out.is_file():
            return
        tables = ((self.out, "ok"), (self.errors, "error"), *(((self.slices, "slice"),) if slices else ()))
        for path, status in tables:
            if path.is_file():
                for row in iter_csv(path):
                    if "path" not in row:
                        raise ValueError(f"{path} has no 'path' column: it is not a medxfer predict output any more "
                                         "(edited?); move it, or write to another --out")
                    yield {"slice": "", **row, "status": status}


class Parts:
    """The part files of one job: ``<out>.parts/rank{R}-{N}.csv``, each written atomically, and
    ``settings.json``, what their rows were computed with."""

    def __init__(self, folder: Path, classes: Sequence[str], meta_columns: Sequence[str]) -> None:
        self.folder = folder
        self.columns = [*PART_COLUMNS, *[f"p_{c}" for c in classes], "predicted", "slices", *meta_columns]

    def done(self) -> set[str]:
        """Paths (relative) of the scans already in a part file (a scan's row is written with
        its slices' rows, in one part)."""
        return {row["path"] for part in self.files() for row in self.read(part) if row["status"] != "slice"}

    def record_settings(self, settings: dict[str, Any]) -> None:
        """Record ``settings`` when this job starts the parts (``PredictionFiles.check`` has
        compared them with any recorded earlier)."""
        if not (self.folder / SETTINGS_FILE).is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder / SETTINGS_FILE, json.dumps(settings, indent=2) + "\n")

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("rank*.csv")) if self.folder.is_dir() else []

    def read(self, part: Path) -> Iterator[dict[str, str]]:
        yield from iter_csv(part)

    def write(self, rank: int, rows: list[dict[str, Any]]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        number = len(list(self.folder.glob(f"rank{rank}-*.csv")))
        write_csv(self.folder / f"rank{rank}-{number:06d}.csv", self.columns, rows)
