"""Attribution overlays: a signed map drawn over the image it explains.

Supporting evidence is drawn in a warm ramp (red for weak, yellow for strong), opposing
evidence in a cool ramp (blue for weak, cyan for strong). Opacity grows with the
magnitude, so pixels the model did not use show the untouched image.

What makes a map readable lives here too, GUI-free and without torch: smoothing at the
scale of the findings (:func:`smooth_map`), the retina mask outside which nothing is
coloured (:func:`fundus_field_mask`, :func:`oct_retina_mask`) and the few strongest
regions that get an outline (:func:`support_regions`). Whether each of these keeps the
map faithful to the model is measured by ``eyetriage explain-eval --compare``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .fileio import atomic_file

SUPPORTS_TEXT = "supports the answer"
OPPOSES_TEXT = "speaks against it"
MASKED_TEXT = "no colour outside the retina"
OUTLINE_MIN_AREA = 0.002  # outlined regions cover at least this share of the image
OUTLINE_MAX_REGIONS = 5  # and at most this many of the strongest are outlined
OUTLINE_MIN_STRENGTH = 0.35  # outlined pixels reach at least this share of full strength
COLOUR_FLOOR = 0.15  # magnitudes below this share of full strength are left uncoloured
_REGION_GRID = 256  # regions are found on a map reduced to at most this many pixels a side


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


def resize_map(amap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a 2-D float map bilinearly (antialiased when shrinking) to ``width`` x ``height``."""
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    amap = np.asarray(amap, dtype=np.float32)
    if amap.ndim != 2:
        raise ValueError(f"attribution map must be 2-D (H, W), got shape {amap.shape}")
    if amap.shape == (height, width):
        return amap.copy()
    img = Image.fromarray(np.ascontiguousarray(amap), mode="F")
    out = img.resize((int(width), int(height)), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A boolean mask resized to ``width`` x ``height`` (bilinear, then cut at one half)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.shape == (height, width):
        return mask.copy()
    return resize_map(mask.astype(np.float32), width, height) >= 0.5


# --------------------------------------------------------------------------- readable maps


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` matrix applying a 1-D Gaussian of ``sigma`` px with mirrored edges."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    rows = np.repeat(np.arange(n), offsets.size)
    cols = (np.arange(n)[:, None] + offsets[None, :]).ravel()
    period = 2 * n
    cols = np.mod(cols, period)
    cols = np.where(cols >= n, period - 1 - cols, cols)  # mirror: ... 1 0 | 0 1 ... n-1 | n-1
    out = np.zeros((n, n), dtype=np.float64)
    np.add.at(out, (rows, cols), np.tile(weights, n))
    return out


def smooth_map(amap: np.ndarray, sigma_px: float) -> np.ndarray:
    """The signed map averaged over a Gaussian neighbourhood of ``sigma_px`` pixels.

    For Integrated Gradients the sum over a region is that region's share of the output
    (completeness), so the smoothed map is the evidence per neighbourhood: single-pixel
    speckle of both signs cancels and what remains are regions at the chosen scale. Meant
    for maps at the model's input resolution (a few hundred pixels a side).
    """
    amap = _check_map(amap)
    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px}")
    if sigma_px < 0.3:
        return amap.copy()
    h, w = amap.shape
    gy = _gauss_matrix(h, sigma_px)
    gx = gy if w == h else _gauss_matrix(w, sigma_px)
    return (gy @ amap.astype(np.float64) @ gx.T).astype(np.float32)


def fundus_field_mask(array: np.ndarray) -> np.ndarray | None:
    """Where a fundus photograph shows retina: its field of view, or ``None`` if not found.

    ``array`` is the ``(H, W, 3)`` uint8 image the model saw (already cropped to the FOV).
    """
    from .fundus import find_fov, fov_mask

    fov = find_fov(np.ascontiguousarray(array))
    if not fov.found:
        return None
    return fov_mask(array.shape[:2], fov)


def oct_retina_mask(array: np.ndarray, margin: float = 0.06) -> np.ndarray | None:
    """Where an OCT B-scan shows tissue: the band from the inner retina to the choroid.

    The scan is smoothed (speckle away) and split into dark background and bright tissue
    (Otsu); per column the band runs from the first to the last tissue row, steadied by a
    running median across columns, widened across vessel shadows (running min/max) and by
    ``margin`` of the height. ``None`` when
    no tissue band is found (then nothing is masked).
    """
    from .fundus import _otsu

    grey = np.asarray(array, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    h, w = grey.shape
    if h < 8 or w < 8:
        return None
    sigma = max(1.0, min(h, w) / 60.0)
    smooth = smooth_map(grey, sigma)
    levels = np.clip(np.rint(smooth), 0, 255).astype(np.int64)
    if levels.max() - levels.min() < 8:
        return None
    threshold = _otsu(np.bincount(levels.ravel(), minlength=256))
    tissue = levels >= threshold
    has = tissue.any(axis=0)
    if has.mean() < 0.3:
        return None
    top = np.where(has, tissue.argmax(axis=0), -1).astype(np.float64)
    bottom = np.where(has, h - 1 - tissue[::-1].argmax(axis=0), -1).astype(np.float64)
    cols = np.arange(w)
    top = np.interp(cols, cols[has], top[has])
    bottom = np.interp(cols, cols[has], bottom[has])
    windows = np.lib.stride_tricks.sliding_window_view

    def running(values: np.ndarray, k: int, how: Callable[..., np.ndarray]) -> np.ndarray:
        return how(windows(np.pad(values, k, mode="edge"), 2 * k + 1), axis=1)

    # a running median drops single-column outliers; a running min/max over a wider window
    # then bridges vessel shadows, where the tissue below the inner retina looks dark
    k = max(1, w // 40)
    top = running(running(top, k, np.median), 3 * k, np.min)
    bottom = running(running(bottom, k, np.median), 3 * k, np.max)
    extra = margin * h
    rows = np.arange(h)[:, None]
    return (rows >= top[None, :] - extra) & (rows <= bottom[None, :] + extra)


def _components(region: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labels of a boolean grid (0 = background) and the number of labels."""
    h, w = region.shape
    labels = np.zeros((h, w), dtype=np.int32)
    count = 0
    flat = region.ravel()
    lab = labels.ravel()
    for start in np.flatnonzero(flat):
        if lab[start]:
            continue
        count += 1
        lab[start] = count
        stack = [int(start)]
        while stack:
            p = stack.pop()
            y, x = divmod(p, w)
            for dy in (-1, 0, 1):
                yy = y + dy
                if yy < 0 or yy >= h:
                    continue
                for dx in (-1, 0, 1):
                    xx = x + dx
                    if 0 <= xx < w:
                        q = yy * w + xx
                        if flat[q] and not lab[q]:
                            lab[q] = count
                            stack.append(q)
    return labels, count


def support_regions(
    amap: np.ndarray,
    top_pct: float = 10.0,
    min_area: float = OUTLINE_MIN_AREA,
    max_regions: int | None = OUTLINE_MAX_REGIONS,
    min_value: float = 0.0,
) -> np.ndarray:
    """The strongest supporting regions of ``amap`` as one boolean mask (same shape).

    Pixels in the top ``top_pct`` % of the map (and above ``min_value`` and 0) are grouped
    into connected
    regions; regions smaller than ``min_area`` of the image are dropped, the rest ranked by
    the attribution they hold and at most ``max_regions`` kept. This is what gets an
    outline: a handful of regions a reader can name, not hundreds of specks.
    """
    amap = _check_map(amap)
    if not 0.0 < top_pct < 100.0:
        raise ValueError(f"top_pct must be in (0, 100), got {top_pct}")
    if not 0.0 <= min_area < 1.0:
        raise ValueError(f"min_area must be in [0, 1), got {min_area}")
    if max_regions is not None and max_regions < 1:
        raise ValueError(f"max_regions must be >= 1 or None, got {max_regions}")
    h, w = amap.shape
    if float(amap.max()) <= 0:
        return np.zeros((h, w), dtype=bool)
    s = min(1.0, _REGION_GRID / max(h, w))
    gw, gh = max(1, round(w * s)), max(1, round(h * s))
    grid = resize_map(amap, gw, gh) if s < 1.0 else amap
    threshold = max(float(np.percentile(grid, 100.0 - top_pct)), float(min_value))
    region = (grid >= threshold) & (grid > 0)
    labels, count = _components(region)
    if count == 0:
        return np.zeros((h, w), dtype=bool)
    index = labels.ravel()
    areas = np.bincount(index, minlength=count + 1)[1:]
    masses = np.bincount(index, weights=np.maximum(grid, 0).ravel(), minlength=count + 1)[1:]
    big = np.flatnonzero(areas >= max(1.0, min_area * gw * gh))
    keep = big[np.argsort(-masses[big], kind="stable")]
    if max_regions is not None:
        keep = keep[:max_regions]
    chosen = np.isin(labels, keep + 1)
    if s < 1.0:
        # back to full size: the same threshold on the full map, inside the kept regions
        near = resize_map(chosen.astype(np.float32), w, h) > 0.0
        return near & (amap >= threshold) & (amap > 0)
    return chosen


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
    mask: np.ndarray | None = None,
    min_region_area: float = OUTLINE_MIN_AREA,
    max_regions: int | None = OUTLINE_MAX_REGIONS,
    floor: float = COLOUR_FLOOR,
) -> Image.Image:
    """Draw ``amap`` (any resolution; resized bilinearly) over ``image``; returns RGB, same size.

    Positive values are warm, negative values cool (only when ``signed``; otherwise only
    the supporting evidence is drawn). Opacity is ``alpha`` times the magnitude, divided by
    the ``clip_pct`` percentile of ``|amap|`` and clipped to 1. ``contour_top_pct`` (e.g.
    10) outlines, in white, the strongest supporting regions among the top
    ``contour_top_pct`` % of pixels (and at least :data:`OUTLINE_MIN_STRENGTH` of full
    strength): only regions of at least ``min_region_area`` of the image, at most
    ``max_regions`` of them (see :func:`support_regions`). ``mask`` (any
    resolution, True = retina) leaves everything outside it uncoloured. Magnitudes below
    ``floor`` of the full-strength value stay uncoloured too (the faint haze of small
    values hides the image without telling the reader anything).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if not 0.0 < clip_pct <= 100.0:
        raise ValueError(f"clip_pct must be in (0, 100], got {clip_pct}")
    if contour_top_pct is not None and not 0.0 < contour_top_pct < 100.0:
        raise ValueError(f"contour_top_pct must be in (0, 100), got {contour_top_pct}")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    amap = _check_map(amap)
    base = image.convert("RGB")
    width, height = base.size
    resized = resize_map(amap, width, height)
    if mask is not None:
        resized = np.where(resize_mask(mask, width, height), resized, 0.0).astype(np.float32)
    scale = _scale(resized if signed else np.maximum(resized, 0.0), clip_pct)
    if scale <= 0 or alpha == 0.0:
        colour = np.asarray(base, dtype=np.float32)
    else:
        pos = np.clip((resized / scale - floor) / (1.0 - floor), 0.0, 1.0)
        neg = (
            np.clip((-resized / scale - floor) / (1.0 - floor), 0.0, 1.0)
            if signed
            else np.zeros_like(pos)
        )
        colour = _colourise(np.asarray(base, dtype=np.float32), pos, neg, alpha)
    if contour_top_pct is not None and float(resized.max()) > 0:
        # outline only what is clearly coloured: at least a third of full strength
        strong = OUTLINE_MIN_STRENGTH * scale if scale > 0 else 0.0
        region = support_regions(resized, contour_top_pct, min_region_area, max_regions, strong)
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
