"""Screen on a Ray cluster with the same answers as one workstation.

The pipeline is Ray Data's streaming batch inference:

    paths -> decode tasks (CPU: the engine's decode, field-of-view crop and quality gate)
          -> model workers (actors that load the model files once, on a GPU when given one,
             and run the engine's :class:`~engine.screen.BatchScorer`: inference engine
             choice, model, uncertainty, OOD, conformal set and triage)
          -> results streamed back to the driver, in the order they finish.

Nothing here re-implements a screening step: the decode function, the error rows and the
scorer are the ones :func:`engine.screen.screen` uses, so an image gets the same label,
triage and reason on either backend (probabilities agree to float rounding at equal
precision). That includes the inference engine: each model worker attaches the settings'
engine (:func:`engine.screen.attach_engine`; ``auto`` uses the choice measured and
remembered on its node, a GPU keeps torch) and runs it with the worker's share of CPUs.
Exported backbones are cached in each node's user cache, not in the workspace, which
belongs to the driver and need not be visible to the workers.

Ray retries a task whose worker died and restarts a dead model worker; a block's results
reach the driver once, and the driver checks that every image got exactly one result. The driver alone writes the workspace (:mod:`engine.workspace_screen`).

Ray is the optional ``cluster`` extra: it is imported inside functions only, so the engine
and the desktop bundle run without it and ``--backend ray`` says what to install.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .modelfile import ModelSpec
from .models import LoadedModel
from .screen import BatchScorer, ScreenResult, ScreenSettings, check_ensemble, error_result
from .tasks import TaskState
from .uncertainty import check_method

RAY_MISSING = "--backend ray needs Ray, which is not installed: pip install 'eyetriage[cluster]'"
# a decode task's memory reservation: keeps decoding out of the model workers (Ray fuses
# steps with equal resource requests) and stops a small node from taking too many at once
DECODE_MEMORY_BYTES = 512 * 1024**2
FACTS_BATCH = 64
# results are handed on (one workspace transaction each) once 256 have arrived, or a
# second after the last hand-over: fewer, larger writes for the one serial step
WRITE_CHUNK_ROWS = 256
WRITE_CHUNK_SECONDS = 1.0


class ClusterError(RuntimeError):
    """Ray is missing, unreachable, or a run could not finish; the message says which."""


def require_ray() -> Any:
    """The ``ray`` module, or :class:`ClusterError` with what to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - the data extra
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    return ray


@dataclass
class RayOptions:
    """Where and how wide to run. ``address`` None starts a local Ray on this machine."""

    address: str | None = None  # "auto" (a cluster started with `ray start`) or ray://HOST:PORT
    model_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None  # default: 1 (fewer on a small machine)
    num_cpus: int | None = None  # CPUs of a local Ray (default: all of this machine's)

    def __post_init__(self) -> None:
        if self.model_workers < 1:
            raise ValueError("--model-workers must be at least 1")
        if self.gpus_per_worker < 0:
            raise ValueError("--gpus-per-worker cannot be negative")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError("--cpus-per-worker must be positive")


class RayBackend:
    """Screening on Ray (see the module docstring); a context manager that shuts down the
    local Ray it started. Use it as the ``backend`` of a workspace run or call :meth:`screen`.
    """

    name = "ray"

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        self.startup_seconds: float | None = None
        self._ray = require_ray()
        self._started = False
        self.engines: set[str] = set()  # the inference engines the model workers ran

    # ----------------------------------------------------------------- lifetime

    def start(self) -> None:
        """Connect to the cluster, or start a local Ray; reuses a Ray already running here."""
        ray = self._ray
        if not ray.is_initialized():
            t0 = time.monotonic()
            address = self.options.address or "local"
            # a notice about the cluster's own security setting, not about this run
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
            kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
            if address == "local":
                kwargs.update(include_dashboard=False, num_cpus=self.options.num_cpus)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ClusterError(f"cannot start or reach Ray at {address}: {e}") from None
            self._started = True
            self.startup_seconds = time.monotonic() - t0
        _quiet_ray_data()

    def close(self) -> None:
        """Shut down the Ray this backend started (a cluster it joined keeps running)."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        o = self.options
        gpu = f", {o.gpus_per_worker:g} GPU each" if o.gpus_per_worker else ""
        where = o.address or "local Ray"
        engines = f", {'/'.join(sorted(self.engines))}" if self.engines else ""
        workers = f"{o.model_workers} model worker{'s' * (o.model_workers > 1)}"
        return f"ray ({where}, {workers}{gpu}{engines})"

    # ----------------------------------------------------------------- the two steps

    def file_facts(
        self, paths: Sequence[Path], state: TaskState | None = None
    ) -> list[dict[str, Any]]:
        """Hash the files on the cluster (reading every byte is the costly part at scale)."""
        self.start()
        state = state or TaskState()
        if not paths:
            return []
        ds = self._ray.data.from_items(
            [{"i": i, "path": str(p)} for i, p in enumerate(paths)],
            override_num_blocks=max(1, math.ceil(len(paths) / FACTS_BATCH)),
        ).map_batches(_facts_batch, batch_size=FACTS_BATCH, batch_format="numpy")
        facts: list[dict[str, Any] | None] = [None] * len(paths)
        done = 0
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i, text in zip(block["i"], block["facts"], strict=True):
                facts[int(i)] = json.loads(text)
            done += len(block["i"])
            state.progress(done, len(paths), "hashing files")
        missing = [str(paths[i]) for i, f in enumerate(facts) if f is None]
        if missing:
            raise ClusterError(f"Ray returned no file facts for {len(missing)} files")
        return facts  # type: ignore[return-value]

    def screen(
        self,
        paths: Sequence[Path],
        models: Sequence[LoadedModel],
        settings: ScreenSettings,
        state: TaskState | None = None,
    ) -> Iterator[list[ScreenResult]]:
        """Chunks of results in the order they finish; every path gets exactly one result.

        The model files must be readable at the same path on every node (shared storage);
        each worker checks it loaded the same file (by hash) as this driver.
        """
        state = state or TaskState()
        models = list(models)
        if not models:
            raise ValueError("no model given")
        check_ensemble(models)
        check_method(models, settings.uncertainty)
        for m in models:
            if m.path is None:
                raise ValueError("a model screened on Ray must come from a model file")
        self.start()
        self.engines = set()
        # the workers' exports go to their own node's cache (see the module docstring)
        worker_settings = replace(settings, engine_cache=None)
        total = len(paths)
        state.progress(0, total, "screening")
        if not total:
            return
        ray = self._ray
        o = self.options
        batch = settings.batch_size
        spec = models[0].spec
        cpus = self._worker_cpus()
        ds = (
            ray.data.from_items(
                [{"i": i, "path": str(p)} for i, p in enumerate(paths)],
                override_num_blocks=max(1, math.ceil(total / batch)),
            )
            .map_batches(
                _decode_batch,
                batch_size=batch,
                batch_format="numpy",
                fn_kwargs={"spec": spec, "settings": settings},
                num_cpus=1,
                memory=DECODE_MEMORY_BYTES,
            )
            .map_batches(
                _ModelWorker,
                batch_size=batch,
                batch_format="numpy",
                fn_constructor_kwargs={
                    "files": [(str(m.path), m.sha256) for m in models],
                    "settings": worker_settings,
                    "device": "cuda" if o.gpus_per_worker > 0 else "cpu",
                    "threads": max(1, round(cpus)),
                },
                compute=ray.data.ActorPoolStrategy(size=o.model_workers),
                num_cpus=cpus,
                num_gpus=o.gpus_per_worker or None,
            )
        )
        seen = np.zeros(total, dtype=bool)
        got = duplicates = 0
        pending: list[ScreenResult] = []
        last_yield = time.monotonic()
        blocks = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        try:
            for block in blocks:
                self.engines.update(str(e) for e in block["engine"])
                for text in block["result"]:
                    r = ScreenResult(**json.loads(text))
                    if seen[r.index]:  # never expected from Ray: keep the first result
                        duplicates += 1
                        continue
                    seen[r.index] = True
                    pending.append(r)
                # the driver's writes are the serial part: larger chunks, fewer transactions
                now = time.monotonic()
                cancelled = state.cancelled()
                if pending and (
                    len(pending) >= WRITE_CHUNK_ROWS
                    or now - last_yield >= WRITE_CHUNK_SECONDS
                    or cancelled
                ):
                    got += len(pending)
                    chunk, pending = pending, []
                    yield chunk
                    last_yield = time.monotonic()
                    state.progress(got, total, "screening")
                if cancelled:
                    return
            if pending:
                got += len(pending)
                yield pending
                state.progress(got, total, "screening")
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()
        if duplicates:
            logging.getLogger(__name__).warning("dropped %d duplicate results", duplicates)
        if not seen.all():
            raise ClusterError(
                f"Ray returned no result for {int((~seen).sum())} of {total} images; "
                "run the same command again to screen the rest"
            )

    def _worker_cpus(self) -> float:
        """CPUs reserved per model worker: 1, but leave one for decoding on a small machine."""
        o = self.options
        if o.cpus_per_worker is not None:
            return o.cpus_per_worker
        if o.gpus_per_worker > 0:
            return 1.0
        total = float(self._ray.cluster_resources().get("CPU", 1.0))
        return max(0.25, min(1.0, (total - 1.0) / o.model_workers))


def _quiet_ray_data() -> None:
    """Our own progress line replaces Ray Data's bars and per-run log lines."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- on the workers


def _facts_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: the workspace's file facts (resolved path, hash, size, patient, eye)."""
    from .workspace_screen import file_facts

    out = [json.dumps(file_facts(Path(str(p)))) for p in batch["path"]]
    return {"i": batch["i"], "facts": np.array(out, dtype=object)}


def _decode_batch(
    batch: dict[str, np.ndarray], spec: ModelSpec, settings: ScreenSettings
) -> dict[str, np.ndarray]:
    """Ray task: decode, crop and quality-gate one batch; a bad file becomes its reason."""
    from .pipeline import decode_or_reason
    from .screen import screen_decoder

    decode = screen_decoder(spec, settings)
    n, size = len(batch["i"]), spec.input_size
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    errors, widths, heights, fov, quality = [], [], [], [], []
    for j, p in enumerate(batch["path"]):
        d = decode_or_reason(decode, Path(str(p)))
        if isinstance(d, str):
            errors.append(d)
            widths.append(0)
            heights.append(0)
            fov.append(-1)
            quality.append("")
            continue
        images[j] = d.array
        errors.append("")
        widths.append(d.original_size[0])
        heights.append(d.original_size[1])
        fov.append(-1 if d.fov_found is None else int(d.fov_found))
        quality.append("" if d.quality is None else json.dumps(d.quality))
    return {
        "i": batch["i"],
        "path": batch["path"],
        "image": images,
        "error": np.array(errors, dtype=object),
        "width": np.array(widths, dtype=np.int64),
        "height": np.array(heights, dtype=np.int64),
        "fov_found": np.array(fov, dtype=np.int8),
        "quality": np.array(quality, dtype=object),
    }


class _ModelWorker:
    """Ray actor: loads the model files once, puts them on the settings' inference engine,
    then scores decoded batches."""

    def __init__(
        self,
        files: list[tuple[str, str]],
        settings: ScreenSettings,
        device: str,
        threads: int,
    ) -> None:
        import torch

        from .backends import engine_name
        from .models import load_model

        # torch and the exported engine both keep to the CPUs this worker reserved
        torch.set_num_threads(threads)
        os.environ["EYETRIAGE_ENGINE_THREADS"] = str(threads)
        models = []
        for path, sha in files:
            lm = load_model(path, device=device)
            if lm.sha256 != sha:
                raise ClusterError(
                    f"{path}: a worker read a different file than the driver (hash "
                    f"{lm.sha256[:12]} vs {sha[:12]}); keep model files on storage all nodes share"
                )
            models.append(lm)
        self.scorer = BatchScorer(models, settings)  # attaches the engine, as screen() does
        self.engine = engine_name(self.scorer.lm)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .images import Decoded

        results: list[ScreenResult] = []
        ok: list[int] = []
        for j, reason in enumerate(batch["error"]):
            if reason:
                results.append(error_result(int(batch["i"][j]), str(batch["path"][j]), reason))
            else:
                ok.append(j)
        if ok:
            arrays = np.ascontiguousarray(batch["image"][ok])  # a writable copy for torch
            decoded = [
                Decoded(
                    arrays[k],
                    (int(batch["width"][j]), int(batch["height"][j])),
                    fov_found=None if batch["fov_found"][j] < 0 else bool(batch["fov_found"][j]),
                    quality=json.loads(batch["quality"][j]) if batch["quality"][j] else None,
                )
                for k, j in enumerate(ok)
            ]
            indices = [int(batch["i"][j]) for j in ok]
            paths = [str(batch["path"][j]) for j in ok]
            results += self.scorer(indices, paths, decoded, arrays)
        return {
            "result": np.array([json.dumps(asdict(r)) for r in results], dtype=object),
            "engine": np.array([self.engine] * len(results), dtype=object),
        }
