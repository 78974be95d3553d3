"""Classification metrics for screening models, computed with numpy only.

Why not scikit-learn: the store-only CLI commands import this module and must start fast,
and the packaged app should not carry scikit-learn. The tests check every number here
against scikit-learn.

Conventions shared by the engine:

- ``probs`` is ``(N, C)``. For ``multiclass``, ``binary`` (C = 2, positive class = index 1)
  and ``ordinal`` the rows sum to 1; ``y_true`` is ``(N,)`` class indices.
- For ``multilabel`` the columns are independent sigmoid probabilities ``(N, L)`` and
  ``y_true`` is an ``(N, L)`` 0/1 matrix.
- Undefined values (e.g. the sensitivity of a class with no examples) are ``nan`` in
  numpy results and ``None`` in the JSON-ready dict of :func:`evaluate_predictions`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .jsonable import to_jsonable

TASKS = ("multiclass", "binary", "multilabel", "ordinal")
SINGLE_LABEL_TASKS = ("multiclass", "binary", "ordinal")
KAPPA_WEIGHTS = (None, "linear", "quadratic")


# ----------------------------------------------------------------------------- validation


def check_task(task: str) -> str:
    """Return ``task`` if it is one of :data:`TASKS`, else raise a ValueError naming it."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def _as_class_indices(values: Any, name: str, n_classes: int | None = None) -> np.ndarray:
    """Return a 1-D int array of class indices, rejecting floats with fractions, NaN, negatives."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iub":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must contain whole-number class indices")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} contains a negative class index ({arr.min()})")
    if n_classes is not None and arr.size and arr.max() >= n_classes:
        raise ValueError(
            f"{name} contains class index {arr.max()} but there are only {n_classes} classes"
        )
    return arr


def _as_1d_float(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_probs(probs: Any, name: str = "probs") -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, C) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if arr.size and (arr.min() < -1e-9 or arr.max() > 1 + 1e-9):
        raise ValueError(f"{name} must lie in [0, 1] (got values {arr.min():.3g}..{arr.max():.3g})")
    return arr


# ----------------------------------------------------------------------------- predictions


def ordinal_median(probs: np.ndarray) -> np.ndarray:
    """Median grade of each predicted grade distribution: first k with cumulative prob >= 0.5.

    The median minimises the expected absolute grade error, which suits ordinal grades
    (mild vs proliferative DR) better than the mode.
    """
    p = _as_probs(probs)
    cum = np.cumsum(p, axis=1)
    # A tiny tolerance so that rounding (e.g. 0.49999999) does not skip a grade.
    return np.argmax(cum >= 0.5 - 1e-12, axis=1).astype(np.int64)


def predicted_labels(probs: Any, task: str, thresholds: Any = None) -> np.ndarray:
    """Turn probabilities into hard predictions the way every engine report does.

    multiclass: argmax. binary: argmax, or ``p1 >= threshold`` if a threshold is given.
    ordinal: median grade (see :func:`ordinal_median`). multilabel: ``p >= threshold`` per
    label (default 0.5), an (N, L) 0/1 matrix.
    """
    check_task(task)
    p = _as_probs(probs)
    if task == "multilabel":
        t = _label_thresholds(thresholds, p.shape[1])
        return (p >= t[None, :]).astype(np.int64)
    if task == "ordinal":
        return ordinal_median(p)
    if task == "binary" and thresholds is not None:
        t = np.asarray(thresholds, dtype=np.float64).ravel()
        if t.size != 1:
            raise ValueError("binary task takes one threshold (on the positive-class probability)")
        return (p[:, 1] >= t[0]).astype(np.int64)
    return np.argmax(p, axis=1).astype(np.int64)


def _label_thresholds(thresholds: Any, n_labels: int) -> np.ndarray:
    if thresholds is None:
        return np.full(n_labels, 0.5)
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    if t.size == 1:
        t = np.full(n_labels, t[0])
    if t.size != n_labels:
        raise ValueError(f"got {t.size} thresholds for {n_labels} labels")
    if not np.all((t >= 0) & (t <= 1)):
        raise ValueError("thresholds must lie in [0, 1]")
    return t


# ----------------------------------------------------------------------------- basic metrics


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Count matrix with rows = true class and columns = predicted class."""
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    t = _as_class_indices(y_true, "y_true", n_classes)
    p = _as_class_indices(y_pred, "y_pred", n_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries but y_pred has {p.size}")
    flat = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with tied values sharing the average of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc_binary(y_true01: Any, scores: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (ties count half).

    Returns nan when only one class is present, because the AUC is then undefined.
    """
    y = np.asarray(y_true01)
    s = _as_1d_float(scores, "scores")
    if y.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"y_true01 shape {y.shape} does not match scores shape {s.shape}")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true01 must contain only 0 and 1")
    pos = y.astype(bool)
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def cohen_kappa(a: Any, b: Any, n_classes: int | None = None, weights: str | None = None) -> float:
    """Cohen's kappa between two raters, optionally linear or quadratic weighted.

    Quadratic weighting (QWK) is the usual measure of agreement for DR grades. Weights use
    the distance between class indices 0..n_classes-1; if ``n_classes`` is None it is
    ``max(a, b) + 1``. Returns nan when agreement by chance is already total (e.g. both
    raters always give the same single class).
    """
    if weights not in KAPPA_WEIGHTS:
        raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")
    x = _as_class_indices(a, "a")
    y = _as_class_indices(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a has {x.size} entries but b has {y.size}")
    if x.size == 0:
        return math.nan
    if n_classes is None:
        n_classes = int(max(x.max(), y.max())) + 1
    cm = confusion_matrix(x, y, n_classes).astype(np.float64)
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / cm.sum()
    idx = np.arange(n_classes)
    if weights is None:
        w = 1.0 - np.eye(n_classes)
    elif weights == "linear":
        w = np.abs(idx[:, None] - idx[None, :]).astype(np.float64)
    else:
        w = ((idx[:, None] - idx[None, :]) ** 2).astype(np.float64)
    denom = float((w * expected).sum())
    if denom == 0:
        return math.nan
    return float(1.0 - (w * cm).sum() / denom)


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins over [0, 1]; bin i holds (i/n, (i+1)/n], bin 0 also holds 0."""
    idx = np.ceil(confidence * n_bins).astype(np.int64) - 1
    return np.clip(idx, 0, n_bins - 1)


def _check_calibration_inputs(
    confidence: Any, correct: Any, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    conf = _as_1d_float(confidence, "confidence")
    corr = np.asarray(correct, dtype=np.float64)
    if corr.shape != conf.shape:
        raise ValueError(f"correct shape {corr.shape} does not match confidence {conf.shape}")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidence must lie in [0, 1]")
    if corr.size and not np.all((corr == 0) | (corr == 1)):
        raise ValueError("correct must contain only 0/1 (or False/True)")
    return conf, corr


def reliability_bins(confidence: Any, correct: Any, n_bins: int = 15) -> list[dict]:
    """Per-bin stated confidence vs observed accuracy, for reliability diagrams.

    Every bin is returned (empty ones have count 0 and ``None`` confidence/accuracy) so that
    diagrams before and after calibration line up.
    """
    conf, corr = _check_calibration_inputs(confidence, correct, n_bins)
    idx = bin_index(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(idx, weights=corr, minlength=n_bins)
    out = []
    for i in range(n_bins):
        c = int(counts[i])
        out.append(
            {
                "lo": i / n_bins,
                "hi": (i + 1) / n_bins,
                "count": c,
                "confidence": float(conf_sum[i] / c) if c else None,
                "accuracy": float(corr_sum[i] / c) if c else None,
            }
        )
    return out


def expected_calibration_error(confidence: Any, correct: Any, n_bins: int = 15) -> float:
    """Count-weighted mean gap between stated confidence and accuracy over equal-width bins.

    nan for empty input.
    """
    conf, corr = _check_calibration_inputs(confidence, correct, n_bins)
    if conf.size == 0:
        return math.nan
    idx = bin_index(conf, n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(idx, weights=corr, minlength=n_bins)
    return float(np.abs(conf_sum - corr_sum).sum() / conf.size)


# ----------------------------------------------------------------------------- reports


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def _binary_counts(t: np.ndarray, p: np.ndarray) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) for boolean truth and prediction vectors."""
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    tn = int(np.sum(~t & ~p))
    return tp, fp, fn, tn


def _class_stats(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "support": tp + fn,
    }


def balanced_accuracy(y_true: Any, y_pred: Any, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (as scikit-learn defines it)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return math.nan
    return float(np.mean(np.diag(cm)[present] / support[present]))


def evaluate_predictions(
    y_true: Any,
    probs: Any,
    task: str,
    labels: Sequence[str],
    y_pred: Any = None,
    thresholds: Any = None,
    positive: str | None = None,
) -> dict:
    """Full evaluation report of a model's predictions, ready for JSON and the model file.

    ``positive`` (binary): the finding class that the top-level ``sensitivity``,
    ``specificity`` and ``auc`` are about (:func:`engine.findings.positive_label`); the
    second label when not given.

    Single-label tasks report accuracy, balanced accuracy, per-class sensitivity,
    specificity, precision, F1 and support, AUC (binary: positive class; multiclass and
    ordinal: macro one-vs-rest over classes present in ``y_true``), top-label ECE (the
    probability of the predicted class vs whether it was right), the confusion matrix,
    macro F1 (over classes present in ``y_true`` or ``y_pred``), and for ordinal the
    quadratic weighted kappa. ``y_pred`` defaults to :func:`predicted_labels`.

    Multilabel reports subset accuracy as ``accuracy``, balanced accuracy averaged over
    labels, ``per_label`` (also under ``per_class``) with F1/sensitivity/specificity/AUC,
    macro and micro F1, ECE of all label probabilities against the 0/1 truth, and one
    2x2 confusion matrix ``[[tn, fp], [fn, tp]]`` per label.
    """
    check_task(task)
    p = _as_probs(probs)
    labels = [str(x) for x in labels]
    if len(labels) != p.shape[1]:
        raise ValueError(f"got {len(labels)} label names for {p.shape[1]} probability columns")
    if len(set(labels)) != len(labels):
        raise ValueError("label names must be unique")
    if task == "multilabel":
        report = _evaluate_multilabel(y_true, p, labels, y_pred, thresholds)
    else:
        report = _evaluate_single_label(y_true, p, task, labels, y_pred, thresholds, positive)
    return to_jsonable(report)


def _evaluate_single_label(
    y_true: Any,
    p: np.ndarray,
    task: str,
    labels: list[str],
    y_pred: Any,
    thresholds: Any,
    positive: str | None = None,
) -> dict:
    n_classes = p.shape[1]
    if positive is not None and positive not in labels:
        raise ValueError(f"positive class {positive!r} is not one of the labels")
    pos = positive if positive is not None else labels[-1]
    if task == "binary" and n_classes != 2:
        raise ValueError(f"binary task needs 2 probability columns, got {n_classes}")
    if n_classes < 2:
        raise ValueError("a single-label task needs at least 2 classes")
    row_sums = p.sum(axis=1)
    if p.shape[0] and not np.allclose(row_sums, 1.0, atol=1e-3):
        raise ValueError(
            f"probs rows must sum to 1 for task {task!r} (found sums "
            f"{row_sums.min():.3g}..{row_sums.max():.3g}); use task='multilabel' for sigmoids"
        )
    t = _as_class_indices(y_true, "y_true", n_classes)
    if t.size != p.shape[0]:
        raise ValueError(f"y_true has {t.size} entries but probs has {p.shape[0]} rows")
    if y_pred is None:
        yp = predicted_labels(p, task, thresholds)
    else:
        yp = _as_class_indices(y_pred, "y_pred", n_classes)
        if yp.size != t.size:
            raise ValueError(f"y_pred has {yp.size} entries but y_true has {t.size}")
    n = int(t.size)
    cm = confusion_matrix(t, yp, n_classes)

    per_class: dict[str, dict] = {}
    f1s, aucs = [], []
    seen = np.zeros(n_classes, dtype=bool)
    seen[np.unique(np.r_[t, yp])] = True
    for k, name in enumerate(labels):
        stats = _class_stats(*_binary_counts(t == k, yp == k))
        stats["auc"] = roc_auc_binary((t == k).astype(int), p[:, k]) if n else math.nan
        per_class[name] = stats
        if seen[k]:
            f1s.append(stats["f1"])
        aucs.append(stats["auc"])

    if task == "binary":
        auc = per_class[pos]["auc"]
    else:
        auc = _nanmean(aucs)
    conf = p[np.arange(n), yp] if n else np.zeros(0)
    report: dict[str, Any] = {
        "task": task,
        "labels": labels,
        "n": n,
        "accuracy": float(np.mean(t == yp)) if n else math.nan,
        "balanced_accuracy": balanced_accuracy(t, yp, n_classes),
        "per_class": per_class,
        "auc": auc,
        "ece": expected_calibration_error(conf, (t == yp).astype(float)),
        "confusion_matrix": cm.tolist(),
        "f1_macro": _nanmean(f1s),
    }
    if task == "binary":
        report["positive_label"] = pos
        report["sensitivity"] = per_class[pos]["sensitivity"]
        report["specificity"] = per_class[pos]["specificity"]
    if task == "ordinal":
        report["qwk"] = cohen_kappa(t, yp, n_classes, weights="quadratic")
        report["mean_absolute_error"] = float(np.mean(np.abs(t - yp))) if n else math.nan
    return report


def _as_indicator(values: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != shape:
        raise ValueError(
            f"{name} must have shape {shape} (one 0/1 column per label), got {arr.shape}"
        )
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return arr.astype(bool)


def _evaluate_multilabel(
    y_true: Any, p: np.ndarray, labels: list[str], y_pred: Any, thresholds: Any
) -> dict:
    t = _as_indicator(y_true, "y_true", p.shape)
    if y_pred is None:
        yp = predicted_labels(p, "multilabel", thresholds).astype(bool)
    else:
        yp = _as_indicator(y_pred, "y_pred", p.shape)
    n = int(t.shape[0])
    per_label: dict[str, dict] = {}
    cms = []
    tot = np.zeros(3, dtype=np.int64)
    bal = []
    for j, name in enumerate(labels):
        tp, fp, fn, tn = _binary_counts(t[:, j], yp[:, j])
        tot += (tp, fp, fn)
        stats = _class_stats(tp, fp, fn, tn)
        stats["auc"] = roc_auc_binary(t[:, j].astype(int), p[:, j]) if n else math.nan
        per_label[name] = stats
        cms.append([[tn, fp], [fn, tp]])
        bal.append(_nanmean([stats["sensitivity"], stats["specificity"]]))
    tp, fp, fn = (int(v) for v in tot)
    return {
        "task": "multilabel",
        "labels": labels,
        "n": n,
        "accuracy": float(np.mean(np.all(t == yp, axis=1))) if n else math.nan,
        "balanced_accuracy": _nanmean(bal),
        "per_label": per_label,
        "per_class": per_label,
        "auc": _nanmean([s["auc"] for s in per_label.values()]),
        "ece": expected_calibration_error(p.ravel(), t.ravel().astype(float)),
        "confusion_matrix": cms,
        "f1_macro": _nanmean([s["f1"] for s in per_label.values()]),
        "f1_micro": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def proportion_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (95 % by default); ``(0, 1)`` if empty.

    Used wherever a rate from few images is shown, so its uncertainty is shown with it.
    """
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
