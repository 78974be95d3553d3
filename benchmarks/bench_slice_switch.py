"""Slice switch in the review page: how long moving to the next B-scan of a volume takes.

Goal: under 50 ms from the key press to the new B-scan on screen. The review page keeps the
decoded neighbours of the current slice in its cache (they are decoded in the background
while the reader looks), so a step to a neighbour costs only drawing; a jump further away
(a click on the strip) costs a decode as well. Measured on a 49-slice 16-bit Ophthalmic
Tomography DICOM of 768×496 synthetic B-scans:

- ``decode_ms``: one B-scan decoded for display (the worker's part, DICOM already parsed);
- ``switch_cached_ms``: Page Down to a cached neighbour, until the viewer holds it
  (slice bar, viewer and overlay state updated; the offscreen platform draws nothing, so a
  real screen adds one repaint);
- ``switch_uncached_ms``: a jump to a slice not decoded yet, until the viewer holds it.

Medians of ``REPS`` switches. Not a test: it prints and returns numbers.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
N_SLICES = 49
REPS = 20


def _volume(folder: Path) -> Path:
    from engine import dicom_synth as W

    rng = np.random.default_rng(0)
    y = np.arange(496)[None, :, None]
    band = np.exp(-(((y - 250 - 8 * np.sin(np.arange(N_SLICES)[:, None, None] / 5)) / 30) ** 2))
    frames = (band * 3000 + rng.random((N_SLICES, 496, 768)) * 600).astype(np.uint16)
    path = folder / "oct49.dcm"
    W.write_volume(path, frames, bits_stored=12, patient_id="B1", laterality="R")
    return path


def _workspace(folder: Path, volume: Path) -> int:
    from engine.store import Workspace, sha256_file

    with Workspace.open(folder / "ws") as ws:
        (vid,) = ws.add_images(
            [
                {
                    "path": volume,
                    "sha256": sha256_file(volume),
                    "kind": "volume",
                    "n_slices": N_SLICES,
                }
            ]
        )
    return vid


def run() -> dict[str, float]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from desktop.image_loader import load_display_qimage
    from desktop.review import ReviewPage

    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        volume = _volume(folder)
        vid = _workspace(folder, volume)
        load_display_qimage(str(volume), slice_index=0)  # parse the file once
        decode = []
        for i in range(1, 1 + REPS):
            t = time.perf_counter()
            load_display_qimage(str(volume), slice_index=i)
            decode.append((time.perf_counter() - t) * 1000)

        page = ReviewPage()
        page.resize(1280, 720)
        page.set_workspace(folder / "ws", None)
        page.show()
        page.show_image(vid)

        def wait_for(index: int) -> None:
            while page.loader.image(vid, index) is None or page.current_slice() != index:
                app.processEvents()
                time.sleep(0.0005)

        def settle() -> None:  # neighbours decoded, nothing left in the background
            while page.loader.is_busy():
                app.processEvents()
                time.sleep(0.001)

        page.slice_bar.set_current(0)
        wait_for(0)
        settle()
        cached = []
        for i in range(1, 1 + REPS):
            t = time.perf_counter()
            QTest.keyClick(page, Qt.Key.Key_PageDown)
            wait_for(i)
            cached.append((time.perf_counter() - t) * 1000)
            settle()
        uncached = []
        for i in range(REPS):
            target = (i * 17 + 30) % N_SLICES
            if page.loader.image(vid, target) is not None:
                continue
            t = time.perf_counter()
            page.slice_bar.set_current(target)
            wait_for(target)
            uncached.append((time.perf_counter() - t) * 1000)
            settle()
        page.shutdown()
    return {
        "slice_decode_ms": round(statistics.median(decode), 2),
        "slice_switch_cached_ms": round(statistics.median(cached), 2),
        "slice_switch_uncached_ms": round(statistics.median(uncached), 2),
        "slice_switch_uncached_n": len(uncached),
    }


if __name__ == "__main__":
    print(run())
