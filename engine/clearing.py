"""Whether a model may auto-clear at all: the one rule, from its own held-out evidence.

"Auto-cleared" tells a clinic that no person needs to look. A calibrated confidence of
0.85 on "no finding" is not that promise: a model that is confident and wrong clears
diseased eyes. So a model auto-clears only when it has shown, on labelled images it was
not trained on, that what it would clear is (nearly) free of disease:

- When a model is calibrated (``train``, ``calibrate``, ``improve``), its calibrated
  probabilities and true labels on those images are kept in the model file
  (:func:`clearing_record`, ``ModelSpec.clearing``).
- Before screening, :func:`clearing_block` replays screening's own triage rule
  (:func:`engine.triage.triage_states`, same policy) on them and counts the images with a
  finding that it would have auto-cleared. Auto-clear stays on only when the one-sided 95 %
  upper bound (Clopper-Pearson) of that share is at most :data:`MAX_CLEARED_WITH_FINDING`.
  With no such image cleared this needs at least 29 images with a finding; with fewer the
  bound cannot be met, whatever the model, and the screen says so.
- Otherwise every confident "no finding" goes to ``needs-review`` with the reason in words
  (how many diseased images it cleared, of how many, and the bound).

The check uses the images' calibrated probabilities only (no quality gate, no OOD), so it
measures the model's answer; the gate and OOD can only send more images to a person.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .findings import negative_labels

if TYPE_CHECKING:
    from .modelfile import ModelSpec
    from .triage import TriagePolicy

MAX_CLEARED_WITH_FINDING = 0.10  # upper 95 % bound on diseased images a model may clear
CONFIDENCE = 0.95
RECORD_DECIMALS = 5


def clearing_record(spec: ModelSpec, probs: np.ndarray, y: np.ndarray, source: str) -> dict | None:
    """What :func:`clearing_block` needs, from calibrated ``probs`` (N, C) and labels ``y``.

    ``source`` says which images these are, in words ("validation images", ...). None for a
    model with no "no finding" label (it never clears) or no images.
    """
    if len(y) == 0 or not can_clear(spec):
        return None
    p = np.round(np.asarray(probs, dtype=np.float64), RECORD_DECIMALS)
    ys = np.asarray(y)
    return {
        "source": source,
        "n": int(len(ys)),
        "probs": p.tolist(),
        "y": ys.astype(int).tolist(),  # class indices; multi-label: one 0/1 row per image
    }


def can_clear(spec: ModelSpec) -> bool:
    """Whether triage can auto-clear anything this model says: a single-label model needs a
    "no finding" label; a multi-label model clears an image with no label present."""
    return spec.task == "multilabel" or bool(negative_labels(spec))


def _with_finding(spec: ModelSpec, y: np.ndarray) -> np.ndarray:
    """Which held-out images truly have a finding."""
    negatives = set(negative_labels(spec))
    finding = np.array([lab not in negatives for lab in spec.labels])
    if spec.task == "multilabel":
        return (y.reshape(len(y), -1)[:, finding] > 0).any(axis=1)
    return finding[y.ravel()]


def upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a share seen ``k`` times in ``n``."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence
    if k == 0:
        return 1.0 - alpha ** (1.0 / n)

    def cdf(p: float) -> float:  # P(X <= k) for X ~ Binomial(n, p)
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    lo, hi = k / n, 1.0
    for _ in range(60):  # cdf falls as p rises: find p with cdf(p) = alpha
        mid = (lo + hi) / 2
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class ClearingCheck:
    """The outcome of the check for one model under one triage policy."""

    allowed: bool
    reason: str  # why auto-clear is off ("" when allowed)
    n: int = 0  # held-out images replayed
    n_with_finding: int = 0
    cleared_with_finding: int = 0
    cleared: int = 0  # all images it would clear
    upper: float | None = None  # 95 % upper bound of cleared_with_finding / n_with_finding


def check_clearing(spec: ModelSpec, policy: TriagePolicy) -> ClearingCheck:
    """Replay the triage rule on the model's held-out record (see the module text)."""
    from .triage import triage_states

    if not can_clear(spec):
        return ClearingCheck(True, "")  # it never clears: nothing to check
    rec = spec.clearing
    if not rec or not rec.get("y"):
        return ClearingCheck(
            False,
            "auto-clear is off for this model: it carries no check of what it clears on "
            "labelled images it was not trained on (calibrate it with labelled images)",
        )
    probs = np.asarray(rec["probs"], dtype=np.float64)
    y = np.asarray(rec["y"], dtype=int)
    states = triage_states(spec, probs, None, None, policy)
    diseased = _with_finding(spec, y)
    cleared = np.array([s == "auto-cleared" for s in states])
    n_d = int(diseased.sum())
    k = int((cleared & diseased).sum())
    ub = upper_bound(k, n_d)
    source = rec.get("source", "held-out images")
    base = dict(
        n=len(y), n_with_finding=n_d, cleared_with_finding=k, cleared=int(cleared.sum()), upper=ub
    )
    if n_d == 0:
        return ClearingCheck(
            False,
            f"auto-clear is off for this model: its {len(y)} {source} include no image with "
            "a finding, so nothing shows it would not clear disease",
            **base,
        )
    if ub > MAX_CLEARED_WITH_FINDING:
        seen = f"it cleared {k} of {n_d} {source} with a finding"
        return ClearingCheck(
            False,
            f"auto-clear is off for this model: {seen}, so up to {100 * ub:.0f} % of "
            f"images with a finding could be cleared (95 % bound; auto-clear needs at most "
            f"{100 * MAX_CLEARED_WITH_FINDING:.0f} %)",
            **base,
        )
    return ClearingCheck(True, "", **base)


def clearing_block(specs: Sequence[ModelSpec], policy: TriagePolicy) -> str | None:
    """Why these models (one, or an ensemble: every member must pass) may not auto-clear
    under ``policy``; None when they may."""
    for i, spec in enumerate(specs):
        c = check_clearing(spec, policy)
        if not c.allowed:
            if len(specs) > 1:
                return c.reason.replace("this model", f"ensemble member {i + 1}", 1)
            return c.reason
    return None
