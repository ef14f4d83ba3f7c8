"""Saving a trained classifier as safetensors weights plus a JSON recipe, and loading it back.

``model.safetensors`` holds tensors only (nothing is unpickled when it is read);
``model.json`` holds everything needed to rebuild the network before loading them: backbone,
class names, head type, input channels and normalisation, input size and fit, fine-tuning
strategy and domain adaptation, and the SHA-256 of the weights file so a mismatched pair is
caught. Both files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save

from medxfer import __version__
from medxfer.files import atomic_write_bytes, atomic_write_text
from medxfer.pipeline.models.adaptation import add_adapters
from medxfer.pipeline.models.classifier import XrayClassifier, build_classifier
from medxfer.pipeline.runs.files import RECIPE_FILE, WEIGHTS_FILE
from medxfer.transforms.preparation import InputSpec

FORMAT = 1


def save_model(
    model: XrayClassifier | Sequence[XrayClassifier],
    folder: str | Path,
    *,
    classes: list[str],
    spec: InputSpec,
    strategy: str,
    adaptation: str = "none",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder``; returns the JSON's path.

    ``model``: one network, or an ensemble's members (same architecture; their weights are stored
    in one file, each key prefixed ``member{i}.``, and ``model.json`` records ``members``);
    ``classes``: the output names in order (class names, or findings for a multi-label head);
    ``spec``: the input the network was trained on; ``strategy``/``adaptation``: how it was
    trained (recorded for the report); ``extra``: more JSON-serialisable facts to record.
    """
    members = [model] if isinstance(model, XrayClassifier) else list(model)
    model = members[0]
    head = model.head[-1]
    if len(classes) != head.out_features:
        raise ValueError(f"{len(classes)} class names for a head with {head.out_features} outputs")
    if spec.channels != model.in_channels:
        raise ValueError(f"input spec has {spec.channels} channels, the network takes {model.in_channels}")
    if not (_close(spec.mean, model.mean) and _close(spec.std, model.std)):
        raise ValueError(
            f"input spec normalises with mean {spec.mean} and std {spec.std}, "
            f"the network expects {model.mean} and {model.std}"
        )
    folder = Path(folder)
    tensors = {f"{_prefix(i, len(members))}{k}": v.detach().contiguous().cpu()
               for i, member in enumerate(members) for k, v in member.state_dict().items()}
    weights = save(tensors)
    recipe = {
        "format": FORMAT,
        "medxfer_version": __version__,
        "backbone": model.info.name,
        "classes": list(classes),
        "multi_label": model.multi_label,
        "dropout": float(model.head[0].p),
        "in_channels": model.in_channels,
        "image_size": spec.image_size,
        "fit": spec.fit,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "strategy": strategy,
        "adaptation": adaptation,
        "adapter_reduction": model.adapter_reduction,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "members": len(members),
    }
    clashes = sorted(set(extra or {}) & set(recipe))
    if clashes:
        raise ValueError(f"extra facts may not replace the recipe's own entries: {', '.join(clashes)}")
    recipe.update(extra or {})
    atomic_write_bytes(folder / WEIGHTS_FILE, weights)
    return atomic_write_text(folder / RECIPE_FILE, json.dumps(recipe, indent=2) + "\n")


def _prefix(member: int, members: int) -> str:
    """The key prefix of an ensemble member's tensors in the weights file (none for one network)."""
    return f"member{member}." if members > 1 else ""


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b))


def read_recipe(folder: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a saved model, with a clear error when it is missing or broken."""
    path = Path(folder) / RECIPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; is {folder} a medxfer model or run folder?")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: not a model recipe (a JSON object)")
    required = ("format", "backbone", "classes", "in_channels", "image_size", "mean", "std", "weights_sha256")
    missing = [k for k in required if k not in recipe]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    if recipe["format"] != FORMAT:
        raise ValueError(
            f"{path}: format {recipe['format']} is not one this medxfer ({__version__}) reads; "
            "a newer medxfer wrote it, so upgrade medxfer"
        )
    return recipe


def load_model(folder: str | Path) -> tuple[XrayClassifier, InputSpec, dict[str, Any]]:
    """Rebuild a saved classifier (in eval mode), the input it expects, and its recipe. Raises
    ``ValueError`` for an ensemble (``load_networks`` reads every member)."""
    networks, spec, recipe = load_networks(folder)
    if len(networks) > 1:
        raise ValueError(f"{Path(folder) / RECIPE_FILE}: an ensemble of {len(networks)} networks; read it with "
                         "load_networks or TrainedRun.load")
    return networks[0], spec, recipe


def load_networks(folder: str | Path) -> tuple[tuple[XrayClassifier, ...], InputSpec, dict[str, Any]]:
    """Rebuild a saved classifier's networks (one, or an ensemble's members; in eval mode), the
    input they expect, and the recipe.

    The weights file must be the one the recipe was written with (SHA-256 checked).
    """
    folder = Path(folder)
    recipe = read_recipe(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: no such file")
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    if digest != recipe["weights_sha256"]:
        raise ValueError(f"{weights_path} does not match {folder / RECIPE_FILE} (SHA-256 differs)")
    members = recipe.get("members", 1)
    try:
        if not isinstance(members, int) or members < 1:
            raise ValueError(f"members must be a whole number >= 1, got {members!r}")
        tensors = load_file(str(weights_path))
        spec = InputSpec(
            image_size=recipe["image_size"], fit=recipe.get("fit", "letterbox"), channels=recipe["in_channels"],
            mean=tuple(recipe["mean"]), std=tuple(recipe["std"]),
        )
        networks = []
        for i in range(members):
            prefix = _prefix(i, members)
            model = build_classifier(
                recipe["backbone"], len(recipe["classes"]), weights="random", in_channels=recipe["in_channels"],
                dropout=recipe.get("dropout", 0.2), multi_label=recipe.get("multi_label", False),
            )
            if recipe.get("adapter_reduction"):
                add_adapters(model, reduction=recipe["adapter_reduction"])
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if len(own) != len(tensors) // members:
                raise ValueError(f"the weights file does not hold {members} networks of the same size")
            model.load_state_dict(own)
            model.mean, model.std, model.trained_spec = spec.mean, spec.std, spec
            networks.append(model.eval())
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{folder / RECIPE_FILE} does not describe the network in {WEIGHTS_FILE}: {reason}") from None
    return tuple(networks), spec, recipe
