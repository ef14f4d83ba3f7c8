"""The training engine on a phantom cohort, at sizes small enough for CI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medxfer.pipeline.cli.main import main
from medxfer.pipeline.runs.config import TrainConfig, load_config
from medxfer.pipeline.runs.files import CHECKPOINT_FILE
from medxfer.pipeline.runs.saving import load_model
from medxfer.pipeline.runtime.distributed import Distributed
from medxfer.pipeline.training.run_directory import RunDirectoryError
from medxfer.pipeline.training.trainer import Trainer, train


def small(cohort, out: Path, **changes) -> TrainConfig:
    """A configuration that trains in seconds: 32-pixel inputs, two epochs, no workers, 200
    bootstrap resamples for the report; a holdout run (test_crossfit.py covers cross-fitting)."""
    settings = {
        "data": str(cohort.manifest), "out": str(out), "validation": "holdout", "image_size": 32, "epochs": 2,
        "batch_size": 8,
        "cache_views": 2, "workers": 0, "augment": "light", "patience": 0, "bootstrap": 200,
    }
    settings.update(changes)
    return load_config(None, settings).validate(need_data=True)


def read_history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    """One uninterrupted run of four epochs that several tests compare against."""
    run = tmp_path_factory.mktemp("reference") / "run"
    config = small(cohort, run, epochs=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDXFER_SALT", "medxfer-tests-salt-0123456789")
        return config, train(config, log=quiet)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")} for row in history]


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_run_directory_holds_every_output(reference):
    config, result = reference
    run = Path(config.out)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "model.safetensors", "model.json", "history.csv", "splits.csv", "environment.json",
            "metrics.json", "calibration.json", "report.html", "model_card.md"} <= names
    assert CHECKPOINT_FILE not in names  # removed once the model is saved
    history = read_history(run)
    assert [row["epoch"] for row in history] == ["1", "2", "3", "4"]
    assert result.epochs_run == 4
    assert {"train_loss", "train_auroc", "val_loss", "val_auroc", "lr_head", "images_per_second"} <= set(history[0])
    assert load_config(run / "config.yaml") == replace(config, selection="auroc")  # "auto" resolved for holdout
    environment = json.loads((run / "environment.json").read_text())
    assert environment["seed"] == 0 and len(environment["data_hash"]) == 64
    _, spec, recipe = load_model(run)
    assert spec.image_size == 32 and recipe["classes"] == ["normal", "opacity"]
    assert recipe["best_epoch"] == result.best_epoch


def test_auto_epochs_are_resolved_in_the_saved_configuration(cohort, tmp_path):
    run = tmp_path / "run"
    config = small(cohort, run, epochs="auto", patience=1)
    train(config, log=quiet)
    assert isinstance(load_config(run / "config.yaml").epochs, int)


def test_same_seed_gives_identical_metrics(reference, tmp_path):
    config, result = reference
    again = train(replace(config, out=str(tmp_path / "again")), log=quiet)
    assert without_timing(again.history) == without_timing(result.history)
    assert same_weights(Path(config.out), tmp_path / "again")
    metrics = json.loads((Path(config.out) / "metrics.json").read_text())
    assert json.loads((tmp_path / "again" / "metrics.json").read_text()) == metrics


def test_another_seed_gives_other_weights(reference, tmp_path):
    config, _ = reference
    train(replace(config, out=str(tmp_path / "other"), seed=1, epochs=1), log=quiet)
    assert not same_weights(Path(config.out), tmp_path / "other")


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_ends_where_an_uninterrupted_run_ends(reference, tmp_path):
    config, whole = reference

    def crash_after_epoch_two(message: str) -> None:
        if message.startswith("epoch 3/4"):
            raise _Interrupt  # the checkpoint of epoch 2 is on disk, epoch 3's is not
    cut = replace(config, out=str(tmp_path / "cut"))
    with pytest.raises(_Interrupt):
        train(cut, log=crash_after_epoch_two)
    assert (tmp_path / "cut" / CHECKPOINT_FILE).is_file()
    messages: list[str] = []
    resumed = train(cut, resume=True, log=messages.append)
    assert any("resuming after epoch 2" in m for m in messages)
    assert without_timing(resumed.history) == without_timing(whole.history)
    assert same_weights(Path(config.out), tmp_path / "cut")


def test_resume_after_kill_9_of_the_command(reference, tmp_path):
    """The real thing: ``medxfer train`` killed with SIGKILL mid-run, then ``--resume``."""
    config, _ = reference
    settings = tmp_path / "small.yaml"
    settings.write_text("cache_views: 2\nworkers: 0\naugment: light\npatience: 0\nvalidation: holdout\n")
    args = ["--config", str(settings), "--data", config.data, "--epochs", "4", "--image-size", "32",
            "--batch-size", "8"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "medxfer", "train", *args, "--out", str(run)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / CHECKPOINT_FILE).is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished before the kill
    assert (run / CHECKPOINT_FILE).is_file() and not (run / "metrics.json").is_file()
    assert main(["train", *args, "--out", str(run), "--resume"]) == 0
    assert read_history(run)[-1]["val_auroc"] == read_history(Path(config.out))[-1]["val_auroc"]
    assert same_weights(Path(config.out), run)


def test_an_existing_run_is_not_overwritten(reference):
    config, _ = reference
    with pytest.raises(RunDirectoryError, match="--resume"):
        train(config, log=quiet)


def test_resume_refuses_changed_settings(reference):
    config, _ = reference
    with pytest.raises(RunDirectoryError, match="lr"):
        train(replace(config, lr=0.01), resume=True, log=quiet)


def test_a_new_run_is_not_written_into_a_folder_holding_other_files(cohort, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "splits.csv").write_text("mine")
    with pytest.raises(RunDirectoryError, match="holds files that are not a medxfer run"):
        train(small(cohort, folder), log=quiet)
    assert (folder / "splits.csv").read_text() == "mine"


def test_resume_without_a_run_says_so(cohort, tmp_path):
    with pytest.raises(RunDirectoryError, match="no run to resume"):
        train(small(cohort, tmp_path / "empty"), resume=True, log=quiet)


def test_early_stopping_restores_the_best_epoch_and_survives_a_resume(cohort, tmp_path):
    # A learning rate far too high makes validation AUROC wander; patience 2 stops the run.
    run = tmp_path / "run"
    result = train(small(cohort, run, epochs=12, patience=2, lr=0.5, warmup_epochs=0, image_size=48), log=quiet)
    history = read_history(run)
    scores = [float(row["val_auroc"]) for row in history]
    best = int(np.argmax(scores)) + 1
    assert result.best_epoch == best
    assert len(history) == min(12, best + 2)
    assert json.loads((run / "model.json").read_text())["best_epoch"] == best
    # The saved network is the best epoch's: run whole on the validation images it scores as logged.
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["auroc"] == pytest.approx(scores[best - 1], abs=1e-6)
    # Killed after the stopping epoch's checkpoint but before the model was saved: a resume
    # trains no further epoch and ends as the uninterrupted run did.
    cut = tmp_path / "cut"

    def crash_when_stopping(message: str) -> None:
        if message.startswith("stopped early"):
            raise _Interrupt
    with pytest.raises(_Interrupt):
        train(small(cohort, cut, epochs=12, patience=2, lr=0.5, warmup_epochs=0, image_size=48), log=crash_when_stopping)
    resumed = train(small(cohort, cut, epochs=12, patience=2, lr=0.5, warmup_epochs=0, image_size=48), resume=True,
                    log=quiet)
    assert resumed.epochs_run == result.epochs_run and resumed.best_epoch == best
    assert same_weights(run, cut)
    with pytest.raises(RunDirectoryError, match="already finished"):
        train(small(cohort, cut, epochs=12, patience=2, lr=0.5, warmup_epochs=0, image_size=48), resume=True,
              log=quiet)


def test_weighted_loss_leans_towards_the_rare_class(cohort, tmp_path):
    # Keep every 'opacity' image of site a only: about 1 in 4 images is then positive.
    with open(cohort.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [r for r in rows if r["label"] == "normal" or "site-a" in r["path"]]
    manifest = cohort.root / "imbalanced.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    # Same data, seed and batches; only the loss weights differ. The weighted run must lean
    # towards the rare class more than the unweighted one. At lr 3e-3 the kept weights had barely
    # moved from the same start (mean P(opacity) 0.363 against 0.364 once the gamma augmentation
    # drew other values); at 1e-2 the two differ clearly (0.134 against 0.085).
    minority = {}
    for imbalance in ("weighted", "none"):
        run = tmp_path / imbalance
        train(small(cohort, run, data=str(manifest), epochs=3, imbalance=imbalance, lr=1e-2), log=quiet)
        model, spec, recipe = load_model(run)
        from medxfer.pipeline.decoding.scans import DecodeSettings, decode_all
        from medxfer.transforms.pipeline import XrayPipeline

        images, _ = decode_all([cohort.root / r["path"] for r in kept], DecodeSettings(spec))
        pipeline = XrayPipeline(spec, "none")
        with torch.no_grad():
            probabilities = model.probabilities(model(torch.stack([pipeline(i) for i in images])))
        minority[imbalance] = probabilities[:, recipe["classes"].index("opacity")].mean().item()
    assert sum(r["label"] == "opacity" for r in kept) < len(kept) / 3
    assert minority["weighted"] > minority["none"]


@pytest.mark.parametrize("strategy", ["full", "adapters"])
def test_strategies_without_a_frozen_prefix_train_on_the_fly(cohort, tmp_path, strategy):
    messages: list[str] = []
    train(small(cohort, tmp_path / "run", strategy=strategy, epochs=1), log=messages.append)
    assert not any("cached" in m for m in messages)
    assert load_model(tmp_path / "run")[2]["strategy"] == strategy


def test_linear_strategy_caches_the_whole_backbone(cohort, tmp_path):
    messages: list[str] = []
    train(small(cohort, tmp_path / "run", strategy="linear"), log=messages.append)
    assert any("the whole backbone cached" in m for m in messages)


def test_adabn_sets_batchnorm_statistics_from_the_target_site(reference, cohort, tmp_path):
    config, _ = reference
    target = cohort.root / "images" / "site-b"
    run = tmp_path / "run"
    train(replace(config, out=str(run), adapt="adabn", target_data=str(target)), log=quiet)
    # The first BatchNorm layer's statistics are exactly those of the target scans' first
    # convolution outputs (they do not depend on batching), not the training site's.
    model, spec, recipe = load_model(run)
    assert recipe["adaptation"] == "adabn"
    from medxfer.pipeline.decoding.scans import DecodeSettings, decode_all
    from medxfer.transforms.pipeline import XrayPipeline

    paths = sorted(p for p in target.rglob("*") if p.is_file())
    images, _ = decode_all(paths, DecodeSettings(spec))
    pipeline = XrayPipeline(spec, "none")
    with torch.no_grad():
        stem = model.backbone.conv_stem(torch.stack([pipeline(i) for i in images if i is not None]))
    expected = stem.double().mean(dim=(0, 2, 3)).float()
    torch.testing.assert_close(model.backbone.bn1.running_mean, expected, atol=1e-4, rtol=1e-4)
    source = load_file(str(Path(config.out) / "model.safetensors"))["backbone.bn1.running_mean"]
    assert not torch.allclose(source, expected, atol=1e-3)


def test_dann_trains_with_a_domain_classifier(cohort, tmp_path):
    target = cohort.root / "images" / "site-b"
    messages: list[str] = []
    result = train(small(cohort, tmp_path / "run", adapt="dann", target_data=str(target), epochs=1),
                   log=messages.append)
    assert result.epochs_run == 1
    assert any("target site" in m for m in messages)


def test_cli_reports_an_unknown_config_key(cohort, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("lrate: 0.01\n")
    assert main(["train", "--config", str(config), "--data", str(cohort.manifest), "--out", str(tmp_path / "r")]) == 1
    error = capsys.readouterr().err
    assert "unknown key 'lrate'" in error and "valid keys" in error and "batch_size" in error


def test_cli_reports_a_bad_value(cohort, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("lr: -1\n")
    assert main(["train", "--config", str(config), "--data", str(cohort.manifest)]) == 1
    assert "lr must be" in capsys.readouterr().err


def test_cli_without_data_says_how_to_give_it(capsys):
    assert main(["train"]) == 1
    assert "--data" in capsys.readouterr().err


def test_trainer_uses_the_cpu_when_asked(cohort, tmp_path):
    assert Trainer(small(cohort, tmp_path / "r", device="cpu")).device.type == "cpu"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_two_cpu_processes_match_one_process(cohort, tmp_path):
    """torchrun with 2 processes of batch 4 follows one process of batch 8 (no dropout, and the
    linear strategy has no BatchNorm layer in training, so the runs agree up to rounding)."""
    config = tmp_path / "ddp.yaml"
    config.write_text("cache_views: 2\nworkers: 0\naugment: light\ndropout: 0.0\nstrategy: linear\npatience: 0\n"
                      "validation: holdout\n")
    common = ["--config", str(config), "--data", str(cohort.manifest), "--epochs", "2", "--image-size", "32"]
    assert main(["train", *common, "--batch-size", "8", "--out", str(tmp_path / "one")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               "-m", "medxfer", "train", *common, "--batch-size", "4", "--out", str(tmp_path / "two")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, two = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-5, rtol=1e-4)
    a, b = read_history(tmp_path / "one"), read_history(tmp_path / "two")
    for row_a, row_b in zip(a, b, strict=True):
        assert float(row_a["val_auroc"]) == pytest.approx(float(row_b["val_auroc"]), abs=1e-6)
        assert float(row_a["train_loss"]) == pytest.approx(float(row_b["train_loss"]), rel=1e-4)
    assert (tmp_path / "two" / "environment.json").is_file()


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"needs GPU 1, and torch sees 1.*--nproc_per_node=1"):
        Distributed.from_environment(torch.device("cuda"))


def test_a_run_without_test_rows_reports_on_its_validation_split(cohort, tmp_path):
    with open(cohort.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    patients = sorted({row["patient_id"] for row in rows})
    val = set(patients[::4])
    manifest = cohort.root / "no-test.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "split"])
        writer.writeheader()
        writer.writerows({**row, "split": "val" if row["patient_id"] in val else "train"} for row in rows)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="no test files"):
        train(small(cohort, run, data=str(manifest)), log=quiet)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test" not in metrics and metrics["bias"]["split"] == "val"
    assert "no test split" in (run / "report.html").read_text()


def test_odd_file_names_train_skipped_files_are_listed_and_a_failed_start_leaves_nothing(cohort, tmp_path,
                                                                                       monkeypatch):
    """Class folders holding names with a carriage return and bytes that are not UTF-8, a FIFO
    and an empty file: the first try fails before its first epoch and leaves nothing behind; the
    plain rerun trains, lists the two skipped files and writes every name back unchanged."""
    import shutil

    from medxfer import csvfiles

    data = tmp_path / "data"
    rows = csvfiles.read_csv(cohort.manifest)
    odd = {0: b"a\rb.dcm", 1: b"x\xff\xfe.dcm"}
    for number, row in enumerate(rows):
        folder = os.path.join(os.fsencode(data), row["label"].encode())
        os.makedirs(folder, exist_ok=True)
        name = odd.get(number, os.fsencode(Path(row["path"]).name))
        shutil.copy(cohort.root / row["path"], os.path.join(folder, name))
    os.mkfifo(data / "normal" / "pipe.dcm")
    (data / "opacity" / "empty.dcm").write_bytes(b"")
    out = tmp_path / "run"
    config = small(cohort, out, data=str(data), layout="classes", skip_unreadable=True, epochs=1, bootstrap=0)

    def broken(self, *args):
        raise RuntimeError("out of memory while building the loop")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "build_loop", broken)
        with pytest.raises(RuntimeError, match="out of memory"):
            train(config, log=quiet)
    assert not out.exists()  # a plain rerun is not refused as "already holds a run"
    messages: list[str] = []
    train(config, log=messages.append)
    skipped = {row["path"]: row["reason"] for row in csvfiles.read_csv(out / "unreadable.csv")}
    assert set(skipped) == {"normal/pipe.dcm", "opacity/empty.dcm"} and "FIFO" in skipped["normal/pipe.dcm"]
    assert any("skipped 2 unreadable file(s)" in m for m in messages)
    assert any(m.strip().startswith(str(data / "normal" / "pipe.dcm")) for m in messages)
    paths = {row["path"] for row in csvfiles.read_csv(out / "splits.csv")}
    assert len(paths) == len(rows) and {os.fsdecode(rows[i]["label"].encode() + b"/" + name)
                                        for i, name in odd.items()} <= paths
