"""Post-hoc probability calibration of a softmax classifier's logits.

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
- ``IdentityCalibration`` (``"none"``): plain softmax, for runs that keep raw probabilities.

Every calibrator follows scikit-learn's conventions (learned state ends in ``_``, ``fit``
returns ``self``, use before ``fit`` raises ``sklearn.exceptions.NotFittedError``), works on
numpy arrays, and saves to a JSON-ready dict (``to_dict``) that ``calibrator_from_dict``
restores: this is ``calibration.json`` in a run directory. ``make_calibrator`` and
``calibrator_from_dict`` are the registry, keyed by ``CALIBRATION_METHODS``. The calibration
metrics live in ``metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, logsumexp, softmax
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from medxfer.pipeline.calibration.arrays import check_class_indices, check_logits

__all__ = [
    "BIAS_BOUNDS", "CALIBRATION_METHODS", "SCALE_BOUNDS", "TEMPERATURE_BOUNDS", "IdentityCalibration",
    "TemperatureScaling", "VectorScaling", "calibrator_from_dict", "make_calibrator",
]

CALIBRATION_METHODS = ("temperature", "vector", "none")

# Search range of a fitted temperature, in the same units as the logits' divisor, and of vector
# scaling's per-class scale (the same range) and bias (logits). A fit that ends on a bound says so.
TEMPERATURE_BOUNDS = (0.05, 20.0)
SCALE_BOUNDS = TEMPERATURE_BOUNDS
BIAS_BOUNDS = (-20.0, 20.0)


class _Calibrator(BaseEstimator):
    """Shared parts of the softmax calibrators: input checks, ``predict_proba``, ``to_dict``."""

    method: ClassVar[str]
    _learned: ClassVar[tuple[str, ...]]  # fitted attributes, each also a key of to_dict

    def _check_fit_input(self, logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        z = check_logits(logits)
        return z, check_class_indices(labels, z.shape[0], z.shape[1])

    def _check_transform_input(self, logits: Any) -> np.ndarray:
        check_is_fitted(self, "n_classes_")
        z = check_logits(logits)
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



_CALIBRATORS: dict[str, type[_Calibrator]] = {
    cls.method: cls for cls in (TemperatureScaling, VectorScaling, IdentityCalibration)
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
    the three kinds. Keys other than the method's own (such as ``"fitted_on"``) are ignored.

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
    n_classes = data.get("n_classes")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"calibration {method!r} needs 'n_classes', an integer >= 2, got {n_classes!r}")
    calibrator = cls()
    for name in cls._learned:
        value = _parameter(data, name, method, None if name == "temperature" else n_classes)
        if name == "temperature" and not (value > 0).all():
            raise ValueError(f"calibration parameter {name!r} must be positive, got {data[name]!r}")
        setattr(calibrator, name + "_", float(value) if value.ndim == 0 else value)
    calibrator.n_classes_ = n_classes
    return calibrator

