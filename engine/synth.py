"""Synthetic retinal images (colour fundus and OCT B-scans) with known findings.

Tests, the demo and the attribution checks need many labelled images that look like the
real thing at a glance, carry a pixel mask of where the finding is, and cost nothing to
make or ship. Everything is drawn from a seeded generator, so the same seed gives the same
bytes. ``difficulty`` in [0, 1] makes findings subtler (fewer, smaller, lower contrast) so
a model cannot be perfect and uncertainty has something to do.

Why one module of about 630 lines: the fundus and OCT painters share the seeded
generator, the difficulty scale, the mask writing and the labels file; split, each half
would import the other's helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .csvsafe import safe_writer

__all__ = [
    "FUNDUS_CLASSES",
    "MASK_DIR",
    "OCT_CLASSES",
    "SynthItem",
    "render_fundus",
    "render_oct",
    "synthesize",
]

FUNDUS_CLASSES: tuple[str, ...] = ("cataract", "diabetic_retinopathy", "glaucoma", "normal")
OCT_CLASSES: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")
MASK_DIR = "_masks"
OCT_ASPECT = 0.4  # height / width of a B-scan
_MIN_SIZE = 32
_PNG_LEVEL = 1  # fast PNG; the images are regenerated, never archived


@dataclass(frozen=True)
class SynthItem:
    """One generated image as listed in ``labels.csv`` (paths relative to the out dir)."""

    file: str
    label: str
    mask: str | None
    patient: str
    eye: str


# --------------------------------------------------------------------------- checks


def _check_common(
    label: str, classes: Sequence[str], modality: str, size: int, difficulty: float
) -> None:
    if label not in classes:
        raise ValueError(f"unknown {modality} class {label!r}; expected one of {list(classes)}")
    if not isinstance(size, int | np.integer) or size < _MIN_SIZE:
        raise ValueError(f"size must be an integer >= {_MIN_SIZE}, got {size!r}")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")


def _pick_eye(rng: np.random.Generator, eye: str | None) -> str:
    if eye is None:
        return "right" if rng.random() < 0.5 else "left"
    if eye not in ("right", "left"):
        raise ValueError(f"eye must be 'right' or 'left', got {eye!r}")
    return eye


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


# --------------------------------------------------------------------------- fundus


def _vessel_tree(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    start: tuple[float, float],
    angle: float,
    width: float,
    curvature: float,
    steps: int,
    step: float,
    value: int,
    field: tuple[float, float, float],
) -> None:
    """Draw one tapering, branching vessel as polylines of equal width (iterative)."""
    cx, cy, radius = field
    stack = [(start[0], start[1], angle, width, curvature, steps, 0)]
    while stack:
        x, y, ang, w, curv, n, depth = stack.pop()
        bend = rng.normal(0.0, 0.08, size=n)
        branch = rng.random(n)
        run = [(x, y)]
        run_w = max(1, round(w))
        for i in range(n):
            ang += curv + bend[i]
            x, y = x + step * math.cos(ang), y + step * math.sin(ang)
            run.append((x, y))
            w *= 0.977
            curv *= 0.985
            if max(1, round(w)) != run_w:
                draw.line(run, fill=value, width=run_w, joint="curve")
                run, run_w = [(x, y)], max(1, round(w))
            if (x - cx) ** 2 + (y - cy) ** 2 > (radius * 1.02) ** 2 or w < 0.6:
                break
            if depth < 3 and w > 1.4 and branch[i] < 0.09 and i > 2:
                side = 1.0 if rng.random() < 0.5 else -1.0
                child_ang = ang + side * rng.uniform(0.45, 1.0)
                child_steps = int(max(4, (n - i) * rng.uniform(0.4, 0.8)))
                stack.append((x, y, child_ang, w * 0.68, side * 0.02, child_steps, depth + 1))
                ang -= side * 0.12
                w *= 0.9
        if len(run) > 1:
            draw.line(run, fill=value, width=run_w, joint="curve")


def _disc(
    img: Image.Image,
    centre: tuple[float, float],
    radius: float,
    cdr: float,
    cup_shift: float,
    pallor: float,
    gain: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Blend an optic disc with a pale cup into ``img`` in place; return the cup mask."""
    w, h = img.size
    half = int(radius * 1.4) + 3
    x0, x1 = max(0, int(centre[0]) - half), min(w, int(centre[0]) + half + 1)
    y0, y1 = max(0, int(centre[1]) - half), min(h, int(centre[1]) + half + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ecc = rng.uniform(1.0, 1.12)  # discs are slightly taller than wide
    rho = np.sqrt(((xx - centre[0]) / radius) ** 2 + ((yy - centre[1]) / (radius * ecc)) ** 2)
    disc = np.clip((1.0 - rho) / max(0.08, 1.5 / radius) + 0.5, 0.0, 1.0)
    cup_x = centre[0] + cup_shift * radius
    rho_c = np.sqrt(
        ((xx - cup_x) / (radius * cdr)) ** 2 + ((yy - centre[1]) / (radius * cdr * ecc)) ** 2
    )
    cup_soft = np.clip((1.0 - rho_c) / 0.25 + 0.5, 0.0, 1.0)
    rim = np.array([250, 160, 80], np.float32) * min(1.0, 0.7 + 0.35 * gain)
    cup_col = np.array([255, 236, 190], np.float32) * min(1.0, 0.75 + 0.3 * gain)
    patch = np.asarray(img.crop((x0, y0, x1, y1)), dtype=np.float32)
    a = (disc * 0.85)[..., None]
    patch = patch * (1.0 - a) + a * rim * (1.0 - 0.25 * rho[..., None])
    c = (cup_soft * disc * pallor)[..., None]
    patch = patch * (1.0 - c) + c * cup_col
    img.paste(Image.fromarray(np.clip(patch, 0, 255).astype(np.uint8)), (x0, y0))
    cup = np.zeros((h, w), bool)
    cup[y0:y1, x0:x1] = rho_c < 1.0
    return cup


def _blobs(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    centres: np.ndarray,
    radii: np.ndarray,
    lobes: int,
) -> None:
    """Irregular filled spots: each is 1..lobes overlapping ellipses."""
    for (x, y), r in zip(centres, radii, strict=True):
        for _ in range(int(rng.integers(1, lobes + 1))):
            ox, oy = rng.normal(0.0, r * 0.45, 2) if lobes > 1 else (0.0, 0.0)
            rx, ry = r * rng.uniform(0.6, 1.1), r * rng.uniform(0.6, 1.1)
            draw.ellipse([x + ox - rx, y + oy - ry, x + ox + rx, y + oy + ry], fill=255)


def _points_in_disk(rng: np.random.Generator, n: int, cx: float, cy: float, r: float) -> np.ndarray:
    """``n`` points uniformly distributed in a disk."""
    ang = rng.uniform(0.0, 2 * math.pi, n)
    rad = r * np.sqrt(rng.uniform(0.0, 1.0, n))
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


def _darken(img: Image.Image, layer: Image.Image, factors: Sequence[float]) -> Image.Image:
    """Where ``layer`` is white, multiply the channels of ``img`` by ``factors``."""
    lut = [int(v * f) for f in factors for v in range(256)]
    return Image.composite(img.point(lut), img, layer)


def render_fundus(
    rng: np.random.Generator,
    label: str,
    size: int = 512,
    difficulty: float = 0.5,
    *,
    eye: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a colour fundus photograph of class ``label``.

    Returns a uint8 ``size x size x 3`` RGB image and a bool ``size x size`` finding mask
    (lesions for diabetic_retinopathy, the cup for glaucoma, the field of view for
    cataract, empty for normal). ``eye`` ("right"/"left", random when None) puts the
    optic disc right or left of centre, as in a photograph of that eye.
    """
    _check_common(label, FUNDUS_CLASSES, "fundus", size, difficulty)
    eye = _pick_eye(rng, eye)
    d = float(difficulty)
    s = int(size)
    scale = s / 512.0

    # Geometry of the field of view, disc and fovea.
    cx, cy = s / 2 + rng.normal(0, 0.012 * s), s / 2 + rng.normal(0, 0.012 * s)
    radius = rng.uniform(0.42, 0.48) * s
    nasal = 1.0 if eye == "right" else -1.0
    disc_r = radius * rng.uniform(0.13, 0.16)
    disc_x = cx + nasal * radius * rng.uniform(0.5, 0.6)
    disc_y = cy + radius * rng.normal(-0.03, 0.04)
    fov_x = cx - nasal * radius * rng.uniform(0.0, 0.08)
    fov_y = cy + radius * rng.normal(0.02, 0.02)
    field = (cx, cy, radius)

    # Smooth background at quarter resolution: vignetting, macula, texture, disc glow.
    low = max(16, s // 4)
    f = s / low
    ly, lx = np.mgrid[0:low, 0:low].astype(np.float32) * f + f / 2
    r2 = ((lx - cx) ** 2 + (ly - cy) ** 2) / radius**2
    lum = 1.0 - rng.uniform(0.45, 0.7) * np.minimum(r2, 1.3) ** 1.5
    mac = ((lx - fov_x) ** 2 + (ly - fov_y) ** 2) / (0.2 * radius) ** 2
    lum *= 1.0 - rng.uniform(0.25, 0.45) * np.exp(-0.5 * mac)
    glow = ((lx - disc_x) ** 2 + (ly - disc_y) ** 2) / (2.2 * disc_r) ** 2
    lum *= 1.0 + 0.25 * np.exp(-0.5 * glow)
    tex = rng.standard_normal((low // 2, low // 2)).astype(np.float32)
    lum *= 1.0 + 0.03 * np.asarray(Image.fromarray(tex, mode="F").resize((low, low), Image.BICUBIC))
    gain = rng.uniform(0.4, 0.95)
    tint = np.array(
        [rng.uniform(0.75, 0.95), rng.uniform(0.36, 0.52), rng.uniform(0.1, 0.24)], np.float32
    )
    if rng.random() < 0.15:  # some cameras render greenish-grey
        tint = np.array([0.55, 0.45, 0.3], np.float32) * rng.uniform(0.85, 1.05)
    gammas = np.array([1.0, 1.3, 1.5], np.float32)  # red dominates where it is dark
    lowrgb = 255.0 * tint * np.clip(lum * gain, 0.0, 1.2)[..., None] ** gammas
    img = Image.fromarray(np.clip(lowrgb, 0, 255).astype(np.uint8)).resize((s, s), Image.BILINEAR)

    # Optic disc and cup.
    if label == "glaucoma":
        cdr = float(np.clip(_lerp(0.82, 0.55, d) + rng.normal(0, 0.03), 0.45, 0.9))
    else:
        cdr = rng.uniform(0.2, 0.45)
    cup_shift = -nasal * rng.uniform(0.0, 0.15)  # cups sit slightly temporal
    cup = _disc(img, (disc_x, disc_y), disc_r, cdr, cup_shift, rng.uniform(0.55, 0.85), gain, rng)

    # Vessels: artery/vein arcades around the macula and nasal branches, from the disc.
    vessels = Image.new("L", (s, s), 0)
    vdraw = ImageDraw.Draw(vessels)
    step = max(2.0, radius / 26)
    w0 = max(1.0, disc_r * 0.17)
    temporal = -nasal
    for value, width in ((150, w0 * 0.75), (255, w0)):  # arteries first, veins on top
        for vert in (-1.0, 1.0):
            ang = math.atan2(vert, temporal * rng.uniform(0.2, 0.5))
            curv = -vert * temporal * rng.uniform(0.05, 0.062)
            start = (disc_x + rng.normal(0, disc_r * 0.15), disc_y + vert * disc_r * 0.3)
            _vessel_tree(rng, vdraw, start, ang, width, curv, 40, step, value, field)
            ang = math.atan2(vert, -temporal * rng.uniform(0.3, 1.0))
            _vessel_tree(rng, vdraw, start, ang, width * 0.7, 0.0, 22, step, value, field)
        ang = math.atan2(rng.uniform(-0.3, 0.3), -temporal)  # a small nasal branch
        _vessel_tree(rng, vdraw, (disc_x, disc_y), ang, width * 0.5, 0.0, 12, step, value, field)
    fr = radius * rng.uniform(0.08, 0.12)  # the fovea itself is free of vessels
    vdraw.ellipse([fov_x - fr, fov_y - fr, fov_x + fr, fov_y + fr], fill=0)
    vessels = vessels.filter(ImageFilter.BoxBlur(max(0.5, 0.8 * scale)))
    k = rng.uniform(0.5, 0.75)
    img = _darken(img, vessels, (1 - 0.55 * k, 1 - 0.85 * k, 1 - 0.75 * k))

    mask = np.zeros((s, s), bool)
    if label == "glaucoma":
        mask = cup
    elif label == "diabetic_retinopathy":
        img, mask = _dr_lesions(img, rng, d, field, (fov_x, fov_y), (disc_x, disc_y, disc_r), gain)

    # Field of view, sometimes clipped top and bottom as many cameras do.
    fov = Image.new("L", (s, s), 0)
    fdraw = ImageDraw.Draw(fov)
    fdraw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    if rng.random() < 0.3:
        cut = radius * rng.uniform(0.86, 0.95)
        fdraw.rectangle([0, 0, s, cy - cut], fill=0)
        fdraw.rectangle([0, cy + cut, s, s], fill=0)
    fov_mask = np.asarray(fov) > 127
    if label == "cataract":
        img, mask = _cataract(img, rng, d, gain), fov_mask
    black = Image.new("RGB", (s, s), 0)
    out = np.asarray(Image.composite(img, black, fov))
    return out, mask & fov_mask


def _dr_lesions(
    img: Image.Image,
    rng: np.random.Generator,
    d: float,
    field: tuple[float, float, float],
    fovea: tuple[float, float],
    disc: tuple[float, float, float],
    gain: float,
) -> tuple[Image.Image, np.ndarray]:
    """Microaneurysms, haemorrhages and hard exudates; return the image and their mask."""
    s = img.size[0]
    scale = s / 512.0
    cx, cy, radius = field
    red = Image.new("L", (s, s), 0)
    yellow = Image.new("L", (s, s), 0)
    rdraw, ydraw = ImageDraw.Draw(red), ImageDraw.Draw(yellow)

    def spots(n: int, spread: float) -> np.ndarray:
        """Lesion centres around the fovea, inside the field and off the disc."""
        found = np.zeros((0, 2))
        while len(found) < n:
            pts = _points_in_disk(rng, 2 * n, fovea[0], fovea[1], spread * radius)
            ok = (pts[:, 0] - cx) ** 2 + (pts[:, 1] - cy) ** 2 < (0.86 * radius) ** 2
            ok &= (pts[:, 0] - disc[0]) ** 2 + (pts[:, 1] - disc[1]) ** 2 > (1.3 * disc[2]) ** 2
            found = np.concatenate([found, pts[ok]])
        return found[:n]

    small = max(scale, 0.7)  # keep lesions at least a pixel wide on small images
    n_ma = max(3, int(round(_lerp(28, 4, d) * rng.uniform(0.6, 1.3))))
    pts = spots(n_ma, 0.8)
    _blobs(rdraw, rng, pts, rng.uniform(1.1, 2.2, len(pts)) * small, 1)
    n_h = int(round(_lerp(9, 0.6, d) * rng.uniform(0.4, 1.4)))
    if n_h:
        pts = spots(n_h, 0.75)
        _blobs(rdraw, rng, pts, rng.uniform(3.0, 7.5, len(pts)) * scale, 3)
    n_ex = int(round(_lerp(5, 0.6, d) * rng.uniform(0.5, 1.4)))
    if n_ex:
        for centre in spots(n_ex, 0.5):
            k = int(rng.integers(3, 12))
            pts = centre + rng.normal(0, 14 * scale, (k, 2))
            _blobs(ydraw, rng, pts, rng.uniform(1.0, 3.2, k) * small, 2)
    mask = (np.asarray(red) > 0) | (np.asarray(yellow) > 0)
    contrast = _lerp(0.85, 0.3, d) * rng.uniform(0.85, 1.1)
    soft = ImageFilter.BoxBlur(max(0.4, 0.6 * scale))
    alpha = [int(v * contrast) for v in range(256)]
    img = _darken(img, red.filter(soft).point(alpha), (0.45, 0.2, 0.25))
    exudate = tuple(int(c * min(1.0, 0.7 + 0.3 * gain)) for c in (245, 215, 90))
    img = Image.composite(Image.new("RGB", (s, s), exudate), img, yellow.filter(soft).point(alpha))
    return img, mask


def _cataract(img: Image.Image, rng: np.random.Generator, d: float, gain: float) -> Image.Image:
    """Lens opacity: blur, milky haze and lost contrast."""
    s = img.size[0]
    factor = max(1, int(round(_lerp(6.0, 2.0, d) * s / 512 * rng.uniform(0.8, 1.2))))
    if factor > 1:
        img = img.reduce(factor).resize((s, s), Image.BICUBIC)
    haze = _lerp(0.5, 0.18, d) * rng.uniform(0.8, 1.2)
    colour = tuple(int(c * min(1.0, 0.6 + 0.4 * gain)) for c in (205, 180, 140))
    return Image.blend(img, Image.new("RGB", (s, s), colour), haze)


# --------------------------------------------------------------------------- OCT


def _ramp(y: np.ndarray, boundary: np.ndarray, width: float) -> np.ndarray:
    """0 above ``boundary`` (per column), 1 below, linear over ``width`` pixels."""
    return np.clip((y - boundary) / width + 0.5, 0.0, 1.0)


def render_oct(
    rng: np.random.Generator,
    label: str,
    size: int = 512,
    difficulty: float = 0.5,
    *,
    eye: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a macular OCT B-scan of class ``label``.

    Returns a uint8 ``H x size x 3`` image (grey replicated, ``H = round(0.4 * size)``)
    and a bool ``H x size`` finding mask (neovascular lesion and fluid for CNV, cysts for
    DME, drusen for DRUSEN, empty for NORMAL). ``eye`` decides the nasal side, where the
    nerve fibre layer is thicker.
    """
    _check_common(label, OCT_CLASSES, "OCT", size, difficulty)
    eye = _pick_eye(rng, eye)
    d = float(difficulty)
    w = int(size)
    h = int(round(w * OCT_ASPECT))
    scale = w / 512.0
    x = np.arange(w, dtype=np.float32)
    xn = x / w
    xf = rng.uniform(0.4, 0.6)  # fovea
    nasal = 1.0 if eye == "right" else -1.0

    # Bruch's membrane: bowl-shaped with a tilt; everything else is stacked on it.
    bruch = h * (
        rng.uniform(0.58, 0.7)
        - rng.uniform(0.0, 0.5) * (xn - rng.uniform(0.4, 0.6)) ** 2
        + rng.uniform(-0.08, 0.08) * (xn - 0.5)
    )
    thick = h * rng.uniform(0.2, 0.26)  # ILM to RPE away from the fovea
    pit = np.exp(-0.5 * ((xn - xf) / rng.uniform(0.05, 0.08)) ** 2) * rng.uniform(0.75, 0.95)
    side = 1.0 + 0.6 * np.clip(nasal * (xn - xf) * 4, 0, 1)  # thicker RNFL nasally
    zero = np.zeros(w, np.float32)
    inner = 1.0 - pit

    lesion = zero.copy()  # material under the RPE (CNV, drusen)
    fluid = zero.copy()  # subretinal fluid above the RPE (CNV)
    swell = zero.copy()  # extra outer-retina thickness (DME)
    if label == "CNV":
        xc = xf + rng.normal(0, 0.05)
        wid = rng.uniform(0.05, 0.1) * _lerp(1.3, 0.8, d)
        lesion = max(2.0, h * _lerp(0.1, 0.045, d) * rng.uniform(0.8, 1.2)) * _dome(xn, xc, wid)
        lesion *= 1.0 + 0.25 * np.sin(xn * rng.uniform(40, 90) + rng.uniform(0, 6))
        fluid = (
            h
            * _lerp(0.07, 0.02, d)
            * rng.uniform(0.6, 1.2)
            * _dome(xn, xc + rng.normal(0, 0.02), wid * 1.8)
        )
    elif label == "DRUSEN":
        n = max(2, int(round(_lerp(8, 3, d) * rng.uniform(0.7, 1.3))))
        for xc in np.clip(xf + rng.normal(0, 0.15, n), 0.08, 0.92):
            hgt = max(1.5, h * _lerp(0.045, 0.018, d) * rng.uniform(0.7, 1.3))
            lesion = np.maximum(lesion, hgt * _dome(xn, xc, rng.uniform(0.02, 0.05)))
    elif label == "DME":
        swell = (
            thick
            * _lerp(0.9, 0.3, d)
            * rng.uniform(0.8, 1.2)
            * _dome(xn, xf, rng.uniform(0.15, 0.25))
        )
        inner = 1.0 - pit * _lerp(0.2, 0.7, d)  # thickening fills the pit

    sink = 0.6 * lesion if label == "DRUSEN" else zero  # inner retina stays smooth over drusen
    # Layers from the bottom up: (thickness per column, reflectivity of the layer).
    layers = [
        (lesion, 0.8 if label == "CNV" else 0.5),
        (thick * 0.11 * (1 + zero), 1.0),  # RPE
        (fluid, 0.06),
        (thick * 0.04 * (1 + zero), 0.5),  # interdigitation
        (thick * 0.045 * (1 + zero), 0.85),  # ellipsoid zone
        (thick * 0.06 * (1 + zero), 0.25),  # inner segments / ELM
        (
            np.maximum(thick * 0.25 * (1 + 0.35 * pit) + swell * 0.6 - sink, 1.0),
            0.13,
        ),  # outer nuclear
        (thick * 0.07 * inner, 0.5),  # outer plexiform
        (thick * 0.1 * inner + swell * 0.4, 0.24),  # inner nuclear
        (thick * 0.1 * inner, 0.52),  # inner plexiform
        (thick * 0.12 * inner, 0.4),  # ganglion cells
        (thick * 0.1 * inner * side, 0.68),  # nerve fibres
    ]
    bg = 0.07
    yy = np.arange(h, dtype=np.float32)[:, None]
    edge = max(0.8, 1.2 * scale)
    bounds = [bruch]
    for t, _ in layers:
        bounds.append(bounds[-1] - t)
    # Vitreous above the ILM, then each layer in turn down to Bruch's membrane.
    img = np.full((h, w), bg, np.float32)
    prev = bg
    for (_, val), top in zip(reversed(layers), reversed(bounds[1:]), strict=True):
        img += (val - prev) * _ramp(yy, top, edge)
        prev = val
    # Choroid below Bruch's membrane: blotchy, fading with depth.
    below = yy - bruch
    chor = np.asarray(
        Image.fromarray(
            rng.uniform(0.3, 1.0, (h // 6 + 2, w // 6 + 2)).astype(np.float32) ** 2, mode="F"
        ).resize((w, h), Image.BICUBIC)
    )
    fade = np.exp(-np.maximum(below, 0) / (h * rng.uniform(0.09, 0.15)))
    img = np.where(
        below > 0, bg + (0.75 * chor - bg) * fade + (prev - 0.55) * _ramp(-below, 0, edge), img
    )

    mask = np.zeros((h, w), bool)
    if label == "CNV":
        lesion_zone = (yy > bounds[1]) & (yy < bruch) & (lesion > 0.5)
        fluid_zone = (yy > bounds[3]) & (yy < bounds[2]) & (fluid > 0.5)
        irregular = rng.uniform(0.75, 1.15, (h // 4 + 1, w // 4 + 1)).astype(np.float32)
        irr = np.asarray(Image.fromarray(irregular, mode="F").resize((w, h), Image.BILINEAR))
        img = np.where(lesion_zone, img * irr, img)
        mask = lesion_zone | fluid_zone
    elif label == "DRUSEN":
        mask = (yy > bounds[1]) & (yy < bruch) & (lesion > 0.5)
    elif label == "DME":
        mask = _cysts(img, rng, d, scale, bounds, xf, bg)

    # Shadows under superficial vessels, speckle, and a little horizontal smear.
    for xs in rng.uniform(0, w, int(rng.integers(1, 5))):
        lo, hi = int(xs), int(xs + rng.uniform(1.5, 4.0) * scale + 1)
        img[:, lo:hi] = np.where(yy > bounds[-1][lo:hi] + 3, img[:, lo:hi] * 0.55, img[:, lo:hi])
    img *= 1.0 + 0.5 * rng.standard_normal((h, w), dtype=np.float32)
    img += 0.035 * rng.standard_normal((h, w), dtype=np.float32)
    img *= rng.uniform(0.8, 1.15)
    out = Image.fromarray(np.clip(img * 255.0, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.BoxBlur(0.6 * max(scale, 0.5)))
    grey = np.asarray(out)
    return np.repeat(grey[..., None], 3, axis=2), mask


def _dome(xn: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Smooth bump of height 1 at ``centre`` falling to 0 at ``centre +- width``."""
    t = np.clip(1.0 - ((xn - centre) / width) ** 2, 0.0, None)
    return np.sqrt(t) * t


def _cysts(
    img: np.ndarray,
    rng: np.random.Generator,
    d: float,
    scale: float,
    bounds: list[np.ndarray],
    xf: float,
    bg: float,
) -> np.ndarray:
    """Dark oval intraretinal fluid pockets in the nuclear layers near the fovea."""
    h, w = img.shape
    mask = np.zeros((h, w), bool)
    n = max(1, int(round(_lerp(7, 2, d) * rng.uniform(0.7, 1.3))))
    darkness = _lerp(0.95, 0.55, d)
    top_band, low_band = bounds[9], bounds[6]  # top of inner nuclear, bottom of outer nuclear
    for _ in range(n):
        xc = int(np.clip((xf + rng.normal(0, 0.1)) * w, 0, w - 1))
        span = low_band[xc] - top_band[xc]
        ry = max(1.5, min(span * 0.45, rng.uniform(4, 12) * scale * _lerp(1.2, 0.7, d)))
        rx = ry * rng.uniform(1.0, 1.8)
        yc = rng.uniform(top_band[xc] + ry, max(top_band[xc] + ry + 0.1, low_band[xc] - ry))
        x0, x1 = max(0, int(xc - rx - 2)), min(w, int(xc + rx + 3))
        y0, y1 = max(0, int(yc - ry - 2)), min(h, int(yc + ry + 3))
        py, px = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        rho = np.sqrt(((px - xc) / rx) ** 2 + ((py - yc) / ry) ** 2)
        a = np.clip((1.0 - rho) * ry / 1.2 + 0.5, 0.0, 1.0) * darkness
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + a * bg
        mask[y0:y1, x0:x1] |= rho < 1.0
    return mask


# --------------------------------------------------------------------------- data sets


def _plan(
    rng: np.random.Generator, labels: list[str], letter: str
) -> list[tuple[str, str, str, str]]:
    """Group same-label images into patients of 1-2 images; return (name, label, patient, eye)."""
    groups: list[list[str]] = []
    for cls in dict.fromkeys(labels):
        count = labels.count(cls)
        while count:
            take = 2 if count >= 2 and rng.random() < 0.5 else 1
            groups.append([cls] * take)
            count -= take
    order = rng.permutation(len(groups))
    pool = max(9999, len(groups))
    ids = np.sort(rng.choice(np.arange(1, pool + 1), size=len(groups), replace=False))
    plan = []
    for pid, gi in zip(ids, order, strict=True):
        group = groups[gi]
        first = "right" if rng.random() < 0.5 else "left"
        if len(group) == 1:
            eyes = [first]
        elif rng.random() < 0.6:
            eyes = [first, "left" if first == "right" else "right"]
        else:
            eyes = [first, first]
        seen: dict[str, int] = {}
        for cls, eye in zip(group, eyes, strict=True):
            seen[eye] = seen.get(eye, 0) + 1
            code = "OD" if eye == "right" else "OI"
            plan.append((f"{pid:04d}_{code}_{letter}_{seen[eye]}.png", cls, f"{pid:04d}", eye))
    return plan


def synthesize(
    out: str | Path,
    modality: str = "fundus",
    n: int = 100,
    seed: int = 0,
    size: int = 512,
    classes: Sequence[str] | None = None,
    difficulty: float = 0.5,
) -> list[SynthItem]:
    """Write a labelled synthetic image set to ``out`` and return its rows.

    Layout: ``out/<class>/<name>.png``, finding masks in ``out/_masks/<name>.png`` (white =
    finding) and ``out/labels.csv`` (file,label,patient,eye,mask; paths relative to
    ``out``). Classes are balanced, patients hold 1-2 images of one label, and the same
    seed gives byte-identical files.
    """
    if modality not in ("fundus", "oct"):
        raise ValueError(f"unknown modality {modality!r}; expected 'fundus' or 'oct'")
    known = FUNDUS_CLASSES if modality == "fundus" else OCT_CLASSES
    chosen = tuple(known if classes is None else classes)
    if isinstance(classes, str):
        raise ValueError(f"classes must be a sequence of class names, not the string {classes!r}")
    if not chosen:
        raise ValueError("classes is empty; give at least one class")
    for cls in chosen:
        if cls not in known:
            raise ValueError(f"unknown {modality} class {cls!r}; expected some of {list(known)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"classes has duplicates: {list(chosen)}")
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _check_common(chosen[0], known, modality, size, difficulty)

    rng = np.random.default_rng(seed)
    labels = [chosen[i % len(chosen)] for i in range(n)]
    labels = [labels[i] for i in rng.permutation(n)]
    plan = _plan(rng, labels, "f" if modality == "fundus" else "o")
    render = render_fundus if modality == "fundus" else render_oct

    root = Path(out)
    (root / MASK_DIR).mkdir(parents=True, exist_ok=True)
    for cls in chosen:
        (root / cls).mkdir(exist_ok=True)
    items = []
    for index, (name, cls, patient, eye) in enumerate(plan):
        image, mask = render(np.random.default_rng([seed, index]), cls, size, difficulty, eye=eye)
        Image.fromarray(image).save(root / cls / name, compress_level=_PNG_LEVEL)
        mask_rel = None
        if mask.any():
            mask_rel = f"{MASK_DIR}/{name}"
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                root / mask_rel, compress_level=_PNG_LEVEL
            )
        items.append(SynthItem(f"{cls}/{name}", cls, mask_rel, patient, eye))

    with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = safe_writer(handle, lineterminator="\n")
        writer.writerow(["file", "label", "patient", "eye", "mask"])
        for it in items:
            writer.writerow([it.file, it.label, it.patient, it.eye, it.mask or ""])
    return items
