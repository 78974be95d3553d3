"""Referral curve: send the most uncertain images to a physician, measure the rest.

If uncertainty is informative, referring the most uncertain images first raises the
accuracy of the images the model keeps. The curve shows that trade-off (workload vs
quality) and :func:`choose_referral` picks the review threshold from it.

Images are referred by a threshold rule, exactly as in deployment: every image whose
uncertainty is at or above ``threshold`` goes to a physician. For a requested fraction f
the threshold is the uncertainty of the ``round(f * N)``-th most uncertain image, so with
tied uncertainties slightly more than f may be referred; ``referred`` reports the actual
fraction. At fraction 0 nothing is referred and ``threshold`` is None.

Sensitivity and specificity are for "disease found vs no finding" screening: every class
except the ``negative_index`` class(es) (see :mod:`engine.findings`) is a finding (binary
and ordinal default to class 0 as "no finding"; multiclass without ``negative_index``
reports None); multilabel calls an image abnormal if any label other than the negatives is
present (predicted at probability >= 0.5).

The curve refers only the uncertain images; with disease-aware triage a confident finding
is referred as well. ``disease_found`` is that whole system's sensitivity: the share of
images with a finding that reach a person (uncertain, or confidently called a finding),
and ``n_missed`` counts images with a finding that would be auto-cleared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.metrics import balanced_accuracy, check_task, predicted_labels

DEFAULT_FRACTIONS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _ratio(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def _kept_metrics(
    t: np.ndarray,
    yp: np.ndarray,
    abnormal_true: np.ndarray | None,
    abnormal_pred: np.ndarray | None,
    n_classes: int,
    multilabel: bool,
) -> dict[str, float | None]:
    if t.shape[0] == 0:
        return {
            "accuracy": None,
            "balanced_accuracy": None,
            "sensitivity": None,
            "specificity": None,
        }
    if multilabel:
        accuracy = float(np.mean(np.all(t == yp, axis=1)))
        per_label = [balanced_accuracy(t[:, j], yp[:, j], 2) for j in range(t.shape[1])]
        bal = float(np.mean(per_label))
    else:
        accuracy = float(np.mean(t == yp))
        bal = balanced_accuracy(t, yp, n_classes)
    sens = spec = None
    if abnormal_true is not None and abnormal_pred is not None:
        tp = int(np.sum(abnormal_true & abnormal_pred))
        fn = int(np.sum(abnormal_true & ~abnormal_pred))
        tn = int(np.sum(~abnormal_true & ~abnormal_pred))
        fp = int(np.sum(~abnormal_true & abnormal_pred))
        sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": accuracy,
        "balanced_accuracy": None if math.isnan(bal) else bal,
        "sensitivity": sens,
        "specificity": spec,
    }


def _negatives(negative_index: int | Sequence[int] | None, n_classes: int) -> list[int] | None:
    if negative_index is None:
        return None
    neg = (
        [int(negative_index)]
        if isinstance(negative_index, int | np.integer)
        else list(negative_index)
    )
    for i in neg:
        if not 0 <= i < n_classes:
            raise ValueError(f"negative_index {i} is not a class index (0..{n_classes - 1})")
    return [int(i) for i in neg]


def _abnormal(
    t: np.ndarray,
    yp: np.ndarray,
    task: str,
    negative_index: int | Sequence[int] | None,
    n_classes: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    neg = _negatives(negative_index, n_classes)
    if task == "multilabel":
        keep = np.ones(n_classes, dtype=bool)
        keep[neg or []] = False
        return t[:, keep].any(axis=1), yp[:, keep].any(axis=1)
    if not neg and task in ("binary", "ordinal"):
        neg = [0]  # binary: class 1 is the finding; ordinal: grade 0 is normal
    if not neg:
        return None, None
    return ~np.isin(t, neg), ~np.isin(yp, neg)


def referral_curve(
    y_true: Any,
    probs: Any,
    uncertainty: Any,
    task: str,
    negative_index: int | Sequence[int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> list[dict]:
    """Metrics of the kept images when the most uncertain fractions are referred.

    Each point has ``referred`` (actual fraction), ``n_referred``, ``n_kept``,
    ``threshold`` and the kept images' ``accuracy``, ``balanced_accuracy``,
    ``sensitivity`` and ``specificity`` (None when undefined); when findings are defined
    also ``n_refer`` (kept but called a finding), ``n_auto_cleared``, ``n_missed`` (a
    finding auto-cleared) and ``disease_found`` (share of findings that reach a person).
    """
    check_task(task)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be a 2-D (N, C) array, got shape {p.shape}")
    n, n_classes = p.shape
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.shape != (n,):
        raise ValueError(f"uncertainty must have one value per image ({n}), got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise ValueError("uncertainty contains NaN or infinite values")
    t = np.asarray(y_true)
    if task == "multilabel":
        if t.shape != p.shape:
            raise ValueError(f"multilabel y_true must have shape {p.shape}, got {t.shape}")
        t = t.astype(bool)
        yp = predicted_labels(p, task).astype(bool)
    else:
        if t.shape != (n,):
            raise ValueError(f"y_true must have one class index per image ({n}), got {t.shape}")
        if n and (t.min() < 0 or t.max() >= n_classes):
            raise ValueError(f"y_true must hold class indices in 0..{n_classes - 1}")
        t = t.astype(np.int64)
        yp = predicted_labels(p, task)
    fr = [float(f) for f in fractions]
    if not fr or any(not 0.0 <= f < 1.0 for f in fr):
        raise ValueError("fractions must be a non-empty list of values in [0, 1)")
    ab_true, ab_pred = _abnormal(t, yp, task, negative_index, n_classes)

    desc = np.sort(u)[::-1]
    curve = []
    for f in sorted(set(fr)):
        k = int(math.floor(f * n + 0.5))
        if k == 0:
            threshold = None
            referred = np.zeros(n, dtype=bool)
        else:
            threshold = float(desc[k - 1])
            referred = u >= threshold
        kept = ~referred
        metrics = _kept_metrics(
            t[kept],
            yp[kept],
            None if ab_true is None else ab_true[kept],
            None if ab_pred is None else ab_pred[kept],
            n_classes,
            task == "multilabel",
        )
        n_ref = int(referred.sum())
        point = {
            "referred": n_ref / n if n else 0.0,
            "n_referred": n_ref,
            "n_kept": n - n_ref,
            "threshold": threshold,
            **metrics,
        }
        if ab_true is not None and ab_pred is not None:
            # disease-aware triage: a kept image called a finding is referred too
            cleared = kept & ~ab_pred
            n_disease = int(ab_true.sum())
            n_missed = int(np.sum(cleared & ab_true))
            point["n_refer"] = int(np.sum(kept & ab_pred))
            point["n_auto_cleared"] = int(cleared.sum())
            point["n_missed"] = n_missed
            point["disease_found"] = _ratio(n_disease - n_missed, n_disease)
        curve.append(point)
    return curve


def _meets(point: dict, key: str, target: float | None) -> bool:
    if target is None:
        return True
    value = point.get(key)
    return value is not None and value >= target


def _shortfall(point: dict, targets: dict[str, float]) -> float:
    """Largest amount by which the point misses any target (0 when all are met)."""
    worst = 0.0
    for key, target in targets.items():
        value = point.get(key)
        worst = max(worst, target - (value if value is not None else -1.0))
    return worst


def choose_referral(
    curve: Sequence[dict],
    target_sensitivity: float | None = None,
    target_accuracy: float | None = None,
    max_referred: float | None = None,
) -> dict:
    """Pick the smallest referral workload that meets the targets, within the cap.

    Returns a copy of the chosen point plus ``met`` (bool) and ``reason`` (plain words).
    If no point within ``max_referred`` meets every target, the point that misses its
    targets by the least is returned (the smaller workload on ties) and the reason says
    the targets were not met.
    """
    for name, value in (
        ("target_sensitivity", target_sensitivity),
        ("target_accuracy", target_accuracy),
        ("max_referred", max_referred),
    ):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    if not curve:
        raise ValueError("the referral curve is empty")
    points = sorted(curve, key=lambda pt: pt["referred"])
    if max_referred is not None:
        points = [pt for pt in points if pt["referred"] <= max_referred + 1e-12]
        if not points:
            raise ValueError(f"no point of the curve refers at most {max_referred:.0%} of images")
    targets = {
        k: v
        for k, v in (("sensitivity", target_sensitivity), ("accuracy", target_accuracy))
        if v is not None
    }
    cap = "" if max_referred is None else f" within the {max_referred:.0%} workload cap"
    wanted = " and ".join(f"{k} >= {v:.1%}" for k, v in targets.items())

    if not targets:
        return {**points[0], "met": True, "reason": "no targets given: refer the fewest images"}
    for pt in points:
        if all(_meets(pt, key, target) for key, target in targets.items()):
            return {
                **pt,
                "met": True,
                "reason": f"smallest referral ({pt['referred']:.0%}) reaching {wanted}{cap}",
            }
    best = min(points, key=lambda pt: (_shortfall(pt, targets), pt["referred"]))
    return {
        **best,
        "met": False,
        "reason": (
            f"no referral level reaches {wanted}{cap}; best effort refers "
            f"{best['referred']:.0%} (closest to the targets)"
        ),
    }
