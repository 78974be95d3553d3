"""A model auto-clears only when its held-out record shows it does not clear disease."""

from __future__ import annotations

import numpy as np
import pytest

from engine.clearing import (
    MAX_CLEARED_WITH_FINDING,
    check_clearing,
    clearing_block,
    clearing_record,
    upper_bound,
)
from engine.modelfile import ModelSpec
from engine.triage import TriagePolicy, read_answer, triage_answer


def spec_with(probs, y, task="multiclass", labels=("no_dr", "npdr", "pdr")) -> ModelSpec:
    spec = ModelSpec(arch="resnet10t", task=task, labels=list(labels), negative_labels=[labels[0]])
    spec.clearing = clearing_record(spec, np.asarray(probs), np.asarray(y), "validation images")
    return spec


SAFE = [[0.95, 0.03, 0.02]] * 40 + [[0.05, 0.9, 0.05]] * 20 + [[0.05, 0.05, 0.9]] * 20
SAFE_Y = [0] * 40 + [1] * 20 + [2] * 20


def test_upper_bound_matches_the_exact_binomial_bound():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 29), (0, 17), (1, 40), (8, 17), (3, 100)]:
        exact = 1.0 if k == n else scipy_stats.beta.ppf(0.95, k + 1, n - k)
        assert upper_bound(k, n) == pytest.approx(exact, abs=1e-6)
    assert upper_bound(0, 0) == 1.0


def test_a_model_that_cleared_no_diseased_eye_among_enough_may_clear():
    spec = spec_with(SAFE, SAFE_Y)
    c = check_clearing(spec, TriagePolicy())
    assert c.allowed and c.reason == ""
    assert (c.n, c.n_with_finding, c.cleared_with_finding, c.cleared) == (80, 40, 0, 40)
    assert c.upper <= MAX_CLEARED_WITH_FINDING


def test_a_model_that_clears_diseased_eyes_may_not():
    # 8 of 17 eyes with retinopathy answered "no DR" with confidence 0.9: it would clear them
    probs = [[0.95, 0.03, 0.02]] * 39 + [[0.9, 0.05, 0.05]] * 8 + [[0.1, 0.8, 0.1]] * 9
    y = [0] * 39 + [1] * 8 + [2] * 9
    spec = spec_with(probs, y)
    c = check_clearing(spec, TriagePolicy())
    assert not c.allowed
    assert (c.n_with_finding, c.cleared_with_finding) == (17, 8)
    assert "it cleared 8 of 17 validation images with a finding" in c.reason
    # screening keeps the model's answer but sends it to a person, saying why
    blocked = clearing_block([spec], TriagePolicy())
    answer = read_answer(spec, np.array([0.97, 0.02, 0.01]), 0.85)
    _, state, reason = triage_answer(
        spec, answer, conformal_set=None, ood_score=None, quality=None,
        policy=TriagePolicy(), clear_blocked=blocked,
    )  # fmt: skip
    assert state == "needs-review"
    assert reason.startswith("confident no finding (confidence 0.97 at or above 0.85), but ")
    assert "auto-clear is off for this model" in reason


def test_too_few_diseased_eyes_cannot_show_safety():
    # none cleared, but 10 eyes with a finding bound the miss rate only at 26 %
    probs = [[0.95, 0.03, 0.02]] * 30 + [[0.05, 0.9, 0.05]] * 10
    spec = spec_with(probs, [0] * 30 + [1] * 10)
    c = check_clearing(spec, TriagePolicy())
    assert not c.allowed and c.cleared_with_finding == 0
    assert "up to 26 %" in c.reason


def test_a_stricter_policy_can_pass_where_the_default_fails():
    # the diseased eyes it calls "no DR" are answered at 0.80: a 0.85 threshold keeps them
    probs = [[0.95, 0.03, 0.02]] * 40 + [[0.80, 0.15, 0.05]] * 5 + [[0.05, 0.9, 0.05]] * 35
    y = [0] * 40 + [1] * 40
    spec = spec_with(probs, y)
    assert check_clearing(spec, TriagePolicy(threshold=0.85)).allowed
    lax = check_clearing(spec, TriagePolicy(threshold=0.75))
    assert not lax.allowed and lax.cleared_with_finding == 5


def test_a_model_without_a_record_does_not_clear():
    spec = ModelSpec(arch="resnet10t", task="binary", labels=["normal", "glaucoma"])
    spec.negative_labels = ["normal"]
    c = check_clearing(spec, TriagePolicy())
    assert not c.allowed and "carries no check" in c.reason


def test_a_model_that_never_clears_needs_no_check():
    spec = ModelSpec(arch="resnet10t", task="multiclass", labels=["a", "b", "c"])
    assert spec.negative_labels == []
    assert check_clearing(spec, TriagePolicy()).allowed
    assert clearing_record(spec, np.eye(3), np.arange(3), "validation images") is None


def test_every_member_of_an_ensemble_must_pass():
    good = spec_with(SAFE, SAFE_Y)
    bad = ModelSpec(arch="resnet10t", task="multiclass", labels=["no_dr", "npdr", "pdr"])
    bad.negative_labels = ["no_dr"]
    assert clearing_block([good], TriagePolicy()) is None
    reason = clearing_block([good, bad], TriagePolicy())
    assert reason and "ensemble member 2" in reason


def test_multilabel_models_are_checked_on_their_finding_labels():
    labels = ("normal", "dr", "amd")
    ok_probs = [[0.99, 0.01, 0.01]] * 40 + [[0.01, 0.99, 0.01]] * 40
    ok_y = [[1, 0, 0]] * 40 + [[0, 1, 0]] * 40
    spec = spec_with(ok_probs, ok_y, task="multilabel", labels=labels)
    assert check_clearing(spec, TriagePolicy()).allowed
    # half the AMD eyes look clean to it: it would clear them
    bad_probs = ok_probs + [[0.99, 0.01, 0.01]] * 20
    bad_y = ok_y + [[0, 0, 1]] * 20
    spec = spec_with(bad_probs, bad_y, task="multilabel", labels=labels)
    c = check_clearing(spec, TriagePolicy())
    assert not c.allowed and c.cleared_with_finding == 20


def test_the_record_survives_the_model_file(tmp_path):
    import torch

    from engine.modelfile import load_model_file, save_model_file

    spec = spec_with(SAFE, SAFE_Y)
    path = tmp_path / "m.safetensors"
    save_model_file(path, spec, {"w": torch.zeros(1)})
    back, _, _ = load_model_file(path)
    assert back.clearing == spec.clearing
    assert check_clearing(back, TriagePolicy()).allowed
