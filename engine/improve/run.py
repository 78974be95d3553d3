"""One improvement run: fine-tune the active model on the reviews, measure, offer the result.

:func:`improve` reads the usable reviews and splits off the audit set, decodes the images
once, measures the active model on the audit set, fine-tunes a copy with the shared training
loop (:func:`engine.fit.fit`), recalibrates or keeps the parent's calibration, measures the
new version on the same audit images and checks how many workspace images it finds
unfamiliar, then writes the new, immutable model file atomically and registers it (not
active). The result carries the verdict of :func:`engine.improve.verdict.judge`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..tasks import TaskState
from .config import (
    ACTOR,
    DEFAULT_LR,
    MAX_PSEUDO_LABELS,
    MIN_EPOCH_SAMPLES,
    MODELS_DIR,
    ImproveCollapsed,
    ImproveConfig,
    ImproveError,
    ImproveState,
    Log,
    open_workspace,
)
from .measure import (
    OOD_CHECK_MAX_IMAGES,
    audit_answers,
    measure,
    ood_check,
    ood_tensors,
    policy_for,
    recalibrate,
)
from .selection import (
    audit_split,
    decode_images,
    pseudo_rows,
    review_status,
    screened_paths,
    training_data_rows,
    usable_reviews,
    validation_split,
)
from .verdict import judge

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..fit import FitResult
    from ..modelfile import ModelSpec


def improve(
    ws_folder: str | os.PathLike,
    config: ImproveConfig,
    state: TaskState | None = None,
    log: Log = print,
) -> dict:
    """Fine-tune the active model on the reviews and offer the result as a new version.

    Returns old vs new on the audit set (``before``/``after``), the per-image
    ``audit_answers``, the workspace ``ood_check``, the ``verdict``, the new ``model`` hash
    and ``model_path``, its ``parent``, the audit images whose answer ``changed``, timings
    and counts. The new version is registered in the workspace but not made active.
    """
    import numpy as np
    import torch

    from ..fit import balanced_sample_weights, predict_arrays
    from ..models import load_model, pick_device
    from ..store import StoreError
    from ..train import evaluate_arrays, seed_everything

    t0 = time.monotonic()
    state = state or TaskState()
    cfg = config
    ws_folder = Path(ws_folder)
    try:
        ws = open_workspace(ws_folder)
    except StoreError as e:
        raise ImproveError(str(e)) from None
    with ws:
        active = ws.active_model()
        if active is None:
            raise ImproveError("the workspace has no active model to improve; screen first")
        parent = active["hash"]
        if not active.get("path") or not Path(active["path"]).is_file():
            raise ImproveError(f"the active model's file is missing ({active.get('path')})")
        status = review_status(ws_folder, cfg.min_new_reviews, cfg.audit_fraction)
        if status["new_reviews"] < cfg.min_new_reviews:
            raise ImproveError(
                f"only {status['new_reviews']} new reviews since the active model was made; "
                f"{cfg.min_new_reviews} are needed"
            )
        lm = load_model(active["path"], device=cfg.device)
        old_spec = lm.spec
        if old_spec.task == "multilabel":
            raise ImproveError("improving multi-label models is not supported yet")
        rows = usable_reviews(ws, old_spec.labels, parent)
        train_rows, audit_rows = audit_split(rows, cfg.audit_fraction)
        audit_patients = {r["patient"] for r in audit_rows if r.get("patient")}
        pseudo: list[dict] = []
        if cfg.self_learning:
            exclude = {r["image_id"] for r in rows}
            offered = pseudo_rows(ws, old_spec, parent, exclude, audit_patients)
            pseudo = [c for c in offered if c["confidence"] >= cfg.pseudo_threshold]
            pseudo.sort(key=lambda r: (-r["confidence"], r["image_id"]))
            pseudo = pseudo[:MAX_PSEUDO_LABELS]
        policy = policy_for(ws, parent)
        check_paths = screened_paths(ws, parent, OOD_CHECK_MAX_IMAGES)
    original = training_data_rows(cfg, old_spec, audit_rows, log)
    if len(train_rows) < 4:
        raise ImproveError(
            f"only {len(train_rows)} reviewed images outside the audit set; review more images"
        )
    seed_everything(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    log(
        f"improving {old_spec.name or old_spec.arch} ({parent[:12]}) with strategy {cfg.strategy}: "
        f"{len(train_rows)} training reviews, {len(audit_rows)} audit, {len(pseudo)} pseudo-labels"
        + (f", {len(original)} original training images" if original else "")
    )

    # ---- decode everything once
    label_index = {lab: i for i, lab in enumerate(old_spec.labels)}
    sources = (
        [("review", r) for r in train_rows]
        + [("pseudo", r) for r in pseudo]
        + [("original", r) for r in original]
        + [("audit", r) for r in audit_rows]
    )
    arrays, ok, problems = decode_images(
        [r["path"] for _, r in sources], old_spec, state, "decoding"
    )
    for p in problems[:10]:
        log(f"skipped {p}")
    kinds = np.array([k for k, _ in sources])
    targets = np.array([label_index[r["label"]] for _, r in sources], dtype=np.int64)
    extra_w = np.ones(len(sources), dtype=np.float64)
    corrected = np.array(
        [k == "review" and r.get("ai_label") not in (None, r["label"]) for k, r in sources]
    )
    extra_w[corrected] = cfg.corrected_weight
    extra_w[kinds == "pseudo"] = cfg.pseudo_weight
    review_idx = [i for i in range(len(sources)) if kinds[i] == "review" and ok[i]]
    review_sub = [sources[i][1] for i in review_idx]
    tr_local, va_local = validation_split(review_sub, cfg.validation_fraction, cfg.seed)
    va = [review_idx[i] for i in va_local]
    tr = [review_idx[i] for i in tr_local]
    tr_pseudo = [i for i in range(len(sources)) if kinds[i] == "pseudo" and ok[i]]
    tr_original = [i for i in range(len(sources)) if kinds[i] == "original" and ok[i]]
    au = [i for i in range(len(sources)) if kinds[i] == "audit" and ok[i]]
    if not tr:
        raise ImproveError("no usable training images (all reviewed files failed to load)")
    weights = balanced_sample_weights(targets, extra_w, old_spec.num_outputs)
    quality = [sources[i][1].get("quality") for i in au]

    # ---- the old model on the audit set
    old_logits, old_feats = _predict(lm.net, old_spec, arrays[au], device)
    before = measure(old_spec, lm.extra, old_logits, old_feats, targets[au], quality, policy)

    def fresh_net():  # noqa: ANN202
        return copy.deepcopy(lm.net)  # the active model's weights, untouched by earlier fits

    # ---- optional: the reviews-only variant, to say whether self-learning helped
    self_learning: dict[str, Any] | None = None
    if cfg.self_learning:
        self_learning = {"pseudo_labels": len(tr_pseudo)}
        if tr_pseudo and au:
            base_net = _prepare(fresh_net(), old_spec, cfg)
            _finetune(
                base_net, old_spec, arrays, targets, weights, tr + tr_original, va, cfg,
                device, state, log, "[reviews only] ",
            )  # fmt: skip
            logits_wo, _ = predict_arrays(base_net, old_spec, arrays[au], device, True)
            self_learning["without"] = _quick(logits_wo, targets[au], old_spec)
            del base_net

    # ---- fine-tune
    net = _prepare(fresh_net(), old_spec, cfg)
    lora_info = getattr(net, "_eyetriage_lora", None)
    train_all = tr + tr_pseudo + tr_original
    fitted = _finetune(
        net, old_spec, arrays, targets, weights, train_all, va, cfg, device, state, log
    )
    save_tensors: dict[str, Any] = {}
    if cfg.strategy == "lora":
        from .. import lora

        save_tensors.update(lora.adapter_tensors(net))
        save_tensors.update({f"model.{k}": v for k, v in lora.classifier_state(net).items()})
        net = lora.merge(net)
    else:
        save_tensors.update({f"model.{k}": v for k, v in net.state_dict().items()})

    # ---- calibration and OOD statistics: refitted on enough images, else the parent's
    spec = copy.deepcopy(old_spec)
    warnings: list[str] = []
    new_ood, calibration = recalibrate(
        spec, lm.extra, net, arrays, targets, train_all, va, device, cfg.strategy, cfg.seed,
        log, warnings,
    )  # fmt: skip
    save_tensors.update(new_ood)
    new_logits, new_feats = _predict(net, spec, arrays[au], device)
    after = measure(spec, new_ood, new_logits, new_feats, targets[au], quality, policy)
    if self_learning is not None and "without" in self_learning:
        self_learning["with"] = _quick(new_logits, targets[au], spec)
        self_learning["helped"] = bool(
            (self_learning["with"]["balanced_accuracy"] or 0)
            > (self_learning["without"]["balanced_accuracy"] or 0)
        )
    val_metrics = (
        evaluate_arrays(spec, net, arrays[va], targets[va], device, True) if va else {"n": 0}
    )
    _refuse_collapsed(spec, net, arrays, targets, va + au, device)

    # ---- how many workspace images does each version find unfamiliar?
    state.check()
    t_check = time.monotonic()
    check_arrays, check_ok, _ = decode_images(
        check_paths, old_spec, state, "checking the workspace"
    )
    unfamiliar = ood_check(
        (lm.net, old_spec, ood_tensors(lm.extra)), (net, spec, new_ood), check_arrays[check_ok],
        device,
    )  # fmt: skip
    log(
        f"workspace check: {unfamiliar['after']} of {unfamiliar['n']} images unfamiliar to the "
        f"new version, {unfamiliar['before']} to the current one "
        f"({time.monotonic() - t_check:.1f} s)"
    )

    # ---- describe the new version
    old_prov = old_spec.provenance or {}
    family = old_prov.get("family") or old_spec.name or old_spec.arch
    generation = int(old_prov.get("generation") or 1) + 1
    created = datetime.now(UTC).isoformat(timespec="seconds")
    spec.name = f"{family} v{generation}"
    spec.metrics = {"audit": after, "audit_before": before, "validation": val_metrics}
    tr_set = set(tr)
    learnt = [r["review_id"] for r, i in zip(review_sub, review_idx, strict=True) if i in tr_set]
    spec.provenance = {
        "parent": parent,
        "family": family,
        "generation": generation,
        "created_at": created,
        "method": "improve",
        "strategy": cfg.strategy,
        "epochs": cfg.epochs,
        "epochs_run": fitted.epochs_run,
        "best_epoch": fitted.best_epoch or fitted.epochs_run,
        "selection": fitted.selection,
        "kept_weights": fitted.kept_weights,
        "history": fitted.history,
        "reviews": sorted(learnt),
        "last_review_id": max((r["review_id"] for r in rows), default=None),
        "validation_reviews": sorted(review_sub[i]["review_id"] for i in va_local),
        "counts": {
            "train": len(tr),
            "validation": len(va),
            "audit": len(au),
            "corrected": int(corrected[tr].sum()) if tr else 0,
            "pseudo_labels": len(tr_pseudo),
            "original_training_images": len(tr_original),
            "unusable_files": len(problems),
        },
        "audit_set": {"fraction": cfg.audit_fraction, "method": "sha256 of patient (or image)"},
        "calibration": calibration,
        "workspace_ood_check": unfamiliar,
        "config": cfg.to_dict(),
        "engine_version": _engine_version(),
        "torch_version": torch.__version__.split("+")[0],
        "original_training_data": old_prov.get("training_data")
        or old_prov.get("original_training_data"),
        "warnings": warnings,
    }
    if lora_info is not None:
        spec.provenance["lora"] = {**lora_info, "base": parent}
    if self_learning is not None:
        spec.provenance["self_learning"] = self_learning
    for w in warnings:
        log(f"WARNING: {w}")

    audit_ids = [sources[i][1].get("image_id") for i in au]
    paired = audit_answers(old_spec, spec, targets[au], old_logits, new_logits, audit_ids)
    result = {
        "before": before,
        "after": after,
        "audit_answers": paired,
        "ood_check": unfamiliar,
        "calibration": calibration,
        "parent": parent,
        "strategy": cfg.strategy,
        "n_train": len(train_all),
        "n_audit": len(au),
        "pseudo_labels": len(tr_pseudo),
        "epochs_run": fitted.epochs_run,
        "warnings": warnings,
    }
    if self_learning is not None:
        result["self_learning"] = self_learning
    verdict = judge(result)
    spec.provenance["verdict"] = {"decision": verdict.decision, "recommend": verdict.recommend}

    # ---- write the file atomically, then register it (one transaction), not active
    state.check()
    from ..fileio import atomic_write_bytes

    data = _serialise(spec, save_tensors)
    sha = hashlib.sha256(data).hexdigest()
    out = ws_folder / MODELS_DIR / f"{_slug(spec.name)}-{sha[:12]}.safetensors"
    atomic_write_bytes(out, data)
    state.check()
    changed = _changed(sources, au, paired, spec)
    seconds = time.monotonic() - t0
    with open_workspace(ws_folder) as ws:
        ws.register_model(
            sha,
            out,
            spec.name,
            parent=parent,
            created_at=created,
            metrics=spec.metrics,
            description=json.loads(spec.to_json()),
            activate=False,
        )
        summary = {
            "hash": sha,
            "parent": parent,
            "strategy": cfg.strategy,
            "n_train": len(train_all),
            "n_audit": len(au),
            "before": _short(before),
            "after": _short(after),
            "verdict": verdict.decision,
            "seconds": round(seconds, 1),
        }
        ws.audit(ACTOR, "improve.candidate", summary)
    log(
        f"new version {sha[:12]} ({out.name}, {len(data) / 1e6:.2f} MB): audit balanced accuracy "
        f"{_fmt(before.get('balanced_accuracy'))} -> {_fmt(after.get('balanced_accuracy'))}"
    )
    result.update(
        model=sha,
        model_path=str(out),
        changed=changed,
        seconds=round(seconds, 2),
        file_bytes=len(data),
        verdict=verdict.to_dict(),
    )
    return result


def _finetune(
    net: torch.nn.Module,
    spec: ModelSpec,
    arrays: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    tr: list[int],
    va: list[int],
    cfg: ImproveConfig,
    device: torch.device,
    state: TaskState,
    log: Log,
    label: str = "",
) -> FitResult:
    """The shared training loop with a fine-tune's settings and per-image weights.

    The kept epoch is chosen like ``train`` chooses it (:class:`engine.recipe.ScoreSelector`:
    the task's score on the validation reviews, an average of the weights competing) unless
    ``cfg.selection`` is "loss": a loss that falls while every image drifts to one class no
    longer decides what is offered.
    """
    from ..fit import FitConfig, WeightedLoss, fit
    from ..recipe import ScoreSelector

    fit_cfg = FitConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr or DEFAULT_LR[cfg.strategy],
        weight_decay=1e-4,
        patience=cfg.patience,
        seed=cfg.seed,
        amp=True,
        strategy=cfg.strategy,
        min_epoch_samples=MIN_EPOCH_SAMPLES,
    )
    on_step = state.training_step if isinstance(state, ImproveState) else None
    loss = WeightedLoss(spec.task)
    selector = ScoreSelector(spec.task, cfg.patience) if cfg.selection == "score" else None
    return fit(
        net, spec, arrays, targets, tr, va, loss, fit_cfg, device, state, log,
        weights=weights, label=label, on_step=on_step, selector=selector,
    )  # fmt: skip


def _refuse_collapsed(
    spec: ModelSpec,
    net: torch.nn.Module,
    arrays: np.ndarray,
    targets: np.ndarray,
    idx: list[int],
    device: torch.device,
) -> None:
    """Raise :class:`ImproveCollapsed` when the fine-tune calls nearly every image one class.

    Judged on the reviewed images it did not learn from (validation and audit), by the rule
    ``train`` uses (:func:`engine.recipe.collapse_message`), once there are enough of them
    for the verdict to judge at all.
    """
    import numpy as np

    from ..recipe import collapse_message
    from .measure import answers
    from .verdict import MIN_AUDIT_IMAGES

    if len(idx) < MIN_AUDIT_IMAGES:
        return
    logits, _ = _predict(net, spec, arrays[idx], device)
    k = spec.num_outputs
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (targets[idx], np.asarray(answers(spec, logits), dtype=np.int64)), 1)
    words = collapse_message(spec.labels, confusion, "the reviewed images it did not learn from")
    if words:
        raise ImproveCollapsed(
            f"The fine-tuned model was not offered: {words}. Nothing was written; the current "
            "model stays active. Review more images of the other classes, or try another "
            "strategy."
        )


def _predict(
    net: torch.nn.Module, spec: ModelSpec, arrays: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    from ..fit import predict_arrays

    if len(arrays) == 0:
        return np.zeros((0, spec.num_outputs), np.float32), np.zeros((0, 0), np.float32)
    return predict_arrays(net, spec, arrays, device, True)


def _prepare(net: torch.nn.Module, spec: ModelSpec, cfg: ImproveConfig) -> torch.nn.Module:
    """Make the network ready for the strategy (LoRA: inject adapters, remember settings)."""
    if cfg.strategy != "lora":
        return net
    from .. import lora

    try:
        info = lora.lora_settings(net, spec.arch)
    except lora.LoraError as e:
        raise ImproveError(str(e)) from None
    net = lora.inject(net, info)
    net._eyetriage_lora = info  # noqa: SLF001 - recorded in the new file's description
    return net


def _quick(logits: np.ndarray, y: np.ndarray, spec: ModelSpec) -> dict:
    from ..metrics import balanced_accuracy

    pred = logits.argmax(1)
    return {
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "balanced_accuracy": balanced_accuracy(y, pred, spec.num_outputs) if len(y) else None,
    }


def _changed(sources: list, au: list[int], paired: dict, spec: ModelSpec) -> list[dict]:
    """Audit images whose answer changed, with the reviewer's answer."""
    out = []
    for j, i in enumerate(au):
        a, b, t = paired["before"][j], paired["after"][j], paired["truth"][j]
        if a != b:
            row = sources[i][1]
            out.append(
                {
                    "image_id": row.get("image_id"),
                    "path": row["path"],
                    "before": spec.labels[a],
                    "after": spec.labels[b],
                    "truth": spec.labels[t],
                }
            )
    return out


def _short(m: dict) -> dict:
    return {k: m.get(k) for k in ("n", "accuracy", "balanced_accuracy", "review_workload")}


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "model"


def _engine_version() -> str:
    from .. import __version__

    return __version__


def _serialise(spec: ModelSpec, tensors: dict) -> bytes:
    from safetensors.torch import save

    from ..modelfile import METADATA_KEY

    spec.validate()
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(clean, metadata={METADATA_KEY: spec.to_json()})
