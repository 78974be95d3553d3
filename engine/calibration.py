"""Temperature scaling: one number that makes a network's probabilities honest.

Networks trained with cross-entropy are usually over-confident. Dividing the logits by a
temperature T > 1 fitted on held-out data (minimum negative log-likelihood) fixes most of
that without changing which class is predicted. T is stored in the model file.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.metrics import SINGLE_LABEL_TASKS, check_task

T_MIN = 0.05
T_MAX = 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax over the last axis of ``logits / temperature``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def sigmoid(x: Any) -> np.ndarray:
    """Numerically stable logistic function, elementwise."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def _check_inputs(logits: Any, y_true: Any, task: str) -> tuple[np.ndarray, np.ndarray]:
    check_task(task)
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be a 2-D (N, C) array, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or infinite values")
    y = np.asarray(y_true)
    if task == "multilabel":
        if y.shape != z.shape:
            raise ValueError(f"multilabel y_true must have shape {z.shape}, got {y.shape}")
        if y.size and not np.all((y == 0) | (y == 1)):
            raise ValueError("multilabel y_true must contain only 0 and 1")
        return z, y.astype(np.float64)
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"y_true must be 1-D with {z.shape[0]} class indices, got {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1] or np.any(y != np.round(y))):
        raise ValueError(f"y_true must hold class indices in 0..{z.shape[1] - 1}")
    return z, y.astype(np.int64)


def _nll(z: np.ndarray, y: np.ndarray, temperature: float, task: str) -> float:
    s = z / temperature
    if task in SINGLE_LABEL_TASKS:
        m = np.max(s, axis=1, keepdims=True)
        log_norm = m[:, 0] + np.log(np.sum(np.exp(s - m), axis=1))
        return float(np.mean(log_norm - s[np.arange(s.shape[0]), y]))
    # Binary cross-entropy with logits, stable form: max(s,0) - s*y + log(1 + exp(-|s|)).
    return float(np.mean(np.maximum(s, 0) - s * y + np.log1p(np.exp(-np.abs(s)))))


def nll(logits: Any, y_true: Any, temperature: float, task: str) -> float:
    """Mean negative log-likelihood of the labels under the temperature-scaled model.

    Softmax for single-label tasks; for multilabel, the mean binary cross-entropy over all
    image-label entries.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z, y = _check_inputs(logits, y_true, task)
    if z.shape[0] == 0:
        return math.nan
    return _nll(z, y, temperature, task)


def fit_temperature(logits: Any, y_true: Any, task: str = "multiclass") -> float:
    """Temperature in [0.05, 20] that minimises the NLL on held-out data (1.0 if empty).

    NLL is convex in 1/T, hence unimodal in log T, so a golden-section search on log T
    finds the minimum deterministically; the bounds are also checked in case the optimum
    sits on one of them.
    """
    z, y = _check_inputs(logits, y_true, task)
    if z.shape[0] == 0:
        return 1.0

    def f(log_t: float) -> float:
        return _nll(z, y, math.exp(log_t), task)

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = lo, hi
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > 1e-6:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    candidates = [(f(lo), lo), (f(hi), hi), (f((a + b) / 2), (a + b) / 2)]
    best = min(candidates, key=lambda pair: (pair[0], pair[1]))
    return float(min(max(math.exp(best[1]), T_MIN), T_MAX))
