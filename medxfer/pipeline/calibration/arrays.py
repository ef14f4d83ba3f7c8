"""Input checks shared by the calibrators and the calibration metrics: logits (n, K), class
indices (n,) in [0, K), probabilities (n, K) whose rows sum to 1, and a bin count. Each raises
``ValueError`` naming what is wrong, in the user's terms (images, classes)."""

from __future__ import annotations

from typing import Any

import numpy as np

# Largest tolerated deviation of a probability row's sum from 1 (float32 softmax outputs and
# probabilities read back from CSV are off by far less; logits or sigmoid outputs by far more).
_ROW_SUM_TOLERANCE = 1e-3


def check_logits(logits: Any) -> np.ndarray:
    """``logits`` as a finite float64 array of shape (n, K) with n >= 1 and K >= 2."""
    array = np.asarray(logits, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"logits must be a 2-D array (n images, K classes), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("logits are empty: need at least one image")
    if array.shape[1] < 2:
        raise ValueError(f"logits need at least 2 column(s) (classes), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("logits contain NaN or infinite values")
    return array


def check_class_indices(labels: Any, n: int, n_classes: int) -> np.ndarray:
    """``labels`` as an int array of shape (n,) with values in [0, ``n_classes``)."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices, got shape {array.shape}")
    if len(array) != n:
        raise ValueError(f"labels and scores differ in length: {len(array)} labels for {n} images")
    if array.dtype.kind not in "iub":
        raise ValueError(f"labels must be integer class indices 0 to {n_classes - 1}, got dtype {array.dtype}")
    if n and (array.min() < 0 or array.max() >= n_classes):
        raise ValueError(
            f"labels must be class indices 0 to {n_classes - 1} (one per column), "
            f"got values from {array.min()} to {array.max()}"
        )
    return array.astype(np.intp, copy=False)


def check_scores(labels: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked (labels (n,), probabilities (n, K)) for the metrics: same length, n >= 1, K >= 2,
    probabilities in [0, 1] with rows summing to 1, labels in [0, K). A floating-point array
    keeps its dtype (float32 is fine), anything else becomes float64."""
    array = np.asarray(probabilities)
    if array.dtype.kind != "f":
        array = array.astype(float)
    if array.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D array (n images, K classes), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("no images to score: probabilities are empty")
    if array.shape[1] < 2:
        raise ValueError(f"probabilities need one column per class (at least 2), got shape {array.shape}")
    if not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
        raise ValueError("probabilities must be finite and in [0, 1] (pass softmax outputs, not logits)")
    deviation = np.abs(array.sum(axis=1) - 1)
    if deviation.max() > _ROW_SUM_TOLERANCE:
        row = int(deviation.argmax())
        raise ValueError(
            f"each row of probabilities must sum to 1 (softmax outputs), row {row} sums to {array[row].sum():.6g}"
        )
    return check_class_indices(labels, array.shape[0], array.shape[1]), array


def check_n_bins(n_bins: int) -> int:
    """``n_bins`` as an int, a positive integer (bools refused)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)

