"""The one training loop: used by ``train`` (a new model) and ``improve`` (a fine-tune).

:func:`fit` trains a network in place on images already decoded into memory: AdamW with a
one-cycle learning-rate schedule, gradient clipping, bf16/fp16 autocast where the device
supports it, optional per-image weights, batch-wise augmentation, cooperative cancellation
through :class:`~engine.tasks.TaskState`, and a pluggable *epoch selector* that scores each
epoch on the validation images, decides when to stop and restores the kept weights. The
default, :class:`LossSelector`, keeps the epoch with the lowest validation loss;
:class:`engine.recipe.ScoreSelector` keeps the one with the best task score. The tensor
plumbing both callers share (the augmenter, input normalisation, batched prediction, the
losses) lives here too, so neither module reaches into the other's private helpers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .modelfile import ModelSpec
from .models import autocast_for
from .tasks import TaskState, format_eta

Log = Callable[[str], None]
StepFn = Callable[[int, float, float], None]  # (epoch, running loss, ETA seconds)
STRATEGIES = ("full", "head", "lora")


# --------------------------------------------------------------------------- augmentation


class Augmenter:
    """Training-only augmentation on uint8 NHWC batches, done as one affine warp per image.

    Random resized crop (scale 0.75–1), small rotation (±15°), horizontal flip (and vertical
    flip for fundus), brightness/contrast/saturation jitter.
    """

    def __init__(self, modality: str, generator: torch.Generator) -> None:
        self.modality = modality
        self.g = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) float in [0,255] -> augmented, same shape."""
        n = x.shape[0]
        g = self.g

        def u(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=g)

        angle = (
            u(-15, 15) * math.pi / 180 if self.modality == "fundus" else u(-5, 5) * math.pi / 180
        )
        scale = torch.sqrt(u(0.75, 1.0))
        flip_h = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        flip_v = (
            torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
            if self.modality == "fundus"
            else torch.ones(n)
        )
        max_shift = 1 - scale
        tx, ty = u(-1, 1) * max_shift, u(-1, 1) * max_shift
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [
                torch.stack([cos * flip_h, -sin, tx], 1),
                torch.stack([sin * flip_h * flip_v, cos * flip_v, ty], 1),
            ],
            1,
        ).to(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        b = u(0.8, 1.2).view(n, 1, 1, 1).to(x)
        c = u(0.8, 1.2).view(n, 1, 1, 1).to(x)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean * b
        if self.modality == "fundus":
            s = u(0.9, 1.1).view(n, 1, 1, 1).to(x)
            grey = x.mean(dim=1, keepdim=True)
            x = (x - grey) * s + grey
        return x.clamp(0, 255)


# --------------------------------------------------------------------------- tensors


def to_input(x_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,3,H,W) float in [0,255] on ``device``."""
    return x_uint8.permute(0, 3, 1, 2).float().to(device)


def normalise(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Apply the model's mean/std (given for [0,1] input) to [0,255] input, channels-last."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1) * 255
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def predict_arrays(
    net: nn.Module,
    spec: ModelSpec,
    arrays: np.ndarray,
    device: torch.device,
    amp: bool,
    bs: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features for in-memory uint8 images (eval mode)."""
    from .models import penultimate_and_logits

    net.eval()
    logits, feats = [], []
    with torch.inference_mode(), autocast_for(device, amp):
        for i in range(0, len(arrays), bs):
            x = normalise(to_input(torch.from_numpy(arrays[i : i + bs]), device), spec)
            f, z = penultimate_and_logits(net, x)
            logits.append(z.float().cpu().numpy())
            feats.append(f.float().cpu().numpy())
    if not logits:
        return np.zeros((0, spec.num_outputs), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits), np.concatenate(feats)


def quick_accuracy(logits: np.ndarray, y: np.ndarray, task: str) -> float:
    """Share of exact answers (all labels right for multi-label); NaN without images."""
    if len(y) == 0:
        return float("nan")
    if task == "multilabel":
        return float(((logits > 0) == (y > 0)).all(1).mean())
    return float((logits.argmax(1) == y).mean())


# --------------------------------------------------------------------------- losses


def make_loss(
    task: str, targets: np.ndarray, n_out: int, ordinal_weight: float, balanced: bool = True
) -> nn.Module:
    """Class-balanced loss: weighted CE, ordinal CE + expected squared grade error, or BCE.

    ``balanced=False``: every class weighs the same (the batches are balanced instead: draw
    them with :func:`balanced_sample_weights`)."""
    if task == "multilabel":
        t = targets.reshape(len(targets), -1).astype(np.float64)
        pos = t.sum(0)
        pos_weight = torch.tensor(np.clip((len(t) - pos) / np.maximum(pos, 1), 0.1, 10.0)).float()
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    counts = np.bincount(targets.astype(int), minlength=n_out).astype(np.float64)
    w = np.where(counts > 0, len(targets) / (n_out * np.maximum(counts, 1)), 0.0)
    weight = torch.tensor(w / w[counts > 0].mean()).float() if balanced else torch.ones(n_out)
    if task == "ordinal":
        return OrdinalLoss(weight, ordinal_weight)
    return nn.CrossEntropyLoss(weight=weight)


class OrdinalLoss(nn.Module):
    """Cross-entropy plus the expected squared distance between predicted and true grade.

    The second term punishes "PDR called none" far more than "PDR called NPDR", which is
    what quadratic weighted kappa measures; the output stays a class distribution, so
    calibration, conformal sets and attribution work unchanged.
    """

    def __init__(self, weight: torch.Tensor, lam: float) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.lam = lam

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, weight=self.weight)
        p = torch.softmax(logits.float(), dim=1)
        grades = torch.arange(logits.shape[1], device=logits.device).float()
        dist = (grades.view(1, -1) - y.float().view(-1, 1)) ** 2
        w = self.weight[y]
        return ce + self.lam * ((p * dist).sum(1) * w).sum() / w.sum()


class WeightedLoss(nn.Module):
    """Per-image weighted cross-entropy (plus the ordinal distance term for ordinal tasks).

    Called as ``loss(logits, y, w)``: every image counts with its own weight (class balance
    times, for a fine-tune, how much a reviewer's correction or a pseudo-label counts).
    """

    def __init__(self, task: str, ordinal_weight: float = 0.5) -> None:
        super().__init__()
        self.task = task
        self.ordinal_weight = ordinal_weight

    def forward(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        if self.task == "ordinal":
            p = torch.softmax(logits.float(), dim=1)
            grades = torch.arange(logits.shape[1], device=logits.device).float()
            dist = (grades.view(1, -1) - y.float().view(-1, 1)) ** 2
            ce = ce + self.ordinal_weight * (p * dist).sum(1)
        return (ce * w).sum() / w.sum().clamp_min(1e-8)


def balanced_sample_weights(targets: np.ndarray, extra: np.ndarray, n_out: int) -> np.ndarray:
    """Class balance (inverse frequency) times each image's own weight, as float32."""
    counts = np.bincount(targets, minlength=n_out).astype(np.float64)
    cw = np.where(counts > 0, len(targets) / (n_out * np.maximum(counts, 1)), 0.0)
    return (cw[targets] * extra).astype(np.float32)


# --------------------------------------------------------------------------- the loop


@dataclass
class FitConfig:
    """Optimiser, schedule and stopping settings of one :func:`fit` call."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    patience: int = 3
    seed: int = 0
    amp: bool = True
    strategy: str = "full"  # "full", "head" (frozen backbone) or "lora" (adapters injected)
    max_steps_per_epoch: int | None = None
    min_epoch_samples: int = 0  # tiny sets are repeated so an epoch has a few steps
    clip_norm: float = 5.0  # from-scratch nets can spike early
    pct_start: float = 0.15


@dataclass
class FitResult:
    """What happened: per-epoch history and which epoch's weights the network now holds."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None  # the restored epoch (1-based); None: no validation images
    best_val_loss: float | None = None
    stopped_early: bool = False
    selection: str = "validation loss"  # the yardstick the kept epoch was chosen by
    best_score: float | None = None  # its value for a score-based selector
    kept_weights: str | None = None  # "raw" or "averaged" (a weight average won)

    @property
    def epochs_run(self) -> int:
        return len(self.history)


# --------------------------------------------------------------------------- epoch selection


@dataclass
class Validation:
    """One network's answers on the validation images, as an epoch selector sees them."""

    logits: np.ndarray
    loss: float
    accuracy: float
    _metrics: Callable[[], dict[str, Any]] = field(repr=False)
    _cache: dict[str, Any] | None = field(default=None, repr=False)

    def metrics(self) -> dict[str, Any]:
        """Uncalibrated task metrics (AUC, balanced accuracy, QWK, ...), computed once."""
        if self._cache is None:
            self._cache = self._metrics()
        return self._cache


Validate = Callable[[nn.Module], Validation]


@dataclass
class FitPlan:
    """What a selector needs to know about the run before it starts."""

    epochs: int
    steps_per_epoch: int
    pct_start: float
    log: Log
    label: str = ""


class EpochSelector(Protocol):
    """Chooses which epoch's weights :func:`fit` keeps and when it stops early.

    :func:`fit` calls :meth:`begin` once, :meth:`after_step` after every optimiser step,
    :meth:`end_epoch` after every epoch that has validation images (it adds its figures to
    the epoch's history ``entry``, logs the epoch and returns True to stop), and
    :meth:`restore_best` at the end (loads the kept weights and records them in ``result``).
    """

    def begin(self, plan: FitPlan) -> None: ...

    def after_step(self, net: nn.Module) -> None: ...

    def end_epoch(self, epoch: int, net: nn.Module, validate: Validate, entry: dict) -> bool: ...

    def restore_best(self, net: nn.Module, result: FitResult) -> None: ...


class LossSelector:
    """Keep the epoch with the lowest validation loss; stop after ``patience`` worse epochs."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_state: dict | None = None
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.bad = 0
        self.plan = FitPlan(0, 0, 0.0, print)

    def begin(self, plan: FitPlan) -> None:
        self.plan = plan

    def after_step(self, net: nn.Module) -> None:
        return None

    def end_epoch(self, epoch: int, net: nn.Module, validate: Validate, entry: dict) -> bool:
        v = validate(net)
        entry["val_loss"], entry["val_accuracy"] = v.loss, v.accuracy
        label = self.plan.label
        self.plan.log(
            f"{label}epoch {epoch}/{self.plan.epochs}: train loss {entry['train_loss']:.4f}  "
            f"val loss {v.loss:.4f}  val acc {v.accuracy:.3f}"
        )
        if v.loss < self.best_loss - 1e-4:
            self.best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
            self.best_loss, self.best_epoch, self.bad = v.loss, epoch, 0
        else:
            self.bad += 1
        if self.bad >= self.patience:
            self.plan.log(
                f"{label}early stop: no validation improvement for {self.patience} epochs"
            )
            return True
        return False

    def restore_best(self, net: nn.Module, result: FitResult) -> None:
        if self.best_state is None:
            return
        net.load_state_dict(self.best_state)
        result.best_epoch, result.best_val_loss = self.best_epoch, self.best_loss
        result.kept_weights = "raw"
        self.plan.log(
            f"{self.plan.label}restored the best weights (epoch {self.best_epoch}, "
            f"val loss {self.best_loss:.4f})"
        )
        self.best_state = None


def set_trainable(net: nn.Module, strategy: str) -> None:
    """``head``: only the classifier learns; ``full``: every layer; ``lora``: as injected."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (full, head or lora)")
    if strategy == "head":
        head = {id(p) for p in net.get_classifier().parameters()}
        for p in net.parameters():
            p.requires_grad = id(p) in head
    elif strategy == "full":
        for p in net.parameters():
            p.requires_grad = True


def _train_mode(net: nn.Module, strategy: str) -> None:
    if strategy == "full":
        net.train()
    else:  # frozen backbone: keep its BatchNorm statistics and dropout as they are
        net.eval()
        net.get_classifier().train()


def epoch_batches(
    n: int,
    bs: int,
    g: torch.Generator,
    min_samples: int = 0,
    draw_weights: np.ndarray | None = None,
) -> list[torch.Tensor]:
    """Shuffled index batches of one epoch; a set smaller than ``min_samples`` is repeated.

    With ``draw_weights`` (one per image) the epoch's images are drawn with replacement in
    proportion to them (class-balanced sampling) instead of shuffled."""
    reps = max(1, math.ceil(min_samples / max(n, 1)))
    if draw_weights is not None:
        p = torch.as_tensor(draw_weights, dtype=torch.float64)
        order = torch.multinomial(p, reps * n, replacement=True, generator=g)
    else:
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])
    return [order[i : i + bs] for i in range(0, len(order), bs)]


def fit(
    net: nn.Module,
    spec: ModelSpec,
    arrays: np.ndarray,
    targets: np.ndarray,
    tr: list[int],
    va: list[int],
    loss_fn: Callable[..., torch.Tensor],
    cfg: FitConfig,
    device: torch.device,
    state: TaskState,
    log: Log,
    *,
    weights: np.ndarray | None = None,
    draw_weights: np.ndarray | None = None,
    label: str = "",
    on_step: StepFn | None = None,
    selector: EpochSelector | None = None,
) -> FitResult:
    """Train ``net`` in place on ``arrays[tr]``; stop early on ``arrays[va]``, keep the best.

    ``loss_fn(logits, y)`` or, with per-image ``weights``, ``loss_fn(logits, y, w)``. The
    network must already be on ``device`` (and carry its LoRA adapters for ``lora``).
    ``selector`` decides which epoch is kept and when to stop (default: the lowest validation
    loss with ``cfg.patience``). With no validation images every epoch runs and the last
    weights are kept. ``on_step`` receives (epoch, running loss, ETA seconds) before each
    progress report; ``draw_weights`` (one per training image, in ``tr`` order) draws each
    epoch's images in proportion to them; ``label`` prefixes every log line (e.g.
    "[reviews only] "). Raises :class:`~engine.tasks.Cancelled` when ``state`` is cancelled.
    """
    set_trainable(net, cfg.strategy)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    aug = Augmenter(spec.modality, g)
    n_tr = len(tr)
    reps = max(1, math.ceil(cfg.min_epoch_samples / max(n_tr, 1)))
    steps_per_epoch = math.ceil(reps * n_tr / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total = max(1, steps_per_epoch * cfg.epochs)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=cfg.pct_start
    )
    multilabel = spec.task == "multilabel"
    x_train = torch.from_numpy(arrays[tr])
    y_all = torch.from_numpy(targets)
    y_train = y_all[tr]
    w_train = None if weights is None else torch.from_numpy(weights[tr])
    y_val = y_all[va].float() if multilabel else y_all[va].long()
    w_val = None if weights is None else torch.from_numpy(weights[va])

    def loss_of(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        return loss_fn(logits, y) if w is None else loss_fn(logits, y, w)

    def validate(module: nn.Module) -> Validation:
        val_logits, _ = predict_arrays(module, spec, arrays[va], device, cfg.amp)
        vl = torch.from_numpy(val_logits).float().to(device)
        wv = None if w_val is None else w_val.to(device)
        return Validation(
            val_logits,
            float(loss_of(vl, y_val.to(device), wv)),
            quick_accuracy(val_logits, targets[va], spec.task),
            lambda: validation_metrics(val_logits, targets[va], spec),
        )

    selector = selector if selector is not None else LossSelector(cfg.patience)
    selector.begin(FitPlan(cfg.epochs, steps_per_epoch, cfg.pct_start, log, label))
    result = FitResult()
    step, t0 = 0, time.monotonic()
    for epoch in range(cfg.epochs):
        _train_mode(net, cfg.strategy)
        running, seen = 0.0, 0
        batches = epoch_batches(n_tr, cfg.batch_size, g, cfg.min_epoch_samples, draw_weights)
        for idx in batches[:steps_per_epoch]:
            state.check()
            x = normalise(aug(to_input(x_train[idx], device)), spec)
            y = y_train[idx].to(device)
            if multilabel:
                y = y.float()
            with autocast_for(device, cfg.amp):
                logits = net(x)
            w = None if w_train is None else w_train[idx].to(device)
            loss = loss_of(logits.float(), y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            opt.step()
            if step < total - 1:  # the schedule has exactly `total` steps
                sched.step()
            selector.after_step(net)
            step += 1
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            eta = (time.monotonic() - t0) / step * (total - step)
            if on_step is not None:
                on_step(epoch + 1, running / seen, eta)
            state.progress(
                step,
                total,
                f"{label}epoch {epoch + 1}/{cfg.epochs} loss {running / seen:.4f} "
                f"ETA {format_eta(eta)}",
            )
        entry: dict = {"epoch": epoch + 1, "train_loss": running / max(1, seen)}
        stop = bool(va) and selector.end_epoch(epoch + 1, net, validate, entry)
        result.history.append(entry)
        if stop:
            result.stopped_early = True
            break
    if va:
        selector.restore_best(net, result)
    net.eval()
    return result


def validation_metrics(logits: np.ndarray, y: np.ndarray, spec: ModelSpec) -> dict[str, Any]:
    """Uncalibrated task metrics of validation logits (for choosing the kept epoch)."""
    from .calibration import sigmoid, softmax
    from .findings import positive_label
    from .metrics import evaluate_predictions

    if len(y) == 0:
        return {"n": 0}
    probs = sigmoid(logits) if spec.task == "multilabel" else softmax(logits, 1.0)
    return evaluate_predictions(y, probs, spec.task, spec.labels, positive=positive_label(spec))
