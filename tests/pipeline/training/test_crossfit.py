"""Cross-fitted training (``validation: crossfit``): folds, out-of-fold validation, the fold ensemble
and its use by every command, on the phantom cohort at CI sizes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medxfer.csvfiles import read_csv
from medxfer.datasets import assign_splits, load_labelled
from medxfer.pipeline.cli.main import main
from medxfer.pipeline.decoding.scans import decode_all
from medxfer.pipeline.inference.export import export_run
from medxfer.pipeline.models.prefix import frozen_stage_count, split_backbone
from medxfer.pipeline.runs.config import ConfigError, load_config
from medxfer.pipeline.runs.files import CHECKPOINT_FILE, FOLD_FILE
from medxfer.pipeline.runs.trained_run import TrainedRun, combined_logits
from medxfer.pipeline.statistics.scoring import macro_auroc, ranking_scores
from medxfer.pipeline.training.data import resolve_validation
from medxfer.pipeline.training.network import build_network
from medxfer.pipeline.training.trainer import train
from medxfer.transforms.pipeline import XrayPipeline

FOLDS = 3


class _Interrupt(Exception):
    pass


def crossfit_config(cohort, out: Path, **changes):
    settings = {"data": str(cohort.manifest), "out": str(out), "image_size": 32, "epochs": 2, "batch_size": 8,
                "cache_views": 1, "workers": 0, "augment": "light", "patience": 0, "bootstrap": 0,
                "validation": "crossfit", "folds": FOLDS}
    return load_config(None, {**settings, **changes}).validate(need_data=True)


@pytest.fixture(scope="module")
def crossfitted(cohort, tmp_path_factory):
    """One uninterrupted cross-fitted run (3 folds of 2 epochs) and the lines it logged."""
    out = tmp_path_factory.mktemp("crossfit") / "run"
    messages: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDXFER_SALT", "medxfer-tests-salt-0123456789")
        result = train(crossfit_config(cohort, out), log=messages.append)
    return out, result, messages


def network_inputs(run: TrainedRun, paths: list[Path]) -> torch.Tensor:
    images, failed = decode_all(paths, run.decode_settings())
    assert not failed
    pipeline = XrayPipeline(run.spec, "none")
    return torch.stack([pipeline(image) for image in images])


def split_rows(out: Path, root: Path) -> tuple[list[dict], list[Path]]:
    rows = read_csv(out / "splits.csv")
    return rows, [root / row["path"] for row in rows]


def test_folds_never_split_a_patient_and_leave_test_alone(cohort):
    from medxfer.datasets.splits import assign_folds

    scans = assign_splits(load_labelled(cohort.manifest), seed=3)
    folds = assign_folds(scans, folds=4, seed=3)
    fold_of_patient: dict[str, set[int]] = {}
    for record, fold in zip(scans.records, folds, strict=True):
        assert (fold == -1) == (record.split == "test")
        fold_of_patient.setdefault(record.patient_key, set()).add(int(fold))
    assert any(len([r for r in scans.records if r.patient_key == key]) > 1 for key in fold_of_patient)
    assert all(len(folds_) == 1 for folds_ in fold_of_patient.values())
    for fold in range(4):  # stratified: every fold holds both classes
        assert {r.label for r, f in zip(scans.records, folds, strict=True) if f == fold} == set(scans.classes)


def test_too_few_patients_for_the_folds_is_a_clear_error(cohort, tmp_path):
    with pytest.raises(ValueError, match=r"image\(s\) outside the test split, too few for 20 cross-fitting folds"):
        train(crossfit_config(cohort, tmp_path / "run", folds=20, test_fraction=0.4), log=lambda _: None)


def test_a_crossfitted_run_is_one_ensemble_of_its_fold_networks(crossfitted, cohort):
    out, result, messages = crossfitted
    run = TrainedRun.load(out)
    assert len(run.networks) == FOLDS and run.recipe["members"] == FOLDS
    assert run.config.validation == "crossfit"
    metrics = run.metrics
    assert [row["fold"] for row in metrics["crossfit"]["per_fold"]] == [1, 2, 3]
    assert "best_epoch" not in metrics and len(result.folds) == FOLDS
    rows = read_csv(out / "splits.csv")
    assert {row["split"] for row in rows} == {"train", "test"}  # validation joined the folds
    assert all((row["fold"] == "") == (row["split"] == "test") for row in rows)
    assert sorted({row["fold"] for row in rows if row["fold"]}) == ["1", "2", "3"]
    assert metrics["val"]["n"] == sum(row["split"] == "train" for row in rows)
    for fold in range(FOLDS):  # one progress line per fold, and nothing temporary left
        assert any(m.startswith(f"fold {fold + 1}/{FOLDS}: training") for m in messages)
        assert not (out / FOLD_FILE.format(fold + 1)).exists()
    assert not (out / CHECKPOINT_FILE).exists()
    assert {int(row["fold"]) for row in run.history()} == {1, 2, 3}
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "out-of-fold" in report and "held-out AUROC" in report
    assert "ensemble of 3 networks" in (out / "model_card.md").read_text(encoding="utf-8")


def test_out_of_fold_logits_come_from_the_network_that_never_saw_the_image(crossfitted, cohort):
    out, result, _ = crossfitted
    run = TrainedRun.load(out)
    rows, paths = split_rows(out, cohort.manifest.parent)
    pool = [i for i, row in enumerate(rows) if row["split"] == "train"]
    x = network_inputs(run, [paths[i] for i in pool])
    labels = np.array([run.classes.index(rows[i]["label"]) for i in pool])
    folds = np.array([int(rows[i]["fold"]) - 1 for i in pool])
    with torch.no_grad():
        members = [network(x).numpy() for network in run.networks]
    out_of_fold = np.stack([members[fold][i] for i, fold in enumerate(folds)])
    metrics = run.metrics
    assert metrics["val"]["auroc"] == pytest.approx(macro_auroc(labels, ranking_scores(out_of_fold)), abs=1e-6)
    assert result.val_auroc == pytest.approx(metrics["val"]["auroc"], abs=1e-6)
    ensemble = np.mean(members, axis=0)  # what the validation split would be with in-sample logits
    assert metrics["train"]["auroc"] == pytest.approx(macro_auroc(labels, ranking_scores(ensemble)), abs=1e-6)
    for fold, row in enumerate(metrics["crossfit"]["per_fold"]):
        held = folds == fold
        assert row["n_held_out"] == held.sum() and row["n_train"] == (~held).sum()
        assert row["held_out_auroc"] == pytest.approx(macro_auroc(labels[held], ranking_scores(members[fold][held])))


def test_fold_training_sets_exclude_their_held_out_images(cohort, tmp_path):
    from medxfer.pipeline.training.trainer import Trainer

    trainer = Trainer(crossfit_config(cohort, tmp_path / "run"), log=lambda _: None)
    trainer.config = trainer.run_dir.check(trainer.config)
    data = trainer.prepare().data
    pool = set(range(len(data.by_split["train"])))
    for fold in range(FOLDS):
        trained, held_out = data.fold_positions(fold)
        assert set(trained).isdisjoint(held_out) and set(trained) | set(held_out) == pool
        assert set(data.folds[[data.by_split["train"][i] for i in held_out]].tolist()) == {fold}


def test_the_ensemble_predicts_evaluates_and_exports_the_python_apis_numbers(crossfitted, cohort, tmp_path):
    out, _, _ = crossfitted
    run = TrainedRun.load(out)
    rows, paths = split_rows(out, cohort.manifest.parent)
    test = [i for i, row in enumerate(rows) if row["split"] == "test"]
    x = network_inputs(run, [paths[i] for i in test])
    with torch.no_grad():
        expected = run.probabilities(run.logits(x).numpy())
    by_path = {rows[i]["path"]: p for i, p in zip(test, expected, strict=True)}
    positive = run.classes[1]

    folder = tmp_path / "scans"
    for i in test:
        target = folder / rows[i]["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(paths[i].read_bytes())
    assert main(["predict", str(out), str(folder), "--out", str(tmp_path / "p.csv"), "--workers", "0"]) == 0
    predicted = read_csv(tmp_path / "p.csv")
    assert len(predicted) == len(test)
    for row in predicted:
        assert float(row[f"p_{positive}"]) == pytest.approx(by_path[row["path"]][1], abs=2e-6)

    manifest = tmp_path / "test.csv"
    manifest.write_text("path,label\n" + "".join(f"{paths[i]},{rows[i]['label']}\n" for i in test), encoding="utf-8")
    assert main(["evaluate", str(out), "--data", str(manifest), "--out", str(tmp_path / "eval"),
                 "--bootstrap", "0"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    labels = np.array([run.classes.index(rows[i]["label"]) for i in test])
    assert evaluated["test"]["auroc"] == pytest.approx(macro_auroc(labels, expected), abs=1e-9)
    assert evaluated["test"]["auroc"] == pytest.approx(run.metrics["test"]["auroc"], abs=1e-9)
    assert "crossfit" in evaluated  # the run's folds are carried into the external report

    result = export_run(out, "torchscript", tmp_path / "model.pt")
    exported = torch.jit.load(str(result.path))
    with torch.no_grad():
        assert np.abs(exported(x).numpy() - expected).max() < 1e-5
    assert json.loads((tmp_path / "model.pt.json").read_text(encoding="utf-8"))["networks"] == FOLDS


def test_the_members_share_one_pass_through_their_frozen_prefix_and_nothing_else(crossfitted, cohort):
    out, _, _ = crossfitted
    run = TrainedRun.load(out)
    frozen = frozen_stage_count(build_network(run.config, len(run.classes)))  # what the strategy froze
    prefix, suffixes = run.shared_prefix
    assert frozen > 0 and len(suffixes) == FOLDS
    assert prefix.state_dict().keys() == split_backbone(run.networks[0], frozen)[0].state_dict().keys()
    x = network_inputs(run, split_rows(out, cohort.manifest.parent)[1][:6])
    with torch.no_grad():
        assert torch.allclose(run.logits(x), combined_logits(run.networks, x), atol=1e-6)

    changed = TrainedRun.load(out)  # a member whose stem differs: no stage is shared, every member runs whole
    with torch.no_grad():
        next(changed.networks[1].parameters()).add_(1e-3)
        assert changed.shared_prefix is None
        assert torch.equal(changed.logits(x), combined_logits(changed.networks, x))


def test_a_killed_crossfitted_run_resumes_to_the_same_ensemble(crossfitted, cohort, tmp_path):
    """Cut inside fold 2, its first epoch checkpointed: fold 1 is read back from its file, fold 2
    continues from the checkpoint (a checkpoint of another fold is not restored: test_checkpointing)."""
    out, whole, _ = crossfitted
    seen: list[str] = []

    def crash(message: str) -> None:
        seen.append(message)
        if message.startswith("epoch 2/2") and any(m.startswith("fold 2/3: training") for m in seen):
            raise _Interrupt
    cut = crossfit_config(cohort, tmp_path / "cut")
    with pytest.raises(_Interrupt):
        train(cut, log=crash)
    assert (tmp_path / "cut" / FOLD_FILE.format(1)).is_file() and (tmp_path / "cut" / CHECKPOINT_FILE).is_file()
    messages: list[str] = []
    resumed = train(replace(cut), resume=True, log=messages.append)
    assert any(m.startswith("fold 1/3: trained before the interruption") for m in messages)
    assert any(m.startswith("resuming fold 2 after epoch 1 of 2") for m in messages)
    assert [f.best_epoch for f in resumed.folds] == [f.best_epoch for f in whole.folds]
    first, second = TrainedRun.load(out), TrainedRun.load(tmp_path / "cut")
    assert first.weights_sha256 == second.weights_sha256
    timing = ("seconds", "images_per_second")
    assert ([{k: v for k, v in row.items() if k not in timing} for row in resumed.history]
            == [{k: v for k, v in row.items() if k not in timing} for row in whole.history])


def test_auto_crossfits_small_sets_and_holds_out_large_or_adapted_ones(cohort, tmp_path):
    from medxfer.pipeline.runs.config_settings import AUTO_CROSSFIT_IMAGES

    config = crossfit_config(cohort, tmp_path / "run", validation="auto")
    assert resolve_validation(config, AUTO_CROSSFIT_IMAGES) == "crossfit"
    assert resolve_validation(config, AUTO_CROSSFIT_IMAGES + 1) == "holdout"
    assert resolve_validation(replace(config, adapt="dann"), 10) == "holdout"
    assert resolve_validation(replace(config, validation="holdout"), 10) == "holdout"


def test_crossfit_with_adaptation_is_refused_by_the_configuration(cohort, tmp_path):
    with pytest.raises(ConfigError, match="validation 'crossfit' cannot be combined with adapt 'adabn'"):
        crossfit_config(cohort, tmp_path / "run", adapt="adabn", target_data=str(cohort.manifest))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_under_torchrun_the_folds_train_in_different_processes_to_the_same_ensemble(cohort, tmp_path):
    """Two processes share the folds (rank 0: fold 1, rank 1: fold 2) and end with the ensemble one
    process trains. torchrun gives each process one thread, so the reference runs on one thread
    too: float sums then agree, and training cannot carry a rounding difference on."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    config = tmp_path / "crossfit.yaml"
    config.write_text("cache_views: 1\nworkers: 0\naugment: light\npatience: 0\nbootstrap: 0\n"
                      "validation: crossfit\nfolds: 2\n")
    common = ["-m", "medxfer", "train", "--config", str(config), "--data", str(cohort.manifest), "--epochs", "2",
              "--image-size", "32", "--batch-size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"one": [sys.executable, *common], "two": [sys.executable, "-m", "torch.distributed.run",
                                                      "--nproc_per_node=2", "--standalone", *common]}
    outputs = {}
    for name, command in runs.items():
        completed = subprocess.run([*command, "--out", str(tmp_path / name)], capture_output=True, text=True,
                                   timeout=600, check=False, env=env)
        assert completed.returncode == 0, completed.stderr[-3000:]
        outputs[name] = completed.stdout
    # each process logs the folds it trains
    assert "fold 1/2: kept the weights" in outputs["two"] and "fold 2/2: kept the weights" in outputs["two"]
    one, two = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys() and any(key.startswith("member1.") for key in one)
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-5, rtol=1e-4)
    assert [row["fold"] for row in read_csv(tmp_path / "two" / "history.csv")] == ["1", "1", "2", "2"]


def test_a_crossfitted_run_without_test_rows_reports_on_its_out_of_fold_predictions(cohort, tmp_path):
    rows = read_csv(cohort.manifest)
    manifest = cohort.manifest.parent / "no-test-crossfit.csv"  # beside the images its paths are relative to
    manifest.write_text(",".join([*rows[0], "split"]) + "\n" + "".join(
        ",".join([*row.values(), "train"]) + "\n" for row in rows), encoding="utf-8")
    with pytest.warns(UserWarning, match="no test files"):
        train(crossfit_config(cohort, tmp_path / "run", data=str(manifest)), log=lambda _: None)
    metrics = TrainedRun.load(tmp_path / "run").metrics
    assert "test" not in metrics and metrics["bias"]["split"] == "val" and metrics["val"]["n"] == len(rows)
