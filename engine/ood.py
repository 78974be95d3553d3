"""Out-of-distribution score on penultimate features ("unlike the training data").

A PCA model of the training features: the Mahalanobis distance inside the top-k principal
subspace catches images that are extreme along directions the training data varies in, and
the reconstruction residual catches images that live off that subspace altogether (an OCT
scan fed to a fundus model, a photograph of something else). Each part is scaled by its
median on held-out validation images, so a score of about 1 is typical and the flag
threshold is a margin above the validation maximum region.

The statistics (mean, components, variances) are stored as ``ood.*`` tensors in the model
file; the scalar settings sit in the model description.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_COMPONENTS = 64
THRESHOLD_QUANTILE = 0.995
THRESHOLD_MARGIN = 1.25


def fit_ood(train_feats: np.ndarray, val_feats: np.ndarray) -> tuple[dict[str, Any] | None, dict]:
    """Fit on training features, scale on validation features; returns (info, tensors)."""
    import torch

    x = np.asarray(train_feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 5:
        return None, {}
    mu = x.mean(0)
    xc = x - mu
    k = int(min(MAX_COMPONENTS, len(x) - 1, x.shape[1]))
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:k].T  # (D, k)
    var = (s[:k] ** 2) / max(1, len(x) - 1)
    var = np.maximum(var, var.max() * 1e-6 + 1e-12)
    tensors = {
        "ood.mean": torch.from_numpy(mu.astype(np.float32)),
        "ood.components": torch.from_numpy(comps.astype(np.float32)),
        "ood.variances": torch.from_numpy(var.astype(np.float32)),
    }
    raw_m, raw_r = _raw(np.asarray(val_feats if len(val_feats) else train_feats), mu, comps, var)
    m_ref = float(np.median(raw_m)) or 1.0
    r_ref = float(np.median(raw_r)) or 1.0
    scores = 0.5 * (raw_m / m_ref + raw_r / r_ref)
    threshold = float(np.quantile(scores, THRESHOLD_QUANTILE) * THRESHOLD_MARGIN)
    info = {
        "method": "pca-mahalanobis+residual",
        "components": k,
        "m_ref": m_ref,
        "r_ref": r_ref,
        "threshold": threshold,
        "fitted_on": {"train": int(len(x)), "validation": int(len(val_feats))},
    }
    return info, tensors


def _raw(
    feats: np.ndarray, mu: np.ndarray, comps: np.ndarray, var: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    xc = np.asarray(feats, dtype=np.float64) - mu
    proj = xc @ comps
    maha = np.sqrt((proj**2 / var).sum(1) / comps.shape[1])
    resid = np.sqrt(np.maximum((xc**2).sum(1) - (proj**2).sum(1), 0.0))
    return maha, resid


def ood_scores(feats: np.ndarray, info: dict[str, Any] | None, tensors: dict) -> np.ndarray | None:
    """Scores for (N, D) features; None when the model carries no OOD statistics."""
    if not info or "ood.mean" not in tensors:
        return None
    mu = tensors["ood.mean"].double().numpy()
    comps = tensors["ood.components"].double().numpy()
    var = tensors["ood.variances"].double().numpy()
    m, r = _raw(feats, mu, comps, var)
    return 0.5 * (m / info["m_ref"] + r / info["r_ref"])
