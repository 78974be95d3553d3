"""Screen a pile of images: probabilities, uncertainty, conformal set, OOD, quality, triage.

:func:`screen` is a generator of result chunks, so the command line writes rows as they come
and the desktop fills its worklist without waiting for the whole run; it takes a
:class:`TaskState` for progress and cancellation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .clearing import clearing_block
from .images import Decoded
from .inference import model_decoder
from .modelfile import ModelSpec
from .models import LoadedModel
from .pipeline import iter_decoded_batches
from .tasks import TaskState
from .triage import TriagePolicy, read_answer, triage_answer
from .uncertainty import METHODS, check_method, sample

DEFAULT_K = {"none": 1, "mc": 20, "mc-full": 10, "tta": 8, "ensemble": 1}


@dataclass
class ScreenSettings:
    batch_size: int = 32
    device: str = "auto"
    workers: int | None = None
    uncertainty: str = "none"
    k: int | None = None
    amp: bool = True
    quality: bool = True
    policy: TriagePolicy = field(default_factory=TriagePolicy)
    # CPU inference engine for the backbone (see engine.backends); a GPU always keeps torch
    engine: str = "auto"
    # where exported backbones are cached: a workspace's cache, else the user cache folder
    engine_cache: str | Path | None = None

    def __post_init__(self) -> None:
        from .engines import check_engine

        check_engine(self.engine)
        if self.uncertainty not in METHODS:
            raise ValueError(
                f"unknown uncertainty method {self.uncertainty!r}; choose from {', '.join(METHODS)}"
            )
        if self.k is None:
            self.k = DEFAULT_K[self.uncertainty]
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")

    def prediction_key(self) -> dict[str, Any]:
        """The settings that change predictions (used to skip already-screened images)."""
        return {
            "uncertainty": self.uncertainty,
            "k": self.k,
            "quality": self.quality,
            "policy": self.policy.to_dict(),
        }


@dataclass
class ScreenResult:
    index: int
    path: str
    error: str | None = None
    label: str | None = None
    display_label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    entropy: float | None = None
    mutual_info: float | None = None
    top_std: float | None = None
    uncertainty_words: str | None = None
    conformal_set: list[str] | None = None
    ood_score: float | None = None
    ood: bool = False
    quality: dict[str, Any] | None = None
    quality_ok: bool | None = None
    triage: str = "error"
    triage_reason: str = ""
    uncertainty_method: str = "none"
    width: int | None = None
    height: int | None = None
    prediction_id: int | None = None  # set once stored in a workspace
    # items (see engine.volumes): an image, a volume rolled up from its slices, or one slice
    kind: str = "image"  # "image", "volume" or "slice"
    slice_index: int | None = None  # a slice's 0-based position in its volume
    n_slices: int | None = None  # a volume's number of B-scans
    key_slice: int | None = None  # a volume's most suspicious slice (0-based)
    slices: list[ScreenResult] | None = None  # a volume's slice results, in order
    facts: dict[str, Any] | None = None  # patient, eye, date... as the file says


def check_ensemble(models: Sequence[LoadedModel]) -> None:
    """Models averaged together must agree on task, labels and input."""
    first = models[0].spec
    for m in models[1:]:
        s = m.spec
        if (s.task, s.labels, s.modality) != (first.task, first.labels, first.modality):
            raise ValueError(
                f"{m.path.name if m.path else 'model'} has a different task or labels "
                f"({s.task}: {', '.join(s.labels)}) than {first.task}: {', '.join(first.labels)}"
            )
        if (s.input_size, s.preprocessing, s.mean, s.std) != (
            first.input_size,
            first.preprocessing,
            first.mean,
            first.std,
        ):
            raise ValueError(
                "ensemble members must share input size, preprocessing and normalisation"
            )


def screen(
    paths: Sequence[Path],
    models: Sequence[LoadedModel],
    settings: ScreenSettings | None = None,
    state: TaskState | None = None,
) -> Iterator[list[ScreenResult]]:
    """Yield one list of results per batch, in input order; bad files give error rows."""
    settings = settings or ScreenSettings()
    state = state or TaskState()
    # the engine (ONNX Runtime, ...) is attached only when there is something to screen
    scorer = BatchScorer(models, settings, attach=bool(paths))
    decode = screen_decoder(scorer.spec, settings)
    total = len(paths)
    state.progress(0, total, "screening")
    for batch in iter_decoded_batches(paths, decode, settings.batch_size, settings.workers, state):
        results = {i: error_result(i, paths[i], reason) for i, reason in batch.errors}
        if batch.arrays is not None:
            batch_paths = [paths[i] for i in batch.indices]
            scored = scorer(batch.indices, batch_paths, batch.decoded, batch.arrays)
            results.update((r.index, r) for r in scored)
        yield [results[i] for i in range(batch.start, batch.stop)]
        state.progress(batch.stop, total, "screening")


def screen_decoder(spec: ModelSpec, settings: ScreenSettings) -> Callable[[Path], Decoded]:
    """The decode step of screening: the model's decode, crop and the quality gate of its
    modality (fundus or OCT)."""
    want_quality = settings.quality and spec.modality in ("fundus", "oct")
    gate = _oct_gate if spec.modality == "oct" else _fundus_gate
    return model_decoder(spec, want_analysis=want_quality, post=gate if want_quality else None)


def error_result(index: int, path: str | Path, reason: str) -> ScreenResult:
    """The row of a file that could not be used: triage ``error`` with the reason."""
    return ScreenResult(index, str(path), error=reason, triage="error", triage_reason=reason)


class BatchScorer:
    """The model, uncertainty, OOD, conformal and triage steps on already decoded images.

    Built once per run (or once per cluster model worker) and called once per batch, so
    every screening backend gives the same answer for the same decoded image.
    """

    def __init__(
        self, models: Sequence[LoadedModel], settings: ScreenSettings, attach: bool = True
    ) -> None:
        """Check the models and settings; ``attach`` puts the backbones on the settings'
        inference engine (:func:`attach_engine`), as every screening backend does."""
        from .conformal import ConformalCalibrator

        self.models = list(models)
        if not self.models:
            raise ValueError("no model given")
        check_ensemble(self.models)
        check_method(self.models, settings.uncertainty)
        if attach:
            self.models = attach_engine(self.models, settings)
        self.settings = settings
        self.lm = self.models[0]
        self.spec = self.lm.spec
        self.multilabel = self.spec.task == "multilabel"
        self.cal = (
            ConformalCalibrator.from_dict(self.spec.conformal) if self.spec.conformal else None
        )
        # whether these models may auto-clear at all, decided once per run
        self.clear_blocked = clearing_block([m.spec for m in self.models], settings.policy)

    def __call__(
        self,
        indices: Sequence[int],
        paths: Sequence[str | Path],
        decoded: Sequence[Decoded],
        arrays: np.ndarray | None = None,
    ) -> list[ScreenResult]:
        """One result per decoded image; ``indices`` are the images' positions in the run.

        ``arrays`` is the decoded images already stacked (N, H, W, 3), when the caller has it.
        """
        from .conformal import prediction_sets
        from .ood import ood_scores
        from .uncertainty_stats import describe_uncertainty, normalised_entropy, summarise_samples

        settings, spec, lm = self.settings, self.spec, self.lm
        if arrays is None:
            arrays = np.stack([d.array for d in decoded])
        x = lm.normalise(torch.from_numpy(arrays))
        samples, feats = sample(self.models, x, settings.uncertainty, settings.k or 1, settings.amp)
        stats = summarise_samples(samples.float().cpu().numpy(), multilabel=self.multilabel)
        mean = stats["mean"]
        ood = ood_scores(feats.cpu().numpy(), spec.ood, lm.extra) if spec.ood else None
        cal = self.cal
        sets = prediction_sets(mean, cal) if cal is not None and not self.multilabel else None
        norm_ent = normalised_entropy(mean) if not self.multilabel else None
        return [
            _result(
                i,
                paths[j],  # a file, or a B-scan of a volume (FrameRef)
                decoded[j],
                spec,
                mean[j],
                stats,
                j,
                None if ood is None else float(ood[j]),
                None if sets is None else sets[j],
                None if norm_ent is None else float(norm_ent[j]),
                settings,
                describe_uncertainty,
                self.clear_blocked,
            )
            for j, i in enumerate(indices)
        ]


def attach_engine(models: Sequence[LoadedModel], settings: ScreenSettings) -> list[LoadedModel]:
    """The models with their backbones on the settings' engine (copies; the callers' models
    keep their torch networks for attribution). Full-network MC dropout needs dropout inside
    the backbone, so it stays on torch."""
    from .backends import prepare

    if settings.uncertainty == "mc-full":
        return list(models)
    return [
        prepare(m, settings.engine, settings.engine_cache, settings.batch_size, settings.amp)
        for m in models
    ]


def _fundus_gate(d: Decoded) -> None:
    """Runs in the decode thread, on the crop the decoder already made (no file re-read)."""
    from .quality import assess_quality

    if d.analysis is not None:
        d.quality = assess_quality(d.analysis, d.analysis_fov, visible=d.fov_visible).to_dict()


def _oct_gate(d: Decoded) -> None:
    """Runs in the decode thread, on the scan as the model sees it."""
    from .quality import assess_oct_quality

    if d.analysis is not None:
        d.quality = assess_oct_quality(d.analysis).to_dict()


def _result(
    i: int,
    path: Path,
    dec: Decoded,
    spec,  # noqa: ANN001 - ModelSpec
    probs: np.ndarray,
    stats: dict[str, np.ndarray],
    j: int,
    ood_score: float | None,
    set_row: np.ndarray | None,
    norm_ent: float | None,
    settings: ScreenSettings,
    describe,  # noqa: ANN001
    clear_blocked: str | None = None,
) -> ScreenResult:
    labels = spec.labels
    p = {lab: round(float(v), 6) for lab, v in zip(labels, probs, strict=True)}
    answer = read_answer(spec, probs, settings.policy.threshold)
    cset = [labels[c] for c in np.flatnonzero(set_row)] if set_row is not None else None
    ood_reason = None
    if spec.modality == "oct" and dec.fov_found:
        ood_reason = "looks like a fundus photograph (circular field of view), not an OCT scan"
    q = dec.quality
    is_ood, state, reason = triage_answer(
        spec,
        answer,
        conformal_set=cset,
        ood_score=ood_score,
        quality=q,
        policy=settings.policy,
        ood_reason=ood_reason,
        clear_blocked=clear_blocked,
    )
    label, display, confidence = answer.label, answer.display, answer.confidence
    ent = float(stats["entropy"][j])
    mi = float(stats["mutual_info"][j])
    words = describe(
        confidence, len(cset) if cset else None, norm_ent if norm_ent is not None else 0.0, mi
    )
    return ScreenResult(
        index=i,
        path=str(path),
        label=label,
        display_label=display,
        confidence=round(confidence, 6),
        probabilities=p,
        entropy=round(ent, 6),
        mutual_info=round(mi, 6),
        top_std=round(float(stats["top_std"][j]), 6),
        uncertainty_words=words,
        conformal_set=cset,
        ood_score=None if ood_score is None else round(ood_score, 4),
        ood=is_ood,
        quality=q,
        quality_ok=None if q is None else bool(q.get("ok", True)),
        triage=state,
        triage_reason=reason,
        uncertainty_method=settings.uncertainty,
        width=dec.original_size[0],
        height=dec.original_size[1],
    )


def screen_all(
    paths: Sequence[Path],
    models: Sequence[LoadedModel],
    settings: ScreenSettings | None = None,
    state: TaskState | None = None,
) -> list[ScreenResult]:
    """Convenience: the whole run as one list."""
    out: list[ScreenResult] = []
    for chunk in screen(paths, models, settings, state):
        out.extend(chunk)
    return out
