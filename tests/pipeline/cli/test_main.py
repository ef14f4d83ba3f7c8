"""The ``medxfer`` command, run as a user would: mixed folders, broken files, privacy."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fuzzing import dicom_with_invalid_patient_id
from PIL import Image
from pydicom.data import get_testdata_file

from medxfer.pipeline.cli.main import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medxfer", *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def mixed_folder(tmp_path, cohort):
    """Real DICOMs (pydicom-data CR chest, MR, phantom) beside every kind of broken file."""
    folder = tmp_path / "export"
    (folder / "study").mkdir(parents=True)
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), folder / "study" / "rg1.dcm")
    shutil.copy(get_testdata_file("RG1_J2KR.dcm"), folder / "study" / "rg1_j2k")  # no extension
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    shutil.copy(next((cohort.root / "images").rglob("*.dcm")), folder / "phantom.dcm")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "looks_like.dcm", format="PNG")  # wrong extension
    content = Path(get_testdata_file("RG1_UNCR.dcm")).read_bytes()
    broken = {
        "empty.dcm": b"",
        "truncated.dcm": content[: len(content) // 3],
        "random.dcm": np.random.default_rng(1).bytes(5000),
        "notes.txt": b"not an image\n",
        "report.dcm": Path(get_testdata_file("test-SR.dcm")).read_bytes(),
        "header_only.dcm": content[:600],
    }
    for name, data in broken.items():
        (folder / name).write_bytes(data)
    return folder, set(broken)


def test_inspect_json_names_every_broken_file_and_reads_the_rest(mixed_folder):
    folder, broken = mixed_folder
    result = run("inspect", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] == 11 and summary["readable"] == 5
    reasons = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in summary["unreadable"]}
    assert set(reasons) == broken
    assert reasons["empty.dcm"] == "empty file (0 bytes)"
    assert "truncated" in reasons["truncated.dcm"]
    assert reasons["header_only.dcm"].startswith("truncated: the header describes an image")
    assert "no pixel data" in reasons["report.dcm"] and "SR" in reasons["report.dcm"]
    assert "unrecognised content" in reasons["random.dcm"]
    assert summary["by_format"] == {"dicom": 4, "png": 1}
    assert summary["by_modality"]["CR"] >= 2 and summary["by_modality"]["MR"] == 1


def test_inspect_text_lists_unreadable_files_and_exits_zero(mixed_folder):
    folder, broken = mixed_folder
    result = run("inspect", str(folder))
    assert result.returncode == 0
    assert "11 (5 readable, 6 unreadable)" in result.stdout
    for name in broken:
        assert f"{name}: " in result.stdout


def test_inspect_decode_finds_corrupt_pixel_data_that_headers_hide(tmp_path):
    content = bytearray(Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes())
    start = len(content) - 3000
    content[start:start + 1000] = b"\x00" * 1000
    (tmp_path / "corrupt.dcm").write_bytes(bytes(content))
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "ok.dcm")
    assert json.loads(run("inspect", str(tmp_path), "--json").stdout)["readable"] == 2
    decoded = json.loads(run("inspect", str(tmp_path), "--json", "--decode").stdout)
    assert decoded["readable"] == 1
    assert "cannot be decoded" in decoded["unreadable"][0]["reason"]


def test_inspect_dataset_reports_labels_patients_and_coverage(cohort, capsys):
    assert main(["inspect", str(cohort.manifest), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layout"] == "manifest"
    assert summary["labels"] == cohort.label_counts
    assert summary["patients"] == cohort.n_patients
    assert summary["coverage"]["sex"] == summary["coverage"]["age"] == cohort.n_images
    assert summary["by_photometric"].keys() == {"MONOCHROME1", "MONOCHROME2"}


def test_no_output_contains_a_patient_name_or_id(cohort, tmp_path):
    identifiers = set()
    for path in (cohort.root / "images").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate), str(ds.AccessionNumber),
                        str(ds.InstitutionName), str(ds.Manufacturer)}
    identifiers.discard("")
    outputs = [
        run("inspect", str(cohort.manifest)).stdout,
        run("inspect", str(cohort.manifest), "--json").stdout,
        run("inspect", str(cohort.root / "images")).stdout,
    ]
    split = run("split", str(cohort.manifest), "--out", str(tmp_path / "splits.csv"))
    assert split.returncode == 0, split.stderr
    outputs += [split.stdout, split.stderr, (tmp_path / "splits.csv").read_text()]
    text = "\n".join(outputs)
    assert len(identifiers) > 10
    leaked = sorted(i for i in identifiers if i in text)
    assert leaked == []


def test_split_writes_splits_csv_with_every_file(cohort, tmp_path):
    out = tmp_path / "splits.csv"
    result = run("split", str(cohort.manifest), "--out", str(out), "--seed", "2")
    assert result.returncode == 0, result.stderr
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == cohort.n_images
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_split_stops_on_unreadable_files_unless_asked_to_skip(tmp_path, cohort):
    data = tmp_path / "data"
    for label in ("normal", "opacity"):
        (data / label).mkdir(parents=True)
    for i, path in enumerate(sorted((cohort.root / "images").rglob("*.dcm"))):
        shutil.copy(path, data / ("normal" if i % 2 else "opacity") / path.name)
    (data / "normal" / "broken.dcm").write_bytes(b"\x00" * 10)
    result = run("split", str(data), "--out", str(tmp_path / "s.csv"))
    assert result.returncode == 1
    assert "broken.dcm" in result.stderr and "--skip-unreadable" in result.stderr
    assert not (tmp_path / "s.csv").exists()
    result = run("split", str(data), "--out", str(tmp_path / "s.csv"), "--skip-unreadable")
    assert result.returncode == 0 and "skipped 1 unreadable" in result.stdout


@pytest.mark.parametrize("command", ["inspect", "split", "phantom", "augment-preview", "demo"])
def test_every_subcommand_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and f"usage: medxfer {command}" in result.stdout


def test_top_level_help_lists_subcommands_and_version():
    result = run("--help")
    for command in ("inspect", "split", "phantom", "augment-preview", "demo"):
        assert command in result.stdout
    assert run("--version").stdout.strip().startswith("medxfer ")


def test_demo_into_a_folder_that_is_not_empty_is_a_clear_error(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine")
    result = run("demo", "--out", str(tmp_path / "demo"), "--patients", "20")
    assert result.returncode == 1 and "not empty" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["keep.txt"]


def test_missing_path_is_a_clear_error(tmp_path):
    result = run("inspect", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "no such file or folder" in result.stderr and "Traceback" not in result.stderr


def test_installed_console_script_runs():
    script = Path(sys.executable).parent / "medxfer"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "usage: medxfer" in result.stdout


def test_inspect_does_not_print_patient_folder_names_as_labels(tmp_path, cohort):
    for i, name in enumerate(["DOE_JOHN_MRN12345", "ROE_JANE_MRN67890"]):
        (tmp_path / name / "STUDY1").mkdir(parents=True)
        shutil.copy(sorted((cohort.root / "images").rglob("*.dcm"))[i], tmp_path / name / "STUDY1" / "IM0001")
    result = run("inspect", str(tmp_path))
    assert result.returncode == 0
    assert "DOE_JOHN" not in result.stdout and "--layout classes" in result.stdout
    summary = json.loads(run("inspect", str(tmp_path), "--json").stdout)
    assert "labels" not in summary and summary["readable"] == 2


def test_output_to_a_folder_is_a_clear_error(cohort, tmp_path):
    result = run("split", str(cohort.manifest), "--out", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "error" in result.stderr


def test_closed_pipe_ends_quietly(tmp_path):
    for i in range(3000):  # enough unreadable entries that the JSON overflows a pipe's buffer
        (tmp_path / f"junk{i:04d}.dcm").write_bytes(b"x")
    result = subprocess.run(f"{sys.executable} -m medxfer inspect {tmp_path} --json | head -1",
                            shell=True, capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.strip() == "{"
    assert result.stderr == ""


def test_bad_salt_is_one_clear_error(cohort):
    env = {**os.environ, "MEDXFER_SALT": "short"}
    result = subprocess.run([sys.executable, "-m", "medxfer", "inspect", str(cohort.root / "images")],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 1
    assert "at least 16 are needed" in result.stderr and result.stdout == ""


def test_split_refuses_patient_folders_without_naming_them(tmp_path, cohort):
    for i, path in enumerate(sorted((cohort.root / "images").rglob("*.dcm"))[:6]):
        folder = tmp_path / f"DOE^JOHN_{i:02d}" / "STUDY1"
        folder.mkdir(parents=True)
        shutil.copy(path, folder / "IM0001")
    result = run("split", str(tmp_path), "--out", str(tmp_path / "s.csv"))
    assert result.returncode == 1 and "one folder per patient" in result.stderr
    assert "DOE" not in result.stderr + result.stdout


def test_third_party_warnings_are_not_echoed(tmp_path):
    dicom_with_invalid_patient_id(tmp_path / "a.dcm")
    result = run("inspect", str(tmp_path), "--decode")
    assert result.returncode == 0 and "1 readable" in result.stdout
    assert "MRN12345" not in result.stdout + result.stderr


def test_augment_preview_writes_a_grid_of_a_phantom_radiograph(cohort, tmp_path, capsys):
    scan = next((cohort.root / "images").rglob("*.dcm"))
    out = tmp_path / "grid.png"
    code = main(["augment-preview", str(scan), "--out", str(out), "--draws", "5", "--image-size", "64",
                 "--set", "rotation=5", "--set", "gamma=0.9,1.1"])
    assert code == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * (64 + 14) + 4, 4 * 64 + 3 * 4)  # 1 prepared + 5 draws in 4 columns
    assert "preset standard with rotation=5, gamma=0.9,1.1" in capsys.readouterr().out
    tiles = [grid[14 : 14 + 64, c * 68 : c * 68 + 64] for c in range(4)]
    assert all(tile.std() > 10 for tile in tiles)  # anatomy, not a blank tile
    assert len({tile.tobytes() for tile in tiles}) == 4


def test_augment_preview_of_a_volume_uses_the_chosen_slices(cohort, tmp_path):
    out = tmp_path / "volume.png"
    code = main(["augment-preview", str(cohort.volumes[0]), "--out", str(out), "--draws", "1",
                 "--volume-strategy", "2.5d", "--image-size", "32"])
    assert code == 0 and Image.open(out).size == (2 * 32 + 4, 32 + 14)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "rotations=5"], "unknown augmentation parameter 'rotations'; valid parameters: rotation"),
        (["--set", "rotation"], "expected NAME=VALUE"),
        (["--set", "rotation=90"], "rotation must lie in [0, 45]"),
        (["--window", "wide"], "unknown window 'wide'"),
    ],
)
def test_augment_preview_bad_options_are_clear_errors(cohort, tmp_path, capsys, args, message):
    scan = next((cohort.root / "images").rglob("*.dcm"))
    code = main(["augment-preview", str(scan), "--out", str(tmp_path / "g.png"), *args])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()


def test_augment_preview_of_an_unreadable_file_names_it(tmp_path, capsys):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM" * 10)
    code = main(["augment-preview", str(bad), "--out", str(tmp_path / "g.png")])
    err = capsys.readouterr().err
    assert code == 1 and "broken.dcm" in err and "Traceback" not in err


def test_cli_choices_match_the_library():
    """The CLI lists presets and fits without importing MONAI; they must not drift apart."""
    from medxfer.pipeline.cli.parser import PRESET_CHOICES
    from medxfer.transforms import FITS, PRESET_NAMES

    assert PRESET_CHOICES == PRESET_NAMES
    assert run("augment-preview", "--help").stdout.count("letterbox") >= 1
    for fit in FITS:
        assert fit in run("augment-preview", "--help").stdout


def test_ctrl_c_says_how_to_continue_instead_of_a_traceback(monkeypatch, capsys, cohort):
    from medxfer.pipeline.training import trainer as training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", interrupted)
    assert main(["train", "--data", str(cohort.manifest), "--out", "x"]) == 130
    error = capsys.readouterr().err
    assert "interrupted" in error and "--resume" in error and "Traceback" not in error


def test_train_validation_flag_chooses_the_protocol_and_auto_is_the_default(monkeypatch, cohort, tmp_path):
    from medxfer.pipeline.training import trainer as training

    seen = []

    def record(config, **kwargs):
        seen.append(config.validation)
        raise ValueError("recorded, not trained")

    monkeypatch.setattr(training, "train", record)
    for flags in (["--validation", "holdout"], ["--validation", "crossfit"], []):
        assert main(["train", "--data", str(cohort.manifest), "--out", str(tmp_path / "run"), *flags]) == 1
    assert seen == ["holdout", "crossfit", "auto"]
    assert run("train", "--validation", "kfold").returncode == 2


def test_split_lists_the_files_it_skips_and_names_with_control_characters_stay_on_one_line(tmp_path, cohort, capsys):
    data = tmp_path / "data"
    shutil.copytree(cohort.root / "images", data / "normal")
    shutil.copytree(cohort.root / "images", data / "opacity", ignore=shutil.ignore_patterns("*0.dcm"))
    (data / "normal" / "bad\rname.dcm").write_bytes(b"")
    assert main(["split", str(data), "--layout", "classes", "--skip-unreadable", "--out",
                 str(tmp_path / "s.csv")]) == 0
    shown = f"$'{data / 'normal' / 'bad'}\\rname.dcm'"  # bash's quoting: the shell reads it back as the name
    assert f"  {shown}: empty file (0 bytes)" in capsys.readouterr().out.splitlines()
    assert main(["split", str(data), "--layout", "classes", "--out", str(tmp_path / "t.csv")]) == 1
    error = capsys.readouterr().err
    assert "bad\\rname.dcm" in error and "\r" not in error
