"""Display enhancement on the review page: keys change what is shown, never the file."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from desktop.enhance_bar import qimage_to_rgb
from desktop.review import ReviewPage
from engine.enhance import Enhancement

WAIT_MS = 30_000


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:400]
    red = 90 + 20 * np.sin(x / 9.0) + rng.normal(0, 3, x.shape)
    green = 40 + 12 * np.cos(y / 7.0) + rng.normal(0, 3, x.shape)
    blue = 15 + rng.normal(0, 2, x.shape)
    pixels = np.clip(np.stack([red, green, blue], axis=2), 0, 255).astype(np.uint8)
    path = tmp_path / "clinic" / "dark.png"
    path.parent.mkdir()
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def page(qtbot, tmp_path, photo):
    from engine.store import Workspace

    data = photo.read_bytes()
    folder = tmp_path / "ws"
    with Workspace.open(folder) as ws:
        image_id = ws.add_image(photo, hashlib.sha256(data).hexdigest(), len(data), 400, 300)
    page = ReviewPage()
    qtbot.addWidget(page)
    page.resize(1000, 700)
    page.set_workspace(folder, None)
    page.set_reviewer("ana")
    page.set_queue([image_id])
    page.show()
    qtbot.waitExposed(page)
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    page.show_image(image_id)
    qtbot.waitUntil(page.viewer.has_image, timeout=WAIT_MS)
    page.viewer.setFocus()
    yield page
    page.shutdown()


def shown(page: ReviewPage) -> np.ndarray:
    """The pixels on screen now (the base pixmap of the viewer)."""
    return qimage_to_rgb(page.viewer.image_item().pixmap().toImage())


def key(qtbot, page, k, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    qtbot.keyClick(page.focusWidget() or page, k, modifier)


def settle(qtbot, page) -> None:
    qtbot.waitUntil(page.enhancer.is_current, timeout=WAIT_MS)


def test_keys_change_the_view_and_original_restores_it_without_touching_the_file(
    qtbot, page, photo
):
    before_bytes = photo.read_bytes()
    original = shown(page)
    assert np.array_equal(original, np.asarray(Image.open(photo).convert("RGB")))
    assert page.enhance_bar.state.text() == "Original pixels"

    key(qtbot, page, Qt.Key.Key_R, Qt.KeyboardModifier.ShiftModifier)  # red-free
    settle(qtbot, page)
    red_free = shown(page)
    for channel in range(3):
        assert np.array_equal(red_free[:, :, channel], original[:, :, 1])
    assert page.viewer.is_enhanced()

    key(qtbot, page, Qt.Key.Key_W)  # contrast up, twice
    key(qtbot, page, Qt.Key.Key_W)
    settle(qtbot, page)
    assert page.enhancer.enhancement() == Enhancement(contrast=20, green=True)
    assert shown(page).astype(float).std() > red_free.astype(float).std()
    assert page.enhance_bar.state.text() == "⚠ Enhanced"
    badge = page.viewer.badge()  # on the image itself: the view is not the original
    assert "Enhanced view" in badge and "contrast +20" in badge and "red-free" in badge
    assert page.enhance_bar.sliders["contrast"].value() == 20

    key(qtbot, page, Qt.Key.Key_X)  # the original again
    settle(qtbot, page)
    assert np.array_equal(shown(page), original)
    assert not page.viewer.is_enhanced()
    assert page.enhance_bar.state.text() == "Original pixels"
    assert page.viewer.badge() == ""
    assert photo.read_bytes() == before_bytes  # the source file is never written


def test_clahe_key_raises_local_contrast_and_the_setting_stays_for_the_session(qtbot, page, photo):
    key(qtbot, page, Qt.Key.Key_E, Qt.KeyboardModifier.ShiftModifier)  # CLAHE
    settle(qtbot, page)
    assert page.enhancer.enhancement().clahe
    assert shown(page).astype(float).std() > np.asarray(Image.open(photo)).astype(float).std()
    # the same image shown again (as after moving on and back) comes up enhanced too
    image = page.viewer.source_image()
    page.viewer.set_image(image)
    settle(qtbot, page)
    assert page.viewer.is_enhanced()
    assert page.enhance_bar.buttons["clahe"].isChecked()


def test_brightness_and_gamma_keys_step_up_and_down(qtbot, page):
    key(qtbot, page, Qt.Key.Key_L)
    key(qtbot, page, Qt.Key.Key_Y)
    key(qtbot, page, Qt.Key.Key_Y)
    settle(qtbot, page)
    assert page.enhancer.enhancement() == Enhancement(brightness=10, gamma=1.2)
    key(qtbot, page, Qt.Key.Key_L, Qt.KeyboardModifier.ShiftModifier)
    key(qtbot, page, Qt.Key.Key_Y, Qt.KeyboardModifier.ShiftModifier)
    settle(qtbot, page)
    assert page.enhancer.enhancement() == Enhancement(gamma=1.1)
    assert "gamma 1.10" in page.viewer.badge()


def test_the_sliders_under_adjust_set_the_same_enhancement(qtbot, page):
    page.enhance_bar.sliders["gamma"].setValue(150)
    page.enhance_bar.sliders["brightness"].setValue(-30)
    settle(qtbot, page)
    assert page.enhancer.enhancement() == Enhancement(brightness=-30, gamma=1.5)
    assert page.viewer.is_enhanced()
    page.enhance_bar.buttons["reset"].click()
    settle(qtbot, page)
    assert page.enhance_bar.sliders["gamma"].value() == 100 and not page.viewer.is_enhanced()
