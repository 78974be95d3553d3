"""The one training loop (``engine.fit.fit``) that both training and improvement use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.fit import FitConfig, WeightedLoss, fit, make_loss
from engine.modelfile import ModelSpec
from engine.models import create_network
from engine.recipe import ScoreSelector
from engine.tasks import Cancelled, TaskState

CPU = torch.device("cpu")


def _setup(task: str = "binary", n: int = 16, size: int = 32):
    labels = ["a", "b"] if task == "binary" else ["0", "1", "2"]
    spec = ModelSpec("resnet10t", task, labels, input_size=size)
    torch.manual_seed(0)
    net = create_network(spec).to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    targets = rng.integers(0, len(labels), n).astype(np.int64)
    return spec, net, arrays, targets


def test_fit_keeps_the_weights_of_the_epoch_with_the_lowest_validation_loss():
    spec, net, arrays, targets = _setup()
    logs: list[str] = []
    cfg = FitConfig(epochs=3, batch_size=8, lr=3e-3, patience=10)
    loss = make_loss(spec.task, targets[:12], spec.num_outputs, 0.5)
    res = fit(net, spec, arrays, targets, list(range(12)), list(range(12, 16)), loss, cfg, CPU,
              TaskState(), logs.append)  # fmt: skip
    val = [h["val_loss"] for h in res.history]
    assert res.epochs_run == 3 and res.best_epoch == 1 + int(np.argmin(val))
    assert res.best_val_loss == pytest.approx(min(val))
    assert any(f"restored the best weights (epoch {res.best_epoch}" in s for s in logs)
    assert not net.training  # left in eval mode


def test_fit_with_per_image_weights_and_no_validation_runs_every_epoch():
    spec, net, arrays, targets = _setup()
    weights = np.where(np.arange(len(targets)) % 3 == 0, 2.0, 1.0).astype(np.float32)
    steps: list[tuple[int, float, float]] = []
    cfg = FitConfig(epochs=2, batch_size=8, lr=1e-3, patience=1, min_epoch_samples=32)
    res = fit(net, spec, arrays, targets, list(range(16)), [], WeightedLoss(spec.task), cfg, CPU,
              TaskState(), lambda s: None, weights=weights,
              on_step=lambda e, loss, eta: steps.append((e, loss, eta)))  # fmt: skip
    assert res.epochs_run == 2 and res.best_epoch is None and not res.stopped_early
    assert len(steps) == 2 * 4  # 16 images repeated to 32 per epoch, batches of 8
    assert [e for e, _, _ in steps[::4]] == [1, 2]


def test_head_strategy_trains_only_the_classifier():
    spec, net, arrays, targets = _setup()
    backbone = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")}
    cfg = FitConfig(epochs=1, batch_size=8, lr=1e-2, strategy="head")
    loss = make_loss(spec.task, targets, spec.num_outputs, 0.5)
    fit(net, spec, arrays, targets, list(range(16)), [], loss, cfg, CPU, TaskState(), len)
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())  # BatchNorm stats too


def test_a_cancelled_task_stops_the_loop():
    spec, net, arrays, targets = _setup()
    state = TaskState()
    state.cancel()
    loss = make_loss(spec.task, targets, spec.num_outputs, 0.5)
    with pytest.raises(Cancelled):
        fit(net, spec, arrays, targets, list(range(16)), [], loss,
            FitConfig(epochs=2, batch_size=8, lr=1e-3), CPU, state, len)  # fmt: skip


def test_a_score_selector_keeps_the_epoch_with_the_best_validation_score():
    spec, net, arrays, targets = _setup()
    logs: list[str] = []
    cfg = FitConfig(epochs=3, batch_size=8, lr=3e-3, patience=10)
    loss = make_loss(spec.task, targets[:12], spec.num_outputs, 0.5)
    res = fit(net, spec, arrays, targets, list(range(12)), list(range(12, 16)), loss, cfg, CPU,
              TaskState(), logs.append, selector=ScoreSelector(spec.task, ema=False))  # fmt: skip
    scores = [h["val_score"] for h in res.history]
    assert res.epochs_run == 3 and res.best_epoch == 1 + int(np.argmax(scores))
    assert res.best_score == pytest.approx(max(scores)) and res.kept_weights == "raw"
    assert res.selection == "mean of AUC and balanced accuracy"
    assert any(f"kept epoch {res.best_epoch} (raw weights)" in s for s in logs)
    assert not net.training
