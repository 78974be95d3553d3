"""Split conformal prediction sets: "the answer is one of these" with a coverage guarantee.

Fitted once on a labelled calibration split, a :class:`ConformalCalibrator` turns each new
image's probabilities into a set of plausible classes that contains the true class for
about ``1 - alpha`` of images (e.g. 90%). A set of one class means the model is sure; a
larger set is a plain-words signal that the physician should look.

Two scores are offered:

- ``"lac"`` (least ambiguous set-valued classifier): score ``1 - p_true``. Smallest sets
  on average, but set size adapts little to how hard the image is.
- ``"aps"`` (adaptive prediction sets, the default): rank classes by probability; the
  score of a class is the mass of the classes ranked above it plus **half** its own mass.
  This is the deterministic "u = 0.5" variant of APS (the randomised original draws
  u ~ U(0, 1)). Calibration and prediction use the same score and the set is
  ``{y : score(y) <= qhat}``, so the split-conformal guarantee holds exactly (coverage at
  least ``1 - alpha`` and, for continuous scores, at most ``1 - alpha + 1/(n + 1)``),
  and the same image always gets the same set. The common non-randomised rule that
  always includes the class crossing ``qhat`` over-covers, which is why it is not used.

The threshold is the ``ceil((n + 1)(1 - alpha)) / n`` empirical quantile of the
calibration scores, i.e. exactly the ``ceil((n + 1)(1 - alpha))``-th smallest score. Sets are never empty: the top class is always in.
Multilabel models are not supported (each label would need its own calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("aps", "lac")


def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < a < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1 (e.g. 0.1), got {alpha!r}")
    return a


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r}; expected 'aps' or 'lac'")
    return method


@dataclass(frozen=True)
class ConformalCalibrator:
    """Fitted split-conformal threshold; small enough to store in the model metadata."""

    method: str
    alpha: float
    qhat: float
    n_cal: int

    def __post_init__(self) -> None:
        _check_method(self.method)
        _check_alpha(self.alpha)
        if not math.isfinite(self.qhat):
            raise ValueError(f"qhat must be a finite number, got {self.qhat!r}")
        if self.n_cal < 1:
            raise ValueError(f"n_cal must be positive, got {self.n_cal}")

    def to_dict(self) -> dict:
        """JSON-ready description."""
        return {
            "method": self.method,
            "alpha": float(self.alpha),
            "qhat": float(self.qhat),
            "n_cal": int(self.n_cal),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ConformalCalibrator:
        """Rebuild from :meth:`to_dict` output, with a clear error for missing fields."""
        missing = [k for k in ("method", "alpha", "qhat", "n_cal") if k not in d]
        if missing:
            raise ValueError(f"conformal calibrator is missing field(s): {', '.join(missing)}")
        return cls(
            method=str(d["method"]),
            alpha=float(d["alpha"]),
            qhat=float(d["qhat"]),
            n_cal=int(d["n_cal"]),
        )


def _check_probs(probs: Any, name: str) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-D (N, C) array with C >= 2, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or (p.size and (p.min() < 0 or p.max() > 1 + 1e-9)):
        raise ValueError(f"{name} must hold probabilities in [0, 1]")
    sums = p.sum(axis=1)
    if p.shape[0] and not np.allclose(sums, 1.0, atol=1e-3):
        raise ValueError(
            f"{name} rows must sum to 1 (found {sums.min():.3g}..{sums.max():.3g}); "
            "conformal sets for multilabel sigmoid outputs are not supported"
        )
    return p


def _scores(p: np.ndarray, method: str) -> np.ndarray:
    """Non-conformity score of every class for every image, shape (N, C)."""
    if method == "lac":
        return 1.0 - p
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    above = np.cumsum(sorted_p, axis=1) - sorted_p  # mass ranked strictly above
    sorted_scores = above + 0.5 * sorted_p
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, sorted_scores, axis=1)
    return scores


def fit_conformal(
    probs_cal: Any,
    y_cal: Any,
    alpha: float = 0.1,
    method: str = "aps",
    task: str = "multiclass",
) -> ConformalCalibrator:
    """Fit the conformal threshold on a labelled calibration split not used for training.

    Needs at least ``(1 - alpha) / alpha`` samples (9 for alpha = 0.1), otherwise no
    finite threshold gives the guarantee and a ValueError says so.
    """
    if task == "multilabel":
        raise NotImplementedError(
            "conformal prediction sets are implemented for single-label tasks only "
            "(multiclass, binary, ordinal), not multilabel"
        )
    a = _check_alpha(alpha)
    _check_method(method)
    p = _check_probs(probs_cal, "probs_cal")
    y = np.asarray(y_cal)
    n = p.shape[0]
    if y.shape != (n,):
        raise ValueError(f"y_cal must be 1-D with {n} class indices, got shape {y.shape}")
    if n and (y.min() < 0 or y.max() >= p.shape[1] or np.any(y != np.round(y))):
        raise ValueError(f"y_cal must hold class indices in 0..{p.shape[1] - 1}")
    k = math.ceil((n + 1) * (1.0 - a))
    if k > n:
        need = math.ceil((1.0 - a) / a)
        raise ValueError(
            f"alpha={a} needs at least {need} calibration samples for a finite threshold, got {n}"
        )
    scores = _scores(p, method)[np.arange(n), y.astype(np.int64)]
    # The k-th smallest score, k = ceil((n + 1)(1 - alpha)): the order statistic the
    # guarantee is stated for. (numpy's quantile(k / n, method="higher") interpolates
    # positions over n - 1 gaps and picks the (k + 1)-th, one step more conservative.)
    qhat = float(np.partition(scores, k - 1)[k - 1])
    return ConformalCalibrator(method=method, alpha=a, qhat=qhat, n_cal=n)


def prediction_sets(probs: Any, cal: ConformalCalibrator) -> np.ndarray:
    """Boolean (N, C) membership of each class in each image's prediction set.

    Never empty: the most probable class is always included.
    """
    p = _check_probs(probs, "probs")
    # A tiny tolerance so that a score equal to qhat up to rounding is included.
    sets = _scores(p, cal.method) <= cal.qhat + 1e-12
    if p.shape[0]:
        sets[np.arange(p.shape[0]), np.argmax(p, axis=1)] = True
    return sets


def set_sizes(sets: Any) -> np.ndarray:
    """Number of classes in each prediction set."""
    return np.asarray(sets, dtype=bool).sum(axis=1)


def empirical_coverage(sets: Any, y_true: Any) -> float:
    """Fraction of images whose true class is inside their prediction set (nan if empty)."""
    s = np.asarray(sets, dtype=bool)
    y = np.asarray(y_true)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(f"sets must be (N, C) and y_true (N,), got {s.shape} and {y.shape}")
    if y.size == 0:
        return math.nan
    if y.min() < 0 or y.max() >= s.shape[1]:
        raise ValueError(f"y_true must hold class indices in 0..{s.shape[1] - 1}")
    return float(np.mean(s[np.arange(y.size), y.astype(np.int64)]))
