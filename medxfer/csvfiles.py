"""The CSV files medxfer writes and reads back: one set of rules for every table.

- **Line breaks inside a cell.** Python's csv writer quotes a cell only for the characters of
  its own line terminator, so with ``"\\n"`` line ends a carriage return in a file name was
  written bare and split the row for every reader. A row holding ``"\\r"`` or ``"\\n"`` in any
  cell is written with every cell quoted.
- **File names of any bytes.** A name that is not valid UTF-8 reaches Python as text with
  lone surrogates (``os.fsdecode``). Tables are written with ``surrogateescape``, so such a
  name is stored as the very bytes the operating system gave, and read back the same way.
- **Spreadsheet formulas.** A text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
  carriage return is run as a formula by Excel, LibreOffice and Google Sheets. Such a cell is
  written with a leading apostrophe (the spreadsheets' own "this is text" mark), and so is a cell
  that already starts with one, so that reading removes exactly one and every value round-trips.
  Numbers (``-0.5``) are left as they are.
- **Reading.** A byte-order mark (a file saved by Excel) is skipped.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from medxfer.files import atomic_write_bytes

ENCODING = "utf-8"
ERRORS = "surrogateescape"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_cell(value: Any) -> str:
    """``value`` as the text of a cell: ``""`` for None, a leading apostrophe where a
    spreadsheet would otherwise run the cell as a formula (or where one is already there)."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    text = str(value)
    if text.startswith(TEXT_MARK) or (text.startswith(FORMULA_STARTS) and not _is_number(text)):
        return TEXT_MARK + text
    return text


def from_cell(text: str) -> str:
    """The value ``to_cell`` wrote: one leading apostrophe removed."""
    return text[1:] if text.startswith(TEXT_MARK) else text


class CsvText:
    """A CSV table built row by row in memory, under the header ``columns``. A key outside
    ``columns`` raises ValueError unless ``ignore_extra``; a missing one is written empty."""

    def __init__(self, columns: Sequence[str], *, ignore_extra: bool = False) -> None:
        self.columns = list(columns)
        self.ignore_extra = ignore_extra
        self.buffer = io.StringIO()
        self._plain = csv.writer(self.buffer, lineterminator="\n")
        self._quoted = csv.writer(self.buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
        self.count = 0
        self._write([to_cell(c) for c in self.columns])

    def _write(self, cells: list[str]) -> None:
        breaks = any("\r" in cell or "\n" in cell for cell in cells)
        (self._quoted if breaks else self._plain).writerow(cells)

    def add(self, row: Mapping[str, Any]) -> None:
        """Append one row (a mapping of column to value)."""
        if not self.ignore_extra:
            extra = [key for key in row if key not in self.columns]
            if extra:
                raise ValueError(f"keys outside the CSV columns: {', '.join(map(str, extra))}")
        self._write([to_cell(row.get(column)) for column in self.columns])
        self.count += 1

    def add_all(self, rows: Iterable[Mapping[str, Any]]) -> CsvText:
        for row in rows:
            self.add(row)
        return self

    def text(self) -> str:
        return self.buffer.getvalue()

    def data(self) -> bytes:
        """The table as bytes (UTF-8; names that are not UTF-8 keep their own bytes)."""
        return self.text().encode(ENCODING, ERRORS)


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]], *,
              ignore_extra: bool = False) -> Path:
    """Write ``rows`` under the header ``columns`` to ``path`` atomically (``files.atomic_write_bytes``)."""
    return atomic_write_bytes(path, CsvText(columns, ignore_extra=ignore_extra).add_all(rows).data())


def iter_csv(path: str | Path) -> Iterator[dict[str, str]]:
    """The rows of a CSV file medxfer wrote (or one a spreadsheet saved again), as dicts keyed by
    the header, values as written before ``to_cell`` (a row shorter than the header gets
    ``""``)."""
    with open(path, newline="", encoding="utf-8-sig", errors=ERRORS) as handle:
        reader = csv.reader(handle)
        header = [from_cell(c) for c in next(reader, [])]
        for values in reader:
            cells = [from_cell(v) for v in values] + [""] * (len(header) - len(values))
            yield dict(zip(header, cells, strict=False))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """``iter_csv`` as a list."""
    return list(iter_csv(path))
