"""Stochastic passes for per-image uncertainty: MC dropout (fast and full), TTA, ensembles.

Every function returns probability samples shaped (K, N, C) (calibrated with each model's
temperature) plus the pooled features of the plain pass for the OOD score; the statistics
(entropy, mutual information, spread) come from :mod:`engine.uncertainty_stats`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .models import LoadedModel, autocast_for, penultimate_and_logits, probabilities

METHODS = ("none", "mc", "mc-full", "tta", "ensemble")
DROPOUT_METHODS = ("mc", "mc-full")
# MC dropout draws its masks from this seed, so an image screened again with the same model
# gets the same answer, whatever else is in its batch (unseeded, 2 of 60 images changed
# their label between two runs of the same command and 42 their confidence)
MC_SEED = 1234


class UncertaintyError(ValueError):
    """The chosen uncertainty method cannot be used with this model; the message says why."""


def check_method(models: list[LoadedModel], method: str) -> None:
    """Refuse MC dropout on a model trained without head dropout (its spread would be noise).

    Dropout at inference only estimates the model's uncertainty when the model learnt with
    that dropout; sampling a rate it never saw would report noise as uncertainty.
    """
    if method not in DROPOUT_METHODS:
        return
    for lm in models:
        if lm.spec.head_dropout <= 0:
            name = lm.spec.name or (lm.path.name if lm.path else lm.spec.arch)
            raise UncertaintyError(
                f"MC dropout needs a model trained with dropout: '{name}' was trained without "
                "head dropout, so the spread of its dropout passes would not be uncertainty it "
                "learnt. Choose TTA (--uncertainty tta) or no uncertainty for this model."
            )


@contextlib.contextmanager
def dropout_only(net: nn.Module) -> Iterator[None]:
    """Enable dropout modules only (never BatchNorm), and restore every module's mode."""
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        # timm heads often apply dropout functionally (F.dropout(x, training=self.training)) on
        # the root module: flag the root alone as training; BatchNorm children stay in eval
        net.training = True
        for m in net.modules():
            if isinstance(m, nn.Dropout | nn.Dropout2d | nn.AlphaDropout) or type(m).__name__ in (
                "DropPath",
            ):
                m.train()
        yield
    finally:
        for m, was in modes.items():
            m.train(was)


def plain(lm: LoadedModel, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic pass: samples (1, N, C) and features (N, D)."""
    with torch.inference_mode(), autocast_for(lm.device, amp):
        feats, logits = penultimate_and_logits(lm.net, x)
    return probabilities(lm.spec, logits).unsqueeze(0), feats.float()


@functools.lru_cache(maxsize=8)
def _dropout_masks(k: int, width: int, p: float) -> torch.Tensor:
    """K dropout masks over ``width`` features (scaled by 1/(1-p)), shaped (K, 1, width)."""
    g = torch.Generator().manual_seed(MC_SEED)
    return (torch.rand(k, 1, width, generator=g) >= p).float() / (1 - p)


def mc_fast(
    lm: LoadedModel, x: torch.Tensor, k: int, amp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone once, dropout on the pooled features K times before the classifier.

    Costs one forward pass plus K tiny matrix products, so uncertainty is nearly free. The
    K masks are the same for every image (K fixed sub-networks of the head, drawn from
    :data:`MC_SEED`): an image's answer depends on the image and the model alone.
    """
    check_method([lm], "mc")
    p = lm.spec.head_dropout
    head = lm.net.get_classifier()
    with torch.inference_mode(), autocast_for(lm.device, amp):
        feats, _ = penultimate_and_logits(lm.net, x)
        pre = feats.float()
        rep = pre.unsqueeze(0).expand(k, *pre.shape)
        dropped = rep * _dropout_masks(k, pre.shape[1], float(p)).to(rep.device)
        logits = head.float()(dropped.reshape(-1, pre.shape[1])).reshape(k, pre.shape[0], -1)
    return probabilities(lm.spec, logits.reshape(-1, logits.shape[-1])).reshape(logits.shape), pre


def mc_full(
    lm: LoadedModel, x: torch.Tensor, k: int, amp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """K full passes with every dropout module active (BatchNorm stays in eval mode).

    The passes draw from :data:`MC_SEED` (the caller's random state is left as it was), so
    a run repeated with the same batches gives the same answers; an image in another batch
    gets other masks."""
    check_method([lm], "mc-full")
    _, feats = plain(lm, x, amp)
    outs = []
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(MC_SEED)
        with dropout_only(lm.net), torch.inference_mode(), autocast_for(lm.device, amp):
            for _ in range(k):
                outs.append(probabilities(lm.spec, lm.net(x)))
    return torch.stack(outs), feats


def tta_views(
    x: torch.Tensor, k: int, spec_mean: tuple, spec_std: tuple, modality: str
) -> list[torch.Tensor]:
    """K transformed copies: identity, flips, small rotations, brightness changes."""
    mean = torch.tensor(spec_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec_std, device=x.device).view(1, 3, 1, 1)

    def bright(t: torch.Tensor, f: float) -> torch.Tensor:
        return ((t * std + mean) * f - mean) / std

    def rot(t: torch.Tensor, deg: float) -> torch.Tensor:
        a = math.radians(deg)
        theta = torch.tensor(
            [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
            device=t.device,
            dtype=t.dtype,
        )
        grid = F.affine_grid(theta.expand(t.shape[0], 2, 3), list(t.shape), align_corners=False)
        black = -mean / std
        out = F.grid_sample(t - black, grid, align_corners=False) + black
        return out.contiguous(memory_format=torch.channels_last)

    ops = [
        lambda t: t,
        lambda t: t.flip(3),
        lambda t: rot(t, 8) if modality == "fundus" else bright(t, 1.1),
        lambda t: rot(t, -8) if modality == "fundus" else bright(t, 0.9),
        lambda t: bright(t, 1.1),
        lambda t: bright(t, 0.9),
        lambda t: t.flip(2) if modality == "fundus" else rot(t, 3),
        lambda t: rot(t.flip(3), 8) if modality == "fundus" else rot(t, -3),
    ]
    while len(ops) < k:  # more views: compose flips with random-ish small rotations
        j = len(ops)
        ops.append(lambda t, j=j: rot(t.flip(3) if j % 2 else t, ((j * 37) % 21) - 10))
    return [op(x).contiguous(memory_format=torch.channels_last) for op in ops[:k]]


def tta(lm: LoadedModel, x: torch.Tensor, k: int, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    _, feats = plain(lm, x, amp)
    outs = []
    with torch.inference_mode(), autocast_for(lm.device, amp):
        for v in tta_views(x, k, lm.spec.mean, lm.spec.std, lm.spec.modality):
            outs.append(probabilities(lm.spec, lm.net(v)))
    return torch.stack(outs), feats


def sample(
    models: list[LoadedModel], x: torch.Tensor, method: str, k: int, amp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch on the method; ``ensemble`` averages the models' plain passes."""
    lm = models[0]
    if method == "none":
        return plain(lm, x, amp)
    if method == "mc":
        return mc_fast(lm, x, k, amp)
    if method == "mc-full":
        return mc_full(lm, x, k, amp)
    if method == "tta":
        return tta(lm, x, k, amp)
    if method == "ensemble":
        if len(models) < 2:
            raise ValueError("an ensemble needs at least two model files (--model A --model B)")
        outs, feats = [], None
        for m in models:
            s, f = plain(m, x.to(m.device), amp)
            outs.append(s[0].to(lm.device))
            feats = f if feats is None else feats
        return torch.stack(outs), feats
    raise ValueError(f"unknown uncertainty method {method!r}; choose from {', '.join(METHODS)}")
