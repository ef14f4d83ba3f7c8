from __future__ import annotations

import os
import stat

import pytest

from medxfer import files


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "report.csv"
    files.atomic_write_text(target, "a,b\n")
    files.atomic_write_text(target, "c,d\n")
    assert target.read_text() == "c,d\n"
    assert os.listdir(target.parent) == ["report.csv"]


def test_new_file_follows_the_umask_and_an_existing_file_keeps_its_mode(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    fresh = files.atomic_write_bytes(tmp_path / "x.bin", b"1")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600
    private = tmp_path / "private.bin"
    private.write_bytes(b"0")
    private.chmod(0o600)
    files.atomic_write_bytes(private, b"1")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        files.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_a_csv_row_with_a_column_outside_the_header_is_refused_unless_ignored(tmp_path):
    rows = [{"path": "a.dcm", "label": "normal", "patient_id": "P1"}]
    with pytest.raises(ValueError, match="patient_id"):
        files.atomic_write_csv(tmp_path / "strict.csv", ("path", "label"), rows)
    assert not (tmp_path / "strict.csv").exists()
    written = files.atomic_write_csv(tmp_path / "kept.csv", ("path", "label", "site"), rows, ignore_extra=True)
    assert written.read_bytes() == b"path,label,site\na.dcm,normal,\n"
