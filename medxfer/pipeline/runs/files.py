"""The names of the files in a run directory, defined once.

A finished training run holds the network (``WEIGHTS_FILE`` and its recipe ``RECIPE_FILE``), the
resolved configuration, the calibration and threshold fitted on validation, the metrics (written
last: a directory holding ``METRICS_FILE`` is complete), the report and model card, the training
history, the split of every image, the files left out and a record of the environment. ``medxfer
evaluate`` writes an evaluation directory with the same metrics, report, model card, predictions
and unreadable-file names.
"""

from __future__ import annotations

WEIGHTS_FILE = "model.safetensors"  # tensors only, never unpickled
RECIPE_FILE = "model.json"  # how to rebuild the network and prepare its input
CONFIG_FILE = "config.yaml"  # the resolved training configuration
CALIBRATION_FILE = "calibration.json"  # calibrator and decision threshold, fitted on validation
METRICS_FILE = "metrics.json"  # every figure of the report; written last
REPORT_FILE = "report.html"
MODEL_CARD_FILE = "model_card.md"
HISTORY_FILE = "history.csv"  # one row per epoch
SPLITS_FILE = "splits.csv"  # the split of every image
UNREADABLE_FILE = "unreadable.csv"  # files left out, and why
PREDICTIONS_FILE = "predictions.csv"  # an external evaluation's per-image predictions
ENVIRONMENT_FILE = "environment.json"  # code, software, hardware, seed and data hash
CHECKPOINT_FILE = "checkpoint.safetensors"  # resumable training state, removed when training ends
FOLD_FILE = "fold-{}.safetensors"  # a cross-fitted run's finished fold (1-based), removed when training ends
EVALUATIONS_DIR = "evaluations"  # medxfer evaluate's default place for its folders, inside the run

# What a finished run must hold before it can be evaluated, used or exported.
REQUIRED_FILES = (WEIGHTS_FILE, RECIPE_FILE, CONFIG_FILE, CALIBRATION_FILE, METRICS_FILE)
