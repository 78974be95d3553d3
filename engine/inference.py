"""Batched inference over files: decode in threads, forward in inference mode.

Shared by screening, evaluation and calibration so all three see exactly the same
preprocessing as the model was trained with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .images import Decoded, decode_for_model
from .modelfile import ModelSpec
from .models import LoadedModel, autocast_for, penultimate_and_logits
from .pipeline import Batch, iter_decoded_batches
from .tasks import TaskState


@dataclass
class ForwardBatch:
    batch: Batch
    logits: np.ndarray | None  # (n, C) float32 for the decoded images of the batch
    features: np.ndarray | None  # (n, D) penultimate features, when asked for
    inputs: torch.Tensor | None  # the normalised input tensor (kept for TTA / attribution)


def model_decoder(
    lm: LoadedModel | ModelSpec,
    want_analysis: bool = False,
    post: Callable[[Decoded], None] | None = None,
) -> Callable[[Path], Decoded]:
    """The decode function for this model's input size, modality and preprocessing.

    Takes the loaded model or just its description (a decode worker needs no network).
    """
    spec = lm.spec if isinstance(lm, LoadedModel) else lm
    base = partial(
        decode_for_model,
        size=spec.input_size,
        modality=spec.modality,
        prep=spec.preprocessing,
        want_analysis=want_analysis,
    )
    if post is None:
        return base

    def decode(p: Path) -> Decoded:
        d = base(p)
        post(d)
        return d

    return decode


def forward_batches(
    lm: LoadedModel,
    paths: Sequence[Path],
    batch_size: int = 32,
    workers: int | None = None,
    state: TaskState | None = None,
    want_features: bool = False,
    keep_inputs: bool = False,
    amp: bool = True,
    decode: Callable[[Path], Decoded] | None = None,
) -> Iterator[ForwardBatch]:
    """Logits (and optionally pooled features) for every decodable file, batch by batch."""
    decode = decode or model_decoder(lm)
    net = lm.net
    for batch in iter_decoded_batches(paths, decode, batch_size, workers, state):
        if batch.arrays is None:
            yield ForwardBatch(batch, None, None, None)
            continue
        with torch.inference_mode(), autocast_for(lm.device, amp):
            x = lm.normalise(torch.from_numpy(batch.arrays))
            if want_features:
                feats, logits = penultimate_and_logits(net, x)
            else:
                feats, logits = None, net(x)
        yield ForwardBatch(
            batch,
            logits.float().cpu().numpy(),
            None if feats is None else feats.float().cpu().numpy(),
            x if keep_inputs else None,
        )
        if state is not None:
            state.progress(batch.stop, len(paths))


def predict_logits(
    lm: LoadedModel,
    paths: Sequence[Path],
    batch_size: int = 32,
    workers: int | None = None,
    state: TaskState | None = None,
    want_features: bool = False,
) -> tuple[np.ndarray, dict[int, str], np.ndarray | None]:
    """All logits at once: (N, C) with NaN rows for failed files, errors by index, features."""
    n, c = len(paths), lm.spec.num_outputs
    logits = np.full((n, c), np.nan, dtype=np.float32)
    feats: np.ndarray | None = None
    errors: dict[int, str] = {}
    for fb in forward_batches(lm, paths, batch_size, workers, state, want_features):
        errors.update(dict(fb.batch.errors))
        if fb.logits is None:
            continue
        logits[fb.batch.indices] = fb.logits
        if fb.features is not None:
            if feats is None:
                feats = np.full((n, fb.features.shape[1]), np.nan, dtype=np.float32)
            feats[fb.batch.indices] = fb.features
    return logits, errors, feats
