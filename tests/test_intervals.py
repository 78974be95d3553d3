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
