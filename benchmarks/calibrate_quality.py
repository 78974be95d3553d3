"""Calibrate and check the fundus image-quality gate on the real image sets.

For every set in ``../shared/data`` (a sample of up to ``--per-set`` images, fixed seed)
it prints the share of real images the gate passes, and for degraded copies of the same
images (resized to 512 px wide, then: Gaussian blur sigma 4 px, brightness x0.15,
saturation x4; plus an all-black and a uniform grey image) the share the gate flags.
``--features`` also prints percentiles of each measure for real and degraded images,
which is what the thresholds in ``engine/quality.py`` were chosen from.

``aptos-dr-grades-50`` is already Ben-Graham filtered (grey background, no dark border):
it is reported but was not used for calibration. Run from the repository root:

    .venv/bin/python benchmarks/calibrate_quality.py [--per-set 200] [--features]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.quality import DEFAULT_THRESHOLDS, QualityResult, assess_quality  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}

SETS: dict[str, tuple[str, bool]] = {  # name -> (folder under DATA, used for calibration)
    "mx-dme/fundus": ("mx-dme/fundus", True),
    "eye-diseases-4/cataract": ("eye-diseases-4/cataract", True),
    "eye-diseases-4/diabetic_retinopathy": ("eye-diseases-4/diabetic_retinopathy", True),
    "eye-diseases-4/glaucoma": ("eye-diseases-4/glaucoma", True),
    "eye-diseases-4/normal": ("eye-diseases-4/normal", True),
    "chase-db1": ("chase-db1", True),
    "fullres-fundus": ("fullres-fundus", True),
    "aptos-dr-grades-50 (Ben Graham, not calibrated)": ("aptos-dr-grades-50", False),
}


def _at_512(img: np.ndarray) -> np.ndarray:
    pil = Image.fromarray(img)
    h = round(pil.height * 512 / pil.width)
    return np.asarray(pil.resize((512, h), Image.Resampling.BILINEAR))


def _blur(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(_at_512(img)).filter(ImageFilter.GaussianBlur(4)))


def _scaled(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def degrade(img: np.ndarray) -> np.ndarray:
        return np.clip(_at_512(img).astype(np.float32) * factor, 0, 255).astype(np.uint8)

    return degrade


DEGRADATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "blur sigma 4 px @512": _blur,
    "brightness x0.15": _scaled(0.15),
    "saturated x4": _scaled(4.0),
}


def sample_files(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Up to ``n`` image files from ``folder`` (recursively), a fixed random sample."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    random.Random(seed).shuffle(files)
    return files[:n]


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _features(results: list[QualityResult]) -> str:
    rows = []
    for name in ("focus", "mean_brightness", "dark_fraction", "bright_fraction", "fov_coverage"):
        v = np.array([getattr(r, name) for r in results])
        q = np.percentile(v, [0, 1, 2, 5, 50, 95, 98, 99, 100])
        rows.append(f"      {name:16s} " + " ".join(f"{x:8.3f}" for x in q))
    return "      percentiles      0 1 2 5 50 95 98 99 100\n" + "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-set", type=int, default=200, help="images sampled per set")
    parser.add_argument("--features", action="store_true", help="print measure percentiles")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"data folder not found: {DATA}", file=sys.stderr)
        return 1
    print(f"thresholds: {DEFAULT_THRESHOLDS}")
    degraded: dict[str, list[QualityResult]] = {k: [] for k in DEGRADATIONS}
    all_real: list[QualityResult] = []
    start = time.perf_counter()
    for name, (folder, calibrate) in SETS.items():
        files = sample_files(DATA / folder, args.per_set)
        if not files:
            print(f"{name}: no images, skipped")
            continue
        real = []
        for path in files:
            img = load_rgb(path)
            real.append(assess_quality(img))
            if calibrate:
                for key, degrade in DEGRADATIONS.items():
                    degraded[key].append(assess_quality(degrade(img)))
        passed = sum(r.ok for r in real)
        print(f"{name}: real images passed {passed}/{len(real)} = {passed / len(real):.1%}")
        failed = [(p.name, r.reasons) for p, r in zip(files, real, strict=True) if not r.ok]
        for file_name, reasons in failed[:8]:
            print(f"      failed {file_name}: {', '.join(reasons)}")
        if args.features:
            print(_features(real))
        if calibrate:
            all_real += real
    for key, results in degraded.items():
        flagged = sum(not r.ok for r in results)
        print(f"degraded, {key}: flagged {flagged}/{len(results)} = {flagged / len(results):.1%}")
        if args.features:
            print(_features(results))
    for key, img in {
        "all-black 512x512": np.zeros((512, 512, 3), np.uint8),
        "uniform grey 512x512": np.full((512, 512, 3), 128, np.uint8),
    }.items():
        r = assess_quality(img)
        print(f"degraded, {key}: {'flagged' if not r.ok else 'PASSED'} ({', '.join(r.reasons)})")
    passed = sum(r.ok for r in all_real)
    print(
        f"all calibration sets: real passed {passed}/{len(all_real)} = {passed / len(all_real):.1%}"
    )
    print(f"elapsed {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
