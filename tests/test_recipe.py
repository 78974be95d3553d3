"""The training recipe: kept epoch by the task's score, warm-up-aware stopping, collapse refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.cli import EXIT_COLLAPSED, main
from engine.fit import FitPlan, FitResult, Validation
from engine.recipe import (
    ScoreSelector,
    WeightEMA,
    collapse_message,
    default_patience,
    selection_score,
)
from tests.conftest import TINY_ARCH


def _selector(
    epochs: int = 10, pct_start: float = 0.15, patience: int | None = None, ema: bool = False
) -> ScoreSelector:
    sel = ScoreSelector("binary", patience, ema=ema)
    sel.begin(FitPlan(epochs, 5, pct_start, lambda s: None))
    return sel


def _validation(score: float, loss: float) -> Validation:
    return Validation(
        np.zeros((1, 2)), loss, score, lambda: {"auc": score, "balanced_accuracy": score}
    )


def _eval_returning(scores: list[tuple[float, float]]):
    """A validate() that reports the next (AUC = balanced accuracy, loss) pair each call."""
    it = iter(scores)

    def validate(net: nn.Module) -> Validation:
        return _validation(*next(it))

    return validate


def _end(sel: ScoreSelector, epoch: int, net: nn.Module, validate) -> bool:  # noqa: ANN001
    return sel.end_epoch(epoch, net, validate, {"epoch": epoch, "train_loss": 0.0})


def test_the_kept_epoch_is_the_best_score_not_the_lowest_loss():
    net = nn.Linear(2, 2)
    sel = _selector(epochs=4, patience=10)
    # loss rises while the score improves: the DR pattern that made "best loss" keep epoch 1
    evaluate = _eval_returning([(0.55, 2.7), (0.62, 3.5), (0.71, 5.0), (0.66, 4.0)])
    for epoch in range(1, 5):
        with torch.no_grad():
            net.weight.fill_(float(epoch))
        _end(sel, epoch, net, evaluate)
    result = FitResult()
    sel.restore_best(net, result)
    assert result.best_epoch == 3 and result.best_score == pytest.approx(0.71)
    assert result.best_val_loss == 5.0 and result.kept_weights == "raw"
    assert float(net.weight.detach()[0, 0]) == 3.0  # the weights of epoch 3 are back


def test_training_never_stops_before_the_warm_up_has_ended():
    sel = _selector(epochs=20, pct_start=0.3, patience=2)  # warm-up ends at epoch 6
    evaluate = _eval_returning([(0.9, 1.0)] + [(0.5, 9.0)] * 19)
    stopped_at = None
    for epoch in range(1, 21):
        if _end(sel, epoch, nn.Linear(1, 1), evaluate):
            stopped_at = epoch
            break
    assert stopped_at == 6  # two bad epochs by epoch 3, but no stop before warm-up ends


def test_patience_grows_with_the_run():
    assert default_patience(6) == 3
    assert default_patience(12) == 4
    assert default_patience(30) == 10
    sel = _selector(epochs=30, pct_start=0.01)
    evaluate = _eval_returning([(0.9, 1.0)] + [(0.5, 1.0)] * 29)
    epochs_run = next(e for e in range(1, 31) if _end(sel, e, nn.Linear(1, 1), evaluate))
    assert epochs_run == 11  # 1 good + 10 without improvement


def test_averaged_weights_win_when_they_score_better():
    net = nn.Linear(1, 1, bias=False)
    sel = _selector(epochs=5, patience=10, ema=True)
    with torch.no_grad():
        net.weight.fill_(1.0)
    sel.after_step(net)
    with torch.no_grad():
        net.weight.fill_(5.0)
    sel.after_step(net)

    def evaluate(module: nn.Module) -> Validation:  # the averaged net (weight < 5) scores higher
        return _validation(0.9 if float(module.weight.detach()[0, 0]) < 4.99 else 0.6, 1.0)

    _end(sel, 1, net, evaluate)
    _end(sel, 2, net, evaluate)
    result = FitResult()
    sel.restore_best(net, result)
    assert result.kept_weights == "averaged" and result.best_epoch == 2
    assert 1.0 < float(net.weight.detach()[0, 0]) < 5.0


def test_weight_ema_moves_towards_the_weights():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WeightEMA(net, half_life_steps=1)
    with torch.no_grad():
        net.weight.fill_(2.0)
    for _ in range(50):
        ema.update(net)
    assert float(ema.module.weight[0, 0]) == pytest.approx(2.0, abs=1e-3)


def test_selection_score_uses_the_metric_of_the_task():
    assert selection_score("ordinal", {"qwk": 0.6, "auc": 0.8}) == pytest.approx(0.68)
    assert selection_score("binary", {"auc": 0.9, "balanced_accuracy": 0.5}) == pytest.approx(0.7)
    assert selection_score("multiclass", {"auc": None, "balanced_accuracy": 0.5}) == 0.25


def test_collapse_is_one_class_for_nearly_every_image_but_not_a_rare_class_set():
    assert collapse_message(["a", "b"], [[50, 0], [48, 2]]) is not None
    assert collapse_message(["a", "b"], [[40, 10], [10, 40]]) is None
    assert collapse_message(["a", "b"], [[95, 0], [4, 1]]) is None  # truth itself is 95% "a"


@pytest.fixture
def no_signal_set(tmp_path, synth_fundus) -> Path:
    """Two classes whose images are all the same picture: any model must call them one class."""
    one = next((synth_fundus / "normal").glob("*.png"))
    root = tmp_path / "same"
    for label in ("normal", "diabetic_retinopathy"):
        (root / label).mkdir(parents=True)
        for i in range(14):
            shutil.copy(one, root / label / f"{label}_{i:03d}.png")
    return root


def _train(capsys, data: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    argv = [
        "train", str(data), "--arch", TINY_ARCH, "--init", "none", "--img-size", "32",
        "--epochs", "1", "--seed", "3", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    code = main(argv)
    o, e = capsys.readouterr()
    return code, o, e


def test_a_collapsed_run_exits_non_zero_and_writes_no_model(capsys, tmp_path, no_signal_set):
    out = tmp_path / "m.safetensors"
    code, _, err = _train(capsys, no_signal_set, out)
    assert code == EXIT_COLLAPSED
    assert "collapsed" in err and "No model was written" in err
    assert not out.exists()
    assert not list(tmp_path.glob(".m.safetensors*"))  # no temporary left either


def test_allow_collapsed_saves_it_with_the_warning_recorded(capsys, tmp_path, no_signal_set):
    out = tmp_path / "m.safetensors"
    code, _, err = _train(capsys, no_signal_set, out, "--allow-collapsed")
    assert code == 0 and out.exists(), err
    main(["info", str(out), "--json"])
    spec = json.loads(capsys.readouterr()[0])
    assert any("collapsed" in w for w in spec["provenance"]["warnings"])


def test_training_history_records_the_validation_score(capsys, tmp_path, synth_fundus):
    out = tmp_path / "m.safetensors"
    code, _, _ = _train(capsys, synth_fundus, out, "--epochs", "2", "--allow-collapsed")
    assert code == 0
    main(["info", str(out), "--json"])
    prov = json.loads(capsys.readouterr()[0])["provenance"]
    assert [h["epoch"] for h in prov["history"]] == [1, 2]
    assert all(np.isfinite(h["val_score"]) for h in prov["history"])
    assert prov["best_epoch"] in (1, 2) and prov["kept_weights"] in ("raw", "averaged")
    assert prov["start"]["kind"] == "random initialisation (from scratch)"
    assert prov["selection"] == "mean of AUC and balanced accuracy"
    main(["info", str(out)])
    card = capsys.readouterr()[0]
    assert (
        f"kept epoch    {prov['best_epoch']} of 2 ({prov['kept_weights']} weights), by the " in card
    )


def test_balanced_sampling_gives_each_class_an_equal_share_of_the_batches():
    from engine.fit import balanced_sample_weights, epoch_batches

    targets = np.array([0] * 90 + [1] * 8 + [2] * 2)  # 90 / 8 / 2: the DR grades' shape
    g = torch.Generator().manual_seed(0)
    w = balanced_sample_weights(targets, np.ones(len(targets)), 3)
    drawn = torch.cat(epoch_batches(100, 16, g, min_samples=3000, draw_weights=w)).numpy()
    assert len(drawn) == 3000  # the epoch's length is unchanged, only who is in it
    shares = np.bincount(targets[drawn], minlength=3) / len(drawn)
    assert np.allclose(shares, 1 / 3, atol=0.04), shares
    plain = torch.cat(epoch_batches(100, 16, g, min_samples=3000)).numpy()
    assert np.bincount(targets[plain], minlength=3).tolist() == [2700, 240, 60]


def test_balance_by_sampling_trains_with_an_unweighted_loss_and_is_recorded(
    capsys, tmp_path, synth_fundus
):
    from engine.fit import OrdinalLoss, make_loss

    targets = np.array([0] * 9 + [1])
    weighted = make_loss("multiclass", targets, 2, 0.5)
    assert weighted.weight[1] > weighted.weight[0]
    assert torch.equal(
        make_loss("multiclass", targets, 2, 0.5, balanced=False).weight, torch.ones(2)
    )
    plain = make_loss("ordinal", targets, 2, 0.5, balanced=False)
    assert isinstance(plain, OrdinalLoss) and torch.equal(plain.weight, torch.ones(2))

    out = tmp_path / "m.safetensors"
    code, _, err = _train(capsys, synth_fundus, out, "--balance", "sampling", "--allow-collapsed")
    assert code == 0 and out.exists(), err
    main(["info", str(out), "--json"])
    prov = json.loads(capsys.readouterr()[0])["provenance"]
    assert prov["config"]["balance"] == "sampling"
