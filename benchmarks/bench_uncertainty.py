"""Cost of per-image uncertainty relative to a plain pass (efficientnet_b0, 224 px, batch 32)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch


def _time(fn, reps: int = 5) -> float:  # noqa: ANN001
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run() -> dict:
    from benchmarks.bench_screen import make_model
    from engine.uncertainty import sample

    with tempfile.TemporaryDirectory() as d:
        lm = make_model(Path(d))
        x = lm.normalise(torch.randint(0, 255, (32, 224, 224, 3), dtype=torch.uint8))
        plain = _time(lambda: sample([lm], x, "none", 1, True))
        mc = _time(lambda: sample([lm], x, "mc", 20, True))
        tta = _time(lambda: sample([lm], x, "tta", 8, True), reps=2)
    return {
        "plain_batch_s": plain,
        "mc_fast_k20_overhead": mc / plain,
        "tta_k8_overhead": tta / plain,
    }


def print_table(r: dict) -> None:
    print("uncertainty overhead (relative to one plain pass, batch 32)")
    print(f"  fast MC dropout, K=20   {r['mc_fast_k20_overhead']:.2f}×")
    print(f"  TTA, K=8                {r['tta_k8_overhead']:.2f}×")


if __name__ == "__main__":
    print_table(run())
