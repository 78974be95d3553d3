"""Image-quality gate: is this picture gradable at all, and if not, why (in words)?

Autonomous screeners answer "insufficient quality" rather than guess; EyeTriage does the
same before it trusts a model's answer. The gate runs in the decode threads on the small
copy the decoder already made (the field-of-view crop, about 384 px), so it costs a few
milliseconds per image and no extra file reads.

Colour fundus photographs (:func:`assess_quality`) are judged on a copy whose field of view
(FOV) is :data:`ANALYSIS_DIAMETER` px across, inside the FOV shrunk to 90 % of its radius:

- geometry: a FOV must be found (a black or blank picture, or a picture with content but
  no fundus field of view, is rejected), it must cover enough of the picture, and enough
  of it must lie inside the picture (a photograph that shows half the retina is rejected);
- exposure: clipped (saturated) cells and an overall washed-out field are rules, and a
  learned check (below) also calls a photograph overexposed when red saturates over a
  pale, colourless field while green is still in range (real photographs often clip some
  red, so no rule on red alone); underexposure is a learned check, since a dim photograph
  with a sharp disc and vessels is gradable and a dark one without them is not;
- focus: two small logistic models over two scale ratios of the green channel's
  strongest edges (the fine edges lose most when an image is defocused; contrast and
  exposure scale all scales alike), their contrast and the mean brightness: one linear
  in the logs, one with their squares and cross terms as well (noise lifts the finest
  scale of a dim or flat photograph, so how sharp a photograph must look depends on its
  contrast and exposure; this one catches a moderate blur of a sharp, contrasty
  photograph that the linear model lets through). A photograph is out of focus when
  either model says so (the quadratic one judges only photographs that need no
  enlarging to the analysis size). Both are fitted by ``benchmarks/calibrate_quality.py``
  on real photographs against Gaussian-blurred copies of them;
- haze: the contrast of the strongest mid-scale edges relative to the mean brightness.
  Media opacities (cataract) lower the contrast of every scale; defocus mostly the fine
  ones, which is what keeps the two apart. Dense haze also hides the fine edges, so a
  very hazy photograph is often reported as both hazy and blurred: the data cannot tell
  a dense cataract from a defocused hazy photograph;
- obstruction: the share of the FOV much darker than the rest (an eyelid, eyelashes, the
  shadow of a small pupil) or much brighter (a lid or lash reflection, a glare spot), and
  a learned check for a lid or reflection over a cap of the field: bright, flat and of
  another colour than the retina it covers.

The learned checks (:class:`QualityModel`, one logistic model per defect, stored as
plain JSON in ``quality_model.json``) are fitted on the calibration part of the real sets
(real photographs = gradable) against degraded copies of them; each names the measure
that drove its call (``QualityResult.drivers``).

OCT B-scans (:func:`assess_oct_quality`) get their own checks: signal strength (the
retina's brightness above the background), retina cut off at the top edge or folded back
into the picture (the mirror artefact of a retina crossing the zero-delay line), retina
cut off at the bottom edge, and columns with no signal.

The thresholds, the focus model's weights and the learned checks come from
``benchmarks/calibrate_quality.py``
(calibration part of every real set; its held-out figures are in
``benchmarks/quality_heldout.md``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .fundus import FOV, find_fov, visible_share

__all__ = [
    "ANALYSIS_DIAMETER",
    "DEFAULT_OCT_THRESHOLDS",
    "DEFAULT_THRESHOLDS",
    "FOCUS_FEATURES",
    "MAX_QUADRATIC_SCALE",
    "MODEL_FILE",
    "NOT_FUNDUS_REASON",
    "OctThresholds",
    "LearnedCheck",
    "QualityModel",
    "QualityResult",
    "QualityThresholds",
    "REASONS",
    "SOFT_FOCUS",
    "assess_oct_quality",
    "assess_quality",
    "focus_score",
    "focus_terms",
    "fundus_measures",
    "load_model",
    "oct_measures",
]

ANALYSIS_DIAMETER = 376  # FOV diameter (px) of the copy the fundus measures are taken on
_INNER = 0.9  # share of the FOV radius analysed
_EDGE_SHARE = 0.05  # the strongest 5 % of mid-scale edges are the ones judged for focus

# Reasons in words (the first words of each are stable: triage and reports match on them).
NOT_FUNDUS_REASON = "no fundus field of view"  # also in engine.triage
REASONS = {
    "black": "image is black or blank (nothing to grade)",
    "no_fov": NOT_FUNDUS_REASON + " (not a fundus photograph?)",
    "small_fov": "field of view too small",
    "partial_fov": "field of view cut off (part of the retina outside the picture)",
    "fov_incomplete": "no complete field of view (retina cut off or covered)",
    "dark": "too dark (underexposed)",
    "bright": "overexposed (washed out)",
    "blur": "out of focus (blurred)",
    "haze": "hazy, low contrast (media opacity such as cataract, or a dirty lens)",
    "dark_part": "part of the field dark (eyelid, eyelashes or the shadow of a small pupil)",
    "bright_part": "part of the field covered by a bright reflection or artefact",
    "oct_signal": "weak OCT signal (retina barely brighter than the background)",
    "oct_top": "retina cut off at the top edge or folded back (mirror artefact)",
    "oct_bottom": "retina cut off at the bottom edge",
    "oct_columns": "no OCT signal over part of the scan width",
}


SOFT_FOCUS = "focus slightly soft (gradable; check it before clearing)"


@dataclass(frozen=True)
class QualityThresholds:
    """Limits a fundus photograph must respect to count as gradable.

    The focus score (:func:`focus_score`) is the larger of two models' log-odds, each
    shifted so that its own limit is at 0: ``focus_linear`` (intercept, then weights over
    the logs of ``FOCUS_FEATURES``) and ``focus_quadratic`` (intercept, then weights over
    those logs standardised with ``focus_center`` and ``focus_scale``, then over their
    pairwise products; see :func:`focus_terms`). A photograph whose score is above
    ``max_blur_score`` is ungradable (out of focus); one between ``max_soft_score`` and
    that is gradable but slightly soft, which triage never auto-clears. Underexposure and
    bright obstructions are the learned checks' call (:class:`QualityModel`);
    ``learned_offset`` moves all their limits (positive: more lenient).
    """

    min_fov_coverage: float = 0.2
    min_fov_visible: float = 0.7
    min_mean_brightness: float = 18.0  # when no field of view is found
    hard_min_brightness: float = 10.0  # too dark whatever the learned check says
    max_mean_brightness: float = 215.0
    min_overexposed_brightness: float = 40.0  # the learned overexposure check judges above it
    max_clipped_fraction: float = 0.25
    max_blur_score: float = 0.0
    max_soft_score: float = -2.232
    min_contrast: float = 1.166
    min_edge_level: float = 0.8  # grey levels per px; below it nothing is in focus
    max_dark_part: float = 0.25
    max_bright_part: float = 0.25
    min_red_green: float = 1.1
    focus_linear: tuple[float, ...] = (36.0273, -33.9825, -5.2615, -4.7283, -4.7506)
    focus_center: tuple[float, ...] = (0.2558, 0.3598, 1.3213, 4.4663)
    focus_scale: tuple[float, ...] = (0.1297, 0.1781, 0.5258, 0.3938)
    focus_quadratic: tuple[float, ...] = (
        -2.7605,
        *(-8.551, 1.1605, -2.4448, -1.7319),  # the standardised logs
        *(2.5836, -0.8188, 0.1195, 1.0194, -0.2087, 1.8647, 0.7916, 0.5695, 1.2749, 0.5807),
    )
    learned_offset: float = 0.0


@dataclass(frozen=True)
class OctThresholds:
    """Limits an OCT B-scan must respect to count as gradable."""

    min_signal: float = 75.0
    max_top_touch: float = 0.3
    max_bottom_cut: float = 0.45
    max_empty_columns: float = 0.2


DEFAULT_THRESHOLDS = QualityThresholds()
DEFAULT_OCT_THRESHOLDS = OctThresholds()

FOCUS_FEATURES = ("r01", "r12", "c2", "mean_brightness")
FOCUS_CLAMP = 3.0  # standard deviations
# the quadratic focus model judges photographs enlarged by at most this much to the
# analysis size (it was fitted on such photographs; see focus_score)
MAX_QUADRATIC_SCALE = 1.12


@dataclass(frozen=True)
class QualityResult:
    """Outcome of the gate: ``ok``, the reasons in words and their short codes, measures."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cautions: list[str] = field(default_factory=list)  # gradable, but not for auto-clearing
    modality: str = "fundus"
    measures: dict[str, float] = field(default_factory=dict)
    drivers: dict[str, str] = field(default_factory=dict)  # learned problem -> main measure

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for the store and reports); measures at the top level."""
        # the fields hold strings, lists and dicts of strings: copying each list and dict
        # is a full copy; dataclasses.asdict's recursive deep copy of some 70 values cost
        # 0.22 ms per screened photograph, this 0.05 ms
        d: dict[str, Any] = {
            f.name: _copied(getattr(self, f.name)) for f in fields(self) if f.name != "measures"
        }
        d.update({k: round(float(v), 4) for k, v in self.measures.items()})
        return d


def _copied(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


_PIL_MODES = ("RGB", "RGBA", "L")  # the 8-bit PIL images the fundus gate takes as they are


def _check_image(img: np.ndarray | Image.Image, what: str) -> None:
    if isinstance(img, Image.Image) and img.mode in _PIL_MODES:
        w, h = img.size
    elif isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim in (2, 3):
        h, w = img.shape[:2]
    else:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        if isinstance(img, Image.Image):
            got = f"a PIL image of mode {img.mode}"
        raise ValueError(f"{what}: expected a uint8 HxW or HxWx3 image, got {got}")
    if min(w, h) < 8:
        raise ValueError(f"{what}: image too small ({w}x{h} px)")


def _as_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] >= 3:
        return img[..., :3]
    return np.repeat(img[..., :1], 3, axis=2)


def _as_pil(img: np.ndarray | Image.Image) -> Image.Image:
    """``img`` as an RGB PIL image (the decoder's own copy passes as it is: turning the
    array back into an image cost 0.2 ms a photograph)."""
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(_as_rgb(img)))


def _sum2(a: np.ndarray) -> np.ndarray:
    """Sums of 2 x 2 blocks as exact integers (an odd last row/column dropped)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    big = np.int32 if a.dtype != np.uint8 else np.uint16
    rows = a[0::2].astype(big) + a[1::2]
    return rows[:, 0::2] + rows[:, 1::2]


def _edge_maxima(green: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Strongest gradient (as in ``_gradient``) inside each chosen 4 x 4 cell of ``green``,
    at the analysis scale and on the sums of 2 x 2 pixels (as ``_sum2`` makes them).

    Both come from one 8 x 8 patch per cell (the cell and 2 px around it): one gather
    instead of two. The cells judged lie at least 3 cells inside the grid (``valid`` is
    eroded 3 times), so every patch lies inside the picture; a patch that would not is
    taken from the picture extended by its edge pixels.
    """
    y0, x0 = 4 * iy - 2, 4 * ix - 2
    h, w = green.shape
    if iy.size and (min(y0.min(), x0.min()) < 0 or y0.max() + 8 > h or x0.max() + 8 > w):
        green, y0, x0 = np.pad(green, 2, mode="edge"), y0 + 2, x0 + 2
    s0, s1 = green.strides
    windows = np.lib.stride_tricks.as_strided(
        green, (green.shape[0] - 7, green.shape[1] - 7, 8, 8), (s0, s1, s0, s1), writeable=False
    )
    patch = windows[y0, x0].astype(np.int16)  # (n, 8, 8); uint8 and their 2x2 sums fit
    fine = _patch_gradient_max(patch[:, 1:-1, 1:-1])
    rows = patch[:, 0::2] + patch[:, 1::2]
    coarse = _patch_gradient_max(rows[:, :, 0::2] + rows[:, :, 1::2])
    return fine, coarse


def _patch_gradient_max(patch: np.ndarray) -> np.ndarray:
    """The largest ``_gradient`` value inside the border of each (n, k+2, k+2) patch."""
    gx = patch[:, 1:-1, 2:] - patch[:, 1:-1, :-2]
    np.abs(gx, out=gx)
    gy = patch[:, 2:, 1:-1] - patch[:, :-2, 1:-1]
    np.abs(gy, out=gy)
    np.maximum(gx, gy, out=gx)
    return gx.reshape(len(gx), -1).max(axis=1).astype(np.float32)


def _percentiles(a: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(a, qs)`` (linear interpolation) of a non-empty float array, from one
    sort and with numpy's own arithmetic, so the values are identical; numpy's general
    machinery cost 0.1-0.2 ms a call, a tenth of the gate's budget."""
    s = np.sort(a, axis=None)
    n = s.size
    out = []
    for q in qs:
        v = (n - 1) * (q / 100)
        lo = math.floor(v)
        below, above = s[lo], s[min(lo + 1, n - 1)]
        g = v - lo
        d = float(above - below)  # subtracted in the array's type, as numpy does
        out.append(float(above) - d * (1 - g) if g >= 0.5 else float(below) + d * g)
    return out


def _gradient(a: np.ndarray) -> np.ndarray:
    """Twice the central-difference gradient magnitude (max of |dx|, |dy|), border zero."""
    out = np.zeros(a.shape, np.float32)
    gx = a[1:-1, 2:] - a[1:-1, :-2]
    np.abs(gx, out=gx)
    gy = a[2:, 1:-1] - a[:-2, 1:-1]
    np.abs(gy, out=gy)
    np.maximum(gx, gy, out=out[1:-1, 1:-1])
    return out


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` eroded ``steps`` times by a 4-neighbour cross (outside the picture counts
    as False): each step keeps a cell whose four neighbours are kept too."""
    h, w = mask.shape
    m = np.zeros((h + 2 * steps, w + 2 * steps), bool)
    m[steps : steps + h, steps : steps + w] = mask
    for _ in range(steps):  # each step shrinks the padded mask by one cell on each side
        e = m[1:-1, 1:-1] & m[:-2, 1:-1]
        e &= m[2:, 1:-1]
        e &= m[1:-1, :-2]
        e &= m[1:-1, 2:]
        m = e
    return m


def _mean(a: np.ndarray) -> np.floating:
    """``a.mean()`` of a non-empty array, same type and value (summed as numpy sums it: a
    float32 array in float32 and its mean rounded to float32, an integer one in float64),
    without numpy's general machinery: the gate takes 16 means a photograph."""
    if a.dtype == np.float32:
        return np.float32(float(np.add.reduce(a, axis=None)) / a.size)
    return np.float64(float(np.add.reduce(a, axis=None, dtype=np.float64)) / a.size)


def _cell_coords(
    shape: tuple[int, int], fov: FOV, scale: float, shrink: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres (of ``scale`` analysis px) relative to the shrunk FOV (1 = its rim)."""
    h, w = shape
    rx, ry = fov.radii
    ys = ((np.arange(h, dtype=np.float32) + 0.5) * scale - fov.cy) / (ry * shrink)
    xs = ((np.arange(w, dtype=np.float32) + 0.5) * scale - fov.cx) / (rx * shrink)
    return xs, ys


def _resample(pil: Image.Image, fov: FOV) -> tuple[Image.Image, FOV]:
    """The picture rescaled so that the FOV is ANALYSIS_DIAMETER px across."""
    s = ANALYSIS_DIAMETER / (2 * fov.r)
    if abs(s - 1) < 0.12:  # close enough: a resample costs more than it changes
        return pil, fov
    w, h = pil.size
    size = (max(8, round(w * s)), max(8, round(h * s)))
    return pil.resize(size, Image.BILINEAR), FOV(
        fov.cx * s, fov.cy * s, fov.r * s, fov.found, fov.coverage, fov.aspect
    )


def fundus_measures(
    img: np.ndarray | Image.Image, fov: FOV | None = None, visible: float | None = None
) -> dict[str, float]:
    """Every measure the fundus gate uses (see the module docstring), as plain floats.

    ``img`` is uint8 HxWx3 (or HxW), or a PIL image of the same; ``fov`` is the field of
    view in ``img`` pixels (found with ``find_fov`` when None); ``visible`` the share of
    the FOV inside the original picture (1 when unknown).
    """
    _check_image(img, "fundus_measures")
    pil = _as_pil(img)
    w, h = pil.size
    if fov is None:
        fov = find_fov(np.asarray(pil))
    if visible is None:  # the picture is the whole photograph: judge it from the FOV
        visible = visible_share(fov, w, h) if fov.found else 1.0
    m: dict[str, float] = {
        "fov_found": float(fov.found),
        "fov_coverage": float(fov.coverage) if fov.found else 0.0,
        "fov_visible": float(visible),
    }
    if not fov.found:
        fov = FOV(w / 2, h / 2, max(w, h) / 2, False, 1.0)
    # how much the picture is enlarged to the analysis size (above 1: a small photograph
    # whose softness at this size comes from the enlargement, not from its focus)
    m["analysis_scale"] = ANALYSIS_DIAMETER / (2 * fov.r)
    pil, fov = _resample(pil, fov)
    # level 2: cells of 4x4 analysis px, for exposure, regions and the coarse edges
    cells = np.asarray(pil.reduce(4), np.float32)
    red, grn, blue = cells[..., 0], cells[..., 1], cells[..., 2]
    lum2 = 0.299 * red + 0.587 * grn + 0.114 * blue
    xs, ys = _cell_coords(lum2.shape, fov, 4.0, _INNER)
    inside = xs[None, :] ** 2 + ys[:, None] ** 2 <= 1.0
    if not fov.found or not inside.any():
        inside = np.ones(lum2.shape, bool)
    lum_in = lum2[inside]
    mean = float(_mean(lum_in))
    # the upper quartile is robust to a dark half of the field, unlike the median
    p5, median, upper, p95 = _percentiles(lum_in, (5, 50, 75, 95))
    m["max_level"] = float(lum2.max())
    m["spread"] = float(lum_in.std())
    lit = inside & (lum2 > 20)
    if not lit.any():
        lit = inside
    r_l, g_l, b_l = red[lit], grn[lit], blue[lit]
    g_lit = float(_mean(g_l)) + 1.0
    m["red_green"] = float(_mean(r_l) / g_lit)
    m["blue_green"] = float((_mean(b_l) + 1.0) / g_lit)
    m["mean_brightness"] = mean
    m["median_brightness"] = median
    m["upper_brightness"] = upper
    n_in = lum_in.size
    m["dark_fraction"] = np.count_nonzero(lum_in < 15) / n_in
    m["clipped_fraction"] = np.count_nonzero((grn >= 250) & inside) / n_in
    # red, the brightest channel of a fundus, is the first to saturate when a photograph is
    # overexposed (or a dim one brightened a lot) while green can still be in range
    m["red_clipped"] = np.count_nonzero((red >= 250) & inside) / n_in
    low, high = max(0.3 * upper, 12.0), min(2.0 * median, 240.0)
    m["dark_part"] = np.count_nonzero(lum_in < low) / n_in
    m["bright_part"] = np.count_nonzero(lum_in > high) / n_in
    # a veil (media opacity, a dirty lens) lifts the darkest parts towards the median and
    # washes out the colour; defocus does neither
    m["floor"] = p5 / (median + 1.0)
    m["top_range"] = p95 / (median + 1.0)
    cmax = np.maximum(np.maximum(r_l, g_l), b_l)
    cmin = np.minimum(np.minimum(r_l, g_l), b_l)
    m["saturation"] = float(_mean((cmax - cmin) / (cmax + 1.0)))
    # an eyelid, lashes or a reflection cover a cap of the field from one side: the
    # brightest and the darkest of the four caps (outer 45 % of each half) against the
    # median, and how much structure the brightest cap still shows. The caps are bands
    # of rows or columns (the cell coordinates grow monotonically).
    top, bottom = int(np.searchsorted(ys, -0.45)), int(np.searchsorted(ys, 0.45, "right"))
    left, right = int(np.searchsorted(xs, -0.45)), int(np.searchsorted(xs, 0.45, "right"))
    full = slice(None)
    caps = (
        (slice(0, top), full),
        (slice(bottom, None), full),
        (full, slice(0, left)),
        (full, slice(right, None)),
    )
    cap_means = []
    for cap in caps:
        sel = inside[cap]
        cap_means.append(float(_mean(lum2[cap][sel])) if np.count_nonzero(sel) >= 4 else median)
    m["cap_high"] = max(cap_means) / (median + 1.0)
    m["cap_low"] = min(cap_means) / (median + 1.0)
    cap = caps[int(np.argmax(cap_means))]
    cap_in = inside[cap]
    # a lid or a reflection is flat and of another colour than the retina it covers
    near = (np.abs(ys) < 0.45, np.abs(xs) < 0.45)
    cy0, cy1 = int(near[0].argmax()), len(ys) - int(near[0][::-1].argmax())
    cx0, cx1 = int(near[1].argmax()), len(xs) - int(near[1][::-1].argmax())
    mid = (slice(cy0, cy1), slice(cx0, cx1))
    centre = inside[mid] & (xs[None, cx0:cx1] ** 2 + ys[cy0:cy1, None] ** 2 < 0.2)
    if np.count_nonzero(cap_in) >= 4 and np.count_nonzero(centre) >= 4:
        q25, q50, q75 = _percentiles(lum2[cap][cap_in], (25, 50, 75))
        m["cap_flat"] = (q75 - q25) / (q50 + 1.0)
        diff = 0.0
        g_cap, g_mid = grn[cap][cap_in] + 1.0, grn[mid][centre] + 1.0
        for ch in (red, blue):
            t_cap = float(_mean(ch[cap][cap_in] / g_cap))
            t_mid = float(_mean(ch[mid][centre] / g_mid))
            diff += abs(math.log(t_cap + 0.05) - math.log(t_mid + 0.05))
        m["cap_colour"] = diff
    else:
        m["cap_flat"], m["cap_colour"] = 0.5, 0.0

    # focus and contrast on the green channel's strongest edges: gradients at three scales
    # (analysis px, 2 px, 4 px), each the strongest response within a 4 px cell. Sums of
    # uint8 values stay exact integers; the two finer scales are computed only in the
    # cells that are judged (the strongest 5 % of coarse edges), which keeps this cheap.
    green = np.asarray(pil.getchannel(1))
    g1 = _sum2(green)  # 4 x the mean of 2x2 pixels
    g2 = _sum2(g1)  # 16 x the mean of 4x4 pixels
    e2 = _gradient(g2.astype(np.float32)) * (1 / 64)  # 2 x the slope per analysis px
    h = min(e2.shape[0], lum2.shape[0])
    w = min(e2.shape[1], lum2.shape[1])
    e2 = e2[:h, :w]
    in_hw = inside[:h, :w]
    all_edges = float(_mean(e2[in_hw])) if in_hw.any() else 0.0
    cap_sel = in_hw[cap]
    cap_edges = float(_mean(e2[cap][cap_sel])) if cap_sel.any() else all_edges
    m["cap_texture"] = (cap_edges + 0.05) / (all_edges + 0.05)
    darkest = np.minimum(np.minimum(red[:h, :w], grn[:h, :w]), blue[:h, :w])
    valid = inside[:h, :w] & (lum2[:h, :w] > max(8.0, 0.3 * median)) & (darkest < 235)
    valid = _erode(valid, 3)  # away from the rim and from dark patches
    ev = e2[valid]
    if ev.size >= 50 and float(ev.max()) > 0:
        k = int(ev.size * (1 - _EDGE_SHARE))
        cut = np.partition(ev, k)[k]
        iy, ix = np.nonzero(valid & (e2 >= cut))
        f0, f1 = _edge_maxima(green, iy, ix)
        f1 *= 1 / 8
        s0, s1, s2 = float(f0.sum()), float(f1.sum()), float(e2[iy, ix].sum())
        n = iy.size
        gmean = float(_mean(g2[:h, :w][valid])) / 16 + 1.0
        m["r01"] = s0 / max(s1, 1e-6)
        m["r02"] = s0 / max(s2, 1e-6)
        m["r12"] = s1 / max(s2, 1e-6)
        m["c1"] = 50 * s1 / n / gmean  # mean slope at the edges, % of brightness per px
        m["c2"] = 50 * s2 / n / gmean
        m["edge_level"] = 0.5 * s2 / n  # the same slope in grey levels per px
        m["valid_share"] = np.count_nonzero(valid) / max(np.count_nonzero(inside), 1)
    else:  # no structure to judge
        m.update(r01=0.0, r02=0.0, r12=0.0, c1=0.0, c2=0.0, edge_level=0.0, valid_share=0.0)
    return m


def focus_terms(
    m: dict[str, float], center: tuple[float, ...], scale: tuple[float, ...]
) -> list[float]:
    """The focus model's inputs: the logs of ``FOCUS_FEATURES`` standardised, then every
    pairwise product of them (squares included, in the order (0,0), (0,1), ... (n-1,n-1)).

    Standardised values are held within +-``FOCUS_CLAMP``, the range the model was fitted
    on: beyond it a squared term would grow without any photograph to support it."""
    z = [
        min(max((math.log(max(m.get(name, 0.0), 1e-3)) - mu) / sd, -FOCUS_CLAMP), FOCUS_CLAMP)
        for name, mu, sd in zip(FOCUS_FEATURES, center, scale, strict=True)
    ]
    n = len(z)
    return z + [z[i] * z[j] for i in range(n) for j in range(i, n)]


def focus_score(m: dict[str, float], t: QualityThresholds = DEFAULT_THRESHOLDS) -> float:
    """How far the photograph is past the focus limit (above 0: out of focus): the larger
    of the linear and the quadratic model's log-odds, each shifted to its own limit.

    A photograph smaller than the analysis size is enlarged to it, which softens its
    edges however well it was focused; the quadratic model was fitted on photographs at
    or above that size (every degraded copy is made at 512 px) and would read the
    enlargement as blur, so only the linear model judges those."""
    logs = [math.log(max(m.get(name, 0.0), 1e-3)) for name in FOCUS_FEATURES]
    linear = t.focus_linear[0] + sum(w * v for w, v in zip(t.focus_linear[1:], logs, strict=True))
    if m.get("analysis_scale", 1.0) > MAX_QUADRATIC_SCALE:
        return linear  # an enlarged small photograph: outside what the quadratic one saw
    terms = focus_terms(m, t.focus_center, t.focus_scale)
    quadratic = t.focus_quadratic[0] + sum(
        w * v for w, v in zip(t.focus_quadratic[1:], terms, strict=True)
    )
    return max(linear, quadratic)


# ---------------------------------------------------------------- the learned checks

MODEL_FILE = Path(__file__).with_name("quality_model.json")
_TRANSFORMS = {
    "log": lambda v: math.log(max(v, 1e-3)),
    "sqrt": lambda v: math.sqrt(max(v, 0.0)),
}


@dataclass(frozen=True)
class LearnedCheck:
    """One learned check: logistic log-odds of a defect over transformed, standardised
    measures; the defect is reported when the log-odds exceed ``limit``."""

    problem: str
    features: tuple[str, ...]
    transforms: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    limit: float

    def contributions(self, m: dict[str, float]) -> list[float]:
        """Each measure's share of the log-odds (weight times standardised value)."""
        out = []
        for f, t, mu, sd, w in zip(
            self.features, self.transforms, self.mean, self.scale, self.weights, strict=True
        ):
            out.append(w * (_TRANSFORMS[t](m.get(f, 0.0)) - mu) / sd)
        return out

    def score(self, m: dict[str, float]) -> float:
        """Log-odds that the photograph has this check's defect."""
        return self.bias + sum(self.contributions(m))

    def driver(self, m: dict[str, float]) -> str:
        """The measure that pushed the log-odds up the most (the reason behind a flag)."""
        c = self.contributions(m)
        return self.features[max(range(len(c)), key=c.__getitem__)]


@dataclass(frozen=True)
class QualityModel:
    """The learned checks of the fundus gate, read from JSON next to this module.

    Fitted by ``benchmarks/calibrate_quality.py --fit`` on the calibration part of the real
    sets (real photographs = gradable) against degraded copies of them; each check's
    ``limit`` is its operating point, chosen on that part only. No pickle: plain numbers.
    """

    checks: dict[str, LearnedCheck]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QualityModel:
        """The model from its JSON form; a malformed one is refused with ValueError."""
        checks = {}
        try:
            for problem, c in d["checks"].items():
                check = LearnedCheck(
                    problem=problem,
                    features=tuple(c["features"]),
                    transforms=tuple(c["transforms"]),
                    mean=tuple(float(v) for v in c["mean"]),
                    scale=tuple(float(v) for v in c["scale"]),
                    weights=tuple(float(v) for v in c["weights"]),
                    bias=float(c["bias"]),
                    limit=float(c["limit"]),
                )
                n = len(check.features)
                sizes = {len(check.transforms), len(check.mean), len(check.scale)}
                if (
                    problem not in REASONS
                    or sizes | {len(check.weights)} != {n}
                    or not set(check.transforms) <= set(_TRANSFORMS)
                    or min(check.scale, default=0.0) <= 0
                ):
                    raise ValueError(problem)
                checks[problem] = check
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"quality model: malformed check ({e})") from None
        return cls(checks=checks, info=dict(d.get("info", {})))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (numbers rounded to 6 significant digits)."""

        def r(values: tuple[float, ...]) -> list[float]:
            return [float(f"{v:.6g}") for v in values]

        return {
            "checks": {
                p: {
                    "features": list(c.features),
                    "transforms": list(c.transforms),
                    "mean": r(c.mean),
                    "scale": r(c.scale),
                    "weights": r(c.weights),
                    "bias": float(f"{c.bias:.6g}"),
                    "limit": float(f"{c.limit:.6g}"),
                }
                for p, c in self.checks.items()
            },
            "info": self.info,
        }


@functools.cache
def load_model(path: Path = MODEL_FILE) -> QualityModel:
    """The quality model shipped with the package (read once)."""
    return QualityModel.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def assess_quality(
    img: np.ndarray | Image.Image,
    fov: FOV | None = None,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
    visible: float | None = None,
    model: QualityModel | None = None,
) -> QualityResult:
    """Judge whether a colour fundus photograph is gradable (see the module docstring).

    ``img`` is uint8 HxWx3 (or HxW), or a PIL image of the same; ``fov`` its field of
    view in the same pixels (found with ``find_fov`` when None); ``visible`` the share of
    the FOV inside the original picture when ``img`` is a crop of it; ``model`` the
    learned checks (the shipped ones when None).
    """
    _check_image(img, "assess_quality")
    m = fundus_measures(img, fov, visible)
    t = thresholds
    learned = (model or load_model()).checks
    drivers: dict[str, str] = {}

    def fires(problem: str) -> bool:
        check = learned.get(problem)
        if check is None:
            return False
        score = check.score(m)
        m[problem + "_score"] = score
        limit = check.limit + t.learned_offset
        if score > limit:
            drivers[problem] = check.driver(m)
            return True
        return False

    problems: list[str] = []
    if m["max_level"] < 20 or (not m["fov_found"] and m["spread"] < 3):
        problems.append("black")
    elif not m["fov_found"]:
        # a washed-out or very dark photograph hides its own field of view; retina-coloured
        # content without a complete disc is a fundus photograph cut off or covered;
        # anything else (grey OCT scans, documents, other photographs) is no fundus
        # photograph at all
        if (
            m["clipped_fraction"] > t.max_clipped_fraction
            or m["mean_brightness"] > t.max_mean_brightness
        ):
            problems.append("bright")
        elif m["red_green"] >= t.min_red_green:
            fundus_dark = m["mean_brightness"] < t.min_mean_brightness
            problems.append("dark" if fundus_dark else "fov_incomplete")
        else:
            problems.append("no_fov")
    else:
        if m["fov_coverage"] < t.min_fov_coverage:
            problems.append("small_fov")
        if m["fov_visible"] < t.min_fov_visible:
            problems.append("partial_fov")
        # underexposure is the learned check's call (a dim photograph with a sharp disc
        # and vessels is gradable), above a hard floor
        dark = fires("dark")
        if m["mean_brightness"] < t.hard_min_brightness or dark:
            problems.append("dark")
        # overexposure: a plainly clipped or washed-out field, or the learned check (red
        # saturating over a pale, colourless field while green is still in range), which
        # judges only photographs lit enough to be overexposed at all (far below the
        # brightness it learned from, its log-odds mean nothing: it called photographs of
        # mean luminance 7-14 overexposed)
        bright = (
            "dark" not in problems
            and m["mean_brightness"] >= t.min_overexposed_brightness
            and fires("bright")
        )
        if (
            m["mean_brightness"] > t.max_mean_brightness
            or m["clipped_fraction"] > t.max_clipped_fraction
            or bright
        ):
            problems.append("bright")
        exposure_bad = "dark" in problems or "bright" in problems
        m["blur_score"] = focus_score(m, t)
        hazy = m["valid_share"] > 0 and m["c2"] < t.min_contrast and not exposure_bad
        if m["valid_share"] == 0 and not exposure_bad:
            problems.append("blur")
        elif m["valid_share"] > 0 and m["blur_score"] > t.max_blur_score:
            problems.append("blur")
        elif m["edge_level"] < t.min_edge_level and not (exposure_bad or hazy):
            # almost no edge anywhere (the scale ratios then only measure noise), and not
            # for want of contrast: nothing is in focus
            problems.append("blur")
        if hazy:
            problems.append("haze")
        if not exposure_bad:
            if m["dark_part"] > t.max_dark_part:
                problems.append("dark_part")
            # a lid, lashes or a reflection covering part of the field: the learned check
            # (flat, differently coloured, bright cap), or plainly too bright a share
            bright_part = fires("bright_part")
            if m["bright_part"] > t.max_bright_part or bright_part:
                problems.append("bright_part")
    cautions: list[str] = []
    if not problems and m.get("blur_score", -1e9) > t.max_soft_score:
        cautions.append(SOFT_FOCUS)
    return QualityResult(
        ok=not problems,
        reasons=[REASONS[p] for p in problems],
        problems=problems,
        cautions=cautions,
        modality="fundus",
        measures=m,
        drivers={p: d for p, d in drivers.items() if p in problems},
    )


# ----------------------------------------------------------------------------- OCT


def oct_measures(img: np.ndarray) -> dict[str, float]:
    """Signal, edge-contact and empty-column measures of an OCT B-scan (any size)."""
    _check_image(img, "oct_measures")
    g = img if img.ndim == 2 else img[..., :3].max(axis=2)
    g = g.astype(np.float32)
    h, w = g.shape
    bands = max(8, min(64, w // 4))
    k = w // bands
    cols = g[:, : bands * k].reshape(h, bands, k).mean(axis=2)  # (h, bands)
    flat = cols.ravel()
    bg, hi = (float(v) for v in np.percentile(flat, [20, 99.5]))
    span = max(hi - bg, 1e-3)
    edge = max(2, round(0.03 * h))
    top = cols[:edge].max(axis=0)
    # smooth vertically a little before locating the brightest row of each band (the RPE)
    r = max(1, h // 64)
    c = np.cumsum(np.pad(cols, ((r + 1, r), (0, 0)), mode="edge"), axis=0)
    smooth = (c[2 * r + 1 :] - c[: -2 * r - 1]) / (2 * r + 1)
    brightest = smooth.argmax(axis=0)
    has_signal = cols.max(axis=0) > bg + 0.3 * span
    m = {
        "background": bg,
        "peak": hi,
        "signal": hi - bg,
        "top_touch": float((top > bg + 0.3 * span).mean()),
        # the brightest band (normally the RPE) in the lowest 12 % of the scan: the retina
        # sits so low that its outer layers are cut off
        "bottom_cut": float(((brightest >= 0.88 * h) & has_signal).mean()),
        "empty_columns": float((~has_signal).mean()),
    }
    return m


def assess_oct_quality(
    img: np.ndarray, thresholds: OctThresholds = DEFAULT_OCT_THRESHOLDS
) -> QualityResult:
    """Judge whether an OCT B-scan is gradable: signal, retina inside the scan, coverage."""
    m = oct_measures(img)
    t = thresholds
    problems: list[str] = []
    if m["peak"] < 20:
        problems.append("black")
    else:
        if m["signal"] < t.min_signal:
            problems.append("oct_signal")
        if m["top_touch"] > t.max_top_touch:
            problems.append("oct_top")
        if m["bottom_cut"] > t.max_bottom_cut:
            problems.append("oct_bottom")
        if m["empty_columns"] > t.max_empty_columns:
            problems.append("oct_columns")
    return QualityResult(
        ok=not problems,
        reasons=[REASONS[p] for p in problems],
        problems=problems,
        modality="oct",
        measures=m,
    )
