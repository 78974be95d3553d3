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
    predictions: str | None = None,
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
    from .intervals import ece_if_calibrated, metric_intervals, referral_gain_interval
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
    items = [str(p) for p, good in zip(paths, ok, strict=True) if good]
    if volumes:  # volume labels: score each volume by its most suspicious B-scan
        from .volumes import roll_up_arrays

        owners = [s.volume or f"image:{i}" for i, s in enumerate(ds.samples)]
        owners = [o for o, good in zip(owners, ok, strict=True) if good]
        y, probs, raw = roll_up_arrays(owners, y, probs, raw, spec)
        items = list(dict.fromkeys(owners))
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
    if predictions:
        write_predictions(predictions, items, groups, y, probs, spec.task, list(spec.labels))
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
        ranking = entropy(probs)  # the least certain first, as triage refers them
        out["referral_curve"] = referral_curve(
            y, probs, ranking, spec.task, negative_index=negative_indices(spec)
        )
        out["referral_gain"] = referral_gain_interval(
            y, probs, ranking, spec.task, negative_indices(spec), groups
        )
        out["disease_classes"] = finding_labels(spec)
        if plot:
            from .plots import plot_referral_curve

            plot_referral_curve(
                out["referral_curve"], plot, title=f"{spec.name}: referral curve (n={len(y)})"
            )
    out["model"] = {"name": spec.name, "arch": spec.arch, "task": spec.task, "sha256": lm.sha256}
    return out


def write_predictions(
    path: str,
    items: list[str],
    groups: list[str],
    y: Any,
    probs: Any,
    task: str,
    labels: list[str],
) -> None:
    """One CSV row per scored item: ``item, group, true, predicted`` and ``p:LABEL`` per label
    (multi-label: ``true`` and ``predicted`` list the labels present, joined by ``;``)."""
    from .csvsafe import safe_writer
    from .metrics import predicted_labels

    yp = predicted_labels(probs, task)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = safe_writer(fh)
        w.writerow(["item", "group", "true", "predicted", *(f"p:{lab}" for lab in labels)])
        for i, item in enumerate(items):
            if task == "multilabel":
                true = ";".join(lab for lab, v in zip(labels, y[i], strict=True) if v)
                pred = ";".join(lab for lab, v in zip(labels, yp[i], strict=True) if v)
            else:
                true, pred = labels[int(y[i])], labels[int(yp[i])]
            w.writerow([item, groups[i], true, pred, *(f"{float(p):.6f}" for p in probs[i])])
