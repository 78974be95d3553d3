"""The image viewer and its overlay bar, driven with keys, the wheel and clicks."""

from __future__ import annotations

import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QImage, QWheelEvent
from PySide6.QtWidgets import QApplication

from desktop.qimage import pil_to_qimage, pil_to_qimage_rgba
from desktop.viewer import SIDE_GAP, ImageViewer, OverlayBar


def solid(width: int, height: int, colour: str) -> QImage:
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(QColor(colour))
    return image


@pytest.fixture
def viewer(qtbot) -> ImageViewer:
    viewer = ImageViewer()
    qtbot.addWidget(viewer)
    viewer.resize(400, 300)
    viewer.show()
    qtbot.waitExposed(viewer)
    viewer.setFocus()
    viewer.set_image(solid(1600, 1200, "darkred"))
    return viewer


def wheel(viewer: ImageViewer, steps: int) -> None:
    centre = QPointF(viewer.viewport().rect().center())
    event = QWheelEvent(
        centre,
        QPointF(viewer.viewport().mapToGlobal(centre.toPoint())),
        QPoint(0, 0),
        QPoint(0, 120 * steps),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(viewer.viewport(), event)


def test_fit_zoom_and_actual_size_by_keys_and_wheel(qtbot, viewer):
    fitted = viewer.scale_factor()
    assert viewer.is_fit()
    assert fitted == pytest.approx(min(400 / 1600, 300 / 1200), rel=0.05)  # whole image in view
    qtbot.keyClick(viewer, Qt.Key.Key_Plus)
    assert viewer.scale_factor() == pytest.approx(fitted * 1.25)
    assert not viewer.is_fit()
    qtbot.keyClick(viewer, Qt.Key.Key_Minus)
    qtbot.keyClick(viewer, Qt.Key.Key_Minus)
    assert viewer.scale_factor() == pytest.approx(fitted / 1.25)
    qtbot.keyClick(viewer, Qt.Key.Key_Equal)  # 1:1
    assert viewer.scale_factor() == pytest.approx(1.0 / viewer.devicePixelRatioF())
    qtbot.keyClick(viewer, Qt.Key.Key_F)
    assert viewer.scale_factor() == pytest.approx(fitted)
    wheel(viewer, 2)
    assert viewer.scale_factor() == pytest.approx(fitted * 1.25**2)
    qtbot.keyClick(viewer, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert viewer.scale_factor() == pytest.approx(1.0 / viewer.devicePixelRatioF())
    qtbot.keyClick(viewer, Qt.Key.Key_0)
    assert viewer.is_fit() and viewer.scale_factor() == pytest.approx(fitted)


def test_fit_follows_window_size(qtbot, viewer):
    before = viewer.scale_factor()
    viewer.resize(800, 600)
    qtbot.waitUntil(lambda: viewer.scale_factor() > before * 1.5)


def test_overlay_opacity_and_space_toggle(qtbot, viewer):
    assert not viewer.has_overlay()
    viewer.set_overlay(solid(800, 600, "yellow"))  # half resolution: stretched over the image
    assert viewer.overlay_shown()
    overlay = viewer.overlay_item()
    assert overlay.sceneBoundingRect() == viewer.image_item().sceneBoundingRect()
    assert overlay.zValue() > viewer.image_item().zValue()
    viewer.set_overlay_opacity(0.4)
    assert overlay.opacity() == pytest.approx(0.4)
    with qtbot.waitSignal(viewer.overlay_toggled) as toggled:
        qtbot.keyClick(viewer, Qt.Key.Key_Space)
    assert toggled.args == [False]
    assert not viewer.overlay_shown() and viewer.has_overlay()
    qtbot.keyClick(viewer, Qt.Key.Key_Space)
    assert viewer.overlay_shown()
    viewer.set_image(solid(100, 100, "blue"))  # a new image never inherits the old overlay
    assert not viewer.has_overlay()


def test_side_by_side_puts_the_overlay_on_a_second_copy(viewer):
    viewer.set_overlay(solid(1600, 1200, "yellow"))
    viewer.set_side_by_side(True)
    assert viewer.sceneRect().width() == 2 * 1600 + SIDE_GAP
    assert viewer.overlay_item().pos().x() == 1600 + SIDE_GAP
    assert viewer.image_item().pos().x() == 0
    viewer.set_side_by_side(False)
    assert viewer.sceneRect().width() == 1600
    assert viewer.overlay_item().pos().x() == 0


def test_message_replaces_the_image(viewer):
    viewer.set_overlay(solid(1600, 1200, "yellow"))
    viewer.set_message("Cannot show a.png: file not found")
    assert viewer.message() == "Cannot show a.png: file not found"
    assert not viewer.has_image() and not viewer.overlay_shown()
    viewer.set_image(solid(200, 100, "green"))
    assert viewer.message() == "" and viewer.has_image()


def test_overlay_bar_controls(qtbot):
    bar = OverlayBar()
    qtbot.addWidget(bar)
    bar.show()
    assert bar.opacity() == pytest.approx(0.4)
    assert [b.text() for b in bar.buttons.values()] == [
        "O  None",
        "G  Grad-CAM",
        "I  IG",
    ]
    with qtbot.waitSignal(bar.method_changed) as chosen:
        qtbot.mouseClick(bar.buttons["gradcam"], Qt.MouseButton.LeftButton)
    assert "Integrated Gradients" in bar.buttons["ig"].toolTip()
    assert chosen.args == ["gradcam"] and bar.method() == "gradcam"
    with qtbot.waitSignal(bar.opacity_changed) as changed:
        bar.slider.setValue(70)
    assert changed.args == [pytest.approx(0.7)]
    assert "Space: show original" in bar.hints.text()
    assert bar.legend.pixmap() is not None and not bar.legend.pixmap().isNull()


def test_pil_conversion_keeps_pixels():
    image = Image.new("RGB", (3, 2), (10, 200, 30))
    image.putpixel((2, 1), (250, 5, 99))
    q = pil_to_qimage(image)
    assert (q.width(), q.height()) == (3, 2)
    assert q.pixelColor(0, 0).getRgb()[:3] == (10, 200, 30)
    assert q.pixelColor(2, 1).getRgb()[:3] == (250, 5, 99)
    assert pil_to_qimage_rgba(image).pixelColor(2, 1).getRgb() == (250, 5, 99, 255)
