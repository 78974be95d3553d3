"""Attribution overlays drawn over the image they explain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.overlay import (
    colour_legend,
    fundus_field_mask,
    oct_retina_mask,
    render_overlay,
    save_png,
    smooth_map,
    support_regions,
)
from engine.synth import render_fundus, render_oct

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


# --------------------------------------------------------------------------- readable maps


def speckled_map(seed: int = 0) -> np.ndarray:
    """Pixel-level +-1 speckle everywhere (the look of raw IG) plus one real 12x12 finding."""
    rng = np.random.default_rng(seed)
    amap = rng.normal(0.0, 2.0, size=(96, 96)).astype(np.float32)
    amap[40:52, 60:72] += 1.5
    return amap


def test_smoothing_turns_speckle_into_the_one_region_that_carries_evidence() -> None:
    amap = speckled_map()
    raw_peak = np.unravel_index(amap.argmax(), amap.shape)
    assert not (40 <= raw_peak[0] < 52 and 60 <= raw_peak[1] < 72)  # raw: a speck wins
    smooth = smooth_map(amap, 3.0)
    peak = np.unravel_index(smooth.argmax(), smooth.shape)
    assert 40 <= peak[0] < 52 and 60 <= peak[1] < 72
    inner = (slice(20, 76), slice(20, 76))  # away from the mirrored edges
    assert smooth[inner].sum() == pytest.approx(
        amap[inner].sum(), abs=0.02 * float(np.abs(amap).sum())
    )
    assert np.array_equal(smooth_map(amap, 0.0), amap)
    with pytest.raises(ValueError, match="sigma_px"):
        smooth_map(amap, -1.0)


def test_outlines_skip_specks_and_keep_a_handful_of_regions() -> None:
    amap = np.zeros((100, 100), dtype=np.float32)
    amap[::7, ::7] = 1.0  # 225 single-pixel specks
    amap[20:30, 20:30] = 0.9  # three real regions of different strength
    amap[60:72, 60:72] = 0.8
    amap[70:80, 10:20] = 0.7
    regions = support_regions(amap, top_pct=10, min_area=0.002)
    assert regions[25, 25] and regions[65, 65] and regions[75, 15]
    assert not regions[0, 0] and not regions[7, 49]  # specks get no outline
    two = support_regions(amap, top_pct=10, min_area=0.002, max_regions=2)
    assert two[25, 25] and two[65, 65] and not two[75, 15]  # the weakest region goes first
    dark = Image.new("RGB", (100, 100), (0, 0, 0))
    out = pixels(render_overlay(dark, amap, alpha=0.0, contour_top_pct=10))
    white = (out == 255).all(axis=-1)
    assert white[20, 20:30].any() and not white[0:3, 0:3].any() and not white[49, 49]


def test_region_outlines_on_a_large_map_match_the_small_map() -> None:
    amap = np.zeros((60, 60), dtype=np.float32)
    amap[10:25, 30:50] = 1.0
    big = np.kron(amap, np.ones((10, 10), dtype=np.float32))  # 600 px: found on a reduced grid
    regions = support_regions(big, top_pct=20, min_area=0.01)
    assert regions[150, 400] and not regions[400, 100]
    assert regions.shape == big.shape


def test_nothing_is_coloured_outside_the_mask() -> None:
    amap = np.ones((20, 30), dtype=np.float32)
    mask = np.zeros((20, 30), dtype=bool)
    mask[:, :15] = True
    out = pixels(render_overlay(grey_image(), amap, alpha=0.6, mask=mask))
    assert (out[:, 70:] == GREY).all()
    assert out[40, 20][0] > GREY[0] + 40


def test_fundus_mask_covers_the_field_of_view_and_every_finding() -> None:
    for label in ("diabetic_retinopathy", "glaucoma"):
        image, finding = render_fundus(np.random.default_rng(3), label, 192)
        mask = fundus_field_mask(image)
        assert mask is not None and mask.shape == finding.shape
        assert not mask[0, 0] and not mask[-1, -1] and mask[96, 96]
        assert (mask | ~finding).all()  # no finding pixel is masked away
    assert fundus_field_mask(np.full((64, 64, 3), 128, dtype=np.uint8)) is None


def test_oct_mask_keeps_the_retina_and_drops_the_vitreous() -> None:
    for label in ("DME", "CNV", "DRUSEN"):
        image, finding = render_oct(np.random.default_rng(5), label, 320)
        mask = oct_retina_mask(image)
        assert mask is not None and mask.shape == finding.shape
        assert (mask | ~finding).all(), label  # every finding pixel stays visible
        assert not mask[0].any()  # the top rows (vitreous) are masked
        assert 0.2 < mask.mean() < 0.9
    assert oct_retina_mask(np.zeros((64, 64, 3), dtype=np.uint8)) is None
