"""The training recipe: which epoch to keep, when to stop, weight averaging, collapse refusal.

Small, imbalanced real sets broke the first recipe: early stopping watched the validation
*loss* with a fixed patience while the learning rate was still warming up, so a noisy loss
spike ended training at epoch 4 and restored a model that called every image one class.
Here the kept weights are the ones with the best validation score *for the task* (AUC and
balanced accuracy for binary and multi-class, quadratic weighted kappa for ordinal grades),
training never stops before the warm-up has ended, patience grows with the run, and an
exponential moving average (EMA) of the weights competes with the raw weights at every
epoch. A model that still predicts one class for nearly every validation image is refused.

:class:`ScoreSelector` is the epoch selector :func:`engine.fit.fit` uses for ``train`` and
``improve``; the collapse check (:func:`collapse_message`) guards both before a model is
written or offered.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .fit import FitPlan, FitResult, Validate, Validation


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


def collapse_message(
    labels: list[str], confusion: Any, images: str = "validation images"
) -> str | None:
    """A sentence when one class takes ≥ 95 % of predictions but < 90 % of the truth.

    ``confusion[true][predicted]`` counts; ``images`` names the images in the sentence.
    """
    if confusion is None or len(confusion) == 0:
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
            f"{images} (true share {100 * true_counts[top] / n:.0f}%): it has collapsed "
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
    source: str  # "raw" or "averaged"
    val_loss: float
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)


class ScoreSelector:
    """Keeps the best weights by the task's validation score; decides when to stop.

    ``patience`` None: a third of the epochs, at least 3 (:func:`default_patience`); never
    stops before the one-cycle warm-up has ended. With ``ema`` an average of the weights
    (half-life one epoch) competes with the raw weights from epoch 2 on.
    """

    def __init__(self, task: str, patience: int | None = None, ema: bool = True) -> None:
        self.task = task
        self.patience_setting = patience
        self.ema_enabled = ema
        self.plan = FitPlan(0, 1, 0.15, print)
        self.patience = 3
        self.warmup = 1
        self.ema: WeightEMA | None = None
        self.best: Candidate | None = None
        self.bad_epochs = 0

    def begin(self, plan: FitPlan) -> None:
        self.plan = plan
        self.patience = (
            self.patience_setting
            if self.patience_setting is not None
            else default_patience(plan.epochs)
        )
        self.warmup = warmup_epochs(plan.epochs, plan.pct_start)
        self.ema, self.best, self.bad_epochs = None, None, 0

    def after_step(self, net: nn.Module) -> None:
        """Update the weight average."""
        if not self.ema_enabled:
            return
        if self.ema is None:
            self.ema = WeightEMA(net, half_life_steps=max(1, self.plan.steps_per_epoch))
        self.ema.update(net)

    def end_epoch(self, epoch: int, net: nn.Module, validate: Validate, entry: dict) -> bool:
        """Score raw and averaged weights of epoch ``epoch`` (1-based); True = stop."""
        raw = validate(net)
        candidates = [self._candidate(raw, epoch, "raw")]
        if self.ema is not None and epoch >= 2:
            candidates.append(self._candidate(validate(self.ema.module), epoch, "averaged"))
        entry.update(val_loss=raw.loss, val_accuracy=raw.accuracy, val_score=candidates[0].score)
        m = raw.metrics()
        for key in ("balanced_accuracy", "auc", "qwk"):
            if isinstance(m.get(key), int | float):
                entry[f"val_{key}"] = m[key]
        if len(candidates) > 1:
            entry["averaged_val_score"] = candidates[1].score
        self.plan.log(
            f"{self.plan.label}epoch {epoch}/{self.plan.epochs}: train loss "
            f"{entry['train_loss']:.4f}  val loss {raw.loss:.4f}  val score "
            f"{candidates[0].score:.4f}"
            + (f"  (averaged weights {candidates[1].score:.4f})" if len(candidates) > 1 else "")
        )
        top = max(candidates, key=lambda c: c.score)
        if self.best is None or top.score > self.best.score + 1e-4:
            module = net if top.source == "raw" else self.ema.module  # type: ignore[union-attr]
            top.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            self.best = top
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        if epoch >= self.warmup and self.bad_epochs >= self.patience and epoch < self.plan.epochs:
            self.plan.log(
                f"{self.plan.label}early stop after epoch {epoch}: no better validation score "
                f"for {self.patience} epochs (warm-up ended at epoch {self.warmup})"
            )
            return True
        return False

    def restore_best(self, net: nn.Module, result: FitResult) -> None:
        """Load the kept weights into ``net`` and record them in ``result``."""
        result.selection = selection_metric_name(self.task)
        b = self.best
        if b is None or b.state is None:
            return
        net.load_state_dict(b.state)
        result.best_epoch, result.best_val_loss = b.epoch, b.val_loss
        result.best_score, result.kept_weights = b.score, b.source
        self.plan.log(
            f"{self.plan.label}kept epoch {b.epoch} ({b.source} weights): validation "
            f"{selection_metric_name(self.task)} {b.score:.4f}, loss {b.val_loss:.4f}"
        )
        b.state = None
        self.ema = None

    def _candidate(self, v: Validation, epoch: int, source: str) -> Candidate:
        return Candidate(selection_score(self.task, v.metrics()), epoch, source, v.loss)
