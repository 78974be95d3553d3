"""Attribution overlays drawn over the image they explain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.overlay import colour_legend, render_overlay, save_png

GREY = (100, 100, 100)


def grey_image(width: int = 120, height: int = 80) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def block_map(value: float) -> np.ndarray:
    """A 20x30 map (a coarser grid than the image) with one attributed block."""
    amap = np.zeros((20, 30), dtype=np.float32)
    amap[5:10, 5:10] = value
    return amap


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_overlay_has_the_image_size_whatever_the_map_resolution() -> None:
    for amap in (block_map(1.0), np.random.default_rng(0).normal(size=(7, 7))):
        out = render_overlay(grey_image(), amap)
        assert out.size == (120, 80)
        assert out.mode == "RGB"
    gray = Image.new("L", (50, 40), 80)
    assert render_overlay(gray, block_map(1.0)).size == (50, 40)


def test_supporting_evidence_turns_only_the_attributed_pixels_warm() -> None:
    out = pixels(render_overlay(grey_image(), block_map(1.0), alpha=0.5))
    centre = out[30, 30]  # map cell (7, 7) -> image pixel (30, 30)
    assert centre[0] > GREY[0] + 40 and centre[2] < GREY[2] - 40  # more red, less blue
    assert centre[0] >= centre[1] >= centre[2]
    assert (out[60:, 80:] == GREY).all()  # far from the block: untouched


def test_opposing_evidence_turns_the_attributed_pixels_cool() -> None:
    out = pixels(render_overlay(grey_image(), block_map(-1.0), alpha=0.5))
    centre = out[30, 30]
    assert centre[2] > GREY[2] + 40 and centre[0] < GREY[0] - 40  # more blue, less red
    assert (out[60:, 80:] == GREY).all()
    unsigned = pixels(render_overlay(grey_image(), block_map(-1.0), signed=False))
    assert (unsigned == GREY).all()  # signed=False shows supporting evidence only


def test_opacity_grows_with_magnitude_and_alpha() -> None:
    amap = block_map(1.0)
    amap[12:17, 20:25] = 0.3
    out = pixels(render_overlay(grey_image(), amap, alpha=0.6, clip_pct=100))
    strong, weak = out[30, 30], out[58, 90]
    assert strong[0] - GREY[0] > weak[0] - GREY[0] > 0
    fainter = pixels(render_overlay(grey_image(), amap, alpha=0.2, clip_pct=100))
    assert 0 < fainter[30, 30][0] - GREY[0] < strong[0] - GREY[0]


def test_alpha_zero_leaves_the_image_unchanged() -> None:
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    out = render_overlay(image, rng.normal(size=(10, 10)), alpha=0.0)
    assert np.array_equal(np.asarray(out), np.asarray(image))


def test_contour_outlines_the_top_region_in_white() -> None:
    dark = Image.new("RGB", (120, 80), (0, 0, 0))
    amap = np.zeros((20, 30), dtype=np.float32)
    amap[5:10, 5:10] = np.linspace(0.5, 1.0, 25).reshape(5, 5)
    out = pixels(render_overlay(dark, amap, alpha=0.0, contour_top_pct=2))
    white = np.argwhere((out == 255).all(axis=-1))
    assert len(white) > 10
    assert white[:, 0].min() >= 16 and white[:, 0].max() <= 44  # around rows 20..40
    assert white[:, 1].min() >= 16 and white[:, 1].max() <= 44
    inside = out[32, 32]
    assert not (inside == 255).all()  # an outline, not a filled area


def test_bad_overlay_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="alpha"):
        render_overlay(grey_image(), block_map(1.0), alpha=1.5)
    with pytest.raises(ValueError, match="2-D"):
        render_overlay(grey_image(), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        render_overlay(grey_image(), np.full((4, 4), np.nan))
    with pytest.raises(TypeError, match="PIL image"):
        render_overlay(np.zeros((4, 4, 3)), block_map(1.0))


def test_save_png_writes_atomically(tmp_path: Path) -> None:
    out = render_overlay(grey_image(), block_map(1.0))
    target = tmp_path / "sub" / "overlay.png"
    save_png(out, target)
    save_png(out, target)  # overwriting an existing file works too
    with Image.open(target) as reread:
        assert np.array_equal(np.asarray(reread), np.asarray(out))
    assert [p.name for p in target.parent.iterdir()] == ["overlay.png"]


def test_colour_legend_runs_from_cool_to_warm() -> None:
    legend = colour_legend(300, 40)
    assert legend.size == (300, 40)
    bar = pixels(legend)[2]
    assert bar[2][2] > bar[2][0]  # left end: cool
    assert bar[-3][0] > bar[-3][2]  # right end: warm
    assert colour_legend(60, 8).size == (60, 8)  # too small for labels: bar only
    with pytest.raises(ValueError, match="legend"):
        colour_legend(2, 2)
