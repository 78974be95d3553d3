"""Uncertainty summaries separate 'ambiguous image' from 'the model's passes disagree'."""

from __future__ import annotations

import numpy as np
import pytest

from engine.uncertainty_stats import (
    describe_uncertainty,
    entropy,
    normalised_entropy,
    summarise_samples,
)


def random_simplex(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    p = rng.random(shape) + 1e-3
    return p / p.sum(axis=-1, keepdims=True)


def test_entropy_hand_computed_and_zero_for_certainty():
    np.testing.assert_allclose(entropy([[0.5, 0.5], [1.0, 0.0]]), [np.log(2), 0.0])
    np.testing.assert_allclose(entropy([0.25] * 4), np.log(4))
    np.testing.assert_allclose(normalised_entropy([[0.25] * 4, [1, 0, 0, 0]]), [1.0, 0.0])


def test_single_pass_has_no_disagreement():
    rng = np.random.default_rng(0)
    stats = summarise_samples(random_simplex(rng, (1, 20, 4)))
    np.testing.assert_allclose(stats["mutual_info"], 0.0, atol=1e-12)
    np.testing.assert_allclose(stats["top_std"], 0.0)
    np.testing.assert_allclose(stats["entropy"], stats["expected_entropy"])


def test_identical_passes_have_no_disagreement():
    rng = np.random.default_rng(1)
    one = random_simplex(rng, (20, 4))
    stats = summarise_samples(np.stack([one] * 6))
    np.testing.assert_allclose(stats["mutual_info"], 0.0, atol=1e-12)
    np.testing.assert_allclose(stats["mean"], one)
    assert np.all(stats["entropy"] > 0.1)  # ambiguous images, yet no disagreement


def test_confident_passes_that_disagree_have_high_mutual_information():
    # Half the passes say class 0 at 99%, half say class 1 at 99%.
    a = np.array([[0.99, 0.005, 0.005]])
    b = np.array([[0.005, 0.99, 0.005]])
    stats = summarise_samples(np.stack([a, b, a, b]))
    assert stats["expected_entropy"][0] < 0.07
    assert stats["mutual_info"][0] > 0.6  # close to log 2 = 0.69
    assert stats["top_std"][0] == pytest.approx(0.4925)


def test_hand_computed_two_pass_example():
    samples = np.array([[[0.8, 0.2]], [[0.4, 0.6]]])
    stats = summarise_samples(samples)

    def h(q: float) -> float:
        return -(q * np.log(q) + (1 - q) * np.log(1 - q))

    np.testing.assert_allclose(stats["mean"], [[0.6, 0.4]])
    assert stats["entropy"][0] == pytest.approx(h(0.6))
    assert stats["expected_entropy"][0] == pytest.approx((h(0.8) + h(0.4)) / 2)
    assert stats["mutual_info"][0] == pytest.approx(h(0.6) - (h(0.8) + h(0.4)) / 2)
    assert stats["top_std"][0] == pytest.approx(0.2)  # class 0: 0.8 and 0.4


def test_mutual_information_is_never_negative():
    rng = np.random.default_rng(2)
    stats = summarise_samples(random_simplex(rng, (8, 200, 5)))
    assert np.all(stats["mutual_info"] >= 0)
    assert np.all(stats["entropy"] <= np.log(5) + 1e-12)


def test_multilabel_entropy_sums_binary_entropies_per_label():
    samples = np.array([[[0.5, 0.9, 1.0]], [[0.5, 0.9, 1.0]]])
    stats = summarise_samples(samples, multilabel=True)
    h09 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert stats["entropy"][0] == pytest.approx(np.log(2) + h09)
    assert stats["mutual_info"][0] == pytest.approx(0.0, abs=1e-12)
    assert normalised_entropy([[0.5, 0.5]], multilabel=True)[0] == pytest.approx(1.0)


def test_samples_must_be_three_dimensional():
    with pytest.raises(ValueError, match="K passes, N images, C classes"):
        summarise_samples(np.full((4, 3), 0.25))


def test_descriptions_for_clinicians():
    assert describe_uncertainty(0.97, 1, 0.08, 0.01) == "confident"
    assert describe_uncertainty(0.8, 1, 0.35, 0.01) == "fairly sure"
    assert describe_uncertainty(0.5, 2, 0.5, 0.02) == "unsure: two plausible answers"
    assert describe_uncertainty(0.55, None, 0.5, 0.02) == "unsure"
    assert describe_uncertainty(0.3, None, 0.9, 0.02).startswith("very unsure")
    assert describe_uncertainty(0.5, 4, 0.6, 0.02) == "very unsure: several plausible answers"


def test_disagreeing_passes_tone_down_a_confident_description():
    text = describe_uncertainty(0.95, 1, 0.1, 0.3)
    assert text.startswith("fairly sure")
    assert "disagree" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.2, 1, 0.1, 0.0), "top_prob"),
        ((0.9, 0, 0.1, 0.0), "set_size"),
        ((0.9, 1, 1.5, 0.0), "norm_entropy"),
        ((0.9, 1, 0.1, -0.2), "mutual_info"),
    ],
)
def test_describe_rejects_out_of_range_values(args, message):
    with pytest.raises(ValueError, match=message):
        describe_uncertainty(*args)
