"""Measuring a fine-tuned version: the audit set, the workspace OOD check, calibration.

* :func:`measure` scores one model on the audit images and computes the review workload
  with screening's own triage rules (:mod:`engine.triage`), using each image's stored
  quality report, the model's own OOD statistics and the workspace's triage policy.
* :func:`audit_answers` records each audit image's truth and both models' answers, the
  paired data :func:`engine.improve.verdict.judge` needs.
* :func:`recalibrate` decides whether the new version's calibration (temperature,
  conformal threshold, referral curve) and OOD statistics are refitted or kept from the
  parent: a handful of reviews gives a worse estimate than the one the parent carries.
* :func:`ood_check` counts how many of the workspace's images each version finds
  unfamiliar, before the new one is offered.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ..findings import negative_indices
from .config import Log

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..modelfile import ModelSpec
    from ..store import Workspace
    from ..triage import TriagePolicy

MIN_CALIBRATION_IMAGES = 30  # validation reviews needed to refit temperature / conformal / referral
MIN_OOD_FIT_IMAGES = 100  # training images needed to refit the OOD statistics
OOD_CHECK_MAX_IMAGES = 300  # workspace images the OOD check looks at (a fixed sample)
OOD_FIT_MAX_IMAGES = 2000


def policy_for(ws: Workspace, model_hash: str) -> TriagePolicy:
    """The triage policy of this model's latest screening run (the default without one)."""
    from ..triage import TriagePolicy

    runs = [r for r in ws.runs() if r["model_hash"] == model_hash]
    for r in reversed(runs):
        p = (r.get("settings") or {}).get("policy")
        if isinstance(p, dict):
            return TriagePolicy.from_dict(p)
    return TriagePolicy()


def ood_tensors(extra: dict) -> dict:
    """The OOD statistics among a model file's extra tensors."""
    return {k: v for k, v in (extra or {}).items() if k.startswith("ood.")}


def _scores(spec: ModelSpec, extra: dict, feats: np.ndarray) -> np.ndarray | None:
    from ..ood import ood_scores

    if not spec.ood or len(feats) == 0:
        return None
    return ood_scores(feats, spec.ood, ood_tensors(extra))


def measure(
    spec: ModelSpec,
    extra: dict,
    logits: np.ndarray,
    feats: np.ndarray,
    y: np.ndarray,
    quality: list[dict | None],
    policy: TriagePolicy,
) -> dict:
    """Metrics of one model on the audit images, plus screening's review workload."""
    from collections import Counter

    from ..calibration import softmax
    from ..clearing import clearing_block
    from ..findings import positive_label
    from ..metrics import evaluate_predictions
    from ..triage import review_workload, triage_states

    if len(y) == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "review_workload": None}
    probs = softmax(logits, spec.temperature)
    m = evaluate_predictions(y, probs, spec.task, spec.labels, positive=positive_label(spec))
    blocked = clearing_block([spec], policy)
    states = triage_states(spec, probs, _scores(spec, extra, feats), quality, policy, blocked)
    m["review_workload"] = review_workload(states)
    m["triage_counts"] = dict(Counter(states))
    return m


def negative_index(spec: ModelSpec) -> int | None:
    """Index of the first "no finding" class (:mod:`engine.findings`), else None."""
    found = negative_indices(spec)
    return found[0] if found else None


def answers(spec: ModelSpec, logits: np.ndarray) -> list[int]:
    """Each image's answer as a class index, by the same rule as the metrics."""
    from ..calibration import softmax
    from ..metrics import predicted_labels

    if len(logits) == 0:
        return []
    return [int(v) for v in predicted_labels(softmax(logits, spec.temperature), spec.task)]


def audit_answers(
    old_spec: ModelSpec,
    new_spec: ModelSpec,
    y: np.ndarray,
    old_logits: np.ndarray,
    new_logits: np.ndarray,
    image_ids: list[Any],
) -> dict:
    """Truth and both models' answers per audit image (the verdict's paired data)."""
    return {
        "labels": list(new_spec.labels),
        "negative": negative_index(new_spec),
        "negatives": negative_indices(new_spec),
        "image_ids": list(image_ids),
        "truth": [int(v) for v in y],
        "before": answers(old_spec, old_logits),
        "after": answers(new_spec, new_logits),
    }


def recalibrate(
    spec: ModelSpec,
    parent_extra: dict,
    net: torch.nn.Module,
    arrays: np.ndarray,
    targets: np.ndarray,
    tr: list[int],
    va: list[int],
    device: torch.device,
    strategy: str,
    seed: int,
    log: Log,
    warnings: list[str],
) -> tuple[dict, dict]:
    """Refit or keep calibration and OOD statistics; returns (OOD tensors, notes).

    ``spec`` starts as a copy of the parent's description, so "keep" leaves its
    temperature, conformal threshold, referral curve and OOD settings as they are.
    Calibration is refitted on the validation reviews when there are at least
    :data:`MIN_CALIBRATION_IMAGES`. OOD statistics: a head-only fine-tune keeps the parent's
    (the features are unchanged, and the parent's came from its whole training set);
    otherwise they are refitted from at least :data:`MIN_OOD_FIT_IMAGES` training images,
    or kept, and the workspace OOD check then shows whether they still fit.
    """
    from ..calibration import fit_temperature
    from ..fit import predict_arrays
    from ..ood import fit_ood
    from ..train import calibrate_spec_on

    notes: dict[str, Any] = {}
    if len(va) >= MIN_CALIBRATION_IMAGES:
        val_logits, _ = predict_arrays(net, spec, arrays[va], device, True)
        spec.temperature = float(fit_temperature(val_logits, targets[va], spec.task))
        alpha = float((spec.conformal or {}).get("alpha", 0.1))
        calibrate_spec_on(
            spec, val_logits, targets[va], alpha, log, warnings, source="validation reviews"
        )
        log(
            f"calibration refitted on {len(va)} validation reviews (temperature {spec.temperature:.3f})"
        )
        notes["calibration"] = {"source": "refit", "images": len(va)}
    else:
        warnings.append(
            f"calibration (temperature, conformal sets, referral curve) kept from the current "
            f"model: only {len(va)} validation reviews, at least {MIN_CALIBRATION_IMAGES} are "
            "needed to refit it"
        )
        notes["calibration"] = {"source": "parent", "images": len(va)}
        # the parent's evidence of what it clears says nothing about the new weights
        spec.clearing = None
        warnings.append(
            "auto-clear is off for the new model: too few validation reviews to check what "
            "it would clear"
        )

    parent_ood = ood_tensors(parent_extra)
    if strategy == "head" and spec.ood and parent_ood:
        notes["ood"] = {"source": "parent", "reason": "head-only fine-tune: features unchanged"}
        return parent_ood, notes
    if len(tr) >= MIN_OOD_FIT_IMAGES:
        sample = (
            tr
            if len(tr) <= OOD_FIT_MAX_IMAGES
            else sorted(random.Random(seed).sample(tr, OOD_FIT_MAX_IMAGES))
        )
        _, train_feats = predict_arrays(net, spec, arrays[sample], device, True)
        _, val_feats = predict_arrays(net, spec, arrays[va], device, True)
        info, tensors = fit_ood(train_feats, val_feats)
        spec.ood = info
        notes["ood"] = {"source": "refit", "images": len(sample)}
        return tensors, notes
    if spec.ood and parent_ood:
        warnings.append(
            f"out-of-distribution statistics kept from the current model: only {len(tr)} "
            f"training images, at least {MIN_OOD_FIT_IMAGES} are needed to refit them; the "
            "check on the workspace's images shows whether they still fit"
        )
        notes["ood"] = {"source": "parent", "images": len(tr)}
        return parent_ood, notes
    notes["ood"] = {"source": "none"}
    return {}, notes


def count_unfamiliar(spec: ModelSpec, extra: dict, feats: np.ndarray) -> int:
    """How many images the model's OOD statistics flag (0 without statistics)."""
    scores = _scores(spec, extra, feats)
    thr = (spec.ood or {}).get("threshold")
    if scores is None or thr is None:
        return 0
    return int((scores > float(thr)).sum())


def ood_check(
    old: tuple[Any, ModelSpec, dict],
    new: tuple[Any, ModelSpec, dict],
    arrays: np.ndarray,
    device: torch.device,
) -> dict:
    """Images of the workspace each version finds unfamiliar: ``{"n", "before", "after"}``.

    ``old`` and ``new`` are (network, description, OOD tensors).
    """
    from ..fit import predict_arrays

    if len(arrays) == 0:
        return {"n": 0, "before": 0, "after": 0}
    counts = []
    for net, spec, extra in (old, new):
        _, feats = predict_arrays(net, spec, arrays, device, True)
        counts.append(count_unfamiliar(spec, extra, feats))
    return {"n": int(len(arrays)), "before": counts[0], "after": counts[1]}
