"""Map each screened image to exactly one triage state, with the reason in words.

Triage is disease-aware: ``auto-cleared`` only for a confident "no finding" (the model's
negative labels, :mod:`engine.findings`); a confident finding is ``refer`` ("Refer:
glaucoma"); anything uncertain is ``needs-review``; ``ungradable``,
``out-of-distribution`` and ``error`` keep their meaning. Every state but
``auto-cleared`` needs a person (:data:`HUMAN_STATES`).

:func:`decide` is the rule. :func:`read_answer` and :func:`triage_answer` turn one image's
probabilities (plus its conformal set, OOD score and quality) into the inputs of that rule;
screening uses them image by image, and :func:`review_workload` uses them to say what share
of a set of images screening would send to a person, so the compare dialog of an improved
model shows the workload screening would really produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .findings import findings_in, negative_labels

if TYPE_CHECKING:
    import numpy as np

    from .modelfile import ModelSpec

# the quality gate's reason for a picture with content but no fundus field of view (kept
# here so that triage needs no image code; engine.quality uses the same text)
NOT_FUNDUS_REASON = "no fundus field of view"

# Most to least urgent.
TRIAGE_STATES = (
    "refer",
    "needs-review",
    "ungradable",
    "out-of-distribution",
    "error",
    "auto-cleared",
)
HUMAN_STATES = tuple(s for s in TRIAGE_STATES if s != "auto-cleared")
POLICIES = ("threshold", "conformal")
DEFAULT_THRESHOLD = 0.85  # calibrated top probability for an answer to count as confident


@dataclass
class TriagePolicy:
    """When the model's answer counts as confident, and what a confident finding becomes.

    ``threshold``: the calibrated top probability must reach ``threshold`` (the classic rule).
    ``conformal``: the conformal prediction set must hold a single label.
    A confident "no finding" is auto-cleared; a confident finding is referred.
    ``refer_findings``: every finding, however confident, goes to needs-review (a reader
    looks before it is referred); ``review_findings``: the same for the named labels only
    (e.g. "glaucoma is always reviewed").
    """

    kind: str = "threshold"
    threshold: float = DEFAULT_THRESHOLD
    refer_findings: bool = False
    use_quality: bool = True
    use_ood: bool = True
    review_findings: list[str] = field(default_factory=list)

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
    findings: Sequence[str] | None,
    finding_display: Sequence[str] | None = None,
    multilabel_uncertain: list[str] | None,
    policy: TriagePolicy,
    clear_blocked: str | None = None,
) -> tuple[str, str]:
    """(state, reason). Order: error, ungradable, out-of-distribution, then the policy.

    An image the quality gate rejects is ``ungradable`` even when it is also unlike the
    training data, and the reason names both. A gradable image with a quality caution
    (slightly soft focus) is never auto-cleared (a confident finding is still referred,
    the caution named). The one exception is a picture that is not
    the kind of image the model reads at all (no fundus field of view for a fundus model,
    a fundus photograph for an OCT model) and that the model also finds unfamiliar: that
    is ``out-of-distribution``, again naming both.

    ``findings`` are the answer's labels that are findings (none: a "no finding" answer);
    ``finding_display`` their display names, in the same order. ``clear_blocked`` says why
    this model may not auto-clear at all (:mod:`engine.clearing`): a confident "no finding"
    then goes to ``needs-review`` with that reason.
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
            reasons.append(f"confidence {_versus(confidence, policy.threshold, 'below')}")
    elif policy.kind == "conformal":
        if conformal_set is not None and len(conformal_set) > 1:
            shown = ", ".join(set_display or conformal_set)
            reasons.append(f"set {{{shown}}} has {len(conformal_set)} labels")
        elif conformal_set is None and confidence is not None and confidence < policy.threshold:
            reasons.append(
                f"confidence {_versus(confidence, policy.threshold, 'below')}"
                " (model has no conformal calibration)"
            )
    found = list(findings or [])
    shown = list(finding_display or found)
    reviewed = [
        shown[i]
        for i, lab in enumerate(found)
        if policy.refer_findings or lab in policy.review_findings
    ]
    if reviewed:
        reasons.append(f"finding {', '.join(reviewed)} is always reviewed")
    cautions = list(quality_cautions or []) if policy.use_quality else []
    if cautions and not reasons and not found:
        reasons.extend(cautions)  # gradable, but not clean enough to clear unseen
    if reasons:
        return "needs-review", "; ".join(reasons)
    if policy.kind == "conformal" and conformal_set is not None:
        why = f"set {{{display or label}}} has a single label"
    elif confidence is not None:
        why = f"confidence {_versus(confidence, policy.threshold, 'at or above')}"
    else:
        why = "confident on every label"
    if found:
        caution = "".join(f"; {c}" for c in cautions)
        return "refer", f"confident finding: {', '.join(shown)} ({why}){caution}"
    if clear_blocked:
        return "needs-review", f"confident no finding ({why}), but {clear_blocked}"
    return "auto-cleared", f"confident no finding ({why})"


def _versus(value: float, threshold: float, relation: str) -> str:
    """``"0.849 below 0.85"``: as many decimals as it takes for the two numbers to differ
    on screen (``"0.85 below 0.85"`` reads as a contradiction)."""
    for digits in range(2, 7):
        a, b = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if a != b:
            return f"{a} {relation} {b}"
    return f"{value:.2f} {relation} {threshold:.2f}"


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
        negatives = negative_labels(spec)
        thresholds = spec.thresholds.get("labels", {}) if spec.thresholds else {}
        p = {lab: round(float(v), 6) for lab, v in zip(labels, probs, strict=True)}
        present = [lab for lab in labels if p[lab] >= thresholds.get(lab, 0.5)]
        return Answer(
            label=";".join(present) if present else (negatives[0] if negatives else "none"),
            display=", ".join(spec.display(x) for x in present) or "no finding",
            confidence=float(np.min(np.maximum(probs, 1 - probs))),
            uncertain=[spec.display(lab) for lab, v in p.items() if max(v, 1 - v) < threshold],
        )
    top = int(np.argmax(probs))
    if spec.task == "ordinal":  # median grade: the one rule every report uses
        from .metrics import ordinal_median

        top = int(ordinal_median(np.asarray(probs, dtype=np.float64)[None, :])[0])
    return Answer(labels[top], spec.display(labels[top]), float(probs[top]))


def median_grade_spread(
    labels: list[str], probs: dict[str, float], label: str
) -> tuple[float, float] | None:
    """Why an ordinal answer is not the most probable single grade, or None when it is.

    :func:`read_answer` gives an ordinal model's median grade, which can have a lower
    probability than another grade (0.15 / 0.42 / 0.43 answers the middle grade). Returns
    the probability of ``label`` or a milder grade and of ``label`` or a more severe grade
    (both at least 0.5 for a median), for saying so in words; ``labels`` mild to severe.
    """
    if label not in labels:
        return None
    p = [float(probs.get(x, 0.0)) for x in labels]
    k = labels.index(label)
    if max(p) <= p[k] + 1e-9:
        return None
    return sum(p[: k + 1]), sum(p[k:])


def triage_answer(
    spec: ModelSpec,
    answer: Answer,
    *,
    conformal_set: list[str] | None,
    ood_score: float | None,
    quality: dict[str, Any] | None,
    policy: TriagePolicy,
    ood_reason: str | None = None,
    clear_blocked: str | None = None,
) -> tuple[bool, str, str]:
    """(is out of distribution, state, reason) of one answered image under ``policy``.

    ``ood_reason`` marks the image unfamiliar whatever its score (e.g. a fundus photograph
    given to an OCT model); ``clear_blocked`` why the model may not auto-clear
    (:func:`engine.clearing.clearing_block`).
    """
    ood_thr = spec.ood.get("threshold") if spec.ood else None
    is_ood = ood_score is not None and ood_thr is not None and ood_score > ood_thr
    if ood_reason:
        is_ood = True
    q_ok = None if quality is None else bool(quality.get("ok", True))
    cset = conformal_set
    found = findings_in(spec, answer.label.split(";")) if answer.label else []
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
        findings=found,
        finding_display=[spec.display(x) for x in found],
        multilabel_uncertain=answer.uncertain if spec.task == "multilabel" else None,
        policy=policy,
        clear_blocked=clear_blocked,
    )
    return is_ood, state, reason


def triage_states(
    spec: ModelSpec,
    probs: np.ndarray,
    ood_scores: Sequence[float] | None,
    quality: Sequence[dict[str, Any] | None] | None,
    policy: TriagePolicy,
    clear_blocked: str | None = None,
) -> list[str]:
    """The triage state screening would give each image (calibrated ``probs``, (N, C)).

    ``ood_scores`` come from the same model's OOD statistics (None: the model has none);
    ``quality`` is each image's stored quality report (None: not assessed);
    ``clear_blocked`` as for :func:`triage_answer`.
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
            clear_blocked=clear_blocked,
        )
        out.append(state)
    return out


def review_workload(states: Sequence[str]) -> float | None:
    """Share of images that go to a person: every state but ``auto-cleared`` (None if empty).

    Referred images count: a referral is read by a person too.
    """
    if not states:
        return None
    return sum(s in HUMAN_STATES for s in states) / len(states)


def needs_human(state: str | None) -> bool:
    """Whether an image in ``state`` goes to a person (every state but ``auto-cleared``)."""
    return state in HUMAN_STATES
