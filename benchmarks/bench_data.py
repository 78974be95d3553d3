"""Shared benchmark inputs: camera-sized JPEGs made from real fundus photographs.

Clinical fundus cameras write 2000-4000 px files; the real sets here are 512-1000 px. So
the screening benchmarks upscale real photographs to ``side`` px (camera-sized in bytes and
pixels only: upscaling adds no detail, and every figure built on them says so). The copies
are cached under ``benchmarks/out/`` (ignored by git) and reused between runs.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
OUT = REPO / "benchmarks" / "out"


def real_fundus_files() -> list[Path]:
    """Every real fundus JPEG available: fullres-fundus first, then mx-dme fundus."""
    files = sorted((SHARED / "fullres-fundus").glob("*.jpg"))
    files += sorted((SHARED / "mx-dme" / "fundus").glob("*.jpg"))
    return files


def camera_jpegs(n: int = 400, side: int = 3000, quality: int = 90) -> list[Path]:
    """``n`` distinct real fundus photographs upscaled to ``side`` px (cached); fewer when
    fewer real files exist, an empty list when the real data is absent."""
    src = real_fundus_files()[:n]
    folder = OUT / f"camera-{side}px"
    folder.mkdir(parents=True, exist_ok=True)
    res = []
    for p in src:
        q = folder / f"{p.parent.name}-{p.name}"
        if not q.exists():
            tmp = q.with_suffix(".tmp.jpg")
            Image.open(p).convert("RGB").resize((side, side), Image.BICUBIC).save(
                tmp, quality=quality
            )
            tmp.replace(q)
        res.append(q)
    return res
