"""Referring the most uncertain images raises the quality of what the model keeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.referral import DEFAULT_FRACTIONS, choose_referral, referral_curve


def informative_case(seed: int, n: int = 1000, c: int = 5):
    """DR-grade-like data where errors sit on the high-uncertainty images."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    uncertainty = rng.random(n)
    wrong = rng.random(n) < uncertainty**2  # the more uncertain, the more often wrong
    pred = np.where(wrong, (y + rng.integers(1, c, n)) % c, y)
    probs = np.full((n, c), 0.1 / (c - 1))
    probs[np.arange(n), pred] = 0.9
    return y, probs, uncertainty, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_of_kept_images_rises_as_uncertain_ones_are_referred(seed):
    y, probs, u, _ = informative_case(seed)
    curve = referral_curve(y, probs, u, "multiclass")
    acc = [pt["accuracy"] for pt in curve]
    assert all(b >= a for a, b in zip(acc, acc[1:], strict=False))
    assert acc[-1] > acc[0] + 0.2


def test_kept_counts_and_thresholds_follow_the_fractions():
    y, probs, u, pred = informative_case(0, n=200)
    curve = referral_curve(y, probs, u, "multiclass")
    assert [pt["referred"] for pt in curve] == pytest.approx(list(DEFAULT_FRACTIONS))
    for pt in curve:
        assert pt["n_referred"] + pt["n_kept"] == 200
        assert pt["n_referred"] == round(pt["referred"] * 200)
        if pt["threshold"] is None:
            assert pt["n_referred"] == 0
            kept = np.ones(200, dtype=bool)
        else:
            assert int(np.sum(u >= pt["threshold"])) == pt["n_referred"]
            kept = u < pt["threshold"]
        assert pt["accuracy"] == pytest.approx(np.mean(pred[kept] == y[kept]))
    json.dumps(curve, allow_nan=False)


def test_tied_uncertainties_are_referred_together():
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.6, 0.4]])
    u = np.array([0.1, 0.2, 0.5, 0.5])
    point = referral_curve(y, probs, u, "binary", fractions=[0.25])[0]
    assert point["threshold"] == 0.5
    assert point["n_referred"] == 2  # both tied images, not an arbitrary one of them
    assert point["sensitivity"] == 1.0 and point["specificity"] == 1.0


def test_screening_sensitivity_counts_any_disease_grade_as_abnormal():
    # True grades and predictions of four kept images; grade 0 is "no disease".
    y = np.array([0, 2, 3, 1])
    pred = np.array([0, 1, 0, 0])  # grade 2 -> 1 is still "abnormal found"
    probs = np.eye(4)[pred] * 0.96 + 0.01
    curve = referral_curve(y, probs, np.zeros(4), "ordinal", fractions=[0.0])
    assert curve[0]["sensitivity"] == pytest.approx(1 / 3)
    assert curve[0]["specificity"] == pytest.approx(1.0)
    assert curve[0]["accuracy"] == pytest.approx(0.25)


def test_multiclass_without_a_normal_class_has_no_sensitivity():
    y, probs, u, _ = informative_case(1, n=100, c=4)
    curve = referral_curve(y, probs, u, "multiclass")
    assert all(pt["sensitivity"] is None and pt["specificity"] is None for pt in curve)
    with_normal = referral_curve(y, probs, u, "multiclass", negative_index=3)
    assert all(pt["sensitivity"] is not None for pt in with_normal)


def test_multilabel_referral_uses_any_finding_as_abnormal():
    rng = np.random.default_rng(0)
    probs = rng.random((300, 3))
    y = (rng.random((300, 3)) < probs).astype(int)
    u = 0.5 - np.abs(probs - 0.5).min(axis=1)  # closest-to-0.5 label is most uncertain
    curve = referral_curve(y, probs, u, "multilabel", negative_index=2)
    assert curve[-1]["accuracy"] > curve[0]["accuracy"]
    assert all(pt["sensitivity"] is not None for pt in curve)


def _curve():
    return [
        {"referred": 0.0, "accuracy": 0.70, "sensitivity": 0.80},
        {"referred": 0.1, "accuracy": 0.80, "sensitivity": 0.88},
        {"referred": 0.2, "accuracy": 0.88, "sensitivity": 0.92},
        {"referred": 0.4, "accuracy": 0.95, "sensitivity": 0.97},
    ]


def test_choose_referral_picks_the_smallest_workload_meeting_all_targets():
    chosen = choose_referral(_curve(), target_sensitivity=0.9, target_accuracy=0.85)
    assert chosen["referred"] == 0.2 and chosen["met"] is True
    assert "20%" in chosen["reason"]
    assert choose_referral(_curve(), target_accuracy=0.79)["referred"] == 0.1


def test_choose_referral_respects_the_workload_cap():
    chosen = choose_referral(_curve(), target_accuracy=0.9, max_referred=0.25)
    assert chosen["met"] is False
    assert chosen["referred"] == 0.2  # best reachable under the cap
    assert "no referral level" in chosen["reason"] and "cap" in chosen["reason"]
    within = choose_referral(_curve(), target_accuracy=0.9, max_referred=0.5)
    assert within["met"] is True and within["referred"] == 0.4


def test_choose_referral_without_targets_refers_the_fewest():
    assert choose_referral(_curve())["referred"] == 0.0


def test_choose_referral_does_not_modify_the_curve():
    curve = _curve()
    choose_referral(curve, target_accuracy=0.9)
    assert curve == _curve()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_sensitivity": 1.5}, "target_sensitivity"),
        ({"max_referred": -0.1}, "max_referred"),
    ],
)
def test_choose_referral_rejects_impossible_targets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_referral(_curve(), **kwargs)


def test_referral_curve_rejects_mismatched_uncertainty():
    y, probs, u, _ = informative_case(0, n=50)
    with pytest.raises(ValueError, match="one value per image"):
        referral_curve(y, probs, u[:10], "multiclass")
    with pytest.raises(ValueError, match="fractions"):
        referral_curve(y, probs, u, "multiclass", fractions=[1.0])


def test_referral_curve_png_is_written(tmp_path):
    from engine.plots import plot_referral_curve

    y, probs, u, _ = informative_case(0, n=300)
    curve = referral_curve(y, probs, u, "ordinal")
    out = plot_referral_curve(curve, tmp_path / "referral.png", title="DR grading")
    assert out.stat().st_size > 5000
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert 500 <= im.width <= 1200 and 300 <= im.height <= 1000
