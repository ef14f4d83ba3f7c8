"""Post-hoc probability calibration and calibration metrics.

A network fine-tuned on a few hundred X-rays ranks images well but its softmax probabilities
are usually overconfident: "95 % PNEUMONIA" is right far less often than 95 % of the time.
A calibrator learns a small map from the network's logits to better probabilities on the
validation split, after training, without touching the network:

- ``TemperatureScaling`` (``"temperature"``): one temperature T, softmax(logits / T) (Guo et
  al. 2017, On Calibration of Modern Neural Networks). It never changes which class is
  predicted, nor, for two classes, the order of the images by P(positive class), so a
  threshold chosen on calibrated probabilities selects the same images as one on raw ones;
- ``VectorScaling`` (``"vector"``): a scale and a bias per class, softmax(logits * scale + bias);
  more flexible, and it can change the predicted class;
- ``IdentityCalibration`` (``"none"``): plain softmax, for runs that keep raw probabilities;
- ``ClasswiseTemperatureScaling``: one temperature per output of a multi-label model with
  independent sigmoid outputs. medxfer's own models are softmax classifiers; this is the
  library option for multi-label heads, and ``make_calibrator`` does not offer it.

Every calibrator follows scikit-learn's conventions (learned state ends in ``_``, ``fit``
returns ``self``, use before ``fit`` raises ``sklearn.exceptions.NotFittedError``), works on
numpy arrays, and saves to a JSON-ready dict (``to_dict``) that ``calibrator_from_dict``
restores: this is ``calibration.json`` in a run directory.

The metrics take true class indices (n,) and probabilities (n, K) and measure calibration:
expected (``expected_calibration_error``, equal-width bins, and
``adaptive_calibration_error``, equal-mass bins) and maximum calibration error over
top-label confidence, the bins of a reliability diagram (``reliability_bins``), the Brier
score and the negative log-likelihood. They are vectorised, since bootstraps call them many
thousands of times.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_softmax, logsumexp, softmax
from sklearn.base import BaseEstimator
from sklearn.metrics import brier_score_loss, log_loss
from sklearn.utils.validation import check_is_fitted

CALIBRATION_METHODS = ("temperature", "vector", "none")

# Search range of a fitted temperature, in the same units as the logits' divisor, and of vector
# scaling's per-class scale (the same range) and bias (logits). A fit that ends on a bound says so.
TEMPERATURE_BOUNDS = (0.05, 20.0)
SCALE_BOUNDS = TEMPERATURE_BOUNDS
BIAS_BOUNDS = (-20.0, 20.0)

# Largest tolerated deviation of a probability row's sum from 1 (float32 softmax outputs and
# probabilities read back from CSV are off by far less; logits or sigmoid outputs by far more).
_ROW_SUM_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------- input checks


def _check_logits(logits: Any, min_classes: int = 2) -> np.ndarray:
    """``logits`` as a finite float64 array of shape (n, K) with n >= 1 and K >= ``min_classes``."""
    array = np.asarray(logits, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"logits must be a 2-D array (n images, K classes), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("logits are empty: need at least one image")
    if array.shape[1] < min_classes:
        raise ValueError(f"logits need at least {min_classes} column(s) (classes), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("logits contain NaN or infinite values")
    return array


def _check_class_indices(labels: Any, n: int, n_classes: int) -> np.ndarray:
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


def _check_scores(labels: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
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
    return _check_class_indices(labels, array.shape[0], array.shape[1]), array


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


# ---------------------------------------------------------------------------- calibrators


class _Calibrator(BaseEstimator):
    """Shared parts of the softmax calibrators: input checks, ``predict_proba``, ``to_dict``."""

    method: ClassVar[str]
    _learned: ClassVar[tuple[str, ...]]  # fitted attributes, each also a key of to_dict

    def _check_fit_input(self, logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        z = _check_logits(logits)
        return z, _check_class_indices(labels, z.shape[0], z.shape[1])

    def _check_transform_input(self, logits: Any) -> np.ndarray:
        check_is_fitted(self, "n_classes_")
        z = _check_logits(logits)
        if z.shape[1] != self.n_classes_:
            raise ValueError(f"{type(self).__name__} was fitted on {self.n_classes_} classes, got logits of shape {z.shape}")
        return z

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated logits, (n, K) float64, from logits (n, K)."""
        raise NotImplementedError

    def predict_proba(self, logits: Any) -> np.ndarray:
        """Calibrated class probabilities, (n, K) float64 in [0, 1] with rows summing to 1,
        from logits (n, K)."""
        return softmax(self.transform(logits), axis=1)

    def to_dict(self) -> dict[str, Any]:
        """The fitted calibrator as a JSON-ready dict: ``"method"``, ``"n_classes"`` and the
        learned parameters as plain floats or lists (``calibrator_from_dict`` restores it)."""
        check_is_fitted(self, "n_classes_")
        result: dict[str, Any] = {"method": self.method, "n_classes": int(self.n_classes_)}
        for name in self._learned:
            value = np.asarray(getattr(self, name + "_"), dtype=float)
            result[name] = value.tolist() if value.ndim else float(value)
        return result


def _softmax_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of softmax(logits) for class indices ``labels``."""
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def _fit_log_temperature(nll) -> float:
    """The temperature in ``TEMPERATURE_BOUNDS`` minimising ``nll(T)``, searched over log T."""
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(lambda log_t: nll(np.exp(log_t)), bounds=(low, high), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def _at_bound(name: str, value: float, bounds: tuple[float, float]) -> str | None:
    """A sentence when ``value`` sits at (within 1 % of) one of ``bounds``, else None."""
    low, high = bounds
    for bound, side in ((low, "lower"), (high, "upper")):
        if abs(np.log(value / bound)) < 0.01:
            return (f"{name} = {value:.3g} reached its {side} bound ({bound:g}; the search runs from {low:g} to "
                    f"{high:g}): the data asked for a more extreme value, so the calibration is unreliable")
    return None


class TemperatureScaling(_Calibrator):
    """Temperature scaling: probabilities softmax(logits / T) with one learned T > 0.

    ``fit`` picks the T minimising the mean multi-class negative log-likelihood on the given
    (validation) logits, by a bounded scalar search over log T with T in
    ``TEMPERATURE_BOUNDS`` (0.05 to 20); a result at a bound means the data asked for more
    (e.g. a perfectly separated validation set drives T to 0.05). T > 1 softens an
    overconfident model, T < 1 sharpens an underconfident one. Dividing every logit by the
    same positive number keeps their order, so the predicted class never changes.

    Learned: ``temperature_`` (float), ``n_classes_`` (int, K).
    """

    method = "temperature"
    _learned = ("temperature",)

    def fit(self, logits: Any, labels: Any) -> TemperatureScaling:
        """Fit on logits (n, K) and true class indices (n,) in [0, K); returns ``self``."""
        z, y = self._check_fit_input(logits, labels)
        self.temperature_ = _fit_log_temperature(lambda t: _softmax_nll(z / t, y))
        self.n_classes_ = z.shape[1]
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Scaled logits, logits / T, (n, K)."""
        return self._check_transform_input(logits) / self.temperature_

    def at_bound(self) -> str | None:
        """A sentence when the fitted temperature sits at a bound of ``TEMPERATURE_BOUNDS``."""
        check_is_fitted(self, "n_classes_")
        return _at_bound("T", self.temperature_, TEMPERATURE_BOUNDS)


class VectorScaling(_Calibrator):
    """Vector scaling: probabilities softmax(logits * scale + bias) with a learned scale and
    bias per class (Guo et al. 2017).

    ``fit`` minimises the mean multi-class negative log-likelihood on the given (validation)
    logits with L-BFGS-B and the analytic gradient, from scale 1 and bias 0 (the identity);
    the objective is convex in (scale, bias). Unlike temperature scaling this can change which
    class is predicted, and so accuracy, sensitivity and specificity. Softmax ignores a
    constant added to every logit, so ``bias_`` is reported centred (summing to 0).

    Learned: ``scale_`` (K,), ``bias_`` (K,), ``n_classes_`` (int, K).
    """

    method = "vector"
    _learned = ("scale", "bias")

    def fit(self, logits: Any, labels: Any) -> VectorScaling:
        """Fit on logits (n, K) and true class indices (n,) in [0, K); returns ``self``."""
        z, y = self._check_fit_input(logits, labels)
        n, k = z.shape
        onehot = np.zeros_like(z)
        onehot[np.arange(n), y] = 1.0

        def nll_and_gradient(params: np.ndarray) -> tuple[float, np.ndarray]:
            scale, bias = params[:k], params[k:]
            scaled = z * scale + bias
            log_p = scaled - logsumexp(scaled, axis=1, keepdims=True)
            residual = (np.exp(log_p) - onehot) / n  # d(mean NLL) / d(scaled logits)
            gradient = np.concatenate([(residual * z).sum(axis=0), residual.sum(axis=0)])
            return float(-(log_p * onehot).sum() / n), gradient

        start = np.concatenate([np.ones(k), np.zeros(k)])
        bounds = [SCALE_BOUNDS] * k + [BIAS_BOUNDS] * k
        result = minimize(nll_and_gradient, start, jac=True, method="L-BFGS-B", bounds=bounds,
                          options={"maxiter": 1000, "gtol": 1e-8, "ftol": 1e-12})
        self.scale_ = result.x[:k].copy()
        self.bias_ = result.x[k:] - result.x[k:].mean()
        self.n_classes_ = k
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Calibrated logits, logits * scale + bias, (n, K)."""
        return self._check_transform_input(logits) * self.scale_ + self.bias_

    def at_bound(self) -> str | None:
        """A sentence when a fitted scale or (uncentred) bias sits at a bound."""
        check_is_fitted(self, "n_classes_")
        for c, scale in enumerate(self.scale_):
            note = _at_bound(f"the scale of class {c}", float(scale), SCALE_BOUNDS)
            if note:
                return note
        if np.abs(self.bias_).max() >= BIAS_BOUNDS[1] - 1e-3 * BIAS_BOUNDS[1]:
            return (f"a bias reached its bound ({BIAS_BOUNDS[1]:g} logits): the data asked for a more extreme value, "
                    "so the calibration is unreliable")
        return None


class IdentityCalibration(_Calibrator):
    """No calibration (method ``"none"``): plain softmax of the logits. ``fit`` only checks the
    input and records the number of classes, so a run without calibration saves and restores
    the same way as one with it.

    Learned: ``n_classes_`` (int, K).
    """

    method = "none"
    _learned = ()

    def fit(self, logits: Any, labels: Any) -> IdentityCalibration:
        """Check logits (n, K) and class indices (n,) in [0, K); returns ``self``."""
        z, _ = self._check_fit_input(logits, labels)
        self.n_classes_ = z.shape[1]
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """The logits unchanged (a float64 copy), (n, K)."""
        return self._check_transform_input(logits).copy()

    def at_bound(self) -> str | None:
        """Never: nothing is fitted."""
        return None


class ClasswiseTemperatureScaling(_Calibrator):
    """Class-wise temperature scaling for multi-label models with independent sigmoid outputs:
    probabilities sigmoid(logits[:, k] / T_k), one temperature per output.

    ``fit`` takes logits (n, K) and binary labels (n, K) in {0, 1} (one column per finding,
    several may be 1 for one image) and fits each T_k separately by minimising that output's
    mean binary negative log-likelihood, searched over log T_k in ``TEMPERATURE_BOUNDS``. An
    output whose labels are all 0 or all 1 on the fitting set has no finite optimum: its
    temperature ends at a bound. Probabilities of different outputs do not sum to 1.

    Learned: ``temperatures_`` (K,), ``n_classes_`` (int, K, 1 or more).
    """

    method = "classwise_temperature"
    _learned = ("temperatures",)

    def fit(self, logits: Any, labels: Any) -> ClasswiseTemperatureScaling:
        """Fit on logits (n, K) and binary labels (n, K) in {0, 1}; returns ``self``."""
        z = _check_logits(logits, min_classes=1)
        y = np.asarray(labels)
        if y.shape != z.shape:
            raise ValueError(f"labels must have the shape of the logits, (n, K) = {z.shape}, got {y.shape}")
        if y.dtype.kind not in "iufb" or not np.isin(y, (0, 1)).all():
            raise ValueError("labels of a multi-label model must be 0 or 1 (one column per output)")
        y = y.astype(float)

        def binary_nll(column: int, t: float) -> float:
            u = z[:, column] / t
            return float(np.mean(np.logaddexp(0.0, u) - y[:, column] * u))

        self.temperatures_ = np.array([
            _fit_log_temperature(lambda t, column=column: binary_nll(column, t)) for column in range(z.shape[1])
        ])
        self.n_classes_ = z.shape[1]
        return self

    def _check_transform_input(self, logits: Any) -> np.ndarray:
        check_is_fitted(self, "n_classes_")
        z = _check_logits(logits, min_classes=1)
        if z.shape[1] != self.n_classes_:
            raise ValueError(f"{type(self).__name__} was fitted on {self.n_classes_} outputs, got logits of shape {z.shape}")
        return z

    def transform(self, logits: Any) -> np.ndarray:
        """Scaled logits, logits[:, k] / T_k, (n, K)."""
        return self._check_transform_input(logits) / self.temperatures_

    def predict_proba(self, logits: Any) -> np.ndarray:
        """Calibrated probability of each output, (n, K) in [0, 1], sigmoid(logits / T)."""
        return expit(self.transform(logits))


_CALIBRATORS: dict[str, type[_Calibrator]] = {
    cls.method: cls for cls in (TemperatureScaling, VectorScaling, IdentityCalibration, ClasswiseTemperatureScaling)
}


def make_calibrator(method: str) -> _Calibrator:
    """An unfitted calibrator for a softmax classifier: ``"temperature"``
    (``TemperatureScaling``), ``"vector"`` (``VectorScaling``) or ``"none"``
    (``IdentityCalibration``); see ``CALIBRATION_METHODS``."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}: use one of {', '.join(CALIBRATION_METHODS)}")
    return _CALIBRATORS[method]()


def _parameter(data: Mapping[str, Any], key: str, method: str, length: int | None) -> np.ndarray:
    """``data[key]`` as a finite float array: a number when ``length`` is None, else a list of
    ``length`` numbers."""
    if key not in data:
        raise ValueError(f"calibration {method!r} needs the parameter {key!r}, which is missing")
    value = data[key]
    expected = "a number" if length is None else f"a list of {length} numbers"
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"calibration parameter {key!r} must be {expected}, got {value!r}") from None
    if value is None or isinstance(value, (bool, str)) or array.shape != (() if length is None else (length,)):
        raise ValueError(f"calibration parameter {key!r} must be {expected}, got {value!r}")
    if not np.isfinite(array).all():
        raise ValueError(f"calibration parameter {key!r} must be finite, got {value!r}")
    return array


def calibrator_from_dict(data: Mapping[str, Any]) -> _Calibrator:
    """A fitted calibrator from the dict ``to_dict`` wrote (``calibration.json``), for any of
    the four kinds. Keys other than the method's own (such as ``"fitted_on"``) are ignored.

    Raises ``ValueError`` naming the problem: not a mapping, unknown ``"method"``, a missing
    or invalid ``"n_classes"`` or parameter (temperatures must be positive, vector scaling's
    ``"scale"`` and ``"bias"`` need one number per class).
    """
    if not isinstance(data, Mapping):  # ValueError too: callers handle every bad calibration.json alike
        raise ValueError(f"a calibration must be a dict, got {type(data).__name__}")
    method = data.get("method")
    if method not in _CALIBRATORS:
        raise ValueError(f"unknown calibration method {method!r}: use one of {', '.join(_CALIBRATORS)}")
    cls = _CALIBRATORS[method]
    minimum = 1 if cls is ClasswiseTemperatureScaling else 2
    n_classes = data.get("n_classes")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < minimum:
        raise ValueError(f"calibration {method!r} needs 'n_classes', an integer >= {minimum}, got {n_classes!r}")
    calibrator = cls()
    for name in cls._learned:
        value = _parameter(data, name, method, None if name == "temperature" else n_classes)
        if name.startswith("temperature") and not (value > 0).all():
            raise ValueError(f"calibration parameter {name!r} must be positive, got {data[name]!r}")
        setattr(calibrator, name + "_", float(value) if value.ndim == 0 else value)
    calibrator.n_classes_ = n_classes
    return calibrator


# ---------------------------------------------------------------------------- metrics
#
# Written here because scikit-learn has no expected calibration error, and MONAI's
# calibration_binning / CalibrationErrorMetric bin every class channel of (segmentation)
# probability maps separately, not a classifier's top-label confidence.


def _top_label(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (n,), the largest probability of each row, and correctness (n,), 1.0 where
    the most probable class (the first one on ties) is the true one."""
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(predicted)), predicted].astype(float)
    return confidence, (predicted == labels).astype(float)


def _equal_width_bins(
    labels: Any, probabilities: Any, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Bin edges (n_bins + 1,) and per-bin count, sum of confidence and number correct
    (n_bins,) each, and n, for equal-width bins [lower, upper) over [0, 1], the last bin
    [lower, 1] closed."""
    n_bins = _check_n_bins(n_bins)
    labels, probabilities = _check_scores(labels, probabilities)
    confidence, correct = _top_label(labels, probabilities)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.digitize(confidence, edges[1:-1])  # edges[i] <= c < edges[i + 1] -> i; 1.0 -> n_bins - 1
    counts = np.bincount(index, minlength=n_bins)
    sum_confidence = np.bincount(index, weights=confidence, minlength=n_bins)
    sum_correct = np.bincount(index, weights=correct, minlength=n_bins)
    return edges, counts, sum_confidence, sum_correct, len(labels)


def expected_calibration_error(labels: Any, probabilities: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al. 2017), in [0, 1].

    ``labels``: true class indices (n,) in [0, K); ``probabilities``: (n, K), rows summing to 1.
    The confidence of an image is its largest probability, and it is correct when that class
    is the true one. Confidences go into ``n_bins`` equal-width bins over [0, 1], each bin
    [lower, upper) closed on the left, the last one [lower, 1] closed on both sides; the ECE is
    the sum over bins of (count / n) * |accuracy - mean confidence|. 0 is perfect.
    """
    _, _, sum_confidence, sum_correct, n = _equal_width_bins(labels, probabilities, n_bins)
    return float(np.abs(sum_correct - sum_confidence).sum() / n)


def maximum_calibration_error(labels: Any, probabilities: Any, n_bins: int = 15) -> float:
    """Top-label maximum calibration error, in [0, 1]: the largest |accuracy - mean confidence|
    over the non-empty bins of ``expected_calibration_error`` (same inputs and bins). Always
    at least the ECE; noisy on small sets, where a bin may hold one image."""
    _, counts, sum_confidence, sum_correct, _ = _equal_width_bins(labels, probabilities, n_bins)
    filled = counts > 0
    return float((np.abs(sum_correct[filled] - sum_confidence[filled]) / counts[filled]).max())


def positive_class_calibration_error(labels: Any, probabilities: Any, positive: int, n_bins: int = 15) -> float:
    """Expected calibration error of the probability of one class, in [0, 1]: the calibrated
    P(``positive``) of every image in ``n_bins`` equal-width bins over [0, 1] (as
    ``expected_calibration_error``), and the sum over bins of (count / n) * |share of images of
    that class - mean P|. For two classes this is the ECE that torchmetrics' and netcal's binary
    ECE report; the top-label ECE of ``expected_calibration_error`` looks at max(P, 1 - P) and is
    usually smaller on the same scores (about half in the audit's simulations; 0.093 against
    0.111 on the NIH run)."""
    n_bins = _check_n_bins(n_bins)
    labels, probabilities = _check_scores(labels, probabilities)
    p = probabilities[:, positive].astype(float)
    hit = (labels == positive).astype(float)
    index = np.digitize(p, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    difference = np.bincount(index, weights=hit - p, minlength=n_bins)
    return float(np.abs(difference).sum() / len(labels))


def adaptive_calibration_error(labels: Any, probabilities: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-mass bins, in [0, 1].

    Same inputs and definition as ``expected_calibration_error``, but the images, sorted by
    confidence, are split into ``n_bins`` groups of nearly equal size (sizes differ by at most
    one; with fewer than ``n_bins`` images, one image per group), so every bin holds data even
    when confidences crowd near 1. Images with equal confidence may fall in neighbouring
    groups. This is the top-label variant, not the class-wise adaptive calibration error of
    Nixon et al. 2019.
    """
    n_bins = _check_n_bins(n_bins)
    labels, probabilities = _check_scores(labels, probabilities)
    confidence, correct = _top_label(labels, probabilities)
    n = len(labels)
    groups = min(n_bins, n)
    order = np.argsort(confidence, kind="stable")
    index = np.arange(n) * groups // n  # sorted position -> group, sizes floor or ceil of n / groups
    difference = np.bincount(index, weights=correct[order] - confidence[order], minlength=groups)
    return float(np.abs(difference).sum() / n)


def reliability_bins(labels: Any, probabilities: Any, n_bins: int = 15) -> list[dict[str, Any]]:
    """The data of a reliability diagram: one dict per equal-width bin of
    ``expected_calibration_error`` (same inputs and bins), from low to high confidence, with
    ``"lower"`` and ``"upper"`` (bin edges in [0, 1]), ``"confidence"`` (mean top-label
    confidence) and ``"accuracy"`` (share correct), both None for an empty bin, and
    ``"count"`` (images). The ECE is the sum of count / n * |accuracy - confidence|.
    """
    edges, counts, sum_confidence, sum_correct, _ = _equal_width_bins(labels, probabilities, n_bins)
    return [
        {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "confidence": float(sum_confidence[i] / counts[i]) if counts[i] else None,
            "accuracy": float(sum_correct[i] / counts[i]) if counts[i] else None,
            "count": int(counts[i]),
        }
        for i in range(len(counts))
    ]


def brier_score(labels: Any, probabilities: Any) -> float:
    """Brier score, by ``sklearn.metrics.brier_score_loss`` with its default
    ``scale_by_half="auto"``; lower is better.

    ``labels``: true class indices (n,) in [0, K); ``probabilities``: (n, K). With K classes
    it is mean over images of sum over classes of (p_k - [y == k])^2, halved when K == 2:
    for two classes this equals the usual positive-class Brier score mean((p_1 - y)^2), in
    [0, 1]; for more classes it is the unhalved multi-class score, in [0, 2]. The number of
    classes is K (the columns), even when some class is absent from ``labels``.
    """
    labels, probabilities = _check_scores(labels, probabilities)
    return float(brier_score_loss(labels, probabilities, labels=range(probabilities.shape[1])))


def negative_log_likelihood(labels: Any, probabilities: Any) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of the true classes,
    mean(-log p[y]), by ``sklearn.metrics.log_loss`` (which clips probabilities to
    [eps, 1 - eps] for the array's float type, so a zero probability gives a large finite
    value). ``labels``: true class indices (n,) in [0, K); ``probabilities``: (n, K)."""
    labels, probabilities = _check_scores(labels, probabilities)
    return float(log_loss(labels, probabilities, labels=range(probabilities.shape[1])))
