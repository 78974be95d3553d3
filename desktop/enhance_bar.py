"""Display enhancement in the viewer: the bar of controls and the worker that renders it.

:class:`DisplayEnhancer` keeps the session's :class:`engine.enhance.Enhancement` (the same
for every image until the reader resets it) and renders the viewer's display copy with it
in a one-thread pool: the newest setting wins, a setting that arrives while a rendering
runs is rendered next. The slow part (red-free, CLAHE) is kept per image so a slider step
costs one table lookup. Only the pixels on screen change; the file is never touched.

:class:`EnhanceBar` is the slim strip of controls under the viewer, with the state said in
words ("Enhanced: contrast +20, red-free") whenever the view is not the original.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QSizePolicy,
    QSlider,
    QToolButton,
    QWidget,
    QWidgetAction,
)
from superqt.utils import FunctionWorker

from engine.enhance import Enhancement, prepare, tone

from .viewer import ImageViewer

# keys (printed on the bar and listed in the shortcut sheet); for the three sliders,
# Shift + the key steps down. None is a key a scheme's lesion presets use.
ENHANCE_KEYS = {
    "brightness": "L",  # light
    "contrast": "W",  # window
    "gamma": "Y",
    "green": "Shift+R",  # red-free
    "clahe": "Shift+E",  # equalise
    "reset": "X",
}
STEPS = {"brightness": 10, "contrast": 10, "gamma": 0.1}
ENHANCED_STYLE = "color: #b35c00; font-weight: bold;"


def qimage_to_rgb(image: QImage) -> np.ndarray:
    """An ``H x W x 3`` ``uint8`` copy of ``image`` (worker side)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
    buffer = np.frombuffer(rgb.constBits(), np.uint8, count=stride * height)
    return buffer.reshape(height, stride)[:, : 3 * width].reshape(height, width, 3).copy()


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """A ``QImage`` (RGB32, owning its pixels) of an ``H x W x 3`` ``uint8`` array."""
    rgb = np.ascontiguousarray(rgb)
    height, width = rgb.shape[:2]
    image = QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return image.convertToFormat(QImage.Format.Format_RGB32)


def render(
    source: QImage, e: Enhancement, cached: tuple[tuple[bool, bool], np.ndarray] | None
) -> tuple[QImage, tuple[tuple[bool, bool], np.ndarray]]:
    """``source`` shown with ``e`` (worker side). ``cached`` is an earlier :func:`prepare`
    result for this image and the switches it was made with; the one used is returned."""
    switches = (e.green, e.clahe)
    if cached is not None and cached[0] == switches:
        prepared = cached[1]
    else:
        prepared = prepare(qimage_to_rgb(source), *switches)
    return rgb_to_qimage(tone(prepared, e)), (switches, prepared)


class DisplayEnhancer(QObject):
    """The session's enhancement, rendered off the GUI thread onto ``viewer``."""

    changed = Signal(object)  # the Enhancement now chosen
    rendered = Signal()  # the view on screen follows the chosen enhancement
    failed = Signal(str)  # the rendering failed: the original is shown, with this reason

    def __init__(self, viewer: ImageViewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._e = Enhancement()
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._worker: FunctionWorker | None = None
        self._again = False
        self._closed = False
        self._cache_key: int | None = None  # QImage.cacheKey() of the image prepared below
        self._cached: tuple[tuple[bool, bool], np.ndarray] | None = None
        viewer.image_changed.connect(self._on_image_changed)

    # ------------------------------------------------------------------ state

    def enhancement(self) -> Enhancement:
        return self._e

    def set_enhancement(self, e: Enhancement) -> None:
        """Show every image with ``e`` from now on (this session)."""
        e = e.clamped()
        if e == self._e:
            return
        self._e = e
        words = e.describe()
        self._viewer.set_badge(f"⚠ Enhanced view: {words} · X: original" if words else "")
        self.changed.emit(e)
        self._update()

    def step(self, control: str, direction: int) -> None:
        """Brightness, contrast or gamma one step up (``+1``) or down (``-1``)."""
        value = getattr(self._e, control) + direction * STEPS[control]
        self.set_enhancement(self._e.with_(**{control: value}))

    def toggle(self, control: str) -> None:
        """Switch the red-free view (``"green"``) or CLAHE (``"clahe"``) on or off."""
        self.set_enhancement(self._e.with_(**{control: not getattr(self._e, control)}))

    def reset(self) -> None:
        """The original pixels again."""
        self.set_enhancement(Enhancement())

    def is_busy(self) -> bool:
        return self._worker is not None

    def is_current(self) -> bool:
        """True when the view on screen follows the chosen enhancement."""
        if self._viewer.source_image().isNull():
            return True
        return self._worker is None and self._viewer.is_enhanced() != self._e.is_identity

    def shutdown(self) -> None:
        """Drop queued work and wait for a running rendering."""
        if self._closed:
            return
        self._closed = True
        self._pool.clear()
        self._pool.waitForDone(-1)
        self._worker = None

    # ------------------------------------------------------------------ rendering

    def _on_image_changed(self) -> None:
        self._cache_key, self._cached = None, None
        self._update()

    def _update(self) -> None:
        if self._closed:
            return
        source = self._viewer.source_image()
        if source.isNull():
            return
        if self._worker is not None:
            self._again = True  # rendered with the newest setting when this one is done
            return
        if self._e.is_identity:
            self._viewer.show_display(None)
            self.rendered.emit()
            return
        key = source.cacheKey()
        cached = self._cached if self._cache_key == key else None
        worker = FunctionWorker(render, QImage(source), self._e, cached)
        e = self._e
        worker.returned.connect(lambda result, k=key, e=e: self._on_rendered(k, e, result))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._pool.start(worker)

    def _on_rendered(self, key: int, e: Enhancement, result: Any) -> None:
        if self._closed or self._viewer.source_image().cacheKey() != key:
            return
        image, cached = result
        self._cache_key, self._cached = key, cached
        if e == self._e and not e.is_identity:
            self._viewer.show_display(image)

    def _on_error(self, exc: BaseException) -> None:
        if not self._closed:
            self._viewer.show_display(None)
            self.failed.emit(str(exc))

    def _on_finished(self) -> None:
        self._worker = None
        if self._closed:
            return
        if self._again:
            self._again = False
            self._update()
            return
        self.rendered.emit()


class EnhanceBar(QWidget):
    """Brightness, contrast, gamma, red-free, CLAHE and Original, with the state in words."""

    def __init__(self, enhancer: DisplayEnhancer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("enhanceBar")
        self._enhancer = enhancer
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        layout.setSpacing(4)
        # the three sliders sit in a small panel under "Adjust", so the bar stays one
        # short row (their keys work without opening it)
        self.sliders: dict[str, QSlider] = {}
        panel = QWidget()
        grid = QGridLayout(panel)
        grid.setContentsMargins(8, 6, 8, 6)
        for row, (control, text, low, high) in enumerate(
            (
                ("brightness", "Brightness", -100, 100),
                ("contrast", "Contrast", -100, 100),
                ("gamma", "Gamma", 30, 300),
            )
        ):
            key = ENHANCE_KEYS[control]
            label = QLabel(f"{key}  {text}")
            label.setToolTip(f"{text} (key {key} up, Shift+{key} down)")
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setObjectName(f"enhance_{control}")
            slider.setRange(low, high)
            slider.setValue(100 if control == "gamma" else 0)
            slider.setSingleStep(10)
            slider.setPageStep(20)
            slider.setMinimumWidth(160)
            slider.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            slider.setToolTip(label.toolTip())
            slider.valueChanged.connect(lambda v, c=control: self._on_slider(c, v))
            self.sliders[control] = slider
            grid.addWidget(label, row, 0)
            grid.addWidget(slider, row, 1)
        self.adjust_button = QToolButton()
        self.adjust_button.setObjectName("enhanceAdjust")
        self.adjust_button.setText("L W Y  Adjust")
        self.adjust_button.setToolTip(
            "Brightness (L), contrast (W) and gamma (Y); Shift + the key steps down"
        )
        self.adjust_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.adjust_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        menu = QMenu(self.adjust_button)
        action = QWidgetAction(menu)
        action.setDefaultWidget(panel)
        menu.addAction(action)
        self.adjust_button.setMenu(menu)
        caption = QLabel("View:")
        caption.setToolTip("Display enhancement: changes only what is shown, never the file")
        layout.addWidget(caption)
        layout.addWidget(self.adjust_button)
        self.buttons: dict[str, QToolButton] = {}
        for control, text, tip in (
            ("green", "Red-free", "The green channel as grey, the red-free view"),
            ("clahe", "CLAHE", "Contrast-limited adaptive histogram equalisation"),
            ("reset", "Original", "Show the original pixels again"),
        ):
            key = ENHANCE_KEYS[control]
            button = QToolButton()
            button.setObjectName(f"enhance_{control}")
            button.setText(f"{key.replace('Shift+', '⇧')}  {text}")
            button.setToolTip(f"{tip} (key {key})")
            button.setCheckable(control != "reset")
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            if control == "reset":
                button.clicked.connect(enhancer.reset)
            else:
                button.clicked.connect(lambda _=False, c=control: enhancer.toggle(c))
            self.buttons[control] = button
            layout.addWidget(button)
        self.state = QLabel()
        self.state.setObjectName("enhanceState")
        # shown when there is room; the badge on the image always says the state in full
        self.state.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout.addWidget(self.state, 2)
        enhancer.changed.connect(self.show_state)
        enhancer.failed.connect(self._on_failed)
        self.show_state(enhancer.enhancement())

    def _on_slider(self, control: str, value: int) -> None:
        current = self._enhancer.enhancement()
        new = value / 100.0 if control == "gamma" else value
        self._enhancer.set_enhancement(current.with_(**{control: new}))

    def _on_failed(self, reason: str) -> None:
        self.state.setText("⚠ Enhancement failed")
        self.state.setToolTip(f"The original is shown: {reason}")
        self.state.setStyleSheet(ENHANCED_STYLE)

    def show_state(self, e: Enhancement) -> None:
        """Controls and words follow ``e`` (without sending changes back)."""
        for control, slider in self.sliders.items():
            value = getattr(e, control)
            slider.blockSignals(True)
            slider.setValue(round(value * 100) if control == "gamma" else int(value))
            slider.blockSignals(False)
        for control in ("green", "clahe"):
            self.buttons[control].setChecked(bool(getattr(e, control)))
        words = e.describe()
        if words:
            self.state.setText("⚠ Enhanced")  # the badge on the image says how
            self.state.setStyleSheet(ENHANCED_STYLE)
            self.state.setToolTip(
                f"The view is enhanced ({words}); the file is unchanged. "
                f"{ENHANCE_KEYS['reset']} shows the original pixels."
            )
        else:
            self.state.setText("Original pixels")
            self.state.setStyleSheet("color: palette(placeholder-text);")
            self.state.setToolTip("The image is shown as it is in the file")
        self.buttons["reset"].setEnabled(bool(words))
