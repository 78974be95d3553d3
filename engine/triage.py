"""Map each screened image to exactly one triage state, with the reason in words."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# the quality gate's reason for a picture with content but no fundus field of view (kept
# here so that triage needs no image code; engine.quality uses the same text)
NOT_FUNDUS_REASON = "no fundus field of view"

TRIAGE_STATES = ("auto-cleared", "needs-review", "ungradable", "out-of-distribution", "error")
POLICIES = ("threshold", "conformal")


@dataclass
class TriagePolicy:
    """How an image earns "auto-cleared".

    ``threshold``: the calibrated top probability must reach ``threshold`` (the classic rule).
    ``conformal``: the conformal prediction set must hold a single label.
    ``refer_findings``: any answer other than the normal class always goes to review.
    """

    kind: str = "threshold"
    threshold: float = 0.85
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
