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


def test_a_failure_while_staging_several_files_replaces_none_of_them(tmp_path, monkeypatch):
    first, second = tmp_path / "a.csv", tmp_path / "a.json"
    first.write_text("old a")
    second.write_text("old b")
    real_fsync, calls = files.os.fsync, []

    def fsync_then_fail(fd):  # the second file's flush hits a full disk
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync_then_fail)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write_many({first: b"new a", second: b"new b"})
    assert first.read_text() == "old a" and second.read_text() == "old b"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "a.json"]
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    files.atomic_write_many({first: b"new a", second: b"new b"})
    assert first.read_text() == "new a" and second.read_text() == "new b"
