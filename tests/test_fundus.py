"""Field-of-view detection, square crop and enhancement filters for fundus photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.fundus import (
    FOV,
    FundusPreprocessing,
    ben_graham,
    crop_square,
    find_fov,
    fov_mask,
    green_emphasis,
    square_crop_box,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def textured_disc(
    h: int, w: int, cx: float, cy: float, r: float, seed: int = 0, aspect: float = 1.0
) -> np.ndarray:
    """A reddish, textured disc (or ellipse) on black, like a fundus photograph."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inside = ((xs - cx) / r) ** 2 + ((ys - cy) / (r * aspect)) ** 2 <= 1
    texture = rng.normal(0, 12, (h, w)) + 20 * np.sin(xs / 7.0) * np.cos(ys / 11.0)
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 170 + texture
    img[..., 1] = 80 + 0.6 * texture
    img[..., 2] = 40 + 0.3 * texture
    img[~inside] = rng.integers(0, 6, (int((~inside).sum()), 1))  # noisy black border
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("h", "w", "cx", "cy", "r"),
    [
        (256, 256, 128.0, 128.0, 110.0),  # whole circle
        (240, 320, 150.0, 118.0, 100.0),  # off-centre in a landscape image
        (200, 300, 150.0, 100.0, 135.0),  # clipped at top and bottom
    ],
)
def test_find_fov_recovers_centre_and_radius_of_a_disc(h, w, cx, cy, r):
    fov = find_fov(textured_disc(h, w, cx, cy, r))
    assert fov.found
    assert abs(fov.cx - cx) <= 0.03 * r
    assert abs(fov.cy - cy) <= 0.03 * r
    assert abs(fov.r - r) <= 0.03 * r
    expected_coverage = fov_mask((h, w), FOV(cx, cy, r, True, 0.0)).mean()
    assert fov.coverage == pytest.approx(expected_coverage, abs=0.03)


def test_find_fov_ignores_bright_specks_and_text_in_the_border():
    img = textured_disc(256, 256, 128, 128, 100)
    img[5:9, 5:60] = 255  # a burnt-in date stamp
    img[240, 250] = 255
    fov = find_fov(img)
    assert fov.found
    assert abs(fov.r - 100) <= 3 and abs(fov.cx - 128) <= 3 and abs(fov.cy - 128) <= 3


def test_find_fov_measures_a_stretched_circle_by_its_longest_axis():
    fov = find_fov(textured_disc(256, 256, 128, 128, 90, aspect=1.3))
    assert fov.found
    assert fov.r == pytest.approx(117, rel=0.03)
    assert fov.aspect == pytest.approx(1.3, rel=0.05)


@pytest.mark.parametrize(
    "img",
    [
        np.full((200, 300, 3), 180, np.uint8),
        np.zeros((200, 300, 3), np.uint8),
        np.full((200, 300), 90, np.uint8),
    ],
    ids=["uniform-bright", "all-black", "uniform-grey"],
)
def test_find_fov_reports_not_found_without_a_dark_bordered_disc(img):
    fov = find_fov(img)
    assert not fov.found
    assert (fov.cx, fov.cy, fov.r) == (150.0, 100.0, 150.0)  # centred, spans the image


def test_find_fov_reports_not_found_on_an_oct_like_band():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 30, (180, 400), dtype=np.uint8)
    img[70:110] = rng.integers(120, 220, (40, 400), dtype=np.uint8)
    assert not find_fov(img).found


def test_find_fov_rejects_non_image_input_with_a_clear_message():
    with pytest.raises(ValueError, match="uint8"):
        find_fov(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        find_fov(np.zeros((64, 64, 5), np.uint8))


def test_fov_scaled_matches_the_same_image_at_another_resolution():
    big = textured_disc(400, 400, 210, 190, 170)
    small = np.asarray(Image.fromarray(big).resize((200, 200), Image.Resampling.BILINEAR))
    from_small = find_fov(small).scaled(2.0)
    from_big = find_fov(big)
    assert from_small.found and from_big.found
    assert from_small.cx == pytest.approx(from_big.cx, abs=4)
    assert from_small.r == pytest.approx(from_big.r, abs=4)
    assert from_small.coverage == pytest.approx(from_big.coverage, abs=0.02)


def test_square_crop_is_square_and_centred_on_the_fov():
    fov = FOV(160.0, 120.0, 100.0, True, 0.5)
    box = square_crop_box(fov, 320, 240, margin=0.05)
    left, top, right, bottom = box
    assert right - left == bottom - top == 210
    assert ((left + right) / 2, (top + bottom) / 2) == (160, 120)
    img = Image.fromarray(textured_disc(240, 320, 160, 120, 100))
    crop = crop_square(img, box)
    assert crop.size == (210, 210)


def test_crop_square_pads_with_black_where_the_box_leaves_the_image():
    img = Image.fromarray(np.full((200, 300, 3), 200, np.uint8))
    fov = FOV(150.0, 100.0, 140.0, True, 0.9)  # circle clipped top and bottom
    box = square_crop_box(fov, 300, 200, margin=0.0)
    crop = np.asarray(crop_square(img, box))
    assert crop.shape == (280, 280, 3)
    assert (crop[:30] == 0).all() and (crop[-30:] == 0).all()  # padding above and below
    assert (crop[50:230] == 200).all()  # image content kept


def test_square_crop_without_fov_keeps_the_whole_image():
    box = square_crop_box(find_fov(np.zeros((100, 160, 3), np.uint8)), 160, 100)
    assert box == (0, -30, 160, 130)


def test_ben_graham_keeps_shape_and_dtype_and_greys_out_the_border():
    img = textured_disc(128, 160, 80, 64, 55)
    fov = find_fov(img)
    out = ben_graham(img, fov=fov)
    assert out.shape == img.shape and out.dtype == np.uint8
    outside = ~fov_mask(img.shape[:2], fov)
    assert (out[outside] == 128).all()
    inside = fov_mask(img.shape[:2], FOV(fov.cx, fov.cy, 0.6 * fov.r, True, 0.0))
    assert abs(float(out[inside].mean()) - 128) < 12  # local average removed
    assert out[inside].std() > 10  # texture kept, amplified


def test_green_emphasis_stretches_green_into_all_channels():
    img = textured_disc(128, 128, 64, 64, 55)
    out = green_emphasis(img, strength=1.0)
    assert out.shape == img.shape and out.dtype == np.uint8
    inside = fov_mask(img.shape[:2], find_fov(img))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out[inside][:, 1].std() > img[inside][:, 1].std() * 1.5
    assert np.array_equal(green_emphasis(img, strength=0.0), img)


def test_preprocessing_options_round_trip_and_reject_unknown_keys():
    options = FundusPreprocessing(mode="ben_graham", sigma_frac=0.05)
    assert FundusPreprocessing.from_dict(options.to_dict()) == options
    with pytest.raises(ValueError, match="unknown preprocessing option"):
        FundusPreprocessing.from_dict({"mode": "none", "gamma": 2})
    with pytest.raises(ValueError, match="mode"):
        FundusPreprocessing(mode="clahe")
    img = textured_disc(96, 96, 48, 48, 40)
    assert np.array_equal(options.apply(img), ben_graham(img, 0.05))


REAL_FUNDUS = [
    "chase-db1/Image_01L.jpg",
    "fullres-fundus/0001_OD_f_1.jpg",
    "mx-dme/fundus/0002_OD_f_1.jpg",
    "eye-diseases-4/normal/2512_left.jpg",
    "eye-diseases-4/cataract/_300_1946959.jpg",
]


@pytest.mark.realdata
@pytest.mark.parametrize("name", REAL_FUNDUS)
def test_find_fov_finds_the_field_of_view_of_real_photographs(name):
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real image not available: {name}")
    with Image.open(path) as im:
        im.draft("RGB", (256, 256))
        img = np.asarray(im.convert("RGB"))
    fov = find_fov(img)
    assert fov.found
    h, w = img.shape[:2]
    assert 0.3 * max(h, w) < fov.r < 0.75 * max(h, w)
    assert 0.3 * w < fov.cx < 0.7 * w and 0.3 * h < fov.cy < 0.7 * h


@pytest.mark.realdata
def test_find_fov_reports_not_found_on_a_real_oct_scan():
    folder = DATA / "mx-dme" / "oct"
    files = sorted(folder.glob("*.jpg"))[:1] if folder.is_dir() else []
    if not files:
        pytest.skip("real OCT images not available")
    with Image.open(files[0]) as im:
        assert not find_fov(np.asarray(im.convert("RGB"))).found
