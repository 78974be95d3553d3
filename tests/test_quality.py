"""The image-quality gate: gradable fundus photographs pass, degraded copies are flagged."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.quality import DEFAULT_THRESHOLDS, QualityThresholds, assess_quality

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def sharp_fundus(size: int = 512, seed: int = 0) -> np.ndarray:
    """A synthetic fundus: reddish disc on black with thin dark 'vessels' and fine grain."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    c, r = size / 2, 0.46 * size
    inside = (xs - c) ** 2 + (ys - c) ** 2 <= r * r
    shade = 1.0 - 0.35 * ((xs - c) ** 2 + (ys - c) ** 2) / (r * r)  # vignetting
    vessels = np.zeros((size, size), np.float32)
    for k in range(14):  # thin curved lines
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-0.8, 0.8) * r
        bend = rng.uniform(-0.002, 0.002)
        d = (xs - c) * np.cos(angle) + (ys - c) * np.sin(angle) - offset
        d += bend * ((xs - c) * np.sin(angle) - (ys - c) * np.cos(angle)) ** 2
        vessels = np.maximum(vessels, (np.abs(d) < 1.5 + k % 3).astype(np.float32))
    grain = rng.normal(0, 4, (size, size))
    img = np.zeros((size, size, 3), np.float32)
    base = shade * (1 - 0.45 * vessels)
    img[..., 0] = 190 * base + grain
    img[..., 1] = 95 * base + grain
    img[..., 2] = 45 * base + 0.5 * grain
    img[~inside] = 0
    return np.clip(img, 0, 255).astype(np.uint8)


def blurred(img: np.ndarray, radius: float = 4) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


def scaled(img: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def test_sharp_well_exposed_fundus_passes():
    result = assess_quality(sharp_fundus())
    assert result.ok, result.reasons
    assert result.reasons == []
    assert result.focus >= DEFAULT_THRESHOLDS.min_focus


def test_blurred_copy_is_flagged_as_out_of_focus():
    img = sharp_fundus()
    sharp, blur = assess_quality(img), assess_quality(blurred(img, 6))
    assert not blur.ok
    assert "focus too low (blurred)" in blur.reasons
    assert blur.focus < 0.5 * sharp.focus


def test_focus_does_not_depend_on_resolution():
    img = sharp_fundus(512)
    half = np.asarray(Image.fromarray(img).resize((384, 384), Image.Resampling.LANCZOS))
    assert assess_quality(half).focus == pytest.approx(assess_quality(img).focus, rel=0.3)


def test_dark_copy_is_flagged_too_dark():
    result = assess_quality(scaled(sharp_fundus(), 0.15))
    assert not result.ok
    assert "too dark" in result.reasons
    assert result.mean_brightness < DEFAULT_THRESHOLDS.min_mean_brightness


def test_saturated_copy_is_flagged_overexposed():
    result = assess_quality(scaled(sharp_fundus(), 4.0))
    assert not result.ok
    assert "overexposed" in result.reasons
    assert result.mean_brightness > DEFAULT_THRESHOLDS.max_mean_brightness


@pytest.mark.parametrize("value", [0, 128], ids=["all-black", "uniform-grey"])
def test_featureless_image_is_flagged_without_field_of_view(value):
    result = assess_quality(np.full((300, 300, 3), value, np.uint8))
    assert not result.ok
    assert "no field of view found" in result.reasons


def test_thresholds_are_applied_as_given():
    img = sharp_fundus()
    strict = QualityThresholds(min_focus=1e6)
    assert "focus too low (blurred)" in assess_quality(img, thresholds=strict).reasons


def test_result_serialises_to_a_plain_dict():
    d = assess_quality(np.zeros((64, 64, 3), np.uint8)).to_dict()
    assert d["ok"] is False and isinstance(d["reasons"], list) and d["reasons"]
    assert set(d) >= {"focus", "mean_brightness", "dark_fraction", "bright_fraction"}


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="uint8"):
        assess_quality(np.zeros((64, 64, 3), np.float64))


def test_assessment_of_a_512_px_image_is_fast():
    img = sharp_fundus()
    assess_quality(img)
    best = min(_timed(assess_quality, img) for _ in range(5))
    assert best < 0.05  # budget 20 ms; generous bound for a shared CI machine


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


REAL_GRADABLE = [
    "chase-db1/Image_01L.jpg",
    "chase-db1/Image_05R.jpg",
    "fullres-fundus/0001_OD_f_1.jpg",
    "mx-dme/fundus/0002_OD_f_1.jpg",
    "eye-diseases-4/normal/2512_left.jpg",
    "eye-diseases-4/diabetic_retinopathy/102_right.jpeg",
    "eye-diseases-4/glaucoma/1486_left.jpg",
    "eye-diseases-4/cataract/_300_1946959.jpg",
]


def _load(name: str) -> np.ndarray:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real image not available: {name}")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.realdata
@pytest.mark.parametrize("name", REAL_GRADABLE)
def test_real_fundus_photographs_pass(name):
    result = assess_quality(_load(name))
    assert result.ok, f"{name}: {result.reasons}"


@pytest.mark.realdata
def test_real_fundus_blurred_copy_is_flagged():
    img = np.asarray(Image.fromarray(_load("chase-db1/Image_01L.jpg")).resize((512, 492)))
    assert assess_quality(img).ok
    assert "focus too low (blurred)" in assess_quality(blurred(img)).reasons
