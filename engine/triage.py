"""Map each screened image to exactly one triage state, with the reason in words."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

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
    negative_label: str | None,
    multilabel_uncertain: list[str] | None,
    policy: TriagePolicy,
) -> tuple[str, str]:
    """(state, reason). Order: error, then out-of-distribution (unless a real fundus photo
    merely has poor quality), then ungradable, then the policy."""
    if error:
        return "error", error
    no_fov = any("field of view" in r for r in quality_reasons or [])
    if policy.use_ood and ood and (quality_ok is not False or no_fov or not policy.use_quality):
        # an image with no fundus field of view that the model also finds unfamiliar is most
        # likely not a fundus photograph at all (an OCT scan, a document): say so
        if ood_reason:
            return "out-of-distribution", ood_reason
        return "out-of-distribution", (
            f"unlike the training data (score {ood_score:.2f} above {ood_threshold:.2f})"
            + ("; no fundus field of view" if no_fov else "")
        )
    if policy.use_quality and quality_ok is False:
        return "ungradable", "; ".join(quality_reasons or ["image quality too low"])
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
    if reasons:
        return "needs-review", "; ".join(reasons)
    if policy.kind == "conformal" and conformal_set is not None:
        return "auto-cleared", f"set {{{display or label}}} has a single label"
    if confidence is not None:
        return "auto-cleared", f"confidence {confidence:.2f} at or above {policy.threshold:.2f}"
    return "auto-cleared", "confident on every label"
