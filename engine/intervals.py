"""How uncertain a figure measured on few images is: bootstrap intervals and the ECE floor.

A test part of 56 photographs gives a QWK or an AUC that can move by 0.2 between two
equally good models; an expected calibration error (ECE) measured on so few images is large
even for a perfectly calibrated model, because each bin holds a handful of images. A report
that prints one number hides both. This module is the one place that says how uncertain
``evaluate``'s figures are; ``evaluate``, ``train`` and the model card use it.

- :func:`metric_intervals`: percentile bootstrap 95 % intervals of the headline metrics.
  Resampling is by patient when the images carry a patient group (images of one patient are
  not independent), by image otherwise.
- :func:`ece_if_calibrated`: the ECE a perfectly calibrated model with the same confidences
  would show on this many images (each prediction right with exactly its stated
  probability): the floor below which a measured ECE says nothing.
- :func:`referral_gain_interval`: how much referring the least certain images changes the
  kept images' accuracy and balanced accuracy, with the same bootstrap interval. A
  three-grade balanced accuracy on a few dozen images of the rarest grade moves by several
  points from one draw to the next; the gain alone would hide that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .metrics import bin_index, evaluate_predictions

HEADLINE = ("accuracy", "balanced_accuracy", "auc", "qwk", "sensitivity", "specificity", "ece")
N_BOOT = 1000
LEVEL = 0.95


def _cluster_draws(groups: Sequence[str] | None, n: int, n_boot: int, rng) -> list[np.ndarray]:  # noqa: ANN001
    """Index arrays of ``n_boot`` bootstrap samples, whole groups at a time when given."""
    if not groups:
        return [rng.integers(0, n, n) for _ in range(n_boot)]
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(str(g), []).append(i)
    blocks = [np.asarray(v) for v in members.values()]
    out = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(blocks), len(blocks))
        out.append(np.concatenate([blocks[j] for j in pick]))
    return out


def _resampled(groups: Sequence[str] | None, n: int) -> str:
    """What the bootstrap draws: whole patients when the images name fewer patients."""
    return "patients" if groups and len(set(groups)) < n else "images"


def _percentile_intervals(values: dict[str, list[float]], n_boot: int) -> dict[str, list[float]]:
    """The 95 % percentile interval of each figure defined in at least half the draws."""
    a = (1 - LEVEL) / 2
    return {
        k: [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))]
        for k, v in values.items()
        if len(v) >= n_boot // 2
    }


def metric_intervals(
    y_true: Any,
    probs: Any,
    task: str,
    labels: Sequence[str],
    positive: str | None = None,
    groups: Sequence[str] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap 95 % intervals of the headline metrics of these predictions.

    Returns ``{"level": 0.95, "resampled": "patients"|"images", "n_boot": B, "metrics":
    {name: [low, high]}}`` for each headline metric the report has (a metric undefined in
    some resamples, e.g. an AUC when a class is missing, uses the resamples where it is
    defined). Deterministic for a seed. Multilabel tasks are not covered (empty metrics).
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    n = int(y.shape[0])
    out: dict[str, Any] = {"level": LEVEL, "resampled": _resampled(groups, n), "n_boot": n_boot}
    if task == "multilabel" or n < 2:
        out["metrics"] = {}
        return out
    if groups is not None and len(groups) != n:
        raise ValueError(f"got {len(groups)} groups for {n} predictions")
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {k: [] for k in HEADLINE}
    for idx in _cluster_draws(list(groups) if groups else None, n, n_boot, rng):
        r = evaluate_predictions(y[idx], p[idx], task, labels, positive=positive)
        for k in HEADLINE:
            v = r.get(k)
            if isinstance(v, float) and math.isfinite(v):
                values[k].append(v)
    out["metrics"] = _percentile_intervals(values, n_boot)
    return out


def ece_if_calibrated(
    confidence: Any, n_bins: int = 15, draws: int = 2000, seed: int = 0
) -> dict[str, float]:
    """ECE a perfectly calibrated model with these confidences would show on this many images.

    Each draw marks every prediction right with exactly its stated probability and measures
    the ECE as :func:`engine.metrics.expected_calibration_error` does. Returns the mean and
    the 95 % range of those draws; a measured ECE inside the range is no evidence of
    miscalibration at this sample size.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    if conf.size == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    idx = bin_index(conf, n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    correct = rng.random((draws, conf.size)) < conf[None, :]
    corr_sum = np.stack([np.bincount(idx, weights=c, minlength=n_bins) for c in correct])
    eces = np.abs(conf_sum[None, :] - corr_sum).sum(1) / conf.size
    return {
        "mean": float(eces.mean()),
        "low": float(np.quantile(eces, 0.025)),
        "high": float(np.quantile(eces, 0.975)),
        "n": int(conf.size),
    }


def referral_gain_interval(
    y_true: Any,
    probs: Any,
    uncertainty: Any,
    task: str,
    negative_index: int | Sequence[int] | None = None,
    groups: Sequence[str] | None = None,
    fraction: float = 0.3,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """The lift in the kept images' metrics when the ``fraction`` least certain are referred.

    Returns ``{"fraction", "referred", "resampled", "n_boot", "gain": {metric: value},
    "interval": {metric: [low, high]}}`` for ``accuracy`` and ``balanced_accuracy`` (the
    kept images' figure minus all images' figure; the interval is the percentile bootstrap
    95 % interval, whole patients resampled when groups are given). Single-label tasks only.
    """
    from .referral import referral_curve

    keys = ("accuracy", "balanced_accuracy")
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    u = np.asarray(uncertainty, dtype=np.float64)
    n = int(y.shape[0])
    if task == "multilabel":
        raise ValueError("referral_gain_interval covers single-label tasks")
    if groups is not None and len(groups) != n:
        raise ValueError(f"got {len(groups)} groups for {n} predictions")

    def gains(idx: np.ndarray) -> tuple[dict[str, float | None], float]:
        c = referral_curve(
            y[idx], p[idx], u[idx], task, negative_index=negative_index, fractions=[0.0, fraction]
        )
        out: dict[str, float | None] = {}
        for k in keys:
            a, b = c[0].get(k), c[1].get(k)
            out[k] = None if a is None or b is None else float(b) - float(a)
        return out, float(c[1]["referred"])

    gain, referred = gains(np.arange(n))
    values: dict[str, list[float]] = {k: [] for k in keys}
    rng = np.random.default_rng(seed)
    for idx in _cluster_draws(list(groups) if groups else None, n, n_boot, rng):
        g, _ = gains(idx)
        for k in keys:
            v = g[k]
            if v is not None and math.isfinite(v):
                values[k].append(v)
    return {
        "fraction": fraction,
        "referred": referred,
        "resampled": _resampled(groups, n),
        "n_boot": n_boot,
        "gain": gain,
        "interval": _percentile_intervals(values, n_boot),
    }


def referral_gain_words(result: dict[str, Any]) -> str:
    """One line reading :func:`referral_gain_interval`'s result, in points of each metric."""
    names = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}
    parts = []
    for key, name in names.items():
        value = (result.get("gain") or {}).get(key)
        if value is None:
            continue
        text = f"{name} by {100 * value:+.1f} points"
        span = (result.get("interval") or {}).get(key)
        if span:
            text += f" (95% interval {100 * span[0]:+.1f} to {100 * span[1]:+.1f})"
        parts.append(text)
    if not parts:
        return "Referring the least certain images: no gain measurable on these images."
    return (
        f"Referring the {100 * result['referred']:.0f}% least certain changes the kept images' "
        + ", ".join(parts)
        + f"; bootstrap over the {result.get('resampled', 'images')}"
        + f", {result.get('n_boot', N_BOOT)} resamples."
    )


def describe_interval(name: str, value: float, interval: Sequence[float] | None) -> str:
    """``"qwk 0.586 (95% CI 0.33-0.79)"``, or the bare figure without an interval."""
    if interval is None:
        return f"{name} {value:.3f}"
    return f"{name} {value:.3f} (95% CI {interval[0]:.2f}-{interval[1]:.2f})"
