"""Display enhancement: the original stays the original, each control does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from engine.enhance import Enhancement, apply, clahe, prepare, tone, tone_table


def _photo(seed: int = 0, side: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (side, side + 16, 3), dtype=np.uint8)


def test_identity_returns_the_same_pixels_and_never_touches_the_input():
    rgb = _photo()
    before = rgb.copy()
    assert Enhancement.identity().is_identity
    assert np.array_equal(apply(rgb, Enhancement()), before)
    for e in (
        Enhancement(contrast=40),
        Enhancement(green=True, clahe=True, gamma=2.0),
        Enhancement(brightness=-30, clahe=True),
    ):
        assert not e.is_identity
        apply(rgb, e)
    assert np.array_equal(rgb, before)  # the caller's display copy is never modified


def test_red_free_view_shows_the_green_channel_as_grey():
    rgb = _photo(1)
    out = apply(rgb, Enhancement(green=True))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    for channel in range(3):
        assert np.array_equal(out[:, :, channel], rgb[:, :, 1])


def test_contrast_widens_or_narrows_the_spread_around_mid_grey():
    rng = np.random.default_rng(2)
    grey = rng.integers(90, 166, (64, 64), dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    spread = rgb.astype(float).std()
    assert apply(rgb, Enhancement(contrast=40)).astype(float).std() > 1.5 * spread
    assert apply(rgb, Enhancement(contrast=-40)).astype(float).std() < 0.7 * spread


def test_brightness_and_gamma_move_the_tones_the_right_way():
    ramp = np.arange(256, dtype=np.uint8)
    assert (tone_table(Enhancement(brightness=20)).astype(int) >= ramp).all()
    assert tone_table(Enhancement(brightness=20))[100] == 100 + round(0.1 * 255)
    lifted = tone_table(Enhancement(gamma=2.0))
    assert lifted[64] > 64 and lifted[0] == 0 and lifted[255] == 255  # dark tones lifted
    assert tone_table(Enhancement(gamma=0.5))[128] < 128
    assert np.array_equal(tone_table(Enhancement()), ramp)


def test_settings_are_held_inside_their_ranges_and_described_in_words():
    e = Enhancement(brightness=500, contrast=-500, gamma=9.0)
    assert e.clamped() == Enhancement(brightness=100, contrast=-100, gamma=3.0)
    assert Enhancement().describe() == ""
    words = Enhancement(contrast=20, green=True, clahe=True, gamma=1.3).describe()
    assert words == "contrast +20, gamma 1.30, red-free, CLAHE"


def test_clahe_raises_local_contrast_of_a_low_contrast_image():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:256, 0:256]
    # a dim, hazy image: a slow gradient with faint detail of about +-3 grey levels
    faint = (40 + 30 * x / 255 + 3 * np.sign(np.sin(x / 3.0) * np.sin(y / 3.0))).astype(np.uint8)
    faint += rng.integers(0, 2, faint.shape, dtype=np.uint8)
    out = clahe(faint)

    def local_std(img: np.ndarray) -> float:
        tiles = img.astype(float).reshape(16, 16, 16, 16).transpose(0, 2, 1, 3).reshape(256, -1)
        return float(tiles.std(axis=1).mean())

    assert local_std(out) > 2 * local_std(faint)
    assert out.dtype == np.uint8 and out.shape == faint.shape


def test_clahe_keeps_the_colour_and_changes_only_luminance_on_a_colour_image():
    rng = np.random.default_rng(4)
    luma = rng.integers(40, 70, (128, 128)).astype(np.int16)
    rgb = np.stack([luma + 60, luma, luma - 30], axis=2).astype(np.uint8)
    out = prepare(rgb, green=False, use_clahe=True).astype(np.int16)
    # the same amount is added to R, G and B of a pixel (chroma kept where nothing clips)
    assert np.array_equal(out[:, :, 0] - out[:, :, 1], rgb[:, :, 0] - rgb[:, :, 1].astype(int))
    assert out.std() > rgb.astype(float).std()


def test_clahe_matches_a_reference_implementation_up_to_rounding():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:203, 0:333]  # neither side divides into 8 tiles
    grey = np.clip(60 + 30 * np.sin(x / 17.0) + rng.normal(0, 6, x.shape), 0, 255)
    grey = grey.astype(np.uint8)
    reference = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    diff = np.abs(clahe(grey).astype(int) - reference)
    assert diff.max() <= 1  # one grey level of rounding at most


def test_tone_after_prepare_is_the_same_as_apply():
    rgb = _photo(6)
    e = Enhancement(contrast=30, gamma=1.4, clahe=True, green=True)
    assert np.array_equal(tone(prepare(rgb, True, True), e), apply(rgb, e))


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="uint8 RGB"):
        apply(np.zeros((4, 4), np.uint8), Enhancement(contrast=10))
    with pytest.raises(ValueError, match="2-D uint8"):
        clahe(np.zeros((4, 4, 3), np.uint8))
