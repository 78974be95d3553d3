"""Colour fundus geometry and filters: field-of-view detection, square crop, enhancement.

A fundus photograph is a bright, roughly circular field of view (FOV) on a dark border;
cameras often clip the circle at the top and bottom (sometimes on all four sides), and
images resized to a square without keeping the aspect ratio turn it into an ellipse. The
decode pipeline plans the crop on a cheap low-resolution JPEG draft (``find_fov`` on a
~256 px image takes about 3 ms), scales the result with ``FOV.scaled`` and crops the full
decode with ``square_crop_box`` / ``crop_square`` so that every model sees the retina at
the same scale. ``ben_graham`` and ``green_emphasis`` are the optional enhancement filters;
``FundusPreprocessing`` is the JSON-able description of them kept in a model file so that
predictions are reproducible.

Coordinates are continuous pixel coordinates: pixel ``(row j, column i)`` covers
``[i, i+1) x [j, j+1)``, so its centre is ``(i + 0.5, j + 0.5)`` and rescaling an image by
``s`` rescales every coordinate by exactly ``s``.

numpy + Pillow only (no OpenCV / scipy at runtime).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "FOV",
    "FundusPreprocessing",
    "PREPROCESSING_MODES",
    "ben_graham",
    "crop_square",
    "find_fov",
    "fov_mask",
    "green_emphasis",
    "square_crop_box",
    "visible_share",
]

_ANALYSIS_MAX_SIDE = 320  # find_fov subsamples larger inputs to at most this many pixels
_MIN_BRIGHT_LEVEL = 12  # 99th-percentile level below which an image counts as black
_MIN_DARK_SHARE = 0.005  # an FOV needs at least this much dark border in the image
_MIN_IOU = 0.85  # agreement between the bright region and the fitted ellipse
_MAX_STRETCH = 1.6  # largest accepted ratio between the FOV's two axes
_WHITE_LEVEL = 235  # pixels whose darkest channel exceeds this are white padding, not retina


@dataclass(frozen=True)
class FOV:
    """A field of view in the pixel coordinates of the image analysed.

    The FOV is a circle of radius ``r`` centred on ``(cx, cy)``; ``aspect`` (height over
    width, default 1) describes an image whose circle was stretched into an ellipse, in
    which case ``r`` is the longer semi-axis. ``found`` is False when the image shows no
    plausible FOV (an OCT B-scan, an ordinary photo, a black or uniform image); the circle
    is then centred on the image with ``r = max(width, height) / 2`` so that a square crop
    keeps the whole image. ``coverage`` is the share of the image area inside the FOV.
    """

    cx: float
    cy: float
    r: float
    found: bool
    coverage: float
    aspect: float = 1.0

    @property
    def radii(self) -> tuple[float, float]:
        """Horizontal and vertical semi-axes (both ``r`` for a circle)."""
        if self.aspect >= 1:
            return self.r / self.aspect, self.r
        return self.r, self.r * self.aspect

    def scaled(self, s: float) -> FOV:
        """The same FOV in another resolution of the same image (``s`` = new / old size)."""
        if not s > 0:
            raise ValueError(f"FOV.scaled: scale must be positive, got {s!r}")
        return replace(self, cx=self.cx * s, cy=self.cy * s, r=self.r * s)


def _as_uint8_image(img: np.ndarray, what: str) -> np.ndarray:
    """Validate an HxW or HxWx3/4 uint8 array and return it."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{what}: expected a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"{what}: expected a uint8 image, got dtype {img.dtype}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{what}: expected an HxW or HxWx3 image, got shape {img.shape}")
    if img.shape[0] < 8 or img.shape[1] < 8:
        raise ValueError(f"{what}: image too small ({img.shape[1]}x{img.shape[0]} px)")
    return img


def _brightness(img: np.ndarray) -> np.ndarray:
    """Per-pixel max over colour channels: bright for any hue of retina, ~0 on the border."""
    if img.ndim == 2:
        return img
    if img.shape[2] < 3:
        return img[..., 0]
    return np.maximum(np.maximum(img[..., 0], img[..., 1]), img[..., 2])


def _otsu(hist: np.ndarray) -> int:
    """Otsu's threshold from a 256-bin histogram (the level splitting two tight classes)."""
    hist = hist.astype(np.float64)
    total = hist.sum()
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between[~np.isfinite(between)] = 0
    return int(np.argmax(between)) + 1  # pixels >= t are the bright class


def _box_mean(mask: np.ndarray, k: int) -> np.ndarray:
    """Mean of a float image over a (2k+1)^2 box (edge-replicated), via integral images."""
    padded = np.pad(mask.astype(np.float32), k + 1, mode="edge")
    c = padded.cumsum(0).cumsum(1)
    n = 2 * k + 1
    s = c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]
    return s[: mask.shape[0], : mask.shape[1]] / (n * n)


def _fit_ellipse(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float] | None:
    """Axis-aligned ellipse ``(cx, cy, rx, ry)`` through points, refitted without outliers.

    Algebraic least squares on ``x^2 + c*y^2 + d*x + e*y + f = 0``; a circle is the case
    ``c = 1``. Returns None when the points do not describe a closed ellipse.
    """
    keep = np.ones(x.size, bool)
    result = None
    for _ in range(6):
        if keep.sum() < 12:
            return None
        xs, ys = x[keep], y[keep]
        a = np.column_stack([ys * ys, xs, ys, np.ones_like(xs)])
        (c, d, e, f), *_ = np.linalg.lstsq(a, -(xs * xs), rcond=None)
        if c <= 0:
            return None
        cx, cy = -d / 2, -e / (2 * c)
        rx2 = cx * cx + c * cy * cy - f
        if rx2 <= 0:
            return None
        rx = math.sqrt(rx2)
        ry = rx / math.sqrt(c)
        result = (float(cx), float(cy), float(rx), float(ry))
        rho = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        resid = (rho - 1) * math.sqrt(rx * ry)
        tol = max(2.5 * (float(np.median(np.abs(resid[keep]))) + 0.5), 1.5)
        # Dark patches at the rim pull points inwards, never outwards: reject inward
        # deviations more readily than outward ones.
        new_keep = (resid >= -tol) & (resid <= 2 * tol)
        if (new_keep == keep).all():
            break
        keep = new_keep
    if keep.mean() < 0.6:
        return None
    return result


def _ellipse_grid(
    shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float, step: int = 1
) -> np.ndarray:
    """Boolean grid of the pixel centres (every ``step`` pixels) inside an ellipse."""
    h, w = shape
    ys = (np.arange(0, h, step, dtype=np.float32) + 0.5 * step - cy) / ry
    xs = (np.arange(0, w, step, dtype=np.float32) + 0.5 * step - cx) / rx
    return xs[None, :] ** 2 + ys[:, None] ** 2 <= 1.0


def _coverage(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> float:
    """Share of an HxW image inside an ellipse (sampled on at most ~200x200 points)."""
    step = max(1, math.ceil(max(shape) / 200))
    return float(_ellipse_grid(shape, cx, cy, rx, ry, step).mean())


def _not_found(shape: tuple[int, int]) -> FOV:
    h, w = shape
    r = max(h, w) / 2
    return FOV(w / 2, h / 2, r, False, _coverage(shape, w / 2, h / 2, r, r))


def find_fov(img: np.ndarray, threshold: int | None = None) -> FOV:
    """Find the field of view of a fundus photograph (the bright disc on a dark border).

    Steps, on the brightness (max of R, G, B) of an at most ~320 px subsample: a threshold
    just above the dark border (border level + 10 % of the range up to the 99th percentile,
    at least 5 levels, never above Otsu's split) so a dim periphery stays inside; white
    padding excluded; a box-filter majority vote that removes specks and text in the
    border; the left/right and top/bottom extents of the bright region per row and column;
    a robust ellipse fit through those extents that skips points on the image edge, so
    circles clipped top and bottom (or on every side) are measured from the arcs that
    remain. The fit is accepted only when the image has a dark border, the ellipse is
    nearly round (axes within 1:1.6) and it agrees with the bright region with its holes
    filled (intersection over union >= 0.85); otherwise ``found=False``.

    ``threshold`` overrides the automatic brightness threshold (0-255).
    """
    img = _as_uint8_image(img, "find_fov")
    h, w = img.shape[:2]
    step = max(1, math.ceil(max(h, w) / _ANALYSIS_MAX_SIDE))
    sub = img[::step, ::step]
    v = _brightness(sub)
    hs, ws = v.shape

    hist = np.bincount(v.ravel(), minlength=256)
    lo, hi = (float(q) for q in np.percentile(v, [1, 99]))
    if hi < _MIN_BRIGHT_LEVEL or hi - lo < _MIN_BRIGHT_LEVEL / 2:
        return _not_found((h, w))  # black or featureless
    if threshold is None:
        t = min(lo + max(5.0, 0.1 * (hi - lo)), float(_otsu(hist)))
    else:
        if not 0 <= threshold <= 255:
            raise ValueError(f"find_fov: threshold must be within 0..255, got {threshold}")
        t = float(threshold)

    bright = v >= t
    if sub.ndim == 3 and sub.shape[2] >= 3:
        darkest = np.minimum(np.minimum(sub[..., 0], sub[..., 1]), sub[..., 2])
        bright &= darkest <= _WHITE_LEVEL
    mask = _box_mean(bright, max(1, round(max(hs, ws) / 100))) > 0.5
    bright_share = float(mask.mean())
    if bright_share < 0.05 or bright_share > 1 - _MIN_DARK_SHARE:
        return _not_found((h, w))

    # Extents per row and per column (continuous coordinates of the subsample).
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    left = mask[rows].argmax(axis=1)
    right = ws - 1 - mask[rows, ::-1].argmax(axis=1)
    top = mask[:, cols].argmax(axis=0)
    bottom = hs - 1 - mask[::-1, cols].argmax(axis=0)
    xs = np.concatenate([left + 0.0, right + 1.0, cols + 0.5, cols + 0.5])
    ys = np.concatenate([rows + 0.5, rows + 0.5, top + 0.0, bottom + 1.0])
    on_edge = np.concatenate([left == 0, right == ws - 1, top == 0, bottom == hs - 1])
    xs, ys = xs[~on_edge], ys[~on_edge]
    if xs.size < 24:
        return _not_found((h, w))
    fit = _fit_ellipse(xs, ys)
    if fit is None:
        return _not_found((h, w))
    cx, cy, rx, ry = fit

    # Cross-checks: plausible size, shape and position, agreement with the bright area.
    r = max(rx, ry)
    if not (0.1 * max(hs, ws) <= r <= 1.5 * max(hs, ws)) or r / min(rx, ry) > _MAX_STRETCH:
        return _not_found((h, w))
    if not (0 <= cx <= ws and 0 <= cy <= hs):
        return _not_found((h, w))
    ellipse = _ellipse_grid((hs, ws), cx, cy, rx, ry)
    filled = np.zeros_like(mask)  # the bright region with dark patches inside filled:
    x, y = np.arange(ws), np.arange(hs)  # each row from its left to its right extent, and
    filled[rows] = (x >= left[:, None]) & (x <= right[:, None])  # each column top to bottom
    filled[:, cols] |= (y[:, None] >= top) & (y[:, None] <= bottom)
    union = np.logical_or(ellipse, filled).sum()
    iou = np.logical_and(ellipse, filled).sum() / max(union, 1)
    if iou < _MIN_IOU or ellipse.all():
        return _not_found((h, w))

    fov = FOV(cx, cy, r, True, float(ellipse.mean()), aspect=ry / rx)
    return fov.scaled(step) if step != 1 else fov


def visible_share(fov: FOV, width: int, height: int) -> float:
    """Share of the FOV disc that lies inside a ``width`` x ``height`` picture.

    Cameras routinely clip the circle at the top and bottom (about 0.9 stays visible); a
    photograph that shows only part of the retina, because the camera was off centre or
    the picture was cut, shows much less.
    """
    rx, ry = fov.radii
    n = 64  # sample the disc on an n x n grid of its bounding box
    xs = fov.cx + rx * (np.arange(n, dtype=np.float32) + 0.5 - n / 2) / (n / 2)
    ys = fov.cy + ry * (np.arange(n, dtype=np.float32) + 0.5 - n / 2) / (n / 2)
    u = (np.arange(n, dtype=np.float32) + 0.5 - n / 2) / (n / 2)
    disc = u[None, :] ** 2 + u[:, None] ** 2 <= 1.0
    inside = ((xs >= 0) & (xs <= width))[None, :] & ((ys >= 0) & (ys <= height))[:, None]
    return float((disc & inside).sum() / max(disc.sum(), 1))


def fov_mask(shape: tuple[int, int], fov: FOV) -> np.ndarray:
    """Boolean HxW mask of the pixels whose centres lie inside the FOV."""
    if len(shape) < 2 or shape[0] <= 0 or shape[1] <= 0:
        raise ValueError(f"fov_mask: shape must be (height, width), got {shape!r}")
    rx, ry = fov.radii
    return _ellipse_grid((int(shape[0]), int(shape[1])), fov.cx, fov.cy, rx, ry)


def square_crop_box(
    fov: FOV, width: int, height: int, margin: float = 0.02
) -> tuple[int, int, int, int]:
    """Square (left, top, right, bottom) box centred on the FOV, side ``2r(1+margin)``.

    The box may extend beyond the ``width`` x ``height`` image; ``crop_square`` pads the
    outside with black. When no FOV was found, the box is the image padded to a square.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"square_crop_box: image size must be positive, got {width}x{height}")
    if margin < 0:
        raise ValueError(f"square_crop_box: margin must be >= 0, got {margin}")
    if not fov.found:
        fov = _not_found((height, width))
        margin = 0.0
    side = max(1, round(2 * fov.r * (1 + margin)))
    left = round(fov.cx - side / 2)
    top = round(fov.cy - side / 2)
    return left, top, left + side, top + side


def crop_square(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Crop ``img`` to ``box``, filling any part of the box outside the image with black."""
    left, top, right, bottom = (int(v) for v in box)
    if right <= left or bottom <= top:
        raise ValueError(f"crop_square: empty box {box!r}")
    # PIL's crop already pads outside regions with zeros (black) in every common mode.
    return img.crop((left, top, right, bottom))


def _fov_or_find(img: np.ndarray, fov: FOV | None) -> FOV:
    return find_fov(img) if fov is None else fov


def ben_graham(img: np.ndarray, sigma_frac: float = 1 / 30, fov: FOV | None = None) -> np.ndarray:
    """Ben Graham's local average colour subtraction, as used for APTOS/EyePACS models.

    ``4*img - 4*GaussianBlur(img, sigma_frac*width) + 128``, clipped to uint8. It removes
    illumination and pigment differences between cameras and shows vessels and lesions
    as relief. Outside the field of view (found with ``find_fov`` when ``fov`` is None;
    whole image kept when none is found) the output is neutral grey 128.
    """
    img = _as_uint8_image(img, "ben_graham")
    if not sigma_frac > 0:
        raise ValueError(f"ben_graham: sigma_frac must be positive, got {sigma_frac}")
    sigma = sigma_frac * img.shape[1]
    pil = Image.fromarray(img if img.ndim == 2 or img.shape[2] == 3 else img[..., :3])
    blurred = np.asarray(pil.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.int16)
    src = np.asarray(pil, dtype=np.int16)
    out = np.clip(4 * src - 4 * blurred + 128, 0, 255).astype(np.uint8)
    fov = _fov_or_find(img, fov)
    if fov.found:
        out[~fov_mask(out.shape[:2], fov)] = 128
    return out


def green_emphasis(img: np.ndarray, strength: float = 1.0, fov: FOV | None = None) -> np.ndarray:
    """Green channel contrast-stretched and blended into all three channels.

    Vessels, haemorrhages and exudates have most contrast in green. The green values
    between the 1st and 99th percentile inside the FOV are stretched to 0-255, replicated
    to three channels and blended with the input: ``strength`` 0 returns the input,
    1 a grey image of the stretched green channel.
    """
    img = _as_uint8_image(img, "green_emphasis")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"green_emphasis: strength must be within 0..1, got {strength}")
    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    if rgb.shape[2] != 3:
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    green = rgb[..., 1].astype(np.float32)
    fov = _fov_or_find(img, fov)
    inside = fov_mask(green.shape, fov) if fov.found else np.ones(green.shape, bool)
    values = green[inside] if inside.any() else green.ravel()
    lo, hi = np.percentile(values, [1, 99])
    stretched = np.clip((green - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255)
    stretched[~inside] = 0
    out = (1 - strength) * rgb.astype(np.float32) + strength * stretched[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


PREPROCESSING_MODES = ("none", "ben_graham", "green")


@dataclass(frozen=True)
class FundusPreprocessing:
    """How a model wants its fundus input prepared; stored in the model file's metadata.

    ``crop_fov``: crop a square around the detected field of view (``margin`` around it)
    before resizing. ``mode``: ``"none"``, ``"ben_graham"`` (with ``sigma_frac``) or
    ``"green"`` (with ``green_strength``), applied after resizing to the input size.
    """

    crop_fov: bool = True
    margin: float = 0.02
    mode: str = "none"
    sigma_frac: float = 1 / 30
    green_strength: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"preprocessing mode must be one of {PREPROCESSING_MODES}, got {self.mode!r}"
            )
        if self.margin < 0:
            raise ValueError(f"preprocessing margin must be >= 0, got {self.margin}")
        if not self.sigma_frac > 0:
            raise ValueError(f"preprocessing sigma_frac must be positive, got {self.sigma_frac}")
        if not 0 <= self.green_strength <= 1:
            raise ValueError(
                f"preprocessing green_strength must be within 0..1, got {self.green_strength}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict for model metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FundusPreprocessing:
        """Read back ``to_dict`` output; unknown keys are an error (a newer model file)."""
        if not isinstance(data, dict):
            raise TypeError(f"preprocessing must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing option(s): {', '.join(unknown)}")
        return cls(**data)

    def apply(self, img: np.ndarray, fov: FOV | None = None) -> np.ndarray:
        """Apply the enhancement filter to an already cropped and resized image."""
        if self.mode == "ben_graham":
            return ben_graham(img, self.sigma_frac, fov)
        if self.mode == "green":
            return green_emphasis(img, self.green_strength, fov)
        return _as_uint8_image(img, "preprocessing")
