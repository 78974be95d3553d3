"""Attribution overlays: a signed map drawn over the image it explains.

Supporting evidence is drawn in a warm ramp (red for weak, yellow for strong), opposing
evidence in a cool ramp (blue for weak, cyan for strong). Opacity grows with the
magnitude, so pixels the model did not use show the untouched image.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .fileio import atomic_file

SUPPORTS_TEXT = "supports the answer"
OPPOSES_TEXT = "speaks against it"


def _check_map(amap: np.ndarray) -> np.ndarray:
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2 or amap.size == 0:
        raise ValueError(f"attribution map must be a non-empty 2-D array, got shape {amap.shape}")
    if not np.isfinite(amap).all():
        raise ValueError("attribution map contains NaN or infinite values")
    return amap


def _scale(amap: np.ndarray, clip_pct: float) -> float:
    """The magnitude drawn at full strength: the ``clip_pct`` percentile of ``|amap|``.

    Falls back to the maximum when the percentile is 0 (a map attributing only a few pixels).
    """
    magnitude = np.abs(amap)
    scale = float(np.percentile(magnitude, clip_pct))
    return scale if scale > 0 else float(magnitude.max())


def _colourise(rgb: np.ndarray, pos: np.ndarray, neg: np.ndarray, alpha: float) -> np.ndarray:
    """Blend warm (``pos``) and cool (``neg``) ramps, both in [0, 1], over float ``rgb``."""
    zeros = np.zeros_like(pos)
    warm = np.stack([np.full_like(pos, 255.0), 255.0 * pos, zeros], axis=-1)
    cool = np.stack([zeros, 255.0 * neg, np.full_like(neg, 255.0)], axis=-1)
    a_pos = (alpha * pos)[..., None]
    a_neg = (alpha * neg)[..., None]
    out = rgb * (1.0 - a_pos) + warm * a_pos
    return out * (1.0 - a_neg) + cool * a_neg


def _outline(region: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Boolean outline (inner boundary) of ``region``; about 1 px per 512 px of image side."""
    mask = Image.fromarray(region.astype(np.uint8) * 255, mode="L")
    width = max(1, round(min(image_size) / 512))
    eroded = mask.filter(ImageFilter.MinFilter(2 * width + 1))
    return (np.asarray(mask) > 0) & ~(np.asarray(eroded) > 0)


def render_overlay(
    image: Image.Image,
    amap: np.ndarray,
    alpha: float = 0.4,
    signed: bool = True,
    contour_top_pct: float | None = None,
    clip_pct: float = 99.0,
) -> Image.Image:
    """Draw ``amap`` (any resolution; resized bilinearly) over ``image``; returns RGB, same size.

    Positive values are warm, negative values cool (only when ``signed``; otherwise only
    the supporting evidence is drawn). Opacity is ``alpha`` times the magnitude, divided by
    the ``clip_pct`` percentile of ``|amap|`` and clipped to 1. ``contour_top_pct`` (e.g.
    10) outlines the most strongly supporting ``contour_top_pct`` % of pixels in white.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if not 0.0 < clip_pct <= 100.0:
        raise ValueError(f"clip_pct must be in (0, 100], got {clip_pct}")
    if contour_top_pct is not None and not 0.0 < contour_top_pct < 100.0:
        raise ValueError(f"contour_top_pct must be in (0, 100), got {contour_top_pct}")
    amap = _check_map(amap)
    base = image.convert("RGB")
    width, height = base.size
    scale = _scale(amap if signed else np.maximum(amap, 0.0), clip_pct)
    if scale <= 0 or alpha == 0.0:
        colour = np.asarray(base, dtype=np.float32)
        resized = None
    else:
        from engine.attribution import resize_map  # torch: only when a map must be resized

        resized = resize_map(amap, width, height)
        pos = np.clip(resized / scale, 0.0, 1.0)
        neg = np.clip(-resized / scale, 0.0, 1.0) if signed else np.zeros_like(pos)
        colour = _colourise(np.asarray(base, dtype=np.float32), pos, neg, alpha)
    if contour_top_pct is not None and float(amap.max()) > 0:
        if resized is None:
            from engine.attribution import resize_map

            resized = resize_map(amap, width, height)
        threshold = float(np.percentile(resized, 100.0 - contour_top_pct))
        region = (resized >= threshold) & (resized > 0)
        colour[_outline(region, (width, height))] = 255.0
    return Image.fromarray(np.clip(np.rint(colour), 0, 255).astype(np.uint8), mode="RGB")


def save_png(img: Image.Image, path: str | os.PathLike[str]) -> None:
    """Save ``img`` as PNG atomically: a reader never sees a half-written file."""
    with atomic_file(path, "wb") as fh:
        img.save(fh, format="PNG")


def colour_legend(width: int, height: int) -> Image.Image:
    """A legend strip explaining the colours: cool = "speaks against it", warm = "supports
    the answer", strongest at the ends; labels are drawn when there is room for them."""
    if width < 8 or height < 4:
        raise ValueError(f"legend must be at least 8x4 pixels, got {width}x{height}")
    font = ImageFont.load_default()
    text_h = 0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    box = probe.textbbox((0, 0), OPPOSES_TEXT + "  " + SUPPORTS_TEXT, font=font)
    if height >= 2 * (box[3] - box[1]) + 6 and width >= box[2] - box[0] + 8:
        text_h = box[3] - box[1] + 6
    bar_h = height - text_h
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :].repeat(bar_h, axis=0)
    background = np.full((bar_h, width, 3), 64.0, dtype=np.float32)
    bar = _colourise(background, np.clip(ramp, 0, 1), np.clip(-ramp, 0, 1), 1.0)
    legend = Image.new("RGB", (width, height), (32, 32, 32))
    legend.paste(Image.fromarray(np.rint(bar).astype(np.uint8), mode="RGB"), (0, 0))
    if text_h:
        draw = ImageDraw.Draw(legend)
        y = bar_h + 3
        draw.text((2, y), OPPOSES_TEXT, fill=(120, 220, 255), font=font)
        right = draw.textbbox((0, 0), SUPPORTS_TEXT, font=font)[2]
        draw.text((width - right - 2, y), SUPPORTS_TEXT, fill=(255, 200, 80), font=font)
    return legend
