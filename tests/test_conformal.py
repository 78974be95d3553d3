"""Conformal prediction sets contain the true class as often as promised."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.conformal import (
    ConformalCalibrator,
    empirical_coverage,
    fit_conformal,
    prediction_sets,
    set_sizes,
)


def well_specified(rng: np.random.Generator, n: int, c: int = 5):
    """A model whose probabilities are the true label distribution, of varying sharpness."""
    sharpness = rng.uniform(0.3, 3.0, size=(n, 1))
    z = rng.normal(size=(n, c)) * sharpness
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return p, np.minimum(y, c - 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_default_method_covers_as_promised_on_new_images(seed, alpha):
    rng = np.random.default_rng(seed)
    p_cal, y_cal = well_specified(rng, 3000)
    p_test, y_test = well_specified(rng, 5000)
    cal = fit_conformal(p_cal, y_cal, alpha=alpha)
    assert cal.method == "aps"
    coverage = empirical_coverage(prediction_sets(p_test, cal), y_test)
    assert coverage == pytest.approx(1 - alpha, abs=0.03)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_lac_method_covers_as_promised(alpha):
    rng = np.random.default_rng(7)
    p_cal, y_cal = well_specified(rng, 3000)
    p_test, y_test = well_specified(rng, 5000)
    cal = fit_conformal(p_cal, y_cal, alpha=alpha, method="lac")
    coverage = empirical_coverage(prediction_sets(p_test, cal), y_test)
    assert coverage == pytest.approx(1 - alpha, abs=0.03)


def test_lower_alpha_gives_larger_sets():
    rng = np.random.default_rng(3)
    p_cal, y_cal = well_specified(rng, 2000)
    p_test, _ = well_specified(rng, 1000)
    strict = set_sizes(prediction_sets(p_test, fit_conformal(p_cal, y_cal, alpha=0.05)))
    loose = set_sizes(prediction_sets(p_test, fit_conformal(p_cal, y_cal, alpha=0.3)))
    assert strict.mean() > loose.mean()
    assert np.all(strict >= loose)


@pytest.mark.parametrize("method", ["aps", "lac"])
def test_sets_grow_when_the_model_is_uncertain(method):
    rng = np.random.default_rng(4)
    p_cal, y_cal = well_specified(rng, 2000)
    cal = fit_conformal(p_cal, y_cal, alpha=0.1, method=method)
    confident = np.array([[0.96, 0.01, 0.01, 0.01, 0.01]])
    torn = np.array([[0.45, 0.45, 0.04, 0.03, 0.03]])
    flat = np.full((1, 5), 0.2)
    sizes = [int(set_sizes(prediction_sets(p, cal))[0]) for p in (confident, torn, flat)]
    assert sizes[0] == 1
    assert sizes[0] < sizes[1] <= sizes[2]
    assert sizes[2] >= 3


def test_small_calibration_sets_use_the_finite_sample_quantile():
    # LAC scores 1 - p_true are 0.05, 0.10, ..., 0.95 (19 images). With alpha = 0.1 the
    # threshold is the ceil(20 * 0.9) = 18th smallest score, not the plain 90% quantile.
    p_true = np.linspace(0.95, 0.05, 19)
    probs = np.c_[p_true, 1 - p_true]
    cal = fit_conformal(probs, np.zeros(19, dtype=int), alpha=0.1, method="lac")
    assert cal.qhat == pytest.approx(0.90)
    cal9 = fit_conformal(probs[:9], np.zeros(9, dtype=int), alpha=0.1, method="lac")
    assert cal9.qhat == pytest.approx(0.45)  # n = 9: the largest score


def test_sets_are_never_empty_and_always_hold_the_top_class():
    rng = np.random.default_rng(5)
    p_cal, y_cal = well_specified(rng, 500)
    cal = fit_conformal(p_cal, y_cal, alpha=0.5)
    p_test, _ = well_specified(rng, 500)
    sets = prediction_sets(p_test, cal)
    assert sets.dtype == bool and sets.shape == p_test.shape
    assert np.all(sets[np.arange(500), p_test.argmax(1)])


def test_same_image_always_gets_the_same_set():
    rng = np.random.default_rng(6)
    p_cal, y_cal = well_specified(rng, 500)
    cal = fit_conformal(p_cal, y_cal)
    p_test, _ = well_specified(rng, 50)
    np.testing.assert_array_equal(prediction_sets(p_test, cal), prediction_sets(p_test, cal))


def test_calibrator_survives_a_json_round_trip():
    rng = np.random.default_rng(8)
    p_cal, y_cal = well_specified(rng, 300)
    cal = fit_conformal(p_cal, y_cal, alpha=0.1, method="lac")
    again = ConformalCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert again == cal
    assert cal.n_cal == 300
    p_test, _ = well_specified(rng, 40)
    np.testing.assert_array_equal(prediction_sets(p_test, again), prediction_sets(p_test, cal))


def test_incomplete_calibrator_dict_names_the_missing_field():
    with pytest.raises(ValueError, match="qhat"):
        ConformalCalibrator.from_dict({"method": "aps", "alpha": 0.1, "n_cal": 10})


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, "high"])
def test_invalid_alpha_is_rejected(alpha):
    p = np.full((50, 2), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        fit_conformal(p, np.zeros(50, dtype=int), alpha=alpha)


def test_too_few_calibration_images_is_rejected():
    p = np.full((5, 2), 0.5)
    with pytest.raises(ValueError, match="at least 9 calibration samples"):
        fit_conformal(p, np.zeros(5, dtype=int), alpha=0.1)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method"):
        fit_conformal(np.full((20, 2), 0.5), np.zeros(20, dtype=int), method="raps")


def test_multilabel_is_not_supported():
    with pytest.raises(NotImplementedError, match="multilabel"):
        fit_conformal(np.full((20, 3), 0.5), np.zeros((20, 3)), task="multilabel")
    with pytest.raises(ValueError, match="sum to 1"):
        fit_conformal(np.full((20, 3), 0.5), np.zeros(20, dtype=int))


def test_coverage_hand_computed():
    sets = np.array([[True, False], [True, True], [False, True], [True, False]])
    assert empirical_coverage(sets, [0, 1, 0, 1]) == pytest.approx(0.5)
