"""Temperature scaling makes over-confident probabilities honest again."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.calibration import fit_temperature, nll, sigmoid, softmax
from engine.metrics import expected_calibration_error, reliability_bins


def overconfident_logits(seed: int, n: int = 4000, c: int = 4, scale: float = 3.0):
    """Labels drawn from softmax(z); the 'network' reports scale * z (over-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 1.5
    p = softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z * scale, np.minimum(y, c - 1)


def top_label_ece(probs: np.ndarray, y: np.ndarray) -> float:
    return expected_calibration_error(probs.max(axis=1), probs.argmax(axis=1) == y)


def test_softmax_and_sigmoid_are_stable_for_huge_logits():
    p = softmax([[1000.0, 0.0, -1000.0]])
    assert np.all(np.isfinite(p))
    assert p[0, 0] == pytest.approx(1.0)
    s = sigmoid([-1000.0, 0.0, 1000.0])
    np.testing.assert_allclose(s, [0.0, 0.5, 1.0])


def test_softmax_temperature_flattens_probabilities():
    logits = np.array([[2.0, 0.0, -1.0]])
    assert softmax(logits, 4.0).max() < softmax(logits).max()
    np.testing.assert_allclose(softmax(logits, 2.0), softmax(logits / 2.0))


def test_nll_hand_computed():
    # softmax([0, 0]) = [0.5, 0.5] -> NLL = log 2; sigmoid(0) = 0.5 -> BCE = log 2 too.
    assert nll([[0.0, 0.0]], [1], 1.0, "multiclass") == pytest.approx(np.log(2))
    assert nll([[0.0, 0.0]], [[1, 0]], 1.0, "multilabel") == pytest.approx(np.log(2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_temperature_recovers_known_overconfidence(seed):
    logits, y = overconfident_logits(seed)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(3.0, rel=0.10)
    # It is the minimum: nudging T either way does not help.
    best = nll(logits, y, t, "multiclass")
    assert best <= nll(logits, y, t * 1.05, "multiclass")
    assert best <= nll(logits, y, t / 1.05, "multiclass")


@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_error_drops_after_fitting(seed):
    logits, y = overconfident_logits(seed)
    before = top_label_ece(softmax(logits), y)
    after = top_label_ece(softmax(logits, fit_temperature(logits, y)), y)
    assert before > 0.1
    assert after < before / 3


def test_fitting_never_changes_the_predicted_class():
    logits, y = overconfident_logits(3, n=500)
    t = fit_temperature(logits, y)
    np.testing.assert_array_equal(softmax(logits, t).argmax(1), logits.argmax(1))


def test_underconfident_model_gets_temperature_below_one():
    logits, y = overconfident_logits(4, scale=0.5)
    assert fit_temperature(logits, y) == pytest.approx(0.5, rel=0.15)


def test_multilabel_temperature_recovers_known_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3000, 3)) * 2.0
    y = (rng.random(z.shape) < sigmoid(z)).astype(int)
    assert fit_temperature(z * 2.5, y, task="multilabel") == pytest.approx(2.5, rel=0.10)


def test_empty_calibration_set_leaves_the_model_unchanged():
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, dtype=int)) == 1.0


def test_temperature_stays_within_bounds_for_separable_data():
    logits = np.array([[5.0, -5.0], [-5.0, 5.0]] * 10)
    y = np.array([0, 1] * 10)
    assert fit_temperature(logits, y) == pytest.approx(0.05, rel=1e-3)


@pytest.mark.parametrize(
    ("logits", "y", "message"),
    [
        (np.zeros(4), [0, 1, 0, 1], "2-D"),
        (np.zeros((3, 2)), [0, 1, 2], "class indices"),
        (np.zeros((3, 2)), [0, 1], "1-D with 3"),
        (np.full((2, 2), np.nan), [0, 1], "NaN"),
    ],
)
def test_bad_calibration_input_gets_a_clear_error(logits, y, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, np.asarray(y))


def test_reliability_diagram_png_is_written(tmp_path):
    from engine.plots import plot_reliability

    logits, y = overconfident_logits(0, n=2000)
    t = fit_temperature(logits, y)
    before, after = softmax(logits), softmax(logits, t)
    bins_before = reliability_bins(before.max(1), before.argmax(1) == y)
    bins_after = reliability_bins(after.max(1), after.argmax(1) == y)
    out = plot_reliability(bins_before, bins_after, tmp_path / "charts" / "reliability.png")
    assert out.stat().st_size > 5000
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert 400 <= im.width <= 1200 and 400 <= im.height <= 1200
    # Without an "after" series it still draws.
    only = plot_reliability(bins_before, None, tmp_path / "before_only.png", title="Before")
    assert only.stat().st_size > 5000
