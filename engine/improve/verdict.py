"""Is the new model version better than the current one? The one rule that says so.

``eyetriage improve --accept-if-better`` accepts a version only when :func:`judge` recommends
it, and the desktop's compare dialog shows the same verdict and words. The rule:

1. **Enough audit images to judge.** Fewer than :data:`MIN_AUDIT_IMAGES` reviewed audit
   images (or, for a model with a "no finding" label, fewer than :data:`MIN_AUDIT_PER_GROUP`
   images with a finding or without one) and the verdict is "cannot judge".
2. **Better only with evidence.** Balanced accuracy must rise by at least
   :data:`MIN_RISE_PTS` points, the paired bootstrap 95 % confidence interval of that rise
   must lie above zero, and the exact McNemar test on the audit images whose answer changed
   (more now right than now wrong) must give p < :data:`SIGNIFICANCE`. "Worse" needs less:
   a fall of at least :data:`MIN_RISE_PTS` points with either the interval below zero or
   the test (more now wrong than now right) at p < :data:`SIGNIFICANCE`, because calling a
   worse model worse is the safe mistake (a fine-tune on 31 DR audit photographs fell by
   16.7 points, interval −31.8 to −4.5, and was called "not enough evidence that it is
   worse" for want of a fifth changed answer). Anything else is "not enough evidence"
   (``no-difference``).
3. **Nothing clinically worse.** Even a better version is not recommended when it misses
   more disease (more images with a finding called "no finding"), when accuracy, the share
   of disease found (sensitivity: a finding called any finding) or of "no finding" images
   cleared (specificity) drops by :data:`BIG_DROP_PTS` points or more, or when it flags
   far more of the workspace's images as unfamiliar than the current model
   (:data:`OOD_RISE_PTS` points and at least :data:`OOD_RISE_MIN_IMAGES` images more).

The review workload is reported with what it means: fewer images for a person is only a gain
when no more disease is missed. The inputs are the per-image audit answers an improvement
run records (``result["audit_answers"]``), its before/after metrics and its workspace
OOD check, so the verdict can be recomputed from a saved result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

MIN_AUDIT_IMAGES = 20
MIN_AUDIT_PER_GROUP = 5
MIN_RISE_PTS = 1.0
BIG_DROP_PTS = 5.0
SIGNIFICANCE = 0.05
CI_LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000
OOD_RISE_PTS = 5.0
OOD_RISE_MIN_IMAGES = 3


@dataclass
class Verdict:
    """The comparison in words and numbers.

    ``decision``: ``better``, ``worse``, ``no-difference`` or ``cannot-judge``.
    ``recommend``: accept the new version. ``direction``: +1 recommended, -1 worse or a
    clinical caution, 0 otherwise. ``reasons``: the cautions that withhold the
    recommendation, each a sentence. ``evidence``: the numbers behind it.
    """

    decision: str
    recommend: bool
    direction: int
    headline: str
    reasons: list[str] = field(default_factory=list)
    workload: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """Headline and cautions as one paragraph (the CLI's reason)."""
        return " ".join([self.headline, *self.reasons])


# --------------------------------------------------------------------------- statistics


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _balanced_accuracies(truth: Any, correct: Any, counts: Any) -> Any:
    """Balanced accuracy per bootstrap row: ``counts`` (B, N) resampling weights."""
    import numpy as np

    per_class = []
    for k in np.unique(truth):
        mask = truth == k
        support = counts[:, mask].sum(1)
        hits = counts[:, mask & correct].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class.append(np.where(support > 0, hits / np.maximum(support, 1), np.nan))
    return np.nanmean(np.stack(per_class), axis=0)


def balanced_accuracy_ci(
    truth: list[int],
    before: list[int],
    after: list[int],
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired bootstrap interval of the change in balanced accuracy (after - before).

    The audit images are resampled with replacement and both models are scored on the same
    resample, so the interval reflects how much the audit set itself could move the figure.
    """
    import numpy as np

    t = np.asarray(truth)
    n = len(t)
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    counts = np.zeros((samples, n), dtype=np.int32)
    np.add.at(counts, (np.repeat(np.arange(samples), n), idx.ravel()), 1)
    ok_b = np.asarray(before) == t
    ok_a = np.asarray(after) == t
    diff = _balanced_accuracies(t, ok_a, counts) - _balanced_accuracies(t, ok_b, counts)
    lo, hi = np.nanquantile(diff, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _balanced_accuracy(truth: list[int], pred: list[int]) -> float:
    ks = sorted(set(truth))
    recalls = []
    for k in ks:
        idx = [i for i, t in enumerate(truth) if t == k]
        recalls.append(sum(pred[i] == k for i in idx) / len(idx))
    return sum(recalls) / len(recalls) if recalls else math.nan


# --------------------------------------------------------------------------- wording


def _pct(v: float) -> str:
    return f"{v * 100:.1f} %"


def _pts(d: float) -> str:
    return f"{d * 100:+.1f} pts".replace("-", "−")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return None if math.isnan(v) else float(v)


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _label_words(label: str) -> str:
    return str(label).replace("_", " ")


def _negatives(answers: dict, n_labels: int) -> list[int]:
    """The "no finding" class indices of the audit answers (``negatives``, or the older
    single ``negative``)."""
    raw = answers.get("negatives")
    if raw is None:
        raw = [answers.get("negative")]
    return [i for i in raw if isinstance(i, int) and 0 <= i < n_labels]


# --------------------------------------------------------------------------- the rule


def judge(result: dict) -> Verdict:
    """The verdict on an improvement result (see the module docstring for the rule)."""
    answers = result.get("audit_answers") or {}
    truth = [int(v) for v in answers.get("truth") or []]
    before = [int(v) for v in answers.get("before") or []]
    after = [int(v) for v in answers.get("after") or []]
    labels = [str(v) for v in answers.get("labels") or []]
    negatives = _negatives(answers, len(labels))
    n = len(truth)
    evidence: dict[str, Any] = {"n": n, "min_audit_images": MIN_AUDIT_IMAGES}
    if not answers or len(before) != n or len(after) != n:
        return Verdict(
            "cannot-judge",
            False,
            0,
            "Cannot judge: this result does not hold the per-image audit answers needed to "
            "compare the two models.",
            evidence=evidence,
        )
    missed_b = missed_a = findings = None
    if negatives:
        neg = set(negatives)
        findings = sum(t not in neg for t in truth)
        missed_b = sum(t not in neg and p in neg for t, p in zip(truth, before, strict=True))
        missed_a = sum(t not in neg and p in neg for t, p in zip(truth, after, strict=True))
        cleared_b = sum(t in neg and p in neg for t, p in zip(truth, before, strict=True))
        cleared_a = sum(t in neg and p in neg for t, p in zip(truth, after, strict=True))
        no_findings = n - findings
        evidence.update(
            negative_label=" or ".join(labels[i] for i in negatives),
            negative_labels=[labels[i] for i in negatives],
            finding_labels=[lab for i, lab in enumerate(labels) if i not in neg],
            findings=findings,
            no_findings=no_findings,
            missed_before=missed_b,
            missed_after=missed_a,
            sensitivity_before=(findings - missed_b) / findings if findings else None,
            sensitivity_after=(findings - missed_a) / findings if findings else None,
            specificity_before=cleared_b / no_findings if no_findings else None,
            specificity_after=cleared_a / no_findings if no_findings else None,
        )
    workload = _workload_words(result, missed_b, missed_a, labels, negatives)
    ood = _ood_cautions(result, evidence)
    if n < MIN_AUDIT_IMAGES:
        return Verdict(
            "cannot-judge",
            False,
            -1 if ood else 0,
            f"Cannot judge: the audit set holds only {_images(n)}; at least "
            f"{MIN_AUDIT_IMAGES} reviewed images are needed to compare two models. Review more "
            "images, then improve again.",
            ood,
            workload,
            evidence,
        )
    if findings is not None and min(findings, n - findings) < MIN_AUDIT_PER_GROUP:
        neg_word = _label_words(" or ".join(labels[i] for i in negatives))
        return Verdict(
            "cannot-judge",
            False,
            -1 if ood else 0,
            f"Cannot judge: the audit set holds {_images(findings)} with a finding and "
            f"{n - findings} called '{neg_word}' by the reviewers; at least "
            f"{MIN_AUDIT_PER_GROUP} of each are needed to see whether disease is missed.",
            ood,
            workload,
            evidence,
        )

    fixed = sum(b != t and a == t for t, b, a in zip(truth, before, after, strict=True))
    broken = sum(b == t and a != t for t, b, a in zip(truth, before, after, strict=True))
    p = mcnemar_exact(fixed, broken)
    ba_b, ba_a = _balanced_accuracy(truth, before), _balanced_accuracy(truth, after)
    d = ba_a - ba_b
    lo, hi = balanced_accuracy_ci(truth, before, after)
    evidence.update(
        fixed=fixed,
        broken=broken,
        p_value=p,
        balanced_accuracy_before=ba_b,
        balanced_accuracy_after=ba_a,
        difference=d,
        ci_low=lo,
        ci_high=hi,
        ci_level=CI_LEVEL,
    )
    stats = (
        f"balanced accuracy {_pct(ba_b)} → {_pct(ba_a)} ({_pts(d)}, "
        f"{CI_LEVEL * 100:.0f} % CI {_pts(lo)[:-4]} to {_pts(hi)}); "
        f"{fixed} now right, {broken} now wrong (p = {p:.2g}, {n} audit image{'s' if n != 1 else ''})"
    )
    if d * 100 >= MIN_RISE_PTS and lo > 0 and p < SIGNIFICANCE and fixed > broken:
        decision, headline = "better", f"▲ The new model is better on the audit set: {stats}."
    elif d * 100 <= -MIN_RISE_PTS and (hi < 0 or (p < SIGNIFICANCE and broken > fixed)):
        decision = "worse"
        headline = (
            f"▼ The new model is worse on the audit set: {stats}. Keeping the current model "
            "is recommended."
        )
    else:
        decision = "no-difference"
        if d > 0:
            lead = "Not enough evidence that the new model is better on the audit set"
        elif d < 0:
            lead = "Not enough evidence that the new model is worse on the audit set"
        else:
            lead = "The two models score the same on the audit set"
        headline = f"= {lead}: {stats}."

    reasons = _cautions(result, labels, negatives, missed_b, missed_a, evidence) + ood
    recommend = decision == "better" and not reasons
    if recommend:
        direction = 1
    elif decision == "worse" or reasons:
        direction = -1
    else:
        direction = 0
    if decision == "better" and reasons:
        reasons.append("Keeping the current model is recommended until this is understood.")
    return Verdict(decision, recommend, direction, headline, reasons, workload, evidence)


def _cautions(
    result: dict,
    labels: list[str],
    negatives: list[int],
    missed_b: int | None,
    missed_a: int | None,
    evidence: dict,
) -> list[str]:
    """Clinical reasons not to switch found on the audit set, whatever balanced accuracy says."""
    reasons = []
    neg_word = (
        _label_words(" or ".join(labels[i] for i in negatives))
        if evidence.get("negative_label")
        else ""
    )
    if missed_b is not None and missed_a is not None and missed_a > missed_b:
        reasons.append(
            f"⚠ It misses more disease: of the {evidence.get('findings')} audit images in which "
            f"the reviewers found disease, it calls {missed_a} '{neg_word}', the current model "
            f"{missed_b}."
        )
    watched = [
        ("Accuracy", (result.get("before") or {}).get("accuracy"),
         (result.get("after") or {}).get("accuracy")),
        ("Sensitivity (disease found)", evidence.get("sensitivity_before"),
         evidence.get("sensitivity_after")),
        (f"Specificity ('{neg_word}' images cleared)", evidence.get("specificity_before"),
         evidence.get("specificity_after")),
    ]  # fmt: skip
    for word, b, a in watched:
        b, a = _num(b), _num(a)
        if b is not None and a is not None and (a - b) * 100 <= -BIG_DROP_PTS:
            reasons.append(f"⚠ {word} falls by {abs(a - b) * 100:.1f} points.")
    reasons += _ood_cautions(result, evidence)
    return reasons


def _ood_cautions(result: dict, evidence: dict) -> list[str]:
    """The workspace OOD check: does the new version find far more images unfamiliar?"""
    check = result.get("ood_check") or {}
    total = int(check.get("n") or 0)
    if not total:
        return []
    ob, oa = int(check.get("before") or 0), int(check.get("after") or 0)
    evidence.update(ood_n=total, ood_before=ob, ood_after=oa)
    if (oa - ob) / total * 100 < OOD_RISE_PTS or oa - ob < OOD_RISE_MIN_IMAGES:
        return []
    text = (
        f"⚠ It finds {oa} of {total} workspace images unfamiliar ({_pct(oa / total)}) against "
        f"{ob} ({_pct(ob / total)}) for the current model: those images would go to a person "
        "as out of distribution."
    )
    kept = ((result.get("calibration") or {}).get("ood") or {}).get("source") == "parent"
    if kept and result.get("strategy") in ("full", "lora"):
        text += (
            " Its features moved away from the statistics it inherited; with few reviews, "
            "'head only' fine-tuning keeps the features those statistics describe."
        )
    return [text]


def _workload_words(
    result: dict,
    missed_b: int | None,
    missed_a: int | None,
    labels: list[str],
    negatives: list[int],
) -> str:
    """The review workload change and what it means for the clinic."""
    b = _num((result.get("before") or {}).get("review_workload"))
    a = _num((result.get("after") or {}).get("review_workload"))
    if b is None or a is None:
        return ""
    head = (
        f"Review workload: {_pct(b)} → {_pct(a)} of the audit images would go to a person "
        "(screening's triage rules, same policy)."
    )
    if abs(a - b) < 0.0005:
        return head + " Unchanged."
    if a > b:
        return head + " More images would be read by a person: safer, but more reading time."
    if missed_b is not None and missed_a is not None:
        neg_word = _label_words(" or ".join(labels[i] for i in negatives))
        if missed_a > missed_b:
            return head + (
                f" Fewer reviews are not a gain here: the new model also calls more images with "
                f"a finding '{neg_word}' ({missed_b} → {missed_a})."
            )
        return head + (
            f" Fewer reviews save reading time only if no more disease is missed: findings "
            f"called '{neg_word}' {missed_b} → {missed_a}."
        )
    return head + (
        " Fewer reviews save reading time only if the model is not more often wrong on the "
        "images it no longer sends."
    )
