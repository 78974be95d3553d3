"""Triage precedence: ungradable beats out-of-distribution, and the reason names both."""

from __future__ import annotations

from engine.quality import REASONS
from engine.triage import TriagePolicy, decide


def _decide(**kw):
    args = dict(
        error=None,
        label="normal",
        display="normal",
        confidence=0.99,
        conformal_set=None,
        set_display=None,
        quality_ok=True,
        quality_reasons=[],
        ood=False,
        ood_score=1.0,
        ood_threshold=3.0,
        ood_reason=None,
        negative_label="normal",
        multilabel_uncertain=None,
        policy=TriagePolicy(),
    )
    args.update(kw)
    return decide(**args)


def test_ungradable_image_that_is_also_unfamiliar_is_ungradable_naming_both():
    state, reason = _decide(
        quality_ok=False, quality_reasons=[REASONS["blur"]], ood=True, ood_score=5.5
    )
    assert state == "ungradable"
    assert "out of focus" in reason
    assert "unlike the training data (score 5.50 above 3.00)" in reason


def test_black_image_is_ungradable_not_out_of_distribution():
    state, reason = _decide(quality_ok=False, quality_reasons=[REASONS["black"]], ood=True)
    assert state == "ungradable"
    assert reason.startswith("image is black")


def test_picture_without_a_fundus_field_of_view_that_the_model_finds_unfamiliar_is_ood():
    # an OCT scan or a document given to a fundus model: not a fundus photograph at all
    state, reason = _decide(quality_ok=False, quality_reasons=[REASONS["no_fov"]], ood=True)
    assert state == "out-of-distribution"
    assert "unlike the training data" in reason and "no fundus field of view" in reason


def test_picture_without_a_field_of_view_but_familiar_to_the_model_is_ungradable():
    state, reason = _decide(quality_ok=False, quality_reasons=[REASONS["no_fov"]], ood=False)
    assert state == "ungradable"
    assert "no fundus field of view" in reason


def test_fundus_photograph_given_to_an_oct_model_stays_out_of_distribution():
    why = "looks like a fundus photograph (circular field of view), not an OCT scan"
    state, reason = _decide(
        quality_ok=False,
        quality_reasons=[REASONS["oct_signal"]],
        ood=True,
        ood_score=None,
        ood_reason=why,
    )
    assert (state, reason) == ("out-of-distribution", why)


def test_unfamiliar_gradable_image_is_out_of_distribution():
    state, reason = _decide(ood=True, ood_score=4.0)
    assert state == "out-of-distribution"
    assert reason == "unlike the training data (score 4.00 above 3.00)"


def test_gate_switched_off_in_the_policy_lets_the_model_answer():
    policy = TriagePolicy(use_quality=False)
    state, _ = _decide(quality_ok=False, quality_reasons=[REASONS["blur"]], policy=policy)
    assert state == "auto-cleared"
    state, _ = _decide(quality_ok=False, quality_reasons=[REASONS["blur"]], ood=True, policy=policy)
    assert state == "out-of-distribution"


def test_poor_quality_never_auto_clears_a_confident_normal():
    state, reason = _decide(confidence=0.999, quality_ok=False, quality_reasons=[REASONS["haze"]])
    assert state == "ungradable"
    assert "hazy" in reason
