"""How uncertain a measured figure is: bootstrap intervals and the ECE of a calibrated model."""

from __future__ import annotations

import numpy as np
import pytest

from engine.intervals import describe_interval, ece_if_calibrated, metric_intervals
from engine.metrics import evaluate_predictions, expected_calibration_error

LABELS = ["0", "NPDR", "PDR"]


def _predictions(n: int, seed: int = 0, skill: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += skill
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_intervals_hold_the_measured_figure_and_narrow_with_more_images():
    y, p = _predictions(60)
    small = metric_intervals(y, p, "ordinal", LABELS)
    report = evaluate_predictions(y, p, "ordinal", LABELS)
    for k in ("accuracy", "balanced_accuracy", "auc", "qwk", "ece"):
        lo, hi = small["metrics"][k]
        assert lo <= report[k] <= hi, k
    y2, p2 = _predictions(600)
    big = metric_intervals(y2, p2, "ordinal", LABELS)
    width = lambda r, k: r["metrics"][k][1] - r["metrics"][k][0]  # noqa: E731
    assert width(big, "qwk") < 0.6 * width(small, "qwk")
    assert small["resampled"] == "images" and small["level"] == 0.95


def test_images_of_one_patient_are_resampled_together():
    # every image photographed twice (same patient, same answer): resampling images treats
    # the copies as independent and gives too narrow an interval; by patient it does not
    y, p = _predictions(40, seed=3)
    y2, p2 = np.repeat(y, 2), np.repeat(p, 2, axis=0)
    groups = [f"patient{i // 2}" for i in range(80)]
    by_image = metric_intervals(y2, p2, "ordinal", LABELS)
    by_patient = metric_intervals(y2, p2, "ordinal", LABELS, groups=groups)
    unique = metric_intervals(y, p, "ordinal", LABELS)
    assert by_patient["resampled"] == "patients" and by_image["resampled"] == "images"
    w = lambda r: r["metrics"]["accuracy"][1] - r["metrics"]["accuracy"][0]  # noqa: E731
    assert w(by_image) < 0.85 * w(by_patient)
    assert w(by_patient) == pytest.approx(w(unique), rel=0.25)


def test_binary_intervals_are_about_the_finding_class_and_deterministic():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    s = np.clip(y * 0.6 + rng.normal(0.2, 0.25, 80), 0.01, 0.99)
    p = np.c_[1 - s, s]
    a = metric_intervals(y, p, "binary", ["normal", "dme"], positive="dme")
    b = metric_intervals(y, p, "binary", ["normal", "dme"], positive="dme")
    assert a == b
    report = evaluate_predictions(y, p, "binary", ["normal", "dme"], positive="dme")
    for k in ("sensitivity", "specificity", "auc"):
        assert a["metrics"][k][0] <= report[k] <= a["metrics"][k][1]


def test_a_calibrated_models_ece_lies_in_the_floor_and_an_overconfident_one_above_it():
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.5, 1.0, 56)
    floor = ece_if_calibrated(conf)
    assert floor["n"] == 56 and 0 < floor["low"] < floor["mean"] < floor["high"]
    # a model that is right exactly as often as it says: inside the range most of the time
    inside = 0
    for i in range(200):
        right = np.random.default_rng(100 + i).random(56) < conf
        inside += floor["low"] <= expected_calibration_error(conf, right) <= floor["high"]
    assert inside >= 170
    # stating 95 % and right half the time is miscalibration even on 56 images
    sure = np.full(56, 0.95)
    wrong_half = np.arange(56) % 2 == 0
    assert expected_calibration_error(sure, wrong_half) > ece_if_calibrated(sure)["high"]
    # on many images the floor falls: an ECE of 0.03 is only measurable on large sets
    assert ece_if_calibrated(rng.uniform(0.5, 1.0, 5000))["high"] < 0.03 < floor["low"]


def test_describe_interval():
    assert describe_interval("qwk", 0.5858, [0.136, 0.844]) == "qwk 0.586 (95% CI 0.14-0.84)"
    assert describe_interval("auc", 0.9, None) == "auc 0.900"


def test_referral_gain_comes_with_an_interval_that_holds_it_and_says_when_it_is_noise():
    from engine.intervals import referral_gain_interval
    from engine.uncertainty_stats import entropy

    y, p = _predictions(400, seed=5, skill=1.5)
    informative = referral_gain_interval(y, p, entropy(p), "ordinal", negative_index=0)
    assert informative["fraction"] == 0.3 and 0.29 <= informative["referred"] <= 0.31
    for k in ("accuracy", "balanced_accuracy"):
        lo, hi = informative["interval"][k]
        assert lo <= informative["gain"][k] <= hi
    assert informative["interval"]["accuracy"][0] > 0  # entropy ranks the wrong answers first
    # an uncertainty unrelated to the answers: the gain is noise and the interval says so
    noise = np.random.default_rng(1).random(len(y))
    blind = referral_gain_interval(y, p, noise, "ordinal", negative_index=0)
    lo, hi = blind["interval"]["accuracy"]
    assert lo < 0 < hi
    # the same answers read as more images of fewer patients: resampled by patient
    groups = [str(i // 4) for i in range(len(y))]
    by_patient = referral_gain_interval(y, p, entropy(p), "ordinal", 0, groups)
    assert by_patient["resampled"] == "patients" and informative["resampled"] == "images"
    assert by_patient["gain"] == informative["gain"]
    with pytest.raises(ValueError, match="groups"):
        referral_gain_interval(y, p, entropy(p), "ordinal", 0, groups[:-1])


def test_referral_gain_reads_as_points_with_its_interval():
    from engine.intervals import referral_gain_words

    line = referral_gain_words(
        {
            "referred": 0.3,
            "resampled": "patients",
            "n_boot": 1000,
            "gain": {"accuracy": 0.0953, "balanced_accuracy": 0.0371},
            "interval": {"accuracy": [0.059, 0.138], "balanced_accuracy": [-0.031, 0.115]},
        }
    )
    assert line == (
        "Referring the 30% least certain changes the kept images' accuracy by +9.5 points (95% "
        "interval +5.9 to +13.8), balanced accuracy by +3.7 points (95% interval -3.1 to "
        "+11.5); "
        "bootstrap over the patients, 1000 resamples."
    )
