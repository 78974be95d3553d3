"""Map each screened image to exactly one triage state, with the reason in words.

:func:`decide` is the rule. :func:`read_answer` and :func:`triage_answer` turn one image's
probabilities (plus its conformal set, OOD score and quality) into the inputs of that rule;
screening uses them image by image, and :func:`review_workload` uses them to say what share
of a set of images screening would send to a person, so the compare dialog of an improved
model shows the workload screening would really produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from .modelfile import ModelSpec

# the quality gate's reason for a picture with content but no fundus field of view (kept
# here so that triage needs no image code; engine.quality uses the same text)
NOT_FUNDUS_REASON = "no fundus field of view"

TRIAGE_STATES = ("auto-cleared", "needs-review", "ungradable", "out-of-distribution", "error")
POLICIES = ("threshold", "conformal")
DEFAULT_THRESHOLD = 0.85  # calibrated top probability an image needs to be auto-cleared


@dataclass
class TriagePolicy:
    """How an image earns "auto-cleared".

    ``threshold``: the calibrated top probability must reach ``threshold`` (the classic rule).
    ``conformal``: the conformal prediction set must hold a single label.
    ``refer_findings``: any answer other than the normal class always goes to review.
    """

    kind: str = "threshold"
    threshold: float = DEFAULT_THRESHOLD
    refer_findings: bool = False
    use_quality: bool = True
    use_ood: bool = True

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"unknown triage policy {self.kind!r}; choose {' or '.join(POLICIES)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} must lie between 0 and 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TriagePolicy:
        """Build from stored settings; unknown keys (from a newer program) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


def decide(
    *,
    error: str | None,
    label: str | None,
    display: str | None,
    confidence: float | None,
    conformal_set: list[str] | None,
    set_display: list[str] | None,
    quality_ok: bool | None,
    quality_reasons: list[str] | None,
    ood: bool,
    ood_score: float | None,
    ood_threshold: float | None,
    ood_reason: str | None = None,
    quality_cautions: list[str] | None = None,
    negative_label: str | None,
    multilabel_uncertain: list[str] | None,
    policy: TriagePolicy,
) -> tuple[str, str]:
    """(state, reason). Order: error, ungradable, out-of-distribution, then the policy.

    An image the quality gate rejects is ``ungradable`` even when it is also unlike the
    training data, and the reason names both. A gradable image with a quality caution
    (slightly soft focus) is never auto-cleared. The one exception is a picture that is not
    the kind of image the model reads at all (no fundus field of view for a fundus model,
    a fundus photograph for an OCT model) and that the model also finds unfamiliar: that
    is ``out-of-distribution``, again naming both.
    """
    if error:
        return "error", error
    unfamiliar = policy.use_ood and ood
    unfamiliar_words = ""
    if unfamiliar:
        if ood_reason:
            unfamiliar_words = ood_reason
        elif ood_score is not None and ood_threshold is not None:
            unfamiliar_words = (
                f"unlike the training data (score {ood_score:.2f} above {ood_threshold:.2f})"
            )
        else:
            unfamiliar_words = "unlike the training data"
    if policy.use_quality and quality_ok is False:
        reasons = list(quality_reasons or ["image quality too low"])
        wrong_kind = bool(ood_reason) or any(r.startswith(NOT_FUNDUS_REASON) for r in reasons)
        if unfamiliar and wrong_kind:
            if ood_reason:  # the other modality's quality checks say nothing useful here
                return "out-of-distribution", unfamiliar_words
            return "out-of-distribution", "; ".join([unfamiliar_words, *reasons])
        if unfamiliar:
            reasons.append("also " + unfamiliar_words)
        return "ungradable", "; ".join(reasons)
    if unfamiliar:
        return "out-of-distribution", unfamiliar_words
    reasons: list[str] = []
    if multilabel_uncertain:
        reasons.append("unsure about " + ", ".join(multilabel_uncertain))
    elif policy.kind == "threshold":
        if confidence is not None and confidence < policy.threshold:
            reasons.append(f"confidence {confidence:.2f} below {policy.threshold:.2f}")
    elif policy.kind == "conformal":
        if conformal_set is not None and len(conformal_set) > 1:
            shown = ", ".join(set_display or conformal_set)
            reasons.append(f"set {{{shown}}} has {len(conformal_set)} labels")
        elif conformal_set is None and confidence is not None and confidence < policy.threshold:
            reasons.append(
                f"confidence {confidence:.2f} below {policy.threshold:.2f} (model has no conformal calibration)"
            )
    if policy.refer_findings and label is not None and negative_label and label != negative_label:
        reasons.append(f"finding '{display or label}' is always reviewed")
    if policy.use_quality and quality_cautions and not reasons:
        reasons.extend(quality_cautions)  # gradable, but not clean enough to clear unseen
    if reasons:
        return "needs-review", "; ".join(reasons)
    if policy.kind == "conformal" and conformal_set is not None:
        return "auto-cleared", f"set {{{display or label}}} has a single label"
    if confidence is not None:
        return "auto-cleared", f"confidence {confidence:.2f} at or above {policy.threshold:.2f}"
    return "auto-cleared", "confident on every label"


@dataclass
class Answer:
    """The model's answer for one image, read from its probabilities."""

    label: str
    display: str
    confidence: float
    uncertain: list[str] | None = None  # multi-label: labels the model is unsure about


def read_answer(spec: ModelSpec, probs: np.ndarray, threshold: float) -> Answer:
    """Top label (the median grade for ordinal models) and its probability.

    Multi-label: every label at or above its threshold; confidence is the least certain
    label's ``max(p, 1 - p)``, and labels below ``threshold`` that way are "uncertain".
    """
    import numpy as np

    labels = spec.labels
    if spec.task == "multilabel":
        thresholds = spec.thresholds.get("labels", {}) if spec.thresholds else {}
        p = {lab: round(float(v), 6) for lab, v in zip(labels, probs, strict=True)}
        present = [lab for lab in labels if p[lab] >= thresholds.get(lab, 0.5)]
        return Answer(
            label=";".join(present) if present else (spec.negative_label or "none"),
            display=", ".join(spec.display(x) for x in present) or "no finding",
            confidence=float(np.min(np.maximum(probs, 1 - probs))),
            uncertain=[spec.display(lab) for lab, v in p.items() if max(v, 1 - v) < threshold],
        )
    top = int(np.argmax(probs))
    if spec.task == "ordinal":  # median grade of the predicted distribution
        top = min(int(np.searchsorted(np.cumsum(probs), 0.5)), len(labels) - 1)
    return Answer(labels[top], spec.display(labels[top]), float(probs[top]))


def triage_answer(
    spec: ModelSpec,
    answer: Answer,
    *,
    conformal_set: list[str] | None,
    ood_score: float | None,
    quality: dict[str, Any] | None,
    policy: TriagePolicy,
    ood_reason: str | None = None,
) -> tuple[bool, str, str]:
    """(is out of distribution, state, reason) of one answered image under ``policy``.

    ``ood_reason`` marks the image unfamiliar whatever its score (e.g. a fundus photograph
    given to an OCT model).
    """
    ood_thr = spec.ood.get("threshold") if spec.ood else None
    is_ood = ood_score is not None and ood_thr is not None and ood_score > ood_thr
    if ood_reason:
        is_ood = True
    q_ok = None if quality is None else bool(quality.get("ok", True))
    cset = conformal_set
    state, reason = decide(
        error=None,
        label=answer.label,
        display=answer.display,
        confidence=answer.confidence,
        conformal_set=cset,
        set_display=[spec.display(c) for c in cset] if cset else None,
        quality_ok=q_ok,
        quality_reasons=None if quality is None else quality.get("reasons"),
        quality_cautions=None if quality is None else quality.get("cautions"),
        ood=is_ood,
        ood_score=ood_score,
        ood_threshold=ood_thr,
        ood_reason=ood_reason,
        negative_label=spec.negative_label,
        multilabel_uncertain=answer.uncertain if spec.task == "multilabel" else None,
        policy=policy,
    )
    return is_ood, state, reason


def triage_states(
    spec: ModelSpec,
    probs: np.ndarray,
    ood_scores: Sequence[float] | None,
    quality: Sequence[dict[str, Any] | None] | None,
    policy: TriagePolicy,
) -> list[str]:
    """The triage state screening would give each image (calibrated ``probs``, (N, C)).

    ``ood_scores`` come from the same model's OOD statistics (None: the model has none);
    ``quality`` is each image's stored quality report (None: not assessed).
    """
    from .conformal import ConformalCalibrator, prediction_sets

    n = len(probs)
    sets = None
    if spec.conformal and spec.task != "multilabel" and n:
        sets = prediction_sets(probs, ConformalCalibrator.from_dict(spec.conformal))
    out = []
    for i in range(n):
        answer = read_answer(spec, probs[i], policy.threshold)
        cset = None if sets is None else [spec.labels[c] for c in sets[i].nonzero()[0]]
        _, state, _ = triage_answer(
            spec,
            answer,
            conformal_set=cset,
            ood_score=None if ood_scores is None else float(ood_scores[i]),
            quality=None if quality is None else quality[i],
            policy=policy,
        )
        out.append(state)
    return out


def review_workload(states: Sequence[str]) -> float | None:
    """Share of images that go to a person: every state but ``auto-cleared`` (None if empty)."""
    if not states:
        return None
    return sum(s != "auto-cleared" for s in states) / len(states)
