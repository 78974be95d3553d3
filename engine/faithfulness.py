"""How much to trust an attribution map.

* Deletion / insertion curves: does the target probability fall fastest when the pixels the
  map calls most important are removed first (and rise fastest when they are added first)?
  A map that merely looks plausible but does not reflect the model scores no better than a
  random ordering.
* Pointing game / mass in mask: does the map agree with a finding a grader outlined?
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from engine.attribution import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    attribution_mode,
    check_input_tensor,
    check_target,
    make_baseline,
    resize_map,
)

TASKS = ("multiclass", "binary", "ordinal", "multilabel")


def _target_probability(logits: torch.Tensor, target: int, task: str) -> torch.Tensor:
    if logits.ndim != 2:
        raise ValueError(f"model must return logits of shape (N, C), got {tuple(logits.shape)}")
    if target >= logits.shape[1]:
        raise ValueError(f"target {target} is out of range: model has {logits.shape[1]} outputs")
    if task == "multilabel" or logits.shape[1] == 1:
        return torch.sigmoid(logits[:, target])
    return torch.softmax(logits.float(), dim=1)[:, target]


def _curve(
    model: nn.Module,
    x: torch.Tensor,
    amap: np.ndarray,
    target: int,
    steps: int,
    baseline: str,
    task: str,
    mean: Sequence[float],
    std: Sequence[float],
    insert: bool,
    batch_size: int,
) -> np.ndarray:
    check_input_tensor(x, mean, std)
    target = check_target(target)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2 or not np.isfinite(amap).all():
        raise ValueError(f"amap must be a finite 2-D array, got shape {amap.shape}")
    h, w = x.shape[-2:]
    if amap.shape != (h, w):
        amap = resize_map(amap, w, h)

    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    with torch.inference_mode(False):
        xi = x.detach().to(device).clone()
    base = make_baseline(xi, baseline, mean, std)
    # rank[p] = position of pixel p when sorted from most to least attributed (stable)
    order = np.argsort(-amap.ravel(), kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    rank_t = torch.from_numpy(rank).to(device).view(1, 1, h, w)
    counts = np.rint(np.linspace(0.0, 1.0, steps + 1) * order.size).astype(np.int64)

    probs: list[torch.Tensor] = []
    with attribution_mode(model), torch.no_grad():
        for start in range(0, counts.size, batch_size):
            k = torch.from_numpy(counts[start : start + batch_size]).to(device).view(-1, 1, 1, 1)
            chosen = (rank_t < k).to(xi.dtype)  # (B, 1, H, W): the top-k pixels
            if insert:
                batch = base * (1.0 - chosen) + xi * chosen
            else:
                batch = xi * (1.0 - chosen) + base * chosen
            probs.append(_target_probability(model(batch), target, task).float().cpu())
    return torch.cat(probs).numpy().astype(np.float64)


def deletion_curve(
    model: nn.Module,
    x: torch.Tensor,
    amap: np.ndarray,
    target: int,
    steps: int = 20,
    baseline: str = "blur",
    task: str = "multiclass",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 8,
) -> np.ndarray:
    """Target probability after replacing the top k % most-attributed pixels by the baseline.

    Returns ``steps + 1`` values for k = 0, 100/steps, ..., 100 %. Probabilities are softmax
    (sigmoid for ``task == "multilabel"`` or a single-output model). ``amap`` is resized
    to the input if needed; the curve's images go through the model ``batch_size`` at a time.
    """
    return _curve(model, x, amap, target, steps, baseline, task, mean, std, False, batch_size)


def insertion_curve(
    model: nn.Module,
    x: torch.Tensor,
    amap: np.ndarray,
    target: int,
    steps: int = 20,
    baseline: str = "blur",
    task: str = "multiclass",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 8,
) -> np.ndarray:
    """Target probability when starting from the baseline and restoring the top k % pixels."""
    return _curve(model, x, amap, target, steps, baseline, task, mean, std, True, batch_size)


def curve_auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps over x in [0, 1] (trapezoid rule)."""
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1 or curve.size < 2:
        raise ValueError(f"curve must be 1-D with at least 2 points, got shape {curve.shape}")
    dx = 1.0 / (curve.size - 1)
    return float(dx * (curve.sum() - 0.5 * (curve[0] + curve[-1])))


def deletion_auc(
    model: nn.Module, x: torch.Tensor, amap: np.ndarray, target: int, **kw: object
) -> float:
    """Area under the deletion curve (lower = the map found what the model relies on)."""
    return curve_auc(deletion_curve(model, x, amap, target, **kw))


def insertion_auc(
    model: nn.Module, x: torch.Tensor, amap: np.ndarray, target: int, **kw: object
) -> float:
    """Area under the insertion curve (higher = the map found what the model relies on)."""
    return curve_auc(insertion_curve(model, x, amap, target, **kw))


def _check_pair(amap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("mask is empty: there is no finding to compare with")
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2 or not np.isfinite(amap).all():
        raise ValueError(f"amap must be a finite 2-D array, got shape {amap.shape}")
    if amap.shape != mask.shape:
        amap = resize_map(amap, mask.shape[1], mask.shape[0])
    return amap, mask


def pointing_game(amap: np.ndarray, mask: np.ndarray, tolerance_px: int = 3) -> bool:
    """True when the map's maximum lies within ``tolerance_px`` (Euclidean) of the mask.

    ``amap`` is resized to the mask's resolution if needed. When several pixels share the
    maximum, all of them must hit, so a flat map never scores.
    """
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    amap, mask = _check_pair(amap, mask)
    peaks = np.argwhere(amap == amap.max())
    inside = np.argwhere(mask)
    for py, px in peaks:
        d2 = (inside[:, 0] - py) ** 2 + (inside[:, 1] - px) ** 2
        if int(d2.min()) > tolerance_px**2:
            return False
    return True


def mass_in_mask(amap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive (supporting) attribution that falls inside the mask, in [0, 1].

    0.0 when the map has no positive attribution at all.
    """
    amap, mask = _check_pair(amap, mask)
    pos = np.maximum(amap, 0.0).astype(np.float64)
    total = pos.sum()
    return float(pos[mask].sum() / total) if total > 0 else 0.0


def faithfulness_scores(
    model: nn.Module,
    x: torch.Tensor,
    amap: np.ndarray,
    finding: np.ndarray,
    target: int,
    task: str = "multiclass",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    steps: int = 20,
) -> dict[str, float]:
    """All four measures for one map: ``pointing_game`` (0/1), ``mass_in_mask``,
    ``deletion_auc`` (lower is better) and ``insertion_auc`` (higher is better).

    ``finding`` is the grader's (or the synthetic) mask at any resolution; the curves use
    the blurred baseline and the model's own task (softmax or sigmoid probabilities).
    """
    kw = {"steps": steps, "task": task, "mean": mean, "std": std}
    return {
        "pointing_game": float(pointing_game(amap, finding)),
        "mass_in_mask": mass_in_mask(amap, finding),
        "deletion_auc": curve_auc(deletion_curve(model, x, amap, target, **kw)),  # type: ignore[arg-type]
        "insertion_auc": curve_auc(insertion_curve(model, x, amap, target, **kw)),  # type: ignore[arg-type]
    }
