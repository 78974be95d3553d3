"""Uncertainty summaries from repeated stochastic passes (MC dropout, TTA, ensembles).

Given K probability vectors per image, the predictive entropy of their mean measures total
uncertainty; the mean entropy of the individual passes measures what the passes agree is
ambiguous (aleatoric); their difference, the mutual information (BALD), measures how much
the passes disagree (epistemic: the model has not seen images like this).

For multilabel outputs every label is an independent yes/no question, so the entropy of
an image is the sum of its per-label binary entropies (``multilabel=True``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Thresholds of describe_uncertainty, in one place so the UI legend can quote them.
CONFIDENT_TOP_PROB = 0.9
FAIRLY_SURE_TOP_PROB = 0.7
VERY_UNSURE_TOP_PROB = 0.4
CONFIDENT_MAX_NORM_ENTROPY = 0.3
VERY_UNSURE_MIN_NORM_ENTROPY = 0.75
DISAGREEMENT_MUTUAL_INFO = 0.1  # nats


def _xlogx(p: np.ndarray) -> np.ndarray:
    """Elementwise p * log(p) with 0 * log(0) = 0."""
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def entropy(p: Any, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` (0 * log 0 counted as 0)."""
    arr = np.asarray(p, dtype=np.float64)
    return -np.sum(_xlogx(arr), axis=axis)


def binary_entropy(p: Any) -> np.ndarray:
    """Elementwise entropy (nats) of independent yes/no probabilities."""
    arr = np.asarray(p, dtype=np.float64)
    return -(_xlogx(arr) + _xlogx(1.0 - arr))


def _image_entropy(p: np.ndarray, multilabel: bool) -> np.ndarray:
    return binary_entropy(p).sum(axis=-1) if multilabel else entropy(p, axis=-1)


def normalised_entropy(p: Any, multilabel: bool = False) -> np.ndarray:
    """Entropy divided by its maximum, in [0, 1]: log(C), or L * log(2) for multilabel."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim == 0:
        raise ValueError("normalised_entropy needs at least one probability axis")
    c = arr.shape[-1]
    max_entropy = c * np.log(2.0) if multilabel else np.log(c)
    if max_entropy == 0:
        return np.zeros(arr.shape[:-1])
    return np.clip(_image_entropy(arr, multilabel) / max_entropy, 0.0, 1.0)


def summarise_samples(samples: Any, multilabel: bool = False) -> dict[str, np.ndarray]:
    """Summarise (K, N, C) probabilities from K stochastic passes over N images.

    Returns ``mean`` (N, C), ``entropy`` (N,) of the mean in nats, ``expected_entropy``
    (N,) mean entropy of the passes, ``mutual_info`` (N,) = entropy - expected_entropy
    clipped at 0, and ``top_std`` (N,) the spread over passes of the probability of the
    mean's top class (0 for K = 1).
    """
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 3:
        raise ValueError(
            f"samples must be (K passes, N images, C classes), got shape {s.shape}; "
            "add a leading axis for a single pass"
        )
    if s.shape[0] == 0 or s.shape[2] == 0:
        raise ValueError(f"samples needs at least one pass and one class, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or (s.size and (s.min() < 0 or s.max() > 1 + 1e-9)):
        raise ValueError("samples must hold probabilities in [0, 1]")
    mean = s.mean(axis=0)
    ent = _image_entropy(mean, multilabel)
    expected = _image_entropy(s, multilabel).mean(axis=0)
    top = np.argmax(mean, axis=1)
    top_probs = s[:, np.arange(s.shape[1]), top]
    return {
        "mean": mean,
        "entropy": ent,
        "expected_entropy": expected,
        "mutual_info": np.maximum(ent - expected, 0.0),
        "top_std": top_probs.std(axis=0),
    }


def describe_uncertainty(
    top_prob: float, set_size: int | None, norm_entropy: float, mutual_info: float
) -> str:
    """Plain words for a clinician about how sure the model is about one image.

    Levels: "confident", "fairly sure", "unsure", "unsure: two plausible answers",
    "very unsure" (optionally ": several plausible answers"). When repeated passes disagree
    (mutual information >= 0.1 nats) a "confident" image is downgraded to "fairly sure" and
    the text adds that the repeated looks disagree.
    """
    if not 0.0 <= top_prob <= 1.0:
        raise ValueError(f"top_prob must lie in [0, 1], got {top_prob}")
    if not -1e-9 <= norm_entropy <= 1.0 + 1e-9:
        raise ValueError(f"norm_entropy must lie in [0, 1], got {norm_entropy}")
    if not mutual_info >= 0.0:
        raise ValueError(f"mutual_info must be >= 0, got {mutual_info}")
    if set_size is not None and set_size < 1:
        raise ValueError(f"set_size must be at least 1 (sets are never empty), got {set_size}")

    if set_size is not None and set_size >= 3:
        text = "very unsure: several plausible answers"
    elif top_prob < VERY_UNSURE_TOP_PROB or norm_entropy >= VERY_UNSURE_MIN_NORM_ENTROPY:
        text = "very unsure"
    elif set_size == 2:
        text = "unsure: two plausible answers"
    elif top_prob >= CONFIDENT_TOP_PROB and norm_entropy <= CONFIDENT_MAX_NORM_ENTROPY:
        text = "confident"
    elif top_prob >= FAIRLY_SURE_TOP_PROB:
        text = "fairly sure"
    else:
        text = "unsure"
    if mutual_info >= DISAGREEMENT_MUTUAL_INFO:
        if text == "confident":
            text = "fairly sure"
        text += " (repeated looks at the image disagree)"
    return text
