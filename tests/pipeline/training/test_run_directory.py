"""The run folder: what a new run may use, and what a failed start leaves behind."""

from __future__ import annotations

import pytest

from medxfer.pipeline.runs.config import load_config
from medxfer.pipeline.runs.files import CHECKPOINT_FILE, CONFIG_FILE
from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.run_directory import RunDirectory, RunDirectoryError


def test_a_failed_start_removes_what_it_wrote_and_the_folder_it_created(tmp_path):
    folder = RunDirectory(tmp_path / "run", resume=False, dist=Distributed())

    def fails_after_writing():
        folder.path.mkdir()
        (folder.file(CONFIG_FILE)).write_text("x")
        folder.written_ += [folder.path, folder.file(CONFIG_FILE)]
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        folder.guarded(fails_after_writing)
    assert not folder.path.exists()


def test_a_failure_after_a_checkpoint_keeps_the_run(tmp_path):
    folder = RunDirectory(tmp_path, resume=False, dist=Distributed())
    folder.file(CONFIG_FILE).write_text("x")
    folder.written_.append(folder.file(CONFIG_FILE))

    def fails_after_an_epoch():
        folder.file(CHECKPOINT_FILE).write_bytes(b"")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        folder.guarded(fails_after_an_epoch)
    assert folder.file(CONFIG_FILE).is_file()


def test_check_refuses_a_file_and_returns_the_configuration_of_a_new_run(tmp_path):
    config = load_config(None, {"data": "x.csv", "out": str(tmp_path / "run")})
    assert RunDirectory(tmp_path / "run", resume=False, dist=Distributed()).check(config) is config
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirectoryError, match="is a file"):
        RunDirectory(tmp_path / "file", resume=False, dist=Distributed()).check(config)
