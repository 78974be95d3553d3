"""Train a timm network on a labelled set and write a calibrated EyeTriage model file.

Images are decoded once (in threads, with the model's own preprocessing) into memory;
augmentation then runs batch-wise on tensors, which is far cheaper than decoding every epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__, recipe
from .data import DatasetError, LabelledSet, split_indices
from .findings import guess_negative_labels, negative_indices
from .fit import FitConfig, balanced_sample_weights, fit, make_loss, predict_arrays
from .images import decode_for_model
from .modelfile import ModelSpec, Preprocessing, save_model_file
from .models import create_network, load_init_weights, pick_device
from .pipeline import iter_decoded_batches
from .tasks import Cancelled, TaskState

Log = Callable[[str], None]


DEFAULT_ARCH = "efficientnet_lite0"  # with the ImageNet start when no architecture is named
DEFAULT_INIT = "imagenet"


BALANCE_MODES = ("loss", "sampling")


@dataclass
class TrainConfig:
    arch: str = DEFAULT_ARCH
    img_size: int = 224
    epochs: int = 12
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 1e-4
    seed: int = 42
    patience: int | None = None  # None: sized to the run (recipe.default_patience)
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    device: str = "auto"
    pretrained: bool = False
    init: str = "none"  # a named start ("imagenet") or "none"
    init_weights: str | None = None
    head_dropout: float = 0.2
    modality: str = "fundus"
    ben_graham: bool = False
    green: bool = False
    fov_crop: bool = True
    amp: bool = True
    workers: int | None = None
    name: str = ""
    strategy: str = "full"  # "full", "head" (frozen backbone) or "lora" (adapters, merged)
    ordinal_weight: float = 0.5
    conformal_alpha: float = 0.1
    max_steps_per_epoch: int | None = None
    demo: bool = False
    negative_label: str | None = None  # kept for callers that name one; see negative_labels
    negative_labels: list[str] = field(default_factory=list)  # the "no finding" classes
    display_names: dict[str, str] = field(default_factory=dict)  # label -> words on screen
    half: bool = False  # store weights as float16 (half the file size)
    ema: bool = True  # let an average of the weights compete for the kept epoch
    allow_collapsed: bool = False  # save a model that predicts one class anyway
    warmup_pct: float = 0.15
    balance: str = "loss"  # class balance: "loss" (weighted) or "sampling" (balanced batches)


@dataclass
class TrainResult:
    spec: ModelSpec
    path: Path
    sha256: str
    history: list[dict[str, float]] = field(default_factory=list)
    test_metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def decode_set(
    ds: LabelledSet, cfg: TrainConfig, state: TaskState | None, log: Log
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images of ``ds`` as (N,H,W,3) uint8 plus targets; unusable files are reported."""
    prep = Preprocessing.for_modality(
        cfg.modality, fov_crop=cfg.fov_crop, ben_graham=cfg.ben_graham, green=cfg.green
    )
    paths = [s.path for s in ds.samples]

    def decode(p: Path):  # noqa: ANN202
        return decode_for_model(p, cfg.img_size, cfg.modality, prep)

    arrays = np.zeros((len(paths), cfg.img_size, cfg.img_size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    problems: list[str] = []
    for b in iter_decoded_batches(paths, decode, 64, cfg.workers, state):
        if b.arrays is not None:
            arrays[b.indices] = b.arrays
            ok[b.indices] = True
        problems += [f"{paths[i]}: {reason}" for i, reason in b.errors]
        if state is not None:
            state.progress(b.stop, len(paths), "decoding images")
    if state is not None and state.cancelled():
        raise Cancelled()
    for p in problems[:10]:
        log(f"skipped {p}")
    if len(problems) > 10:
        log(f"... and {len(problems) - 10} more unusable files")
    targets = ds.targets()
    return arrays[ok], targets[ok], problems


def _classifier_left_new(net: nn.Module, skipped: list[str]) -> bool:
    head = {id(p) for p in net.get_classifier().parameters()}
    names = {n for n, p in net.named_parameters() if id(p) in head}
    return bool(names) and names <= set(skipped)


def _zero_classifier(net: nn.Module) -> None:
    with torch.no_grad():
        for p in net.get_classifier().parameters():
            p.zero_()


def train_model(
    ds: LabelledSet,
    cfg: TrainConfig,
    out: str | Path,
    state: TaskState | None = None,
    log: Log = print,
    split: tuple[list[int], list[int], list[int]] | None = None,
    parent: str | None = None,
) -> TrainResult:
    """Split, train with early stopping, calibrate on validation, test, and save."""
    t0 = time.monotonic()
    state = state or TaskState()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    warnings: list[str] = []
    negatives = list(cfg.negative_labels or ([cfg.negative_label] if cfg.negative_label else []))
    unknown = [n for n in negatives if n not in ds.labels]
    if unknown:
        raise DatasetError(
            f"negative label {', '.join(map(repr, unknown))} is not a label of this data set "
            f"({', '.join(ds.labels)})"
        )
    cfg.negative_labels = negatives or guess_negative_labels(ds.labels, ds.task)
    unnamed = [k for k in cfg.display_names if k not in ds.labels]
    if unnamed:
        raise DatasetError(
            f"display name for {', '.join(map(repr, unnamed))}: not a label of this data set "
            f"({', '.join(ds.labels)})"
        )
    train_idx, val_idx, test_idx = split or split_indices(ds, cfg.fractions, cfg.seed)
    if not train_idx or not val_idx:
        raise DatasetError(
            f"too few images to split ({len(ds)}): need images for training and validation"
        )
    from .pretrained import init_provenance, named_start, start_weights

    start = named_start(cfg.init) if cfg.init and cfg.init != "none" else None
    if start is not None and cfg.arch != start.arch:
        raise ValueError(
            f"the '{start.name}' start is a {start.arch}; drop --arch {cfg.arch} or start from "
            "your own weights with --init-weights"
        )
    if start is not None and cfg.init_weights:
        raise ValueError("choose one start: --init or --init-weights, not both")
    norm = {"mean": start.mean, "std": start.std} if start is not None else {}
    spec = ModelSpec(
        arch=cfg.arch,
        task=ds.task,
        labels=list(ds.labels),
        modality=cfg.modality,
        input_size=cfg.img_size,
        **norm,
        preprocessing=Preprocessing.for_modality(
            cfg.modality, fov_crop=cfg.fov_crop, ben_graham=cfg.ben_graham, green=cfg.green
        ),
        name=cfg.name or f"{cfg.arch}-{ds.task}",
        head_dropout=cfg.head_dropout,
        negative_labels=list(cfg.negative_labels),
        display_names=dict(cfg.display_names),
        demo=cfg.demo,
    )
    log(
        f"data: {len(ds)} images ({ds.source}); split train {len(train_idx)} / "
        f"val {len(val_idx)} / test {len(test_idx)} (seed {cfg.seed}, grouped by patient)"
    )
    arrays, targets, problems = decode_set(ds, cfg, state, log)
    ok_index = _surviving_index(ds, problems)
    tr = [ok_index[i] for i in train_idx if i in ok_index]
    va = [ok_index[i] for i in val_idx if i in ok_index]
    te = [ok_index[i] for i in test_idx if i in ok_index]

    net = create_network(spec, pretrained=cfg.pretrained)
    skipped: list[str] = []
    start_info = init_provenance(cfg.init, cfg.init_weights, cfg.pretrained, cfg.arch)
    if start is not None:
        path, _ = start_weights(start.name)
        skipped = load_init_weights(net, path)
        log(f"initial weights: {start.description} ({len(skipped)} tensors left new)")
    elif cfg.init_weights:
        skipped = load_init_weights(net, cfg.init_weights)
        log(f"initial weights from {Path(cfg.init_weights).name} ({len(skipped)} tensors left new)")
    if (start is not None or cfg.init_weights) and _classifier_left_new(net, skipped):
        _zero_classifier(net)  # a new head starts neutral: loss ln(C), no wild first steps
    if cfg.strategy == "lora":
        from .lora import inject, lora_settings

        net = inject(net, lora_settings(net, cfg.arch))
    elif cfg.strategy not in ("full", "head"):
        raise ValueError(f"unknown strategy {cfg.strategy!r} (full, head or lora)")
    net = net.to(device).to(memory_format=torch.channels_last)
    if cfg.balance not in BALANCE_MODES:
        raise ValueError(f"unknown class balance {cfg.balance!r} ({' or '.join(BALANCE_MODES)})")
    sampling = cfg.balance == "sampling"
    if sampling and ds.task == "multilabel":
        raise ValueError(
            "class-balanced sampling needs one label per image; a multi-label model balances "
            "by its loss (--balance loss)"
        )
    loss_fn = make_loss(
        ds.task, targets[tr], spec.num_outputs, cfg.ordinal_weight, balanced=not sampling
    ).to(device)
    draw = None
    if sampling:  # inverse class frequency: each class the same share of the batches
        draw = balanced_sample_weights(targets[tr], np.ones(len(tr)), spec.num_outputs)
    fit_cfg = FitConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        patience=cfg.patience if cfg.patience is not None else 3,
        seed=cfg.seed,
        amp=cfg.amp,
        strategy=cfg.strategy,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
        pct_start=cfg.warmup_pct,
    )
    selector = recipe.ScoreSelector(ds.task, cfg.patience, ema=cfg.ema)
    fitted = fit(
        net,
        spec,
        arrays,
        targets,
        tr,
        va,
        loss_fn,
        fit_cfg,
        device,
        state,
        log,
        selector=selector,
        draw_weights=draw,
    )
    history = fitted.history
    if cfg.strategy == "lora":  # a trained-from-here model has no base: store merged weights
        from .lora import merge

        net = merge(net)
    for p in net.parameters():
        p.requires_grad = True

    extra = finalise_spec(spec, net, arrays, targets, tr, va, device, cfg, log, warnings)
    test_metrics: dict[str, Any] = {}
    if te:
        groups = [ds.samples[i].group for i in te]
        test_metrics = evaluate_arrays(
            spec, net, arrays[te], targets[te], device, cfg.amp, groups=groups
        )
        log(_metrics_line("test", test_metrics))
    val_metrics = evaluate_arrays(spec, net, arrays[va], targets[va], device, cfg.amp)
    spec.metrics = {"validation": val_metrics, "test": test_metrics}
    spec.provenance = {
        "training_data": ds.summary(),
        "split": {
            "method": "stratified, grouped by patient",
            "fractions": list(cfg.fractions),
            "seed": cfg.seed,
            "counts": {"train": len(tr), "validation": len(va), "test": len(te)},
        },
        "epochs_run": len(history),
        "best_epoch": fitted.best_epoch,
        "kept_weights": fitted.kept_weights,
        "selection": fitted.selection,
        "start": start_info,
        "history": history,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("workers",)},
        "engine_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parent": parent,
        "unusable_files": len(problems),
    }
    collapsed = (
        None
        if spec.task == "multilabel"
        else recipe.collapse_message(spec.labels, val_metrics.get("confusion_matrix"))
    )
    if collapsed:
        if not cfg.allow_collapsed:
            raise recipe.CollapsedModelError(
                f"{collapsed}. No model was written. Train longer, balance the data or start "
                "from pretrained weights; --allow-collapsed saves it anyway"
            )
        warnings.append(f"{collapsed}; saved because --allow-collapsed was given")
    for w in warnings:
        log(f"WARNING: {w}")
    spec.provenance["warnings"] = warnings
    out = Path(out)
    sha = save_model_file(out, spec, net.state_dict(), extra=extra, half=cfg.half)
    log(f"saved {out} (sha256 {sha[:12]})")
    return TrainResult(spec, out, sha, history, test_metrics, warnings, time.monotonic() - t0)


def _surviving_index(ds: LabelledSet, problems: list[str]) -> dict[int, int]:
    bad = {p.split(": ", 1)[0] for p in problems}
    out: dict[int, int] = {}
    k = 0
    for i, s in enumerate(ds.samples):
        if str(s.path) in bad:
            continue
        out[i] = k
        k += 1
    return out


def finalise_spec(
    spec: ModelSpec,
    net: nn.Module,
    arrays: np.ndarray,
    targets: np.ndarray,
    tr: list[int],
    va: list[int],
    device: torch.device,
    cfg: TrainConfig,
    log: Log,
    warnings: list[str],
) -> dict[str, torch.Tensor]:
    """Fit temperature, conformal threshold, referral curve (validation) and OOD stats (train)."""
    from . import ood
    from .calibration import fit_temperature

    val_logits, _ = predict_arrays(net, spec, arrays[va], device, cfg.amp)
    y_val = targets[va]
    spec.temperature = float(fit_temperature(val_logits, y_val, spec.task)) if len(va) else 1.0
    log(f"temperature fitted on validation: {spec.temperature:.3f}")
    calibrate_spec_on(spec, val_logits, y_val, cfg.conformal_alpha, log, warnings)
    train_sample = tr if len(tr) <= 2000 else sorted(random.Random(cfg.seed).sample(tr, 2000))
    _, train_feats = predict_arrays(net, spec, arrays[train_sample], device, cfg.amp)
    _, val_feats = predict_arrays(net, spec, arrays[va], device, cfg.amp)
    info, tensors = ood.fit_ood(train_feats, val_feats)
    spec.ood = info
    return tensors


def calibrate_spec_on(
    spec: ModelSpec,
    logits: np.ndarray,
    y: np.ndarray,
    alpha: float,
    log: Log,
    warnings: list[str],
    source: str = "validation images",
) -> None:
    """Conformal threshold, referral curve and the auto-clear evidence
    (:mod:`engine.clearing`) from labelled logits (temperature already set); ``source``
    names the images in words."""
    from .calibration import sigmoid, softmax
    from .clearing import clearing_record
    from .conformal import fit_conformal
    from .referral import referral_curve
    from .uncertainty_stats import entropy

    if spec.task == "multilabel" or len(y) == 0:
        spec.conformal = None
        spec.referral_curve = None
        spec.clearing = (
            clearing_record(spec, sigmoid(logits / spec.temperature), y, source) if len(y) else None
        )
        return
    probs = softmax(logits, spec.temperature)
    spec.clearing = clearing_record(spec, probs, y, source)
    try:
        cal = fit_conformal(probs, y, alpha=alpha)
    except ValueError:
        spec.conformal = None
        need = math.ceil((1 - alpha) / alpha)
        warnings.append(
            f"no conformal prediction sets: {len(y)} calibration images are too few for "
            f"{100 * (1 - alpha):.0f}% coverage (at least {need} are needed)"
        )
    else:
        spec.conformal = cal.to_dict()
        log(
            f"conformal threshold fitted for {100 * (1 - alpha):.0f}% coverage (qhat {cal.qhat:.3f})"
        )
        if len(y) < 50:
            warnings.append(f"only {len(y)} calibration images: conformal sets are approximate")
    neg = negative_indices(spec)
    spec.referral_curve = referral_curve(y, probs, entropy(probs), spec.task, negative_index=neg)
    if spec.clearing:
        from .modelcard import clearing_words

        log(f"auto-clear at the default threshold: {clearing_words(spec)}")


def evaluate_arrays(
    spec: ModelSpec,
    net: nn.Module,
    arrays: np.ndarray,
    y: np.ndarray,
    device: torch.device,
    amp: bool,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Metrics of ``net`` on these decoded images; with ``groups`` (one patient group per
    image) also their bootstrap 95 % intervals (:mod:`engine.intervals`)."""
    from .calibration import sigmoid, softmax
    from .findings import positive_label
    from .intervals import metric_intervals
    from .metrics import evaluate_predictions

    logits, _ = predict_arrays(net, spec, arrays, device, amp)
    if len(y) == 0:
        return {"n": 0}
    probs = (
        sigmoid(logits / spec.temperature)
        if spec.task == "multilabel"
        else softmax(logits, spec.temperature)
    )
    pos = positive_label(spec)
    out = evaluate_predictions(y, probs, spec.task, spec.labels, positive=pos)
    if groups is not None:
        out["intervals"] = metric_intervals(y, probs, spec.task, spec.labels, pos, groups)
    return out


def _metrics_line(name: str, m: dict[str, Any]) -> str:
    from .intervals import describe_interval

    ci = (m.get("intervals") or {}).get("metrics") or {}
    parts = [f"{name}: n={m.get('n')}"]
    for k in ("accuracy", "balanced_accuracy", "auc", "qwk", "ece"):
        v = m.get(k)
        if isinstance(v, float):
            parts.append(describe_interval(k, v, ci.get(k)))
    return "  ".join(parts)
