"""What identifies a run, for the report's last section and the model card: seed, versions, git
commit, data hash, bootstrap, device, and the resolved configuration with its paths withheld
(the data hash identifies the data; the report shows no file path)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from medxfer.pipeline.evaluation.schema import BootstrapRecord, Metrics
from medxfer.pipeline.evaluation.wording import not_available, number, percent

# Configuration keys holding paths on the training machine: shown as withheld (the data hash identifies the data).
PATH_KEYS = {"data": "(path withheld; see the data hash)", "target_data": "(path withheld)", "out": "(path withheld)"}
NAMED_WEIGHTS = ("imagenet", "random")


def shown_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration with path-valued keys withheld (the report shows no file paths)."""
    shown = dict(config)
    for key, placeholder in PATH_KEYS.items():
        if shown.get(key) is not None:
            shown[key] = placeholder
    if shown.get("weights") is not None and shown["weights"] not in NAMED_WEIGHTS:
        shown["weights"] = "(weights file withheld)"
    return shown


def _git_text(git: Any) -> str:
    if not isinstance(git, Mapping) or not git.get("commit"):
        return not_available("not run from a git checkout")
    return git["commit"] + (" (with uncommitted changes)" if git.get("dirty") else "")


def bootstrap_text(bootstrap: BootstrapRecord) -> str:
    """What was resampled, how often and for which figures, in words."""
    unit = {"patient": "patients", "image": "images"}[bootstrap["unit"]]
    level = percent(bootstrap["level"], None)
    if not bootstrap["resamples"]:
        return f"none ({level} intervals of AUROC, rates and Brier score are patient-clustered, no resampling)"
    return (f"{number(bootstrap['resamples'])} resamples of {unit} for average precision, ECE and F1 only "
            f"({level} percentile intervals, marked approximate), seed {number(bootstrap['seed'])}")


def reproducibility(metrics: Metrics, config: Mapping[str, Any], environment: Mapping[str, Any]) -> dict[str, Any]:
    """Label/value pairs that identify the run (no paths, no host), and the configuration as YAML.
    ``environment`` is the environment.json record, which may lack any key (a run recorded by an
    earlier medxfer, a test)."""
    packages = environment.get("packages") or {}
    python = environment.get("python") or {}
    seed = environment.get("seed", config.get("seed"))
    facts = [
        ("seed", number(seed) if isinstance(seed, int) else "n/a"),
        ("medxfer", environment.get("medxfer") or metrics["medxfer_version"]),
        ("torch", packages.get("torch") or "n/a"),
        ("python", python.get("version") or "n/a"),
        ("git commit", _git_text(environment.get("git"))),
        ("data hash (SHA-256)", environment.get("data_hash") or "n/a"),
        ("bootstrap", bootstrap_text(metrics["bootstrap"])),
        ("device", (environment.get("hardware") or {}).get("device") or "n/a"),
        ("run started", environment.get("started_at") or "n/a"),
    ]
    text = yaml.safe_dump(shown_config(config), sort_keys=False, allow_unicode=True, default_flow_style=False)
    return {"facts": facts, "config": text}
