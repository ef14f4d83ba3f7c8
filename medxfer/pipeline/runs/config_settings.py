"""The settings of a training run: ``TrainConfig``, each field with its default and one line of help.

The defaults here are the one place where they are set; each field's ``metadata["help"]`` is the
description the configuration reference (``medxfer.pipeline.runs.config.reference_markdown``)
prints beside the key, its rule (``config_rules.RULES``) and its default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

from medxfer.pipeline.runs.config_checks import check_combination, check_values
from medxfer.pipeline.runs.config_rules import RULES

# ``validation: auto`` cross-fits runs with at most this many non-test images (train plus
# validation). benchmarks/small_data.py (docs/benchmarks.md, "Small-data protocol") measured
# cross-fitting ahead on average at every size it tried, up to 857-859 non-test images; the
# cut-off rounds that up. Above it, holdout: unmeasured, and 3-4 times the wall time.
AUTO_CROSSFIT_IMAGES = 1000


def _setting(default: Any, description: str) -> Any:
    """A field with its (immutable) default and its one-line description for the reference."""
    return field(default=default, metadata={"help": description})


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every setting of a training run, with its default. The rules each value must follow
    are checked by ``validate`` (and by ``config_from_mapping``/``load_config``); a
    ``TrainConfig`` built directly is not checked until then. Frozen: derive a changed copy
    with ``dataclasses.replace``."""

    # data
    data: str | None = _setting(None, "class folders or manifest; required to train")
    target_data: str | None = _setting(
        None, "unlabelled scans from the site to adapt to, a folder or a manifest (its labels, if any, are ignored); "
              "for `adapt`")
    out: str | None = _setting(None, "run directory (the command line fills in `runs/train-DATE-TIME`)")
    layout: str = _setting("auto", "how to read `data`")
    skip_unreadable: bool = _setting(
        False, "leave unreadable files out instead of stopping: each is logged with its reason and listed in "
               "`RUN_DIR/unreadable.csv`")
    max_pixels: int | str = _setting(
        "auto", "the pixel budget: a file that would decode to more pixels or voxels is unreadable, refused before "
                "decoding (`auto`: `$MEDXFER_MAX_PIXELS`, else 134,217,728 = 2^27)")
    window: str = _setting("default", "the intensity window a scan is decoded with")
    volume_strategy: str = _setting("middle", "how a volume becomes 2D")
    val_fraction: float = _setting(0.15, "share of patients for validation when there is no `split` column (a "
                                    "cross-fitted run folds them into training)")
    test_fraction: float = _setting(0.15, "share of patients for test when there is no `split` column")
    validation: str = _setting(
        "auto", "`holdout` (one validation split of `val_fraction` chooses the epoch, fits the calibration and "
                   "sets the threshold), `crossfit` (`folds` patient-grouped folds over every non-test image: one "
                   "network per fold, their out-of-fold logits validate, the fold networks form the model) or "
                   f"`auto` (crossfit up to {AUTO_CROSSFIT_IMAGES:,} non-test images, holdout above; holdout with "
                   "`adapt`)")
    folds: int = _setting(5, "with `crossfit`: the number of patient-grouped, label-stratified folds")
    # network
    backbone: str = _setting(  # == medxfer.pipeline.models.backbones.DEFAULT_BACKBONE (tested)
        "efficientnet_lite0", "registry name of the ImageNet backbone")
    weights: str = _setting("imagenet", "`imagenet` (packaged), `random`, or a weights file")
    strategy: str = _setting("partial", "which part of the network trains")
    trainable_stages: int = _setting(
        3, "with `partial`: how many of the last stages train (3 measured best for EfficientNet-Lite0; other "
           "backbones count stages differently)")
    adapt: str = _setting("none", "domain adaptation: `adabn` or `dann` (both need `target_data`)")
    dann_weight: float = _setting(1.0, "the largest weight of DANN's domain loss (ramped up from 0)")
    # input
    augment: str | dict[str, Any] = _setting(  # noqa: RUF009 - _setting returns a dataclasses.field
        "standard", "augmentation preset name, or a mapping `{preset: standard, rotation: 5, ...}`")
    image_size: int = _setting(224, "network input side, pixels")
    fit: str = _setting("letterbox", "how a scan is fitted to the square input")
    in_channels: int = _setting(3, "3 (grayscale replicated) or 1 (first convolution folded)")
    # optimisation
    epochs: int | str = _setting("auto", "a number, or `auto`: chosen from the number of training images")
    batch_size: int = _setting(32, "images per batch (per process under torchrun)")
    lr: float = _setting(1e-3, "learning rate of the head, after warm-up")
    layer_decay: float = _setting(0.75, "each stage's learning rate is this times the next one's")
    weight_decay: float = _setting(0.05, "AdamW weight decay (weights only)")
    warmup_epochs: float = _setting(1.0, "linear warm-up, in epochs")
    imbalance: str = _setting(
        "weighted", "`weighted` (class-weighted loss), `sampler` (classes sampled equally) or `none`")
    patience: int = _setting(5, "epochs without a better validation score before stopping; 0 never stops early")
    selection: str = _setting(
        "auto", "the validation score that chooses the epoch: `auroc`, `loss` (cross-entropy), `auroc_loss` "
                "(AUROC, ties broken by the lower loss, as when validation AUROC saturates at 1) or `auto` (`auroc` "
                "with holdout, `loss` with crossfit: the settings measured best)")
    grad_clip: float = _setting(1.0, "largest global gradient norm; 0 turns clipping off")
    label_smoothing: float = _setting(0.0, "cross-entropy label smoothing")
    dropout: float = _setting(0.2, "dropout before the head's linear layer")
    # speed and reproducibility
    cache: str = _setting("auto", "cache the frozen prefix's features: `auto` (whenever there is one), `on`, `off`")
    cache_views: int | str = _setting(
        "auto", "augmented views of each training image in the cache (`auto`: 4 up to 2,000 training images, "
                "fewer above)")
    seed: int = _setting(0, "the one seed every random choice derives from")
    device: str = _setting("auto", "`auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`")
    workers: int | str = _setting(
        "auto", "DataLoader worker processes (`auto`: cores - 2, at most 8; none on 2 cores)")
    amp: bool = _setting(True, "bfloat16 mixed precision on CUDA")
    channels_last: bool = _setting(True, "channels-last memory layout (faster on CPU and CUDA)")
    # evaluation (medxfer.pipeline.evaluation.evaluator)
    calibration: str = _setting(
        "temperature", "`temperature`, `vector` (per-class scale and bias) or `none`; fitted on the validation "
                       "logits only")
    threshold: str = _setting(
        "youden", "how the operating threshold on P(positive class) is chosen on validation: `youden` (Youden's J) "
                  "or `sensitivity` (the highest threshold reaching `target_sensitivity`)")
    target_sensitivity: float = _setting(0.9, "with `threshold: sensitivity`")
    positive_class: str = _setting(
        "auto", "two classes: the class whose probability is thresholded (`auto`: the one not named "
                "normal/negative/no finding/healthy..., else the second in sorted order)")
    bootstrap: int = _setting(
        1000, "patient resamples for the intervals of average precision, ECE and F1 (marked approximate); 0 "
              "turns those off")
    subgroups: tuple[str, ...] = _setting(
        (), "manifest columns reported as subgroups besides sex, age band, site, manufacturer and view")
    intersections: tuple[str, ...] = _setting((), 'pairs reported together, e.g. `["sex x age_band"]`')
    age_bands: tuple[float, ...] = _setting((18.0, 40.0, 65.0), "edges of the age bands, years")
    overfit_gap: float = _setting(0.05, "train minus validation AUROC above which overfitting is flagged")

    def __post_init__(self) -> None:
        # lists (from YAML or to_dict) stored as tuples, so that equal settings compare equal
        for key in ("subgroups", "intersections", "age_bands"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))

    def validate(self, *, need_data: bool = False, check_paths: bool = False) -> TrainConfig:
        """This configuration checked key by key and as a whole, values normalised (an int
        where a float is expected becomes a float, ``"1e-3"`` becomes 0.001). ``need_data``:
        ``data`` must be set; ``check_paths``: ``data``, ``target_data`` and a weights file
        must exist. Raises ``ConfigError``."""
        values = check_values(self.to_dict(), "configuration")
        check_combination(values, {}, "configuration", need_data=need_data, check_paths=check_paths)
        return TrainConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (YAML/JSON serialisable), keys in ``CONFIG_KEYS`` order."""
        return {key: plain(copy.deepcopy(getattr(self, key))) for key in CONFIG_KEYS}


def plain(value: Any) -> Any:
    """Tuples as lists (YAML's safe dumper writes lists only)."""
    return list(value) if isinstance(value, tuple) else value


CONFIG_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))
if tuple(RULES) != CONFIG_KEYS:
    raise RuntimeError("every TrainConfig field needs a rule in config_rules.RULES, in field order")
