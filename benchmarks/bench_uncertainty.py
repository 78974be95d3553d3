"""Cost of per-image uncertainty relative to a plain pass (efficientnet_b0, 224 px, batch 32).

On a shared machine the load changes from second to second, so the plain pass and the
method are timed back to back, in alternating order, and the ratio is the median of the
per-round ratios (timing all of one and then all of the other let a load change land on
one side only).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _ratio(plain: Callable[[], object], other: Callable[[], object], rounds: int) -> float:
    """Median over rounds of time(other) / time(plain), the two run back to back, in
    alternating order (so neither always runs second)."""
    plain()
    other()
    ratios = []
    for i in range(rounds):
        if i % 2:
            b, a = _timed(other), _timed(plain)
        else:
            a, b = _timed(plain), _timed(other)
        ratios.append(b / a)
    return statistics.median(ratios)


def run() -> dict:
    from benchmarks.bench_screen import make_model
    from engine.uncertainty import sample

    with tempfile.TemporaryDirectory() as d:
        lm = make_model(Path(d))
        x = lm.normalise(torch.randint(0, 255, (32, 224, 224, 3), dtype=torch.uint8))

        def plain() -> object:
            return sample([lm], x, "none", 1, True)

        t = time.perf_counter()
        plain()
        plain_s = time.perf_counter() - t
        mc = _ratio(plain, lambda: sample([lm], x, "mc", 20, True), rounds=10)
        tta = _ratio(plain, lambda: sample([lm], x, "tta", 8, True), rounds=2)
    return {"plain_batch_s": plain_s, "mc_fast_k20_overhead": mc, "tta_k8_overhead": tta}


def print_table(r: dict) -> None:
    print("uncertainty overhead (relative to one plain pass, batch 32, timed in alternation)")
    print(f"  fast MC dropout, K=20   {r['mc_fast_k20_overhead']:.2f}×")
    print(f"  TTA, K=8                {r['tta_k8_overhead']:.2f}×")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print_table(run())
