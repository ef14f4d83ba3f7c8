"""From scan pixels to network input: input preparation and X-ray augmentation (part 2)."""

from medxfer.transforms.loading import AugmentedDataset, derived_seed
from medxfer.transforms.pipeline import XrayPipeline
from medxfer.transforms.preparation import FITS, IMAGENET_MEAN, IMAGENET_STD, InputSpec, fit_image, prepare_input
from medxfer.transforms.presets import (
    PRESET_NAMES,
    PRESETS,
    AugmentParams,
    augmentation,
    augmentation_from_config,
    parse_override,
    preset_table,
)
from medxfer.transforms.preview import preview_grid, write_preview

__all__ = [
    "FITS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "PRESET_NAMES",
    "AugmentParams",
    "AugmentedDataset",
    "InputSpec",
    "XrayPipeline",
    "augmentation",
    "augmentation_from_config",
    "derived_seed",
    "fit_image",
    "parse_override",
    "prepare_input",
    "preset_table",
    "preview_grid",
    "write_preview",
]
