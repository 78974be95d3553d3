"""Display enhancement for grading: brightness, contrast, gamma, red-free view and CLAHE.

Graders read dark or hazy photographs with the contrast, gamma and a red-free (green
channel) view turned up. These functions change only the pixels *shown*: they take a
display copy (``uint8`` RGB, ``H x W x 3``) and return a new array; nothing here reads or
writes an image file.

The work is split in two so that a slider stays live:

* :func:`prepare` does the slow part that depends only on the image and the two switches
  (red-free and CLAHE); a caller keeps its result while the sliders move;
* :func:`tone` maps brightness, contrast and gamma through one 256-entry table per channel.

:func:`apply` chains both. CLAHE (contrast-limited adaptive histogram equalisation,
Zuiderveld 1994) is done here in vectorised numpy: clipped histograms of an 8 x 8 grid of
tiles, one mapping per tile, bilinear interpolation of the mappings between tile centres.
On a colour image it equalises the luminance (BT.601 Y) and keeps the chroma, i.e. the
change of Y is added to R, G and B alike.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

__all__ = [
    "BRIGHTNESS_RANGE",
    "CLAHE_CLIP",
    "CLAHE_GRID",
    "CONTRAST_RANGE",
    "GAMMA_RANGE",
    "Enhancement",
    "apply",
    "clahe",
    "prepare",
    "tone",
    "tone_table",
]

BRIGHTNESS_RANGE = (-100, 100)  # per cent of half the grey range: +100 adds 128 levels
CONTRAST_RANGE = (-100, 100)  # +50 doubles the spread around mid-grey, -50 halves it
GAMMA_RANGE = (0.3, 3.0)  # > 1 lifts the dark tones (out = in ** (1 / gamma))
CLAHE_GRID = 8  # tiles across and down
CLAHE_CLIP = 2.0  # histogram clip limit, in multiples of the mean bin count


@dataclass(frozen=True)
class Enhancement:
    """How the display copy is shown; the default is the original.

    ``brightness`` and ``contrast`` are in [-100, 100] (0: unchanged), ``gamma`` in
    [0.3, 3.0] (1: unchanged; above 1 brightens the dark tones), ``green`` shows the
    red-free view (the green channel as grey) and ``clahe`` equalises local contrast.
    """

    brightness: int = 0
    contrast: int = 0
    gamma: float = 1.0
    green: bool = False
    clahe: bool = False

    @classmethod
    def identity(cls) -> Enhancement:
        """The original image, unchanged."""
        return cls()

    @property
    def is_identity(self) -> bool:
        """True when the view is the original pixels."""
        return self.clamped() == Enhancement()

    def clamped(self) -> Enhancement:
        """The same settings held inside their ranges (gamma to two decimals)."""
        return Enhancement(
            brightness=int(min(max(round(self.brightness), BRIGHTNESS_RANGE[0]), 100)),
            contrast=int(min(max(round(self.contrast), CONTRAST_RANGE[0]), 100)),
            gamma=round(min(max(float(self.gamma), GAMMA_RANGE[0]), GAMMA_RANGE[1]), 2),
            green=bool(self.green),
            clahe=bool(self.clahe),
        )

    def with_(self, **changes: object) -> Enhancement:
        """A copy with ``changes`` applied and clamped to the ranges."""
        return replace(self, **changes).clamped()  # type: ignore[arg-type]

    def describe(self) -> str:
        """What differs from the original in words (``""`` for the original), e.g.
        ``"contrast +20, gamma 1.30, red-free, CLAHE"``."""
        e = self.clamped()
        parts = []
        if e.brightness:
            parts.append(f"brightness {e.brightness:+d}")
        if e.contrast:
            parts.append(f"contrast {e.contrast:+d}")
        if e.gamma != 1.0:
            parts.append(f"gamma {e.gamma:.2f}")
        if e.green:
            parts.append("red-free")
        if e.clahe:
            parts.append("CLAHE")
        return ", ".join(parts)


def tone_table(e: Enhancement) -> np.ndarray:
    """The 256-entry ``uint8`` table for brightness, contrast and gamma (same for R, G, B).

    Order: gamma on the input level, then contrast around mid-grey, then brightness.
    """
    e = e.clamped()
    x = np.arange(256, dtype=np.float64) / 255.0
    if e.gamma != 1.0:
        x = x ** (1.0 / e.gamma)
    if e.contrast:
        x = (x - 0.5) * (2.0 ** (e.contrast / 50.0)) + 0.5
    if e.brightness:
        x = x + e.brightness / 200.0
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _check(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"expected a uint8 RGB array of shape (H, W, 3), got {rgb.dtype} {rgb.shape}"
        )


def prepare(rgb: np.ndarray, green: bool, use_clahe: bool) -> np.ndarray:
    """The slow part of the view: the red-free channel and/or CLAHE.

    Returns ``rgb`` itself when both are off, a 2-D grey array for the red-free view, else
    a new ``H x W x 3`` array. Pass the result to :func:`tone`.
    """
    _check(rgb)
    if green:
        grey = rgb[:, :, 1]
        return clahe(grey) if use_clahe else np.ascontiguousarray(grey)
    if not use_clahe:
        return rgb
    # BT.601 luma (Pillow's "L": Y = 0.299 R + 0.587 G + 0.114 B), the fastest way here
    luma = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    delta = clahe(luma).astype(np.int16)
    delta -= luma
    wide = rgb.astype(np.int16)
    wide += delta[:, :, None]
    np.clip(wide, 0, 255, out=wide)
    return wide.astype(np.uint8)


def tone(prepared: np.ndarray, e: Enhancement) -> np.ndarray:
    """Brightness, contrast and gamma through one table; always ``H x W x 3`` ``uint8``.

    ``prepared`` is what :func:`prepare` returned (2-D grey for the red-free view).
    """
    table = None if _is_flat(e) else tone_table(e)
    if prepared.ndim == 2:
        grey = prepared if table is None else table[prepared]
        return np.repeat(grey[:, :, None], 3, axis=2)
    return prepared if table is None else table[prepared]


def _is_flat(e: Enhancement) -> bool:
    c = e.clamped()
    return c.brightness == 0 and c.contrast == 0 and c.gamma == 1.0


def apply(rgb: np.ndarray, e: Enhancement) -> np.ndarray:
    """``rgb`` as shown with ``e``; the input array is never modified.

    For the original (``e.is_identity``) the input itself is returned.
    """
    _check(rgb)
    if e.is_identity:
        return rgb
    return tone(prepare(rgb, e.clamped().green, e.clamped().clahe), e)


# --------------------------------------------------------------------------- CLAHE


def _axis_weights(n: int, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel along an axis: the tile whose centre is at or before it, the next
    tile, and the weight of the next one (0 beyond the first and last centres)."""
    centres = (edges[:-1] + edges[1:]) / 2.0 - 0.5
    last = len(centres) - 1
    pos = np.arange(n, dtype=np.float64)
    low = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, last)
    high = np.minimum(low + 1, last)
    span = centres[high] - centres[low]
    weight = np.where(span > 0, (pos - centres[low]) / np.where(span > 0, span, 1.0), 0.0)
    return low, high, np.clip(weight, 0.0, 1.0).astype(np.float32)


def clahe(grey: np.ndarray, grid: int = CLAHE_GRID, clip_limit: float = CLAHE_CLIP) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a 2-D ``uint8`` image.

    ``grid`` x ``grid`` tiles (fewer on a small image); each tile's histogram is clipped at
    ``clip_limit`` times the mean bin count, the excess spread over all bins, and its
    cumulative sum becomes the tile's mapping; every pixel is mapped by the bilinear blend
    of the four mappings around it.
    """
    if grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {grey.dtype} {grey.shape}")
    height, width = grey.shape
    ty = max(1, min(grid, height // 8))
    tx = max(1, min(grid, width // 8))
    # equal tiles: an image that does not divide evenly is mirrored past its bottom and
    # right edges (the edge pixel not repeated) for the histograms only
    th, tw = -(-height // ty), -(-width // tx)
    padded = grey
    if th * ty != height or tw * tx != width:
        padded = np.pad(grey, ((0, th * ty - height), (0, tw * tx - width)), mode="reflect")
    ye, xe = np.arange(ty + 1) * th, np.arange(tx + 1) * tw
    # histograms of one band of tiles at a time: bin index = tile column * 256 + level
    column_tile = ((np.arange(tw * tx) // tw) * 256).astype(np.uint16)
    hist = np.empty((ty, tx, 256), dtype=np.int64)
    for i in range(ty):
        band = padded[ye[i] : ye[i + 1]].astype(np.uint16)
        band += column_tile
        hist[i] = np.bincount(band.ravel(), minlength=tx * 256).reshape(tx, 256)
    # clip each histogram at a whole count and share the excess evenly, the remainder
    # one count at a time over evenly spaced levels (the usual integer CLAHE rules)
    area = th * tw
    counts = hist.astype(np.int64)
    limit = max(int(clip_limit * area / 256), 1)
    excess = np.maximum(counts - limit, 0).sum(axis=2, keepdims=True)
    counts = np.minimum(counts, limit) + excess // 256
    residual = excess % 256
    step = np.maximum(256 // np.maximum(residual, 1), 1)
    level = np.arange(256)
    counts += ((level % step == 0) & (level // step < residual)).astype(np.int64)
    cdf = np.cumsum(counts, axis=2)
    maps = np.rint(cdf * (255.0 / area))  # (ty, tx, 256): one whole grey level per input level
    maps = np.clip(maps, 0.0, 255.0).astype(np.float32)

    # one extra column so that the right-hand neighbour is always the next column (its
    # weight is 0 past the last tile centre)
    maps = np.concatenate([maps, maps[:, -1:]], axis=1)  # (ty, tx + 1, 256)
    stride = (tx + 1) * 256
    x0, _, wx = _axis_weights(width, xe)
    column_base = (x0 * 256).astype(np.int32)
    y0, y1, wy = _axis_weights(height, ye)
    out = np.empty((height, width), dtype=np.uint8)
    # rows between the same two tile centres form a band: blend the two tile rows'
    # mappings once per pixel row (a small table), then blend along x per pixel
    starts = np.flatnonzero(np.diff(np.concatenate(([-1], y0, [-2]))))
    for start, stop in zip(starts[:-1], starts[1:], strict=True):
        top, bottom = maps[y0[start]], maps[y1[start]]
        tables = top[None] + (bottom - top)[None] * wy[start:stop, None, None]
        flat = tables.ravel()
        index = grey[start:stop].astype(np.int32)
        index += column_base
        index += (np.arange(stop - start, dtype=np.int32) * stride)[:, None]
        left = np.take(flat, index)
        right = np.take(flat[256:], index)
        right -= left
        right *= wx
        left += right
        left += 0.5
        out[start:stop] = left  # truncation after +0.5 rounds the non-negative values
    return out
