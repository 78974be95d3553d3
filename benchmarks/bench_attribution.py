"""Seconds per image for the three attribution methods on CPU.

efficientnet_b0 (random weights: speed does not depend on them) at 224 px, 2 torch threads,
one image per call. Integrated Gradients (32 steps) is timed in several configurations
(float32 with 16 or 32 interpolated images per batch, bfloat16 autocast, channels_last);
``ig32_s`` is the fastest one whose map correlates >= 0.99 with the float32 map.
``ig_readable_s`` is the whole path behind a default IG overlay: 32 steps (float32,
batches of 16; split between noisy copies if noise averaging is switched on), smoothing
at the findings' scale and the retina mask, on a synthetic fundus photograph. Wall-clock medians are returned; the
table also shows CPU seconds / threads, a rough idle-machine estimate when other processes
share the CPU.
Targets on 2 cores: Grad-CAM <= 0.25 s, IG <= 2 s. Run from the repository root:

    .venv/bin/python benchmarks/bench_attribution.py [--reps 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.attribution import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    Attribution,
    gradcam,
    integrated_gradients,
    occlusion,
)
from engine.explain import DEFAULT_DISPLAY, display_map, ig_options, retina_mask  # noqa: E402
from engine.synth import render_fundus  # noqa: E402

ARCH = "efficientnet_b0"
SIZE = 224
THREADS = 2
MIN_CORRELATION = 0.99


class Timing(NamedTuple):
    wall_s: float  # median wall-clock seconds per call
    cpu_s: float  # median CPU seconds per call (all threads), mostly immune to other load
    result: Attribution


def _time(fn: Callable[[], Attribution], reps: int) -> Timing:
    """Median wall-clock and CPU seconds per call, after one warm-up call."""
    result = fn()  # warm-up: oneDNN primitive caches, lazy imports
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return Timing(statistics.median(wall), statistics.median(cpu), result)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def run(reps: int = 5) -> dict:
    """Time Grad-CAM, IG (n_steps=32) and occlusion; print a table; return seconds/image."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=4).eval()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, SIZE, SIZE)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    target = 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    rows: list[tuple[str, Timing, str]] = []
    cam = _time(lambda: gradcam(model, x, target), reps)
    rows.append(("gradcam", cam, ""))

    ig_variants: dict[str, Callable[[], Attribution]] = {
        "ig32 fp32 batch16": lambda: integrated_gradients(model, x, target, internal_batch_size=16),
        "ig32 fp32 batch32": lambda: integrated_gradients(model, x, target, internal_batch_size=32),
        "ig32 fp32 channels_last batch32": lambda: integrated_gradients(
            model_cl, x_cl, target, internal_batch_size=32
        ),
        "ig32 bf16 batch32": lambda: integrated_gradients(
            model, x, target, internal_batch_size=32, bf16=True
        ),
        "ig32 bf16 channels_last batch32": lambda: integrated_gradients(
            model_cl, x_cl, target, internal_batch_size=32, bf16=True
        ),
    }
    reference: np.ndarray | None = None
    ig: dict[str, tuple[Timing, float]] = {}
    for name, fn in ig_variants.items():
        timing = _time(fn, reps)
        if reference is None:
            reference = timing.result.map
        corr = _correlation(timing.result.map, reference)
        ig[name] = (timing, corr)
        delta = timing.result.convergence_delta
        rows.append((name, timing, f"r={corr:.5f} vs fp32 batch16, delta={delta:.1e}"))
    best_ig = min(
        (name for name, (_, corr) in ig.items() if corr >= MIN_CORRELATION),
        key=lambda name: ig[name][0].wall_s,
    )

    fundus, _ = render_fundus(np.random.default_rng(0), "diabetic_retinopathy", SIZE)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    xf = (torch.from_numpy(fundus.copy()).permute(2, 0, 1)[None].float() / 255.0 - mean) / std
    readable_kw = ig_options({"n_steps": 32, "internal_batch_size": 16})

    def readable() -> Attribution:
        raw = integrated_gradients(model, xf, target, **readable_kw)  # type: ignore[arg-type]
        shown = display_map(raw.map, DEFAULT_DISPLAY["ig"], retina_mask(fundus, "fundus"))
        return Attribution("ig", target, shown)

    smooth = _time(readable, reps)
    rows.append(
        (
            f"ig readable ({readable_kw['n_steps']} steps"
            + (f" x {readable_kw['noise_samples']} noisy" if readable_kw["noise_samples"] else "")
            + ", smoothed, masked)",
            smooth,
            "",
        )
    )

    occ = _time(lambda: occlusion(model, x, target, perturbations_per_eval=32), max(1, reps // 2))
    rows.append(("occlusion (window 28, stride 14, 225 windows)", occ, ""))

    print(f"{ARCH} @ {SIZE}px, {THREADS} torch threads, median of {reps}, load average {load:.2f}")
    print(f"  {'method':<40} {'wall s':>8} {'cpu s/' + str(THREADS):>8}")
    for name, timing, note in rows:
        print(f"  {name:<40} {timing.wall_s:8.3f} {timing.cpu_s / THREADS:8.3f}  {note}")
    print(f"  IG figure reported: {best_ig}")
    return {
        "gradcam_s": cam.wall_s,
        "ig32_s": ig[best_ig][0].wall_s,
        "occlusion_s": occ.wall_s,
        "ig32_config": best_ig,
        "ig32_correlation": ig[best_ig][1],
        "ig32_fp32_s": ig["ig32 fp32 batch32"][0].wall_s,
        "ig_readable_s": smooth.wall_s,
        "cpu_per_thread_s": {
            "gradcam": cam.cpu_s / THREADS,
            "ig32": ig[best_ig][0].cpu_s / THREADS,
            "ig_readable": smooth.cpu_s / THREADS,
            "occlusion": occ.cpu_s / THREADS,
        },
        "load_average": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per method")
    args = parser.parse_args()
    run(args.reps)


if __name__ == "__main__":
    main()
