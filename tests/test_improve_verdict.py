"""The one acceptance rule for an improved model: enough audit images, a paired test, no more
missed disease, no flood of unfamiliar images; and the CLI follows it.

Results are built by hand from per-image answers, so each rule is checked on its own."""

from __future__ import annotations

import json

import pytest

from tests.improve_results import DR, LABELS, NORMAL, fixes, result

# --------------------------------------------------------------------------- statistics


def test_mcnemar_exact_matches_the_binomial_tail():
    from engine.improve.verdict import mcnemar_exact

    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)  # 2 * 0.5**6
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(8, 1) == pytest.approx(2 * (1 + 9) / 512)


def test_bootstrap_interval_is_paired_deterministic_and_covers_the_change():
    from engine.improve.verdict import balanced_accuracy_ci

    r = fixes(20, 20, fixed=8)["audit_answers"]
    lo, hi = balanced_accuracy_ci(r["truth"], r["before"], r["after"])
    assert (lo, hi) == balanced_accuracy_ci(r["truth"], r["before"], r["after"])
    assert 0 < lo < 0.2 < hi  # the true change is +0.2
    same = balanced_accuracy_ci(r["truth"], r["before"], r["before"])
    assert same == (0.0, 0.0)


# --------------------------------------------------------------------------- the rule


def test_too_few_audit_images_cannot_be_judged_and_says_so():
    from engine.improve import MIN_AUDIT_IMAGES, judge

    v = judge(fixes(4, 3, fixed=4))  # 7 audit images: the case that was called "better"
    assert v.decision == "cannot-judge" and not v.recommend
    assert "only 7 images" in v.headline and f"at least {MIN_AUDIT_IMAGES}" in v.headline


def test_an_audit_set_without_enough_disease_cannot_judge_missed_disease():
    from engine.improve import judge

    v = judge(fixes(3, 30, fixed=3))
    assert v.decision == "cannot-judge" and not v.recommend
    assert "3 images with a finding" in v.headline


def test_better_is_said_only_when_the_paired_evidence_supports_it():
    from engine.improve import judge

    weak = judge(fixes(20, 20, fixed=5))  # +12.5 points, but 5 vs 0 changes: p = 0.06
    assert weak.decision == "no-difference" and not weak.recommend
    assert weak.headline.startswith("= ") and "p = 0.062" in weak.headline
    strong = judge(fixes(20, 20, fixed=8))  # 8 vs 0: p = 0.008, interval above zero
    assert strong.decision == "better" and strong.recommend and strong.direction == 1
    assert strong.evidence["ci_low"] > 0 and strong.evidence["p_value"] < 0.05
    assert "95 % CI" in strong.headline and "8 now right, 0 now wrong" in strong.headline


def test_a_clearly_worse_model_is_called_worse():
    from engine.improve import judge

    truth = [DR] * 20 + [NORMAL] * 20
    v = judge(result(truth, truth, [NORMAL] * 9 + [DR] * 11 + [NORMAL] * 20))
    assert v.decision == "worse" and not v.recommend and v.direction == -1


def test_more_missed_disease_withholds_the_recommendation():
    from engine.improve import judge

    # balanced accuracy rises clearly, but one more DR image is now called normal
    truth = [DR] * 20 + [NORMAL] * 20
    before = [DR] * 20 + [DR] * 12 + [NORMAL] * 8
    after = [DR] * 19 + [NORMAL] + [NORMAL] * 20
    v = judge(result(truth, before, after))
    assert v.decision == "better" and not v.recommend and v.direction == -1
    assert any("misses more disease" in r and "it calls 1 'normal'" in r for r in v.reasons)
    assert v.evidence["missed_before"] == 0 and v.evidence["missed_after"] == 1


def test_a_version_that_finds_far_more_workspace_images_unfamiliar_is_not_recommended():
    from engine.improve import judge

    ok = fixes(20, 20, fixed=8)
    assert judge({**ok, "ood_check": {"n": 60, "before": 2, "after": 4}}).recommend
    flood = judge({**ok, "ood_check": {"n": 60, "before": 2, "after": 28}})
    assert flood.decision == "better" and not flood.recommend
    assert any("28 of 60 workspace images unfamiliar" in r for r in flood.reasons)
    # the check stands even when the audit set is too small to judge accuracy
    small = judge({**fixes(4, 3, fixed=4), "ood_check": {"n": 60, "before": 2, "after": 28}})
    assert small.decision == "cannot-judge" and small.direction == -1 and small.reasons


def test_fewer_reviews_is_not_called_a_gain_when_disease_is_missed():
    from engine.improve import judge

    truth = [DR] * 20 + [NORMAL] * 20
    before = truth
    after = [NORMAL] * 3 + [DR] * 17 + [NORMAL] * 20
    v = judge(result(truth, before, after, review_workload=(0.857, 0.143)))
    assert "85.7 % → 14.3 %" in v.workload
    assert "not a gain" in v.workload and "(0 → 3)" in v.workload
    assert not v.recommend


def test_a_tiny_rise_the_old_cli_accepted_is_now_refused_with_a_reason():
    from engine.cli_improve import decide_acceptance

    # the old --accept-if-better took any rise in balanced accuracy: here 1 image of 40
    truth = [DR] * 20 + [NORMAL] * 20
    before = [DR] * 15 + [NORMAL] * 5 + [NORMAL] * 20
    after = [DR] * 16 + [NORMAL] * 4 + [NORMAL] * 20
    r = result(truth, before, after)
    assert r["after"]["balanced_accuracy"] > r["before"]["balanced_accuracy"]
    accepted, reason = decide_acceptance(r)
    assert not accepted
    assert reason.startswith("not accepted: = Not enough evidence that the new model is better")


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """``eyetriage improve`` with the child process replaced by a given result."""
    import engine.improve as improve

    accepted: list[str] = []

    def use(res: dict) -> list[str]:
        class FakeProcess:
            def __init__(self, *args, **kwargs) -> None:
                pass

            def start(self) -> None:
                pass

            def wait(self) -> dict:
                return res

        monkeypatch.setattr(improve, "ImproveProcess", FakeProcess)
        return accepted

    status = {"active_model": "a" * 64, "enough": True, "new_reviews": 60}
    status.update(train_n=45, audit_n=15)
    monkeypatch.setattr(improve, "review_status", lambda *a, **k: status)
    monkeypatch.setattr(improve, "accept", lambda ws, h, actor: accepted.append(h))
    return use


def test_accept_if_better_refuses_a_small_audit_set_with_the_reason(fake_run, tmp_path, capsys):
    from engine.cli import main

    accepted = fake_run(fixes(4, 3, fixed=4))
    code = main(["improve", str(tmp_path), "--accept-if-better", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and not accepted and out["accepted"] is False
    assert "only 7 images" in out["reason"]


def test_accept_if_better_accepts_only_a_recommended_version(fake_run, tmp_path, capsys):
    from engine.cli import main

    res = fixes(20, 20, fixed=8)
    accepted = fake_run(res)
    assert main(["improve", str(tmp_path), "--accept-if-better", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert accepted == [res["model"]]
    lines = text.splitlines()
    missed = next(i for i, ln in enumerate(lines) if "missed disease" in ln)
    assert missed < next(i for i, ln in enumerate(lines) if "balanced_accuracy" in ln)
    assert "8 -> 0 of 20 images with a finding" in lines[missed]
    assert lines[-1].startswith("accepted: ▲ The new model is better")


# --------------------------------------------------------------------------- workload


def test_review_workload_counts_what_screening_sends_to_a_person():
    import numpy as np

    from engine.modelfile import ModelSpec
    from engine.triage import TriagePolicy, review_workload, triage_states

    spec = ModelSpec("resnet10t", "binary", LABELS, negative_label="normal")
    spec.ood = {"threshold": 2.0}
    probs = np.array([[0.02, 0.98]] * 4 + [[0.6, 0.4]])  # four confident normals, one unsure
    quality = [None, {"ok": False, "reasons": ["too dark"]}, None, None, None]
    ood = [0.5, 0.5, 3.0, 0.5, 0.5]
    states = triage_states(spec, probs, ood, quality, TriagePolicy())
    assert states == [
        "auto-cleared",
        "ungradable",
        "out-of-distribution",
        "auto-cleared",
        "needs-review",
    ]
    # the old estimate (top probability below 0.85 only) would have said 1 in 5
    assert review_workload(states) == pytest.approx(3 / 5)


def test_a_fall_whose_interval_lies_below_zero_is_called_worse_without_a_significant_test():
    """Worse needs less evidence than better: a fall with its whole interval below zero is
    called worse even when too few answers changed for the paired test (4 now wrong, 0 now
    right: p = 0.125), instead of 'not enough evidence that it is worse'."""
    from engine.improve import judge

    truth = [DR] * 5 + [NORMAL] * 26
    before = list(truth)
    after = [NORMAL] * 4 + [DR] + [NORMAL] * 26  # four of the five DR images now missed
    v = judge(result(truth, before, after))
    assert v.evidence["p_value"] == pytest.approx(0.125) and v.evidence["ci_high"] < 0
    assert v.decision == "worse" and not v.recommend and v.direction == -1
    assert v.headline.startswith("▼ The new model is worse")
    # the same changes the other way round are still not enough to be called better
    up = judge(result(truth, after, before))
    assert up.decision == "no-difference" and not up.recommend
