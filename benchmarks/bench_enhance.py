"""Display enhancement: how long one change of each control takes on a 2048 px display copy.

Goal: at most 50 ms per change, so a slider feels live. The viewer keeps the slow part of
the view (:func:`engine.enhance.prepare`: red-free and CLAHE) while brightness, contrast
and gamma move, so a slider step costs one table lookup (:func:`engine.enhance.tone`);
switching red-free or CLAHE on costs ``prepare`` and ``tone`` together. Measured on a
synthetic dark 2048 x 2048 colour image (a fundus-like disc with texture):

- ``enhance_brightness_ms`` / ``contrast`` / ``gamma``: a slider step (tone only);
- ``enhance_green_ms``: red-free switched on (prepare + tone);
- ``enhance_clahe_ms``: CLAHE switched on, colour (prepare + tone);
- ``enhance_green_clahe_ms``: CLAHE switched on in the red-free view (prepare + tone);
- ``enhance_slider_with_clahe_ms``: a contrast step while CLAHE is on (tone only).

Medians of ``REPS`` runs. Not a test: it prints and returns numbers.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SIDE = 2048
REPS = 9


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    r = np.hypot(x - SIDE / 2, y - SIDE / 2) / (SIDE / 2)
    disc = np.clip(1.0 - r, 0.0, 1.0) ** 0.5
    texture = 8 * np.sin(x / 23.0) * np.cos(y / 31.0) + rng.normal(0, 3, (SIDE, SIDE))
    base = disc * 60 + texture * disc
    rgb = np.stack([base * 1.3, base * 0.7, base * 0.3], axis=2)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _median_ms(fn: Callable[[], object]) -> float:
    fn()  # warm-up
    times = []
    for _ in range(REPS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000.0


def run() -> dict:
    from engine.enhance import Enhancement, prepare, tone

    rgb = _image()
    plain = prepare(rgb, False, False)
    with_clahe = prepare(rgb, False, True)
    return {
        "enhance_image_px": f"{SIDE}x{SIDE}",
        "enhance_brightness_ms": _median_ms(lambda: tone(plain, Enhancement(brightness=20))),
        "enhance_contrast_ms": _median_ms(lambda: tone(plain, Enhancement(contrast=20))),
        "enhance_gamma_ms": _median_ms(lambda: tone(plain, Enhancement(gamma=1.4))),
        "enhance_green_ms": _median_ms(
            lambda: tone(prepare(rgb, True, False), Enhancement(green=True))
        ),
        "enhance_clahe_ms": _median_ms(
            lambda: tone(prepare(rgb, False, True), Enhancement(clahe=True))
        ),
        "enhance_green_clahe_ms": _median_ms(
            lambda: tone(prepare(rgb, True, True), Enhancement(green=True, clahe=True))
        ),
        "enhance_slider_with_clahe_ms": _median_ms(
            lambda: tone(with_clahe, Enhancement(contrast=20, clahe=True))
        ),
    }


def print_table(results: dict) -> None:
    print(f"display enhancement on a {results['enhance_image_px']} image (median ms per change)")
    for key, value in results.items():
        if key.endswith("_ms"):
            print(f"  {key:<36} {value:7.1f} ms")


if __name__ == "__main__":
    print_table(run())
