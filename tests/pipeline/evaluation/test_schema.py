"""metrics.json as the evaluation writes it matches the TypedDicts of ``evaluation.schema``: no key
the schema does not declare, every key it requires, and a nested block wherever it declares one."""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any, NotRequired, get_args, get_origin, get_type_hints

import numpy as np

from medxfer.pipeline.evaluation import schema
from medxfer.pipeline.evaluation.evaluator import evaluate
from medxfer.pipeline.evaluation.inputs import EvaluationSettings, SplitInputs
from medxfer.pipeline.evaluation.schema import Metrics
from medxfer.pipeline.evaluation.simulation import simulate_test_set, simulated_report


def schema_problems(value: Any, expected: Any, path: str = "metrics") -> list[str]:
    """What in ``value`` does not fit the type ``expected``: keys undeclared or missing in a
    TypedDict (checked recursively through lists, dicts and optional values), and blocks where a
    TypedDict or list is declared but something else is found."""
    origin = get_origin(expected)
    if origin is NotRequired:
        return schema_problems(value, get_args(expected)[0], path)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in get_args(expected) if option is not type(None)]
        return [] if value is None else schema_problems(value, options[0], path) if len(options) == 1 else []
    if typing.is_typeddict(expected):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a {expected.__name__}"]
        hints = get_type_hints(expected, include_extras=True)
        problems = [f"{path}.{key}: not declared in {expected.__name__}" for key in value if key not in hints]
        problems += [f"{path}.{key}: required by {expected.__name__}, missing"
                     for key in expected.__required_keys__ if key not in value]
        for key, hint in hints.items():
            if key in value:
                problems += schema_problems(value[key], hint, f"{path}.{key}")
        return problems
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        return [p for i, item in enumerate(value) for p in schema_problems(item, get_args(expected)[0], f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a dict"]
        return [p for key, item in value.items() for p in schema_problems(item, get_args(expected)[1], f"{path}.{key}")]
    return []


def _three_class_run() -> dict:
    """train, val and test of a three-class model, with patient ids and subgroup attributes."""
    rng = np.random.default_rng(3)

    def split(n: int) -> SplitInputs:
        labels = rng.integers(0, 3, n)
        logits = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[labels]
        meta = [{"sex": "MF"[i % 2], "age": [20, 50, 70][i % 3], "view": ["AP", "PA"][(i // 2) % 2]} for i in range(n)]
        return SplitInputs(labels, logits, [f"p{i // 2}" for i in range(n)], meta)

    return evaluate(["A", "B", "C"], {"train": split(120), "val": split(90), "test": split(120)},
                    EvaluationSettings(bootstrap=200, calibration="vector"), best_epoch=3).metrics


def test_a_simulated_external_report_with_flags_matches_the_schema():
    s = simulate_test_set(np.random.default_rng(4), patients=60, group_patients=30, group_prevalence=0.0,
                          rest_prevalence=0.5)
    metrics = json.loads(json.dumps(simulated_report(s, ("sex x age_band",))))
    assert metrics["bias"]["flags"], "the planted confounder gives a flag to check"
    assert schema_problems(metrics, Metrics) == []


def test_a_three_class_training_run_matches_the_schema():
    metrics = json.loads(json.dumps(_three_class_run()))
    assert {"train", "val", "test"} <= metrics.keys()
    assert schema_problems(metrics, Metrics) == []


def test_a_crossfitted_run_matches_the_schema():
    from medxfer.pipeline.training.finishing import Fitted, crossfit_record

    metrics = _three_class_run()
    rng = np.random.default_rng(5)
    labels, fold_of = rng.integers(0, 3, 60), np.arange(60) % 3
    on_pool = [rng.normal(size=(60, 3)) + np.eye(3)[labels] for _ in range(3)]
    metrics["crossfit"] = crossfit_record(labels, fold_of, on_pool, [Fitted(2, 4, 0.8)] * 3, selection="loss",
                                          limit=0.05)
    metrics = json.loads(json.dumps(metrics))
    assert len(metrics["crossfit"]["per_fold"]) == 3 and schema_problems(metrics, Metrics) == []


def test_the_check_finds_an_undeclared_and_a_missing_key():
    s = simulate_test_set(np.random.default_rng(1), patients=40)
    metrics = simulated_report(s)
    metrics["test"]["subgroups"]["sex"]["F"]["surprise"] = 1
    del metrics["threshold"]["note"]
    assert schema_problems(metrics, Metrics) == [
        "metrics.threshold.note: required by ThresholdRecord, missing",
        "metrics.test.subgroups.sex.F.surprise: not declared in Subgroup",
    ]


def test_every_optional_key_says_when_it_is_absent():
    lines = inspect.getsource(schema).splitlines()
    optional = [(i, line) for i, line in enumerate(lines) if ": NotRequired[" in line]
    assert len(optional) >= len(Metrics.__optional_keys__)
    for i, line in optional:  # the comment on the key's line, or on the lines just above it
        assert "#" in line or lines[i - 1].strip().startswith("#"), line
