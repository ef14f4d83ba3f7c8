"""The package's layering, read from the source: data flows one way, with no import cycles.

The rules are the ones ``medxfer/pipeline/__init__.py`` states: a pipeline subpackage imports only
subpackages on lower layers; ``medxfer.datasets`` and ``medxfer.transforms`` never import the
pipeline; nothing imports a command's module (the ones behind ``medxfer train``, ``evaluate``,
``predict``, ``export`` and ``demo``) except the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import medxfer

ROOT = Path(medxfer.__file__).parent
LAYERS = {
    "runtime": 0, "statistics": 0, "models": 0, "decoding": 0, "calibration": 0,
    "evaluation": 1, "reporting": 2, "runs": 3, "training": 4, "inference": 4, "cli": 5,
}
# The names of a run's files: vocabulary that imports nothing, shared by every stage that writes one.
VOCABULARY = {"medxfer.pipeline.runs.files"}
COMMANDS = {
    "medxfer.pipeline.training.trainer", "medxfer.pipeline.inference.predict",
    "medxfer.pipeline.inference.external", "medxfer.pipeline.inference.export", "medxfer.pipeline.cli.demo",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """Every medxfer module ``name`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                      for alias in node.names}
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _stage(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "pipeline" else None


def test_every_pipeline_subpackage_has_a_layer():
    subpackages = {path.parent.name for path in (ROOT / "pipeline").glob("*/__init__.py")}
    assert subpackages == set(LAYERS)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _stage(n)))
def test_a_stage_imports_only_stages_below_it(name):
    own = _stage(name)
    upward = sorted(t for t in GRAPH[name] - VOCABULARY
                    if _stage(t) and _stage(t) != own and LAYERS[_stage(t)] >= LAYERS[own])
    assert not upward, f"{name} ({own}, layer {LAYERS[own]}) imports {upward}"


def test_the_shared_vocabulary_imports_nothing():
    assert all(not GRAPH[name] for name in VOCABULARY)


def test_datasets_and_transforms_never_import_the_pipeline():
    offenders = sorted((n, t) for n in MODULES if n.split(".")[1:2] in (["datasets"], ["transforms"])
                       for t in GRAPH[n] if t.startswith("medxfer.pipeline"))
    assert not offenders


def test_only_the_command_line_imports_a_commands_module():
    offenders = sorted((n, t) for n in MODULES for t in GRAPH[n] & COMMANDS if _stage(n) != "cli")
    assert not offenders


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                return [*path, name, target]
            if target not in state and (cycle := visit(target, [*path, name])):
                return cycle
        state[name] = 2
        return None

    for name in sorted(MODULES):
        if name not in state:
            cycle = visit(name, [])
            assert cycle is None, " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rules above would pass on a checker that finds nothing: it must find a real import."""
    assert "medxfer.pipeline.runs.trained_run" in GRAPH["medxfer.pipeline.inference.predict"]
    assert "medxfer.pipeline.evaluation.decision" in GRAPH["medxfer.pipeline.runs.trained_run"]
