"""Improve the active model from reviewers' labels, safely.

:func:`improve` fine-tunes the workspace's active model on the reviewed images (current
labels; ungradable and skipped excluded), weighting the images a reviewer corrected, and
writes a new, immutable model version that is registered but **not** made active. Old and
new are measured on a fixed **audit set**: a deterministic share of reviewed images chosen
by the hash of the patient (or of the image when no patient is known), never trained on.
:func:`accept` makes a version active, :func:`reject` marks it so it is never offered again,
:func:`rollback` returns to an earlier version; every step is written to the audit log.

:class:`ImproveProcess` runs :func:`improve` in a child process (``eyetriage --worker
improve ...``) that reports progress as JSON lines and can be killed with its whole process
tree without touching the store: the new version is registered only after its file is
complete, in one transaction.

Only the standard library is imported at module level, so :func:`review_status` (which the
desktop calls to enable its button) is cheap.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tasks import TaskState, format_eta

if TYPE_CHECKING:
    import numpy as np

    from .modelfile import ModelSpec
    from .store import Workspace

Log = Callable[[str], None]
STRATEGIES = ("full", "head", "lora")
DEFAULT_LR = {"full": 3e-4, "head": 1e-3, "lora": 1e-3}
MIN_EPOCH_SAMPLES = 64  # tiny review sets are repeated so an epoch has a few steps
MAX_PSEUDO_LABELS = 2000
MODELS_DIR = "models"
ACTOR = "improve"


class ImproveError(Exception):
    """Improvement could not run or finish; the message says why in words."""


class ImproveCancelled(ImproveError):
    """The user cancelled the improvement; nothing was changed."""


@dataclass
class ImproveConfig:
    """Settings of one improvement run (the dialog's and the CLI's options)."""

    epochs: int = 5
    strategy: str = "head"  # "full" | "head" | "lora"
    audit_fraction: float = 0.25
    corrected_weight: float = 2.0
    min_new_reviews: int = 20
    include_training_data: bool = False
    self_learning: bool = False
    pseudo_threshold: float = 0.95
    pseudo_weight: float = 0.3
    seed: int = 0
    batch_size: int = 16
    lr: float | None = None
    device: str = "auto"
    training_data: str | None = None  # folder of class folders: the original training data
    patience: int = 3
    validation_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ImproveError(
                f"unknown strategy {self.strategy!r}; choose {', '.join(STRATEGIES)}"
            )
        if self.epochs < 1:
            raise ImproveError("epochs must be at least 1")
        if not 0.0 < self.audit_fraction < 1.0:
            raise ImproveError("the audit fraction must lie strictly between 0 and 1")
        if self.corrected_weight <= 0 or self.pseudo_weight <= 0:
            raise ImproveError("sample weights must be positive")
        if not 0.0 < self.pseudo_threshold <= 1.0:
            raise ImproveError("the pseudo-label threshold must lie in (0, 1]")
        if self.batch_size < 1:
            raise ImproveError("batch size must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImproveConfig:
        """Build from a dict; unknown keys are ignored (settings from a newer program)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


class ImproveState(TaskState):
    """A :class:`TaskState` that also reports structured training progress as events.

    ``on_event`` receives ``{"event": "progress", "done", "total", "epoch", "loss",
    "eta_s", "message"}`` dicts (throttled like ``progress``).
    """

    def __init__(
        self, on_event: Callable[[dict], None] | None = None, min_interval: float = 0.25
    ) -> None:
        super().__init__(None, min_interval)
        self.on_event = on_event
        self.epoch: int | None = None
        self.loss: float | None = None
        self.eta_s: float | None = None

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.done, self.total, self.message = done, total, message
        now = time.monotonic()
        if self.on_event and (done >= total or now - self._last >= self._min_interval):
            self._last = now
            self.on_event(
                {
                    "event": "progress",
                    "done": done,
                    "total": total,
                    "epoch": self.epoch,
                    "loss": self.loss,
                    "eta_s": self.eta_s,
                    "message": message,
                }
            )


# --------------------------------------------------------------------------- reviews


def _open(ws_folder: str | os.PathLike) -> Workspace:
    from .store import Workspace

    return Workspace.open(ws_folder, create=False)


def _model_labels(model_row: dict) -> list[str]:
    return list((model_row.get("description") or {}).get("labels") or [])


def _usable_reviews(ws: Workspace, labels: list[str], model_hash: str | None) -> list[dict]:
    """Reviewed images with one current label the model knows (ungradable/skip excluded)."""
    images = {r["id"]: r for r in ws.images()}
    ai = {}
    if model_hash:
        ai = {p["image_id"]: p.get("label") for p in ws.latest_predictions(model_hash)}
    reviewed = sorted({r["image_id"] for r in ws.reviews()})
    known = set(labels)
    rows = []
    for image_id in reviewed:
        review = ws.current_review(image_id)
        if review is None or review["action"] not in ("confirm", "correct"):
            continue
        if len(review["labels"]) != 1 or review["labels"][0] not in known:
            continue
        image = images[image_id]
        rows.append(
            {
                "image_id": image_id,
                "path": image["path"],
                "patient": image["patient"],
                "sha256": image["sha256"],
                "label": review["labels"][0],
                "review_id": review["id"],
                "reviewed_at": review["created_at"],
                "ai_label": ai.get(image_id),
            }
        )
    return rows


def _split_key(row: dict) -> str:
    patient = row.get("patient")
    return f"patient:{patient}" if patient not in (None, "") else f"image:{row.get('sha256')}"


def _unit_hash(key: str, salt: str = "audit") -> float:
    digest = hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def audit_split(rows: list[dict], fraction: float = 0.25) -> tuple[list[dict], list[dict]]:
    """Split reviewed rows into ``(train, audit)``, deterministically and by patient.

    A row goes to the audit set when the sha256 of its patient key (``patient:<id>``, or
    ``image:<sha256>`` when no patient is known) maps below ``fraction`` in [0, 1). The same
    patient always lands on the same side, and adding reviews never moves an image between
    sides, so the audit set is fixed and is never trained on.
    """
    train, audit = [], []
    for row in rows:
        (audit if _unit_hash(_split_key(row)) < fraction else train).append(row)
    return train, audit


def review_status(
    ws_folder: str | os.PathLike, min_new_reviews: int = 20, audit_fraction: float = 0.25
) -> dict:
    """What the Improve button needs: how many usable reviews are new since the active model.

    ``new_reviews`` counts usable reviews (current single labels the model knows) made after
    the active model was registered in the workspace (for an improved version: after the
    reviews it was trained from were read); ``audit_n`` / ``train_n`` split all
    usable reviews; ``enough`` is ``new_reviews >= min_new_reviews``.
    """
    with _open(ws_folder) as ws:
        active = ws.active_model()
        if active is None:
            return {
                "active_model": None,
                "new_reviews": 0,
                "reviewed_total": 0,
                "audit_n": 0,
                "train_n": 0,
                "enough": False,
                "min_new_reviews": min_new_reviews,
            }
        rows = _usable_reviews(ws, _model_labels(active), None)
    prov = (active.get("description") or {}).get("provenance") or {}
    last_id = prov.get("last_review_id")
    if isinstance(last_id, int):  # an improved version: reviews after its data snapshot
        new = [r for r in rows if r["review_id"] > last_id]
    else:  # a version made elsewhere: reviews after it was registered here
        since = active.get("registered_at") or ""
        new = [r for r in rows if r["reviewed_at"] > since]
    train, audit = audit_split(rows, audit_fraction)
    return {
        "active_model": active["hash"],
        "new_reviews": len(new),
        "reviewed_total": len(rows),
        "audit_n": len(audit),
        "train_n": len(train),
        "enough": len(new) >= min_new_reviews,
        "min_new_reviews": min_new_reviews,
    }


# --------------------------------------------------------------------------- data


def _decode(paths: list[str], spec: ModelSpec, state: TaskState, message: str):  # noqa: ANN202
    """(arrays, ok_mask, problems) for the given files with the model's preprocessing."""
    import numpy as np

    from .images import decode_for_model
    from .pipeline import iter_decoded_batches

    size = spec.input_size
    arrays = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    problems: list[str] = []

    def decode(p: Path):  # noqa: ANN202
        return decode_for_model(p, size, spec.modality, spec.preprocessing)

    for b in iter_decoded_batches([Path(p) for p in paths], decode, 32, None, state):
        if b.arrays is not None:
            arrays[b.indices] = b.arrays
            ok[b.indices] = True
        problems += [f"{Path(paths[i]).name}: {reason}" for i, reason in b.errors]
        state.progress(b.stop, len(paths), message)
    state.check()
    return arrays, ok, problems


def _pseudo_rows(
    ws: Workspace, spec: ModelSpec, model_hash: str, exclude_ids: set[int], patients: set[str]
) -> list[dict]:
    """Unreviewed images the active model is very sure about (not OOD, quality not failed)."""
    rows = []
    for p in ws.latest_predictions(model_hash):
        if p["image_id"] in exclude_ids or p.get("review") is not None or p.get("stale"):
            continue
        if p.get("patient") and p["patient"] in patients:
            continue  # keep the audit patients' images out of training altogether
        if p["triage"] == "error" or p.get("ood") or p.get("quality_ok") == 0:
            continue
        if p.get("label") not in spec.labels or p.get("confidence") is None:
            continue
        rows.append(
            {
                "image_id": p["image_id"],
                "path": p["path"],
                "patient": p.get("patient"),
                "sha256": p["image_sha256"],
                "label": p["label"],
                "confidence": float(p["confidence"]),
            }
        )
    return rows


def _training_data_rows(cfg: ImproveConfig, spec: ModelSpec, audit_rows: list[dict], log: Log):  # noqa: ANN202
    """The model's original training data (a folder of class folders), audit patients removed."""
    if not cfg.include_training_data:
        return []
    root = cfg.training_data or (spec.provenance.get("training_data") or {}).get("root")
    if not root or not Path(root).is_dir():
        log("original training data: location unknown or missing; using the reviews only")
        return []
    from .data import load_folder_dataset

    ds = load_folder_dataset(root)
    audit_patients = {r["patient"] for r in audit_rows if r.get("patient")}
    audit_paths = {str(Path(r["path"]).resolve()) for r in audit_rows}
    rows = []
    for s in ds.samples:
        label = ds.labels[int(s.target)]
        if label not in spec.labels or str(s.path.resolve()) in audit_paths:
            continue
        patient = s.group.split(":", 1)[1] if s.group.startswith("patient:") else None
        if patient and patient in audit_patients:
            continue
        rows.append({"path": str(s.path), "patient": patient, "label": label, "sha256": ""})
    log(f"original training data: {len(rows)} images from {Path(root).name}")
    return rows


def _validation_split(rows: list[dict], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation) of the training reviews, by patient, per class."""
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r["label"], []).append(i)
    tr, va = [], []
    for idx in by_label.values():
        keyed = sorted(idx, key=lambda i: _unit_hash(_split_key(rows[i]), f"val{seed}"))
        n_val = round(len(idx) * fraction) if len(idx) >= 3 else 0
        cut = {_split_key(rows[i]) for i in keyed[:n_val]}
        for i in idx:
            (va if _split_key(rows[i]) in cut else tr).append(i)
    return sorted(tr), sorted(va)


# --------------------------------------------------------------------------- training


def _weighted_loss(logits, y, w, task: str, ordinal_weight: float = 0.5):  # noqa: ANN001, ANN202
    """Per-sample weighted cross-entropy (plus the ordinal distance term)."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, y, reduction="none")
    if task == "ordinal":
        p = torch.softmax(logits.float(), dim=1)
        grades = torch.arange(logits.shape[1], device=logits.device).float()
        dist = (grades.view(1, -1) - y.float().view(-1, 1)) ** 2
        ce = ce + ordinal_weight * (p * dist).sum(1)
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


def _sample_weights(targets, extra, n_out: int):  # noqa: ANN001, ANN202
    """Class balance (inverse frequency, mean 1) times each image's own weight."""
    import numpy as np

    counts = np.bincount(targets, minlength=n_out).astype(np.float64)
    cw = np.where(counts > 0, len(targets) / (n_out * np.maximum(counts, 1)), 0.0)
    return (cw[targets] * extra).astype(np.float32)


def _epoch_batches(n: int, bs: int, g) -> list:  # noqa: ANN001
    import torch

    reps = max(1, math.ceil(MIN_EPOCH_SAMPLES / max(n, 1)))
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])
    return [order[i : i + bs] for i in range(0, len(order), bs)]


def _fit(
    net,  # noqa: ANN001
    spec: ModelSpec,
    arrays: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    tr: list[int],
    va: list[int],
    cfg: ImproveConfig,
    device,  # noqa: ANN001
    state: TaskState,
    log: Log,
    label: str = "",
) -> tuple[list[dict], int]:
    """Fine-tune in place with early stopping on the validation reviews; returns history."""
    import torch

    from .models import autocast_for
    from .train import Augmenter, _normalise, _to_input, predict_arrays

    strategy = cfg.strategy
    if strategy == "head":
        head = {id(p) for p in net.get_classifier().parameters()}
        for p in net.parameters():
            p.requires_grad = id(p) in head
    elif strategy == "full":
        for p in net.parameters():
            p.requires_grad = True
    params = [p for p in net.parameters() if p.requires_grad]
    lr = cfg.lr or DEFAULT_LR[strategy]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(cfg.seed)
    aug = Augmenter(spec.modality, g)
    batches_per_epoch = len(_epoch_batches(len(tr), cfg.batch_size, torch.Generator()))
    total = max(1, batches_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    x_train = torch.from_numpy(arrays[tr])
    y_train = torch.from_numpy(targets[tr]).long()
    w_train = torch.from_numpy(weights[tr])
    y_val = torch.from_numpy(targets[va]).long()
    w_val = torch.from_numpy(weights[va])
    best: tuple[float, dict | None, int] = (math.inf, None, 0)
    history: list[dict] = []
    bad, step, t0 = 0, 0, time.monotonic()
    amp = True
    for epoch in range(cfg.epochs):
        if strategy == "full":
            net.train()
        else:  # frozen backbone: keep its BatchNorm statistics and dropout as they are
            net.eval()
            net.get_classifier().train()
        running, seen = 0.0, 0
        for idx in _epoch_batches(len(tr), cfg.batch_size, g):
            state.check()
            x = _normalise(aug(_to_input(x_train[idx], spec, device)), spec)
            with autocast_for(device, amp):
                logits = net(x)
            loss = _weighted_loss(
                logits.float(), y_train[idx].to(device), w_train[idx].to(device), spec.task
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            if step < total - 1:
                sched.step()
            step += 1
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            eta = (time.monotonic() - t0) / step * (total - step)
            if isinstance(state, ImproveState):
                state.epoch, state.loss, state.eta_s = epoch + 1, running / seen, round(eta, 1)
            state.progress(
                step,
                total,
                f"{label}epoch {epoch + 1}/{cfg.epochs} loss {running / seen:.4f} "
                f"ETA {format_eta(eta)}",
            )
        entry = {"epoch": epoch + 1, "train_loss": running / max(1, seen)}
        if va:
            val_logits, _ = predict_arrays(net, spec, arrays[va], device, amp)
            vl = torch.from_numpy(val_logits).float()
            entry["val_loss"] = float(_weighted_loss(vl, y_val, w_val, spec.task))
            entry["val_accuracy"] = float((val_logits.argmax(1) == targets[va]).mean())
            log(
                f"{label}epoch {epoch + 1}/{cfg.epochs}: train loss {entry['train_loss']:.4f}  "
                f"val loss {entry['val_loss']:.4f}  val acc {entry['val_accuracy']:.3f}"
            )
            if entry["val_loss"] < best[0] - 1e-4:
                state_copy = {k: v.detach().clone() for k, v in net.state_dict().items()}
                best, bad = (entry["val_loss"], state_copy, epoch + 1), 0
            else:
                bad += 1
        history.append(entry)
        if va and bad >= cfg.patience:
            log(f"{label}early stop: no validation improvement for {cfg.patience} epochs")
            break
    if best[1] is not None:
        net.load_state_dict(best[1])
        log(f"{label}restored the best weights (epoch {best[2]}, val loss {best[0]:.4f})")
    net.eval()
    return history, best[2] or len(history)


# --------------------------------------------------------------------------- measuring


def _policy_for(ws: Workspace, model_hash: str) -> dict:
    """The triage policy of the active model's latest screening run (default: 0.85)."""
    from .triage import TriagePolicy

    policy = TriagePolicy().to_dict()
    runs = [r for r in ws.runs() if r["model_hash"] == model_hash]
    for r in reversed(runs):
        p = (r.get("settings") or {}).get("policy")
        if isinstance(p, dict):
            policy.update(p)
            break
    return policy


def _review_workload(spec: ModelSpec, probs: np.ndarray, policy: dict) -> float | None:
    """Share of images the triage policy would send to review (top prob / conformal set)."""
    import numpy as np

    if len(probs) == 0:
        return None
    need = probs.max(1) < float(policy.get("threshold", 0.85))
    if policy.get("kind") == "conformal" and spec.conformal:
        from .conformal import ConformalCalibrator, prediction_sets

        sets = prediction_sets(probs, ConformalCalibrator.from_dict(spec.conformal))
        need = sets.sum(1) > 1
    if policy.get("refer_findings") and spec.negative_label in spec.labels:
        need = need | (probs.argmax(1) != spec.labels.index(spec.negative_label))
    return float(np.mean(need))


def _measure(spec: ModelSpec, logits: np.ndarray, y: np.ndarray, policy: dict) -> dict:
    from .calibration import softmax
    from .metrics import evaluate_predictions

    if len(y) == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "review_workload": None}
    probs = softmax(logits, spec.temperature)
    m = evaluate_predictions(y, probs, spec.task, spec.labels)
    m["review_workload"] = _review_workload(spec, probs, policy)
    return m


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "model"


def _serialise(spec: ModelSpec, tensors: dict) -> bytes:
    from safetensors.torch import save

    from .modelfile import METADATA_KEY

    spec.validate()
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return save(clean, metadata={METADATA_KEY: spec.to_json()})


# --------------------------------------------------------------------------- improve


def improve(
    ws_folder: str | os.PathLike,
    config: ImproveConfig,
    state: TaskState | None = None,
    log: Log = print,
) -> dict:
    """Fine-tune the active model on the reviews and offer the result as a new version.

    Returns old vs new on the audit set (``before``/``after``), the new ``model`` hash and
    ``model_path``, its ``parent``, the audit images whose answer ``changed``, timings and
    counts. The new version is registered in the workspace but not made active.
    """
    import numpy as np
    import torch

    from . import __version__
    from .models import load_model, pick_device
    from .store import StoreError
    from .train import TrainConfig, evaluate_arrays, finalise_spec, predict_arrays, seed_everything

    t0 = time.monotonic()
    state = state or TaskState()
    cfg = config
    ws_folder = Path(ws_folder)
    try:
        ws = _open(ws_folder)
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
        rows = _usable_reviews(ws, old_spec.labels, parent)
        train_rows, audit_rows = audit_split(rows, cfg.audit_fraction)
        audit_patients = {r["patient"] for r in audit_rows if r.get("patient")}
        pseudo: list[dict] = []
        if cfg.self_learning:
            exclude = {r["image_id"] for r in rows}
            candidates = _pseudo_rows(ws, old_spec, parent, exclude, audit_patients)
            pseudo = [c for c in candidates if c["confidence"] >= cfg.pseudo_threshold]
            pseudo.sort(key=lambda r: (-r["confidence"], r["image_id"]))
            pseudo = pseudo[:MAX_PSEUDO_LABELS]
        policy = _policy_for(ws, parent)
    original = _training_data_rows(cfg, old_spec, audit_rows, log)
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
    arrays, ok, problems = _decode([r["path"] for _, r in sources], old_spec, state, "decoding")
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
    tr_local, va_local = _validation_split(review_sub, cfg.validation_fraction, cfg.seed)
    va = [review_idx[i] for i in va_local]
    tr = [review_idx[i] for i in tr_local]
    tr_pseudo = [i for i in range(len(sources)) if kinds[i] == "pseudo" and ok[i]]
    tr_original = [i for i in range(len(sources)) if kinds[i] == "original" and ok[i]]
    au = [i for i in range(len(sources)) if kinds[i] == "audit" and ok[i]]
    if not tr:
        raise ImproveError("no usable training images (all reviewed files failed to load)")
    weights = _sample_weights(targets, extra_w, old_spec.num_outputs)

    # ---- the old model on the audit set
    amp = True
    old_logits, _ = (
        predict_arrays(lm.net, old_spec, arrays[au], device, amp)
        if au
        else (
            np.zeros((0, old_spec.num_outputs)),
            None,
        )
    )
    before = _measure(old_spec, old_logits, targets[au], policy)

    def fresh_net():  # noqa: ANN202
        return copy.deepcopy(lm.net)  # the active model's weights, untouched by earlier fits

    # ---- optional: the reviews-only variant, to say whether self-learning helped
    self_learning: dict[str, Any] | None = None
    if cfg.self_learning:
        self_learning = {"pseudo_labels": len(tr_pseudo)}
        if tr_pseudo and au:
            base_net = _prepare(fresh_net(), old_spec, cfg)
            _fit(
                base_net,
                old_spec,
                arrays,
                targets,
                weights,
                tr + tr_original,
                va,
                cfg,
                device,
                state,
                log,
                "[reviews only] ",
            )
            logits_wo, _ = predict_arrays(base_net, old_spec, arrays[au], device, amp)
            self_learning["without"] = _quick(logits_wo, targets[au], old_spec)
            del base_net

    # ---- fine-tune
    net = _prepare(fresh_net(), old_spec, cfg)
    lora_info = getattr(net, "_eyetriage_lora", None)
    train_all = tr + tr_pseudo + tr_original
    history, best_epoch = _fit(
        net, old_spec, arrays, targets, weights, train_all, va, cfg, device, state, log
    )
    save_tensors: dict[str, Any] = {}
    if cfg.strategy == "lora":
        from . import lora

        save_tensors.update(lora.adapter_tensors(net))
        save_tensors.update({f"model.{k}": v for k, v in lora.classifier_state(net).items()})
        net = lora.merge(net)
    else:
        save_tensors.update({f"model.{k}": v for k, v in net.state_dict().items()})

    # ---- recalibrate: temperature, conformal threshold, referral curve, OOD statistics
    spec = copy.deepcopy(old_spec)
    warnings: list[str] = []
    alpha = float((old_spec.conformal or {}).get("alpha", 0.1))
    tcfg = TrainConfig(seed=cfg.seed, amp=amp, conformal_alpha=alpha)
    calib_va = va or tr
    if not va:
        warnings.append("no validation reviews: calibrated on the training reviews")
    ood_tensors = finalise_spec(
        spec, net, arrays, targets, train_all, calib_va, device, tcfg, log, warnings
    )
    save_tensors.update(ood_tensors)
    new_logits, _ = (
        predict_arrays(net, spec, arrays[au], device, amp)
        if au
        else (
            np.zeros((0, spec.num_outputs)),
            None,
        )
    )
    after = _measure(spec, new_logits, targets[au], policy)
    if self_learning is not None and "without" in self_learning:
        self_learning["with"] = _quick(new_logits, targets[au], spec)
        self_learning["helped"] = bool(
            (self_learning["with"]["balanced_accuracy"] or 0)
            > (self_learning["without"]["balanced_accuracy"] or 0)
        )
    val_metrics = (
        evaluate_arrays(spec, net, arrays[va], targets[va], device, amp) if va else {"n": 0}
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
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "history": history,
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
        "config": cfg.to_dict(),
        "engine_version": __version__,
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

    # ---- write the file atomically, then register it (one transaction), not active
    state.check()
    from .modelfile import atomic_write_bytes

    data = _serialise(spec, save_tensors)
    sha = hashlib.sha256(data).hexdigest()
    out = ws_folder / MODELS_DIR / f"{_slug(spec.name)}-{sha[:12]}.safetensors"
    atomic_write_bytes(out, data)
    state.check()
    with _open(ws_folder) as ws:
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
        changed = _changed(audit_rows, au, old_logits, new_logits, spec, sources, targets)
        seconds = time.monotonic() - t0
        summary = {
            "hash": sha,
            "parent": parent,
            "strategy": cfg.strategy,
            "n_train": len(train_all),
            "n_audit": len(au),
            "before": _short(before),
            "after": _short(after),
            "seconds": round(seconds, 1),
        }
        ws.audit(ACTOR, "improve.candidate", summary)
    log(
        f"new version {sha[:12]} ({out.name}, {len(data) / 1e6:.2f} MB): audit balanced accuracy "
        f"{_fmt(before.get('balanced_accuracy'))} -> {_fmt(after.get('balanced_accuracy'))}"
    )
    result = {
        "before": before,
        "after": after,
        "model": sha,
        "model_path": str(out),
        "parent": parent,
        "changed": changed,
        "seconds": round(seconds, 2),
        "strategy": cfg.strategy,
        "n_train": len(train_all),
        "n_audit": len(au),
        "pseudo_labels": len(tr_pseudo),
        "file_bytes": len(data),
        "epochs_run": len(history),
        "warnings": warnings,
    }
    if self_learning is not None:
        result["self_learning"] = self_learning
    return result


def _prepare(net, spec: ModelSpec, cfg: ImproveConfig):  # noqa: ANN001, ANN202
    """Make the network ready for the strategy (LoRA: inject adapters, remember settings)."""
    if cfg.strategy != "lora":
        return net
    from . import lora

    try:
        info = lora.lora_settings(net, spec.arch)
    except lora.LoraError as e:
        raise ImproveError(str(e)) from None
    net = lora.inject(net, info)
    net._eyetriage_lora = info  # noqa: SLF001 - recorded in the new file's description
    return net


def _quick(logits: np.ndarray, y: np.ndarray, spec: ModelSpec) -> dict:
    from .metrics import balanced_accuracy

    pred = logits.argmax(1)
    return {
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "balanced_accuracy": balanced_accuracy(y, pred, spec.num_outputs) if len(y) else None,
    }


def _changed(audit_rows, au, old_logits, new_logits, spec, sources, targets) -> list[dict]:  # noqa: ANN001
    out = []
    for j, i in enumerate(au):
        a, b = int(old_logits[j].argmax()), int(new_logits[j].argmax())
        if a != b:
            row = sources[i][1]
            out.append(
                {
                    "image_id": row.get("image_id"),
                    "path": row["path"],
                    "before": spec.labels[a],
                    "after": spec.labels[b],
                    "truth": spec.labels[int(targets[i])],
                }
            )
    return out


def _short(m: dict) -> dict:
    return {k: m.get(k) for k in ("n", "accuracy", "balanced_accuracy", "review_workload")}


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


# --------------------------------------------------------------------------- decisions


def _resolve(ws: Workspace, model_hash: str) -> dict:
    matches = [m for m in ws.models() if m["hash"].startswith(model_hash or "\0")]
    if len(matches) != 1:
        raise ImproveError(
            f"{model_hash}: {'no' if not matches else 'more than one'} model version matches"
        )
    return matches[0]


def _decisions(ws: Workspace) -> tuple[dict[str, str], set[str]]:
    """Latest accept/reject per hash, and every hash that was ever made active."""
    decided: dict[str, str] = {}
    activated: set[str] = set()
    for e in ws.audit_log():
        d = e.get("details") or {}
        if not isinstance(d, dict):
            continue
        if e["action"] in ("improve.accept", "improve.reject") and d.get("hash"):
            decided[d["hash"]] = e["action"].split(".", 1)[1] + "ed"
        elif e["action"] == "set_active_model" and d.get("hash"):
            activated.add(d["hash"])
    return decided, activated


def _status(row: dict, decided: dict[str, str], activated: set[str]) -> str:
    if row["hash"] in decided:
        return decided[row["hash"]]
    if not row.get("parent"):
        return "original"
    return "accepted" if row["hash"] in activated or row.get("active") else "candidate"


def accept(ws_folder: str | os.PathLike, model_hash: str, actor: str) -> None:
    """Make a candidate version active (audited ``improve.accept``)."""
    with _open(ws_folder) as ws:
        row = _resolve(ws, model_hash)
        decided, _ = _decisions(ws)
        if decided.get(row["hash"]) == "rejected":
            raise ImproveError(f"version {row['hash'][:12]} was rejected; it cannot be accepted")
        if row.get("path") and not Path(row["path"]).is_file():
            raise ImproveError(f"the file of version {row['hash'][:12]} is missing")
        previous = ws.active_model()
        ws.set_active_model(row["hash"], actor=actor)
        ws.audit(
            actor,
            "improve.accept",
            {"hash": row["hash"], "previous": previous["hash"] if previous else None},
        )


def reject(ws_folder: str | os.PathLike, model_hash: str, actor: str) -> None:
    """Mark a candidate version rejected (audited ``improve.reject``); its file is kept."""
    with _open(ws_folder) as ws:
        row = _resolve(ws, model_hash)
        if row.get("active"):
            raise ImproveError(
                f"version {row['hash'][:12]} is the active model; roll back to another first"
            )
        ws.audit(actor, "improve.reject", {"hash": row["hash"], "parent": row.get("parent")})


def rollback(ws_folder: str | os.PathLike, model_hash: str, actor: str) -> None:
    """Make an earlier (original or accepted) version active again (audited)."""
    with _open(ws_folder) as ws:
        row = _resolve(ws, model_hash)
        decided, activated = _decisions(ws)
        status = _status(row, decided, activated)
        if status == "rejected":
            raise ImproveError(f"version {row['hash'][:12]} was rejected; it cannot become active")
        if status == "candidate":
            raise ImproveError(
                f"version {row['hash'][:12]} was never accepted; accept it instead of rolling back"
            )
        previous = ws.active_model()
        ws.set_active_model(row["hash"], actor=actor)
        ws.audit(
            actor,
            "improve.rollback",
            {"hash": row["hash"], "previous": previous["hash"] if previous else None},
        )


def model_history(ws_folder: str | os.PathLike) -> list[dict]:
    """Every model version, oldest first, with its audit-set metrics and status.

    ``status`` is ``original`` (no parent), ``candidate`` (offered, undecided), ``accepted``
    or ``rejected``.
    """
    with _open(ws_folder) as ws:
        rows = ws.models()
        decided, activated = _decisions(ws)
    out = []
    for r in rows:
        desc = r.get("description") or {}
        prov = desc.get("provenance") or {}
        metrics = r.get("metrics") or {}
        path = Path(r["path"]) if r.get("path") else None
        out.append(
            {
                "hash": r["hash"],
                "name": r.get("name"),
                "path": r.get("path"),
                "parent": r.get("parent"),
                "created_at": r.get("created_at"),
                "registered_at": r.get("registered_at"),
                "active": bool(r.get("active")),
                "strategy": prov.get("strategy"),
                "metrics": metrics.get("audit"),
                "metrics_before": metrics.get("audit_before"),
                "n_train": (prov.get("counts") or {}).get("train"),
                "epochs_run": prov.get("epochs_run"),
                "lora_base": (prov.get("lora") or {}).get("base"),
                "file_bytes": path.stat().st_size if path and path.is_file() else None,
                "status": _status(r, decided, activated),
            }
        )
    return out


def candidates(ws_folder: str | os.PathLike) -> list[dict]:
    """Versions offered but neither accepted nor rejected (newest last)."""
    return [h for h in model_history(ws_folder) if h["status"] == "candidate"]


# --------------------------------------------------------------------------- child process


def worker_command(args: list[str]) -> list[str]:
    """The command that runs ``--worker ARGS``: the frozen executable itself, or ``-m engine``."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--worker", *args]
    return [sys.executable, "-m", "engine", "--worker", *args]


class ImproveProcess:
    """Run :func:`improve` in a child process with line-by-line JSON progress.

    ``on_event`` is called (from a reader thread) with every event dict the child prints:
    ``progress``, ``log``, ``done`` or ``error``. :meth:`cancel` kills the child's whole
    process tree; a child that dies for any reason leaves the store unchanged.
    """

    def __init__(
        self,
        ws_folder: str | os.PathLike,
        config: ImproveConfig,
        on_event: Callable[[dict], None] | None = None,
    ) -> None:
        self.ws_folder = Path(ws_folder).expanduser().resolve()
        self.config = config
        self.on_event = on_event
        self.proc: subprocess.Popen | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self.cancelled = False
        self._events: queue.Queue = queue.Queue()
        self._stderr_tail: list[str] = []
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0

    def start(self) -> None:
        """Spawn the worker (in its own session, so cancel can kill its process group)."""
        if self.proc is not None:
            raise ImproveError("this improvement was already started")
        cmd = worker_command(
            ["improve", str(self.ws_folder), "--config", json.dumps(self.config.to_dict())]
        )
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if not getattr(sys, "frozen", False):
            root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self._started_at = time.time()
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        for target, stream in (
            (self._read_stdout, self.proc.stdout),
            (self._read_stderr, self.proc.stderr),
        ):
            t = threading.Thread(target=target, args=(stream,), daemon=True, name="improve-reader")
            t.start()
            self._threads.append(t)

    def _read_stdout(self, stream) -> None:  # noqa: ANN001
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "log", "message": line}
            if not isinstance(event, dict):
                continue
            if event.get("event") == "done":
                self.result = event.get("result")
            elif event.get("event") == "error":
                self.error = str(event.get("message"))
            self._events.put(event)
            if self.on_event is not None:
                with contextlib.suppress(Exception):
                    self.on_event(event)
        stream.close()

    def _read_stderr(self, stream) -> None:  # noqa: ANN001
        for line in stream:
            self._stderr_tail.append(line.rstrip())
            del self._stderr_tail[:-20]
        stream.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float | None = None) -> dict:
        """The result dict; raises :class:`ImproveError` (or ImproveCancelled) otherwise."""
        if self.proc is None:
            raise ImproveError("the improvement was not started")
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ImproveError(f"the training process is still running after {timeout} s") from None
        for t in self._threads:
            t.join(timeout=5)
        self._events.put(None)
        if self.cancelled:
            raise ImproveCancelled("improvement cancelled; nothing was changed")
        if rc == 0 and self.result is not None:
            return self.result
        self._clean_temporary_files()
        if self.error:
            raise ImproveError(self.error)
        tail = next((s for s in reversed(self._stderr_tail) if s.strip()), "")
        raise ImproveError(
            f"the training process stopped unexpectedly (exit code {rc})"
            + (f": {tail}" if tail and rc and rc > 0 else "")
        )

    def cancel(self) -> None:
        """Kill the worker and every process it started (SIGTERM, then SIGKILL)."""
        self.cancelled = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self._clean_temporary_files()
            return
        if os.name == "posix":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        else:  # pragma: no cover - Windows
            proc.kill()
            proc.wait(5)
        self._clean_temporary_files()

    def events(self) -> Iterator[dict]:
        """Events as they arrive, until the child ends (generator form of ``on_event``)."""
        while True:
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                if self.proc is not None and self.proc.poll() is not None:
                    if all(not t.is_alive() for t in self._threads) and self._events.empty():
                        return
                continue
            if event is None:
                return
            yield event
            if event.get("event") in ("done", "error"):
                return

    def _clean_temporary_files(self) -> None:
        """Remove half-written model files the killed child left (``models/.*.tmp``)."""
        folder = self.ws_folder / MODELS_DIR
        if not folder.is_dir():
            return
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime >= self._started_at - 1:
                    p.unlink()
