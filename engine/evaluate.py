"""Measure a model on every image of a labelled set (``eyetriage evaluate`` and the demo)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tasks import TaskState

if TYPE_CHECKING:
    from .data import LabelledSet
    from .models import LoadedModel


def evaluate_model_on(
    lm: LoadedModel,
    ds: LabelledSet,
    batch_size: int = 32,
    workers: int | None = None,
    state: TaskState | None = None,
    plot: str | None = None,
) -> dict[str, Any]:
    """Metrics on every image of ``ds`` with this model (no split).

    Accuracy, balanced accuracy, AUC, per-class figures and ECE (also before temperature
    scaling), the referral curve for single-label tasks (written as a PNG to ``plot`` when
    given), and the unusable files with their reasons.
    """
    import numpy as np

    from .calibration import sigmoid, softmax
    from .findings import finding_labels, negative_indices, positive_label
    from .inference import predict_logits
    from .intervals import ece_if_calibrated, metric_intervals
    from .metrics import evaluate_predictions, predicted_labels
    from .referral import referral_curve
    from .uncertainty_stats import entropy

    spec = lm.spec
    paths = [s.path for s in ds.samples]
    logits, errors, _ = predict_logits(lm, paths, batch_size, workers, state or TaskState())
    ok = ~np.isnan(logits).any(1)
    y = ds.targets()[ok]
    z = logits[ok]
    if spec.task == "multilabel":
        probs = sigmoid(z / spec.temperature)
        raw = sigmoid(z)
    else:
        probs = softmax(z, spec.temperature)
        raw = softmax(z, 1.0)
    volumes = ds.volumes()
    if volumes:  # volume labels: score each volume by its most suspicious B-scan
        from .volumes import roll_up_arrays

        owners = [s.volume or f"image:{i}" for i, s in enumerate(ds.samples)]
        owners = [o for o, good in zip(owners, ok, strict=True) if good]
        y, probs, raw = roll_up_arrays(owners, y, probs, raw, spec)
    pos = positive_label(spec)
    out = evaluate_predictions(y, probs, spec.task, spec.labels, positive=pos)
    out["ece_uncalibrated"] = evaluate_predictions(y, raw, spec.task, spec.labels, positive=pos)[
        "ece"
    ]
    groups = [s.group for s, good in zip(ds.samples, ok, strict=True) if good]
    if volumes:
        first: dict[str, str] = {}
        for o, g in zip(owners, groups, strict=True):
            first.setdefault(o, g)
        groups = list(first.values())  # one row per volume, in roll_up_arrays' order
    out["intervals"] = metric_intervals(y, probs, spec.task, spec.labels, pos, groups)
    if spec.task != "multilabel" and len(y):
        yp = predicted_labels(probs, spec.task)
        out["ece_if_calibrated"] = ece_if_calibrated(probs[np.arange(len(yp)), yp])
    if volumes:
        out["scored"] = "volumes (each by its most suspicious B-scan)"
        out["n_volumes"] = len(volumes)
    out["temperature"] = spec.temperature
    out["n_errors"] = int((~ok).sum())
    out["errors"] = [{"path": str(paths[i]), "error": e} for i, e in sorted(errors.items())][:50]
    if spec.task != "multilabel" and len(y):
        out["referral_curve"] = referral_curve(
            y, probs, entropy(probs), spec.task, negative_index=negative_indices(spec)
        )
        out["disease_classes"] = finding_labels(spec)
        if plot:
            from .plots import plot_referral_curve

            plot_referral_curve(
                out["referral_curve"], plot, title=f"{spec.name}: referral curve (n={len(y)})"
            )
    out["model"] = {"name": spec.name, "arch": spec.arch, "task": spec.task, "sha256": lm.sha256}
    return out
