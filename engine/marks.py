"""Lesion marks: what a grader drew on an image, its geometry rules, masks and pictures.

A mark is a point, a box (two opposite corners), a polygon or a freehand outline (three or
more points) with a lesion type from the workspace's scheme. Coordinates are in
full-resolution pixels of the image (of the B-scan, for an OCT volume): x to the right,
y down, (0, 0) the top-left corner of the top-left pixel. The store, the COCO import and
the desktop all check geometry with :func:`check_geometry`, and the export pictures, the
report and the desktop draw marks with :func:`render_marks`, so each rule has one home.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from .schemes import Scheme

MARK_KINDS = ("point", "box", "polygon", "freehand")


class MarkError(ValueError):
    """A mark's geometry or lesion type is not valid; the message says why."""


@dataclass(frozen=True)
class Mark:
    """One live mark. ``slice_index`` is the 0-based B-scan of a volume (``None`` for a
    single image); ``points`` are ``(x, y)`` full-resolution pixels."""

    uid: str
    lesion: str
    kind: str
    points: list[tuple[float, float]]
    reviewer: str
    created_at: str
    slice_index: int | None = None
    image_id: int | None = None

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x, y, width, height)`` of the mark (a point: zero size)."""
        return bounding_box(self.points)

    @property
    def area(self) -> float:
        """The mark's area in pixels (a point: 0)."""
        return mark_area(self.kind, self.points)


def check_geometry(
    kind: str,
    points: Any,
    width: int | None = None,
    height: int | None = None,
) -> list[tuple[float, float]]:
    """The mark's points as ``[(x, y), ...]`` floats, or :class:`MarkError` with a reason.

    A point has one point, a box two (opposite corners, not on one line), a polygon or a
    freehand outline at least three (not all on one line); every coordinate is a finite
    number inside the image (``0 <= x <= width``, ``0 <= y <= height``, when the size is
    known; never negative).
    """
    if kind not in MARK_KINDS:
        raise MarkError(f"mark kind must be one of {', '.join(MARK_KINDS)}, got {kind!r}")
    if isinstance(points, str | bytes) or not isinstance(points, Sequence | Iterable):
        raise MarkError(f"a {kind}'s points must be a list of (x, y) pairs, got {points!r}")
    clean: list[tuple[float, float]] = []
    for i, pt in enumerate(points):
        try:
            x, y = pt
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            raise MarkError(f"point {i + 1} of the {kind} is not an (x, y) pair: {pt!r}") from None
        if isinstance(pt[0], bool) or isinstance(pt[1], bool):
            raise MarkError(f"point {i + 1} of the {kind} is not an (x, y) pair: {pt!r}")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise MarkError(f"point {i + 1} of the {kind} is not a finite number: ({x}, {y})")
        if x < 0 or y < 0:
            raise MarkError(
                f"point {i + 1} of the {kind} ({x:g}, {y:g}) lies left of or above the image"
            )
        if width is not None and x > width or height is not None and y > height:
            raise MarkError(
                f"point {i + 1} of the {kind} ({x:g}, {y:g}) lies outside the "
                f"{width}×{height} px image"
            )
        clean.append((x, y))
    need = {"point": "exactly 1 point", "box": "exactly 2 corners"}.get(kind, "at least 3 points")
    count_ok = (
        len(clean) == 1
        if kind == "point"
        else len(clean) == 2
        if kind == "box"
        else len(clean) >= 3
    )
    if not count_ok:
        raise MarkError(f"a {kind} needs {need}, got {len(clean)}")
    if kind == "box":
        (x0, y0), (x1, y1) = clean
        if x0 == x1 or y0 == y1:
            raise MarkError(f"the box ({x0:g}, {y0:g})-({x1:g}, {y1:g}) has no area")
    if kind in ("polygon", "freehand") and polygon_area(clean) == 0:
        raise MarkError(f"the {kind}'s {len(clean)} points lie on one line: it has no area")
    return clean


def bounding_box(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    """``(x, y, width, height)`` around the points (COCO's bbox order)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


def polygon_area(points: Sequence[tuple[float, float]]) -> float:
    """The area inside a closed outline (shoelace formula; self-crossings count signed)."""
    n = len(points)
    twice = sum(
        points[i][0] * points[(i + 1) % n][1] - points[(i + 1) % n][0] * points[i][1]
        for i in range(n)
    )
    return abs(twice) / 2.0


def mark_area(kind: str, points: Sequence[tuple[float, float]]) -> float:
    """A mark's area in pixels: a box's width × height, an outline's inside, a point 0."""
    if kind == "point":
        return 0.0
    if kind == "box":
        _, _, w, h = bounding_box(points)
        return w * h
    return polygon_area(points)


def box_corners(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """A box's four corners, clockwise from the top-left (as a polygon)."""
    x, y, w, h = bounding_box(points)
    return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def point_radius(width: int, height: int) -> float:
    """The radius a point mark covers in a mask: 1% of the image's longer side, at least
    2 px (a microaneurysm on a 2000 px photograph is roughly this size)."""
    return max(2.0, 0.01 * max(width, height))


def outline(mark: Mark, width: int, height: int) -> list[tuple[float, float]]:
    """The closed outline a mark covers: a point's disc as a 16-gon, a box's corners, or
    the drawn points."""
    if mark.kind == "point":
        (cx, cy), r = mark.points[0], point_radius(width, height)
        return [
            (
                min(max(cx + r * math.cos(2 * math.pi * k / 16), 0.0), float(width)),
                min(max(cy + r * math.sin(2 * math.pi * k / 16), 0.0), float(height)),
            )
            for k in range(16)
        ]
    if mark.kind == "box":
        return box_corners(mark.points)
    return list(mark.points)


def rasterise(
    marks: Iterable[Mark], width: int, height: int, lesion: str | None = None
) -> np.ndarray:
    """A ``(height, width)`` boolean mask of the marks (of one lesion type if given):
    points as discs of :func:`point_radius`, boxes and outlines filled."""
    import numpy as np
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(canvas)
    r = point_radius(width, height)
    for mark in marks:
        if lesion is not None and mark.lesion != lesion:
            continue
        if mark.kind == "point":
            (cx, cy) = mark.points[0]
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        elif mark.kind == "box":
            x, y, w, h = bounding_box(mark.points)
            draw.rectangle([x, y, x + w, y + h], fill=1)
        else:
            draw.polygon([tuple(p) for p in mark.points], fill=1)
    return np.asarray(canvas, dtype=bool)


def render_marks(
    image: Image.Image,
    marks: Iterable[Mark],
    scheme: Scheme | None = None,
    line_width: int | None = None,
) -> Image.Image:
    """A copy of ``image`` (RGB) with the marks drawn in their lesion colours, each with a
    thin dark edge so it stays visible on light and dark retina alike (the rule the
    report, the export pictures and the desktop share). Unknown lesions are drawn white.

    ``image`` must be at the marks' full resolution; scale the result, not the marks.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    w, h = out.size
    lw = line_width or max(2, round(max(w, h) / 250))
    colours = {t.key: t.colour for t in scheme.lesion_types} if scheme is not None else {}
    layer = PILImage.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    r = point_radius(w, h)
    for mark in marks:
        colour = colours.get(mark.lesion, "#ffffff")
        dark = (0, 0, 0, 200)
        if mark.kind == "point":
            (cx, cy) = mark.points[0]
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(box, outline=dark, width=lw + 2)
            draw.ellipse(box, outline=colour, width=lw)
            draw.line([cx - r / 3, cy, cx + r / 3, cy], fill=colour, width=max(1, lw // 2))
            draw.line([cx, cy - r / 3, cx, cy + r / 3], fill=colour, width=max(1, lw // 2))
        else:
            pts = outline(mark, w, h)
            closed = [*pts, pts[0]]
            draw.line(closed, fill=dark, width=lw + 2, joint="curve")
            draw.line(closed, fill=colour, width=lw, joint="curve")
    out.paste(layer, (0, 0), layer)
    return out


def legend(scheme: Scheme, marks: Iterable[Mark]) -> list[tuple[str, str, int]]:
    """``(label, colour, count)`` of each lesion type present among ``marks``, in the
    scheme's order (unknown types last, white): the legend beside a rendered picture."""
    counts: dict[str, int] = {}
    for mark in marks:
        counts[mark.lesion] = counts.get(mark.lesion, 0) + 1
    rows = [(t.label, t.colour, counts.pop(t.key)) for t in scheme.lesion_types if t.key in counts]
    rows += [(key, "#ffffff", n) for key, n in sorted(counts.items())]
    return rows
