"""The training recipe: which epoch to keep, when to stop, weight averaging, collapse refusal.

Small, imbalanced real sets broke the first recipe: early stopping watched the validation
*loss* with a fixed patience while the learning rate was still warming up, so a noisy loss
spike ended training at epoch 4 and restored a model that called every image one class.
Here the kept weights are the ones with the best validation score *for the task* (AUC and
balanced accuracy for binary and multi-class, quadratic weighted kappa for ordinal grades),
training never stops before the warm-up has ended, patience grows with the run, and an
exponential moving average (EMA) of the weights competes with the raw weights at every
epoch. A model that still predicts one class for nearly every validation image is refused.

The loop calls three hooks: :meth:`EpochSelector.after_step` after each optimiser step,
:meth:`EpochSelector.end_epoch` after each epoch (returns True to stop), and
:meth:`EpochSelector.restore_best` at the end.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

Log = Callable[[str], None]
# evaluate(net) -> (validation metrics dict, validation loss)
Evaluate = Callable[[nn.Module], tuple[dict[str, Any], float]]


class CollapsedModelError(Exception):
    """Training ended with a model that predicts (nearly) one class: nothing was saved."""


def selection_score(task: str, metrics: dict[str, Any]) -> float:
    """One number to choose the kept epoch by, higher is better, in [0, 1] or [-1, 1].

    binary and multi-class: mean of AUC (threshold-free, smooth on small sets) and balanced
    accuracy (what a clinic feels when a class is missed). ordinal: quadratic weighted kappa,
    with a small share of AUC to break ties. multi-label: macro AUC. Missing values count 0.
    """

    def get(key: str) -> float:
        v = metrics.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else 0.0

    if task == "ordinal":
        return get("qwk") + 0.1 * get("auc")
    if task == "multilabel":
        return get("auc") if metrics.get("auc") is not None else get("f1_macro")
    return 0.5 * (get("auc") + get("balanced_accuracy"))


def selection_metric_name(task: str) -> str:
    """The selection score in words, for logs and the model card."""
    return {
        "ordinal": "QWK (+0.1 AUC)",
        "multilabel": "macro AUC",
    }.get(task, "mean of AUC and balanced accuracy")


def default_patience(epochs: int) -> int:
    """Patience sized to the run: a third of the epochs, at least 3."""
    return max(3, math.ceil(epochs / 3))


def warmup_epochs(epochs: int, pct_start: float) -> int:
    """Epochs until the one-cycle learning rate has reached its peak."""
    return max(1, math.ceil(epochs * pct_start))


def collapse_message(labels: list[str], confusion: Any) -> str | None:
    """A sentence when one class takes ≥ 95 % of predictions but < 90 % of the truth."""
    if not confusion:
        return None
    cm = np.asarray(confusion)
    n = cm.sum()
    if n == 0:
        return None
    pred_counts, true_counts = cm.sum(0), cm.sum(1)
    top = int(pred_counts.argmax())
    if pred_counts[top] / n >= 0.95 and true_counts[top] / n < 0.9:
        return (
            f"the model predicts '{labels[top]}' for {100 * pred_counts[top] / n:.0f}% of "
            f"validation images (true share {100 * true_counts[top] / n:.0f}%): it has collapsed "
            "to one class"
        )
    return None


class WeightEMA:
    """Exponential moving average of a network's weights and buffers.

    The decay is set so the average's half-life is about ``half_life_steps`` optimiser steps
    (one epoch by default), with the usual warm-up so early, random weights fade quickly.
    """

    def __init__(self, net: nn.Module, half_life_steps: float) -> None:
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = 0.5 ** (1.0 / max(1.0, half_life_steps))
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        src = net.state_dict()
        for k, v in self.module.state_dict().items():
            s = src[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(s.to(v.dtype), alpha=1 - d)
            else:
                v.copy_(s)


@dataclass
class Candidate:
    score: float
    epoch: int
    source: str  # "weights" or "ema"
    metrics: dict[str, Any]
    val_loss: float
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)


class EpochSelector:
    """Keeps the best weights by the task's validation score; decides when to stop."""

    def __init__(
        self,
        task: str,
        epochs: int,
        steps_per_epoch: int,
        warmup: int,
        patience: int | None = None,
        ema: bool = True,
        log: Log = print,
    ) -> None:
        self.task = task
        self.epochs = epochs
        self.warmup = warmup
        self.patience = patience if patience is not None else default_patience(epochs)
        self.ema_enabled = ema
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.log = log
        self.ema: WeightEMA | None = None
        self.best: Candidate | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []

    def after_step(self, net: nn.Module) -> None:
        """Hook after every optimiser step: update the weight average."""
        if not self.ema_enabled:
            return
        if self.ema is None:
            self.ema = WeightEMA(net, half_life_steps=self.steps_per_epoch)
        self.ema.update(net)

    def end_epoch(self, epoch: int, net: nn.Module, evaluate: Evaluate) -> bool:
        """Hook after epoch ``epoch`` (1-based): score raw and averaged weights; True = stop."""
        candidates = []
        metrics, loss = evaluate(net)
        candidates.append(self._candidate(metrics, loss, epoch, "weights"))
        if self.ema is not None and epoch >= 2:
            em, el = evaluate(self.ema.module)
            candidates.append(self._candidate(em, el, epoch, "ema"))
        row: dict[str, Any] = {"epoch": epoch, "val_loss": loss, "val_score": candidates[0].score}
        for key in ("accuracy", "balanced_accuracy", "auc", "qwk"):
            if metrics.get(key) is not None:
                row[f"val_{key}"] = metrics[key]
        if len(candidates) > 1:
            row["ema_val_score"] = candidates[1].score
        self.history.append(row)
        top = max(candidates, key=lambda c: c.score)
        if self.best is None or top.score > self.best.score + 1e-4:
            module = net if top.source == "weights" else self.ema.module  # type: ignore[union-attr]
            top.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self.best = top
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if epoch >= self.warmup and self.bad_epochs >= self.patience and epoch < self.epochs:
            self.log(
                f"early stop after epoch {epoch}: no better validation score for "
                f"{self.patience} epochs (warm-up ended at epoch {self.warmup})"
            )
            return True
        return False

    def restore_best(self, net: nn.Module) -> Candidate | None:
        """Hook at the end: load the kept weights into ``net``; returns what was kept."""
        if self.best is None or self.best.state is None:
            return None
        net.load_state_dict(self.best.state)
        b = self.best
        self.log(
            f"kept epoch {b.epoch} ({'averaged' if b.source == 'ema' else 'raw'} weights): "
            f"validation {selection_metric_name(self.task)} {b.score:.4f}, loss {b.val_loss:.4f}"
        )
        b.state = None
        return b

    def _candidate(self, metrics: dict[str, Any], loss: float, epoch: int, src: str) -> Candidate:
        return Candidate(selection_score(self.task, metrics), epoch, src, metrics, loss)
