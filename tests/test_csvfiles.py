"""CSV tables: a carriage return, bytes that are not UTF-8 and spreadsheet formulas all
round-trip; a byte-order mark is skipped on reading."""

from __future__ import annotations

import csv
import os

import pytest

from medxfer import csvfiles

AWKWARD = [
    "images/a\rb.dcm",             # a carriage return: split the row when written bare
    "images/line\nbreak.dcm",
    os.fsdecode(b"images/x\xff\xfe.dcm"),  # not UTF-8: carried as the bytes the OS gave
    "=HYPERLINK(\"http://x\")",   # a formula
    "+1+1", "-2+3", "@SUM(A1)", "\tname", "'quoted", "''twice",
    "plain.dcm", "-0.25", "",
]


def test_every_awkward_cell_round_trips(tmp_path):
    rows = [{"path": value, "label": value} for value in AWKWARD]
    path = csvfiles.write_csv(tmp_path / "t.csv", ("path", "label"), rows)
    assert csvfiles.read_csv(path) == rows


def test_a_carriage_return_does_not_split_the_row_for_a_plain_csv_reader(tmp_path):
    path = csvfiles.write_csv(tmp_path / "t.csv", ("path", "p"), [{"path": "a\rb.dcm", "p": "0.5"}])
    with open(path, newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle)) == [["path", "p"], ["a\rb.dcm", "0.5"]]


def test_formula_cells_are_neutralised_and_numbers_are_not(tmp_path):
    path = csvfiles.write_csv(tmp_path / "t.csv", ("a", "b", "c"), [{"a": "=1+1", "b": "-0.5", "c": "@x"}])
    assert path.read_bytes().splitlines()[1] == b"'=1+1,-0.5,'@x"


def test_a_name_that_is_not_utf8_is_written_as_its_own_bytes(tmp_path):
    name = os.fsdecode(b"x\xff.dcm")
    path = csvfiles.write_csv(tmp_path / "t.csv", ("path",), [{"path": name}])
    assert path.read_bytes() == b"path\nx\xff.dcm\n"


def test_a_byte_order_mark_from_a_spreadsheet_is_skipped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfpath,label\r\na.dcm,normal\r\n")
    assert csvfiles.read_csv(path) == [{"path": "a.dcm", "label": "normal"}]


def test_a_row_with_a_column_outside_the_header_is_refused_unless_ignored(tmp_path):
    rows = [{"path": "a.dcm", "label": "normal", "patient_id": "P1"}]
    with pytest.raises(ValueError, match="patient_id"):
        csvfiles.write_csv(tmp_path / "strict.csv", ("path", "label"), rows)
    assert not (tmp_path / "strict.csv").exists()
    written = csvfiles.write_csv(tmp_path / "kept.csv", ("path", "label", "site"), rows, ignore_extra=True)
    assert written.read_bytes() == b"path,label,site\na.dcm,normal,\n"
