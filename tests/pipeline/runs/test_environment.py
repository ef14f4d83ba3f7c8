"""environment.json: the data hash, the git commit and the record of what a run ran on."""

from __future__ import annotations

import getpass
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import medxfer
from medxfer.datasets.sources import ScanRecord, ScanSet, load_labelled, with_splits
from medxfer.pipeline.runs import environment
from medxfer.pipeline.runs.environment import (
    data_manifest_hash,
    environment_info,
    git_commit,
    records_manifest_hash,
    write_environment,
)
from medxfer.pipeline.runs.files import ENVIRONMENT_FILE

ROWS = [
    ("normal/a.png", "normal", "train", "p1", 100),
    ("normal/b.png", "normal", "val", "p2", 200),
    ("opacity/c.png", "opacity", "test", "p3", 300),
    ("opacity/d.png", "opacity", "train", "p1", 400),
]

needs_git = pytest.mark.skipif(
    shutil.which("git") is None, reason="git is not installed"
)


def changed(index: int, field: int, value: object) -> list[tuple]:
    rows = [list(row) for row in ROWS]
    rows[index][field] = value
    return [tuple(row) for row in rows]


def test_manifest_hash_is_sha256_hex_and_ignores_row_order():
    digest = data_manifest_hash(ROWS)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert data_manifest_hash(list(reversed(ROWS))) == digest
    assert data_manifest_hash(iter([ROWS[2], ROWS[0], ROWS[3], ROWS[1]])) == digest
    # equal content, equal hash
    assert data_manifest_hash([list(row) for row in ROWS]) == digest


@pytest.mark.parametrize(
    "field,value",
    [(0, "normal/a2.png"), (1, "opacity"), (2, "test"), (4, 101)],
    ids=["path", "label", "split", "size"],
)
def test_manifest_hash_changes_with_path_label_split_or_size(field, value):
    assert data_manifest_hash(changed(0, field, value)) != data_manifest_hash(ROWS)


def test_manifest_hash_changes_with_added_removed_or_repeated_rows():
    digest = data_manifest_hash(ROWS)
    assert data_manifest_hash(ROWS[:-1]) != digest
    assert (
        data_manifest_hash([*ROWS, ("normal/e.png", "normal", "train", "", 5)])
        != digest
    )
    assert data_manifest_hash([*ROWS, ROWS[0]]) != digest
    assert data_manifest_hash([]) != digest


def test_manifest_hash_sees_patient_grouping_not_the_salted_keys():
    digest = data_manifest_hash(ROWS)
    # the same patients, their keys made with another salt
    other_salt = {"p1": "pX", "p2": "pY", "p3": "pZ"}
    renamed = [(p, lab, s, other_salt[k], n) for p, lab, s, k, n in ROWS]
    assert data_manifest_hash(renamed) == digest
    # d.png now belongs to b.png's patient
    assert data_manifest_hash(changed(3, 3, "p2")) != digest
    assert data_manifest_hash(changed(3, 3, "")) != digest  # patient no longer known


def test_manifest_fields_cannot_run_into_each_other():
    one = [("a\tb", "x", "train", "", 1)]
    two = [("a", "b\tx", "train", "", 1)]
    assert data_manifest_hash(one) != data_manifest_hash(two)
    three = [("a\nb", "x", "train", "", 1)]
    four = [("a", "x", "train", "", 1), ("b", "x", "train", "", 1)]
    assert data_manifest_hash(three) != data_manifest_hash(four)


def test_manifest_hash_is_the_same_for_both_unicode_spellings_of_a_name():
    composed = [("normal/\u00e9.png", "normal", "train", "", 1)]
    # as macOS file systems spell it
    decomposed = [("normal/e\u0301.png", "normal", "train", "", 1)]
    assert data_manifest_hash(composed) == data_manifest_hash(decomposed)


@pytest.mark.parametrize(
    "row,error",
    [
        (("a", "x", "train", "", -1), ValueError),
        (("a", "x", "train", "", 1.0), TypeError),
        (("a", "x", "train", "", True), TypeError),
        (("a", None, "train", "", 1), TypeError),
        (("a", "x", "train", 1), TypeError),
    ],
)
def test_malformed_manifest_rows_are_refused(row, error):
    with pytest.raises(error):
        data_manifest_hash([row])


def write_dataset(root: Path) -> None:
    """Three small PNGs in each of root/normal and root/opacity."""
    rng = np.random.default_rng(0)
    for label in ("normal", "opacity"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}{i}.png")


def test_records_manifest_hash_follows_the_files_labels_and_splits(tmp_path):
    write_dataset(tmp_path / "data")
    scans = with_splits(load_labelled(tmp_path / "data"), ["train", "train", "val"] * 2)
    digest = records_manifest_hash(scans)
    rows = [
        (f"{r.label}/{r.path.name}", r.label, r.split, "", r.path.stat().st_size)
        for r in scans.records
    ]
    assert digest == data_manifest_hash(rows)

    moved = tmp_path / "elsewhere" / "data"  # another machine, another absolute path
    shutil.copytree(tmp_path / "data", moved)
    copy = with_splits(load_labelled(moved), ["train", "train", "val"] * 2)
    assert records_manifest_hash(copy) == digest

    resplit = with_splits(scans, ["train", "val", "val"] * 2)
    assert records_manifest_hash(resplit) != digest
    with open(scans.records[0].path, "ab") as handle:
        handle.write(b"\0")  # the file grows
    assert records_manifest_hash(scans) != digest


def test_records_manifest_hash_of_records_without_split_or_patient(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "one.png").write_bytes(b"12345")
    scans = ScanSet(
        tmp_path, "classes", [ScanRecord(tmp_path / "x" / "one.png", label="x")], []
    )
    assert records_manifest_hash(scans) == data_manifest_hash(
        [("x/one.png", "x", "", "", 5)]
    )


def git(folder: Path, *args: str) -> str:
    command = [
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
        "-c",
        "commit.gpgsign=false",
    ]
    result = subprocess.run(
        [*command, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def make_repo(folder: Path, name: str, text: str) -> Path:
    """A git repository at ``folder`` with one commit of one file."""
    folder.mkdir()
    git(folder, "init", "-q")
    (folder / name).write_text(text)
    git(folder, "add", name)
    git(folder, "commit", "-q", "-m", "first")
    return folder


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo", "code.py", "x = 1\n")


@needs_git
def test_git_commit_gives_the_sha_and_whether_tracked_files_changed(repo):
    sha = git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == {"commit": sha, "dirty": False}
    (repo / "new.txt").write_text("untracked\n")
    # untracked files do not count
    assert git_commit(repo) == {"commit": sha, "dirty": False}
    (repo / "code.py").write_text("x = 2\n")
    assert git_commit(repo) == {"commit": sha, "dirty": True}
    git(repo, "add", "code.py")
    # staged is still uncommitted
    assert git_commit(repo) == {"commit": sha, "dirty": True}
    git(repo, "commit", "-q", "-m", "second")
    second = git(repo, "rev-parse", "HEAD")
    assert second != sha
    assert git_commit(repo) == {"commit": second, "dirty": False}


@needs_git
def test_git_commit_of_a_subfolder_and_of_a_file_is_that_of_the_checkout(repo):
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("y = 1\n")
    git(repo, "add", "pkg")
    git(repo, "commit", "-q", "-m", "pkg")
    sha = git(repo, "rev-parse", "HEAD")
    assert git_commit(repo / "pkg") == {"commit": sha, "dirty": False}
    assert git_commit(repo / "pkg" / "mod.py") == {"commit": sha, "dirty": False}


@needs_git
def test_git_commit_is_none_for_untracked_copies_and_repositories_without_commits(
    repo, tmp_path
):
    (repo / ".gitignore").write_text("venv/\n")
    # an installed copy inside an ignored virtual environment
    site = repo / "venv" / "medxfer"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    assert git_commit(site) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    (empty / "a.py").write_text("")
    assert git_commit(empty) is None


def test_git_commit_is_none_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.py").write_text("")
    assert git_commit(plain) is None
    assert git_commit(tmp_path / "missing") is None
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)
    assert git_commit(plain) is None


@needs_git
def test_git_commit_is_none_when_git_hangs(repo, monkeypatch):
    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

    monkeypatch.setattr(environment.subprocess, "run", hang)
    assert git_commit(repo) is None


@needs_git
def test_git_commit_ignores_git_variables_that_point_elsewhere(
    repo, tmp_path, monkeypatch
):
    other = make_repo(tmp_path / "other", "b.py", "")
    sha = git(repo, "rev-parse", "HEAD")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other))
    assert git_commit(repo) == {"commit": sha, "dirty": False}


def test_git_commit_defaults_to_the_medxfer_source_tree():
    source = Path(medxfer.__file__).parent
    expected = None
    if shutil.which("git"):
        inside = subprocess.run(
            ["git", "ls-files", "--", "."],
            cwd=source,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if inside.returncode == 0 and inside.stdout.strip():
            expected = git(source, "rev-parse", "HEAD")
    result = git_commit()
    assert (result and result["commit"]) == expected
    if result is not None:
        assert isinstance(result["dirty"], bool)


TORCH_RELEASE = torch.__version__.split("+")[0]
KEYS = {
    "medxfer",
    "python",
    "platform",
    "packages",
    "git",
    "seed",
    "data_hash",
    "hardware",
    "torch_deterministic",
    "started_at",
}


def appears(word: str, text: str) -> bool:
    """``word`` in ``text`` as a whole token (not as part of a longer name)."""
    return (
        re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text)
        is not None
    )


def test_environment_info_is_json_with_the_recorded_facts():
    info = environment_info(seed=7, device="cpu", data_hash="ab" * 32)
    text = json.dumps(info, allow_nan=False)
    assert json.loads(text) == info
    assert set(info) == KEYS
    assert info["medxfer"] == medxfer.__version__
    assert info["python"] == {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    assert info["seed"] == 7 and info["data_hash"] == "ab" * 32
    # PyPI's CUDA wheels leave the local build tag of torch.__version__ ("+cu130") out of the
    # distribution's version; wheels from download.pytorch.org keep it
    assert info["packages"]["torch"] in {torch.__version__, TORCH_RELEASE}
    assert info["packages"]["numpy"] == np.__version__
    assert set(info["packages"]) == set(environment.PACKAGES)
    hardware = info["hardware"]
    assert hardware["device"] == "cpu"
    assert hardware["cpu_count"] == os.cpu_count()
    assert hardware["torch_threads"] == torch.get_num_threads()
    assert hardware["cuda"] == torch.version.cuda
    assert hardware["gpus"] == [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    assert hardware["memory_gib"] is None or hardware["memory_gib"] > 0
    if hasattr(os, "sched_getaffinity"):
        assert 1 <= hardware["usable_cpus"] <= os.cpu_count()
    assert info["torch_deterministic"] is torch.are_deterministic_algorithms_enabled()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["started_at"])
    assert info["git"] == git_commit()


def test_environment_info_records_the_device_given():
    info = environment_info(seed=0, device=torch.device("cuda", 1), data_hash="")
    assert info["hardware"]["device"] == "cuda:1"


def test_missing_packages_are_null(monkeypatch):
    monkeypatch.setattr(
        environment, "PACKAGES", ("torch", "surely-not-installed-medxfer-xyz")
    )
    info = environment_info(seed=0, device="cpu", data_hash="")
    assert info["packages"] == {
        "torch": metadata.version("torch"),
        "surely-not-installed-medxfer-xyz": None,
    }


def test_environment_info_identifies_neither_machine_nor_user():
    text = json.dumps(environment_info(seed=0, device="cpu", data_hash=""))
    for name in (platform.node(), getpass.getuser()):
        if name:
            assert not appears(name, text), name
    for path in (
        Path.home(),
        Path(sys.executable),
        Path(sys.prefix),
        Path(medxfer.__file__).parent,
        Path.cwd(),
    ):
        if len(str(path)) > 1:
            assert str(path) not in text, path


def test_extra_facts_are_added_but_cannot_overwrite():
    info = environment_info(
        seed=0, device="cpu", data_hash="", extra={"backbone": "resnet18"}
    )
    assert info["backbone"] == "resnet18" and info["seed"] == 0
    with pytest.raises(ValueError, match="seed"):
        environment_info(
            seed=0, device="cpu", data_hash="", extra={"seed": 1, "other": 2}
        )


def test_write_environment_writes_json_atomically(tmp_path):
    info = environment_info(
        seed=3, device="cpu", data_hash="cd" * 32, extra={"note": "caf\u00e9"}
    )
    target = tmp_path / "run" / ENVIRONMENT_FILE
    assert write_environment(target, info) == target
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.startswith('{\n  "medxfer"')
    assert json.loads(text) == info
    write_environment(target, {**info, "seed": 4})  # replaces an existing file
    assert json.loads(target.read_text(encoding="utf-8"))["seed"] == 4
    assert os.listdir(target.parent) == [target.name]


def test_write_environment_refuses_what_strict_json_cannot_hold(tmp_path):
    target = tmp_path / ENVIRONMENT_FILE
    with pytest.raises(ValueError):
        write_environment(target, {"loss": float("nan")})
    with pytest.raises(TypeError):
        write_environment(target, {"path": Path("x")})
    assert list(tmp_path.iterdir()) == []
