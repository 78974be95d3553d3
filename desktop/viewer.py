"""The image viewer: a zoomable, pannable image with an attribution overlay on top.

``ImageViewer`` shows one image (the largest thing on the review page) and, above it, an
overlay pixmap of the same geometry whose opacity the reader chooses. ``OverlayBar`` is
the slim control strip under the viewer (overlay method, opacity, legend, key hints).
Images arrive as ``QImage`` (made in workers by :mod:`desktop.qimage`); only ``QPixmap``
is tied to the GUI thread.
"""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QKeyEvent,
    QLinearGradient,
    QPainter,
    QPen,
    QPixmap,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QButtonGroup,
    QFrame,
    QGraphicsItem,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

ZOOM_STEP = 1.25
MIN_SCALE = 0.02
MAX_SCALE = 40.0
SIDE_GAP = 16  # scene pixels between the original and the overlay in side-by-side mode

OVERLAY_METHODS = ("none", "gradcam", "ig")
OVERLAY_NAMES = {"none": "None", "gradcam": "Grad-CAM", "ig": "Integrated Gradients"}
OVERLAY_KEYS = {"none": "O", "gradcam": "G", "ig": "I"}


def _legend_colour(t: float) -> QColor:
    """The colour ``engine.overlay`` draws for a signed strength ``t`` in [-1, 1] at full
    opacity over its legend grey (warm: supports, cool: against)."""
    grey = 64.0
    if t >= 0:
        r, g, b = 255.0, 255.0 * t, 0.0
    else:
        r, g, b = 0.0, 255.0 * -t, 255.0
    a = abs(t)
    return QColor(*(round(grey * (1 - a) + c * a) for c in (r, g, b)))


def legend_pixmap(width: int, height: int) -> QPixmap:
    """The overlay colour ramp, cool (against) on the left to warm (supports) on the right.

    Same colours as ``engine.overlay.colour_legend``, drawn with Qt so that showing the
    bar does not import the attribution stack (torch) on the GUI thread.
    """
    pixmap = QPixmap(width, height)
    gradient = QLinearGradient(0, 0, width, 0)
    steps = 16
    for i in range(steps + 1):
        t = -1.0 + 2.0 * i / steps
        gradient.setColorAt(i / steps, _legend_colour(t))
    painter = QPainter(pixmap)
    painter.fillRect(pixmap.rect(), gradient)
    painter.end()
    return pixmap


class ImageViewer(QGraphicsView):
    """Zoom (wheel, +/-), fit (F or 0), 1:1 (= key), pan by dragging; optional overlay.

    The overlay item sits above the image with the same geometry; its opacity is
    :meth:`set_overlay_opacity` and holding Space shows the original. A message (for
    errors or loading) replaces the image until the next :meth:`set_image`. For an OCT
    volume (:meth:`set_slice_wheel`) Ctrl + wheel moves through the slices instead of zooming.
    """

    zoom_changed = Signal(float)
    overlay_toggled = Signal(bool)
    slice_wheel = Signal(int)  # +1 next slice, -1 previous (Ctrl + wheel on a volume)
    image_changed = Signal()  # a new image (or none) is shown: display copies must follow

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("imageViewer")
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self._base = QGraphicsPixmapItem()
        self._twin = QGraphicsPixmapItem()  # the original again, under the overlay, side by side
        self._overlay = QGraphicsPixmapItem()
        for z, item in enumerate((self._base, self._twin, self._overlay)):
            item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
            item.setZValue(z)
            self._scene.addItem(item)
        self._twin.setVisible(False)
        # drawn layers (lesion marks) above the overlay, shown only with the image
        self._layers = QGraphicsRectItem()
        self._layers.setPen(QPen(Qt.PenStyle.NoPen))
        self._layers.setFlag(QGraphicsItem.GraphicsItemFlag.ItemHasNoContents, True)
        self._layers.setZValue(10)
        self._scene.addItem(self._layers)
        self._overlay.setOpacity(0.4)
        self._overlay_visible = True
        self._side_by_side = False
        self._fit_mode = True
        self._slice_wheel = False
        self._source = QImage()  # the display copy as decoded; what is shown may be enhanced
        self._enhanced = False
        self.setRenderHints(
            QPainter.RenderHint.SmoothPixmapTransform | QPainter.RenderHint.Antialiasing
        )
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setBackgroundBrush(Qt.GlobalColor.black)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(240, 200)
        self._message = QLabel(self.viewport())
        self._message.setObjectName("viewerMessage")
        self._message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._message.setWordWrap(True)
        self._message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._message.setStyleSheet("color: #e8e8e8; font-size: 11pt; padding: 24px;")
        self._message.hide()
        # what the reader must know about the pixels on screen (e.g. an enhanced view)
        self._badge = QLabel(self.viewport())
        self._badge.setObjectName("viewerBadge")
        self._badge.setStyleSheet(
            "background: rgba(20, 20, 20, 200); color: #ffb347; font-weight: bold;"
            " padding: 3px 8px; border-radius: 3px;"
        )
        self._badge.hide()

    # ------------------------------------------------------------------ content

    def set_badge(self, text: str) -> None:
        """A short line in the top-left corner of the view (empty: none)."""
        self._badge.setText(text)
        self._badge.adjustSize()
        self._badge.move(8, 8)
        self._badge.setVisible(bool(text))

    def badge(self) -> str:
        return self._badge.text() if not self._badge.isHidden() else ""

    def set_image(self, image: QImage, keep_view: bool = False) -> None:
        """Show ``image`` (fit to the window); clears the overlay and any message.

        ``keep_view`` keeps the zoom and position when the new image has the size of the
        one shown (the next B-scan of a volume)."""
        old = self._base.pixmap()
        same = keep_view and not old.isNull() and old.size() == image.size()
        self._source = image
        self._enhanced = False
        pixmap = QPixmap.fromImage(image)
        self._base.setPixmap(pixmap)
        self._twin.setPixmap(pixmap)
        self._overlay.setPixmap(QPixmap())
        self._message.hide()
        self._badge.setVisible(bool(self._badge.text()))
        self._base.setVisible(True)
        self._layout_items()
        if not same or self._fit_mode:
            self.fit()
        self.image_changed.emit()

    def source_image(self) -> QImage:
        """The display copy as decoded (never enhanced); null when no image is shown."""
        return self._source

    def show_display(self, image: QImage | None) -> None:
        """Show ``image`` (an enhanced rendering of :meth:`source_image`, same size) in
        place of the source, or the source again for ``None``. Zoom and position stay."""
        if self._source.isNull():
            return
        if image is not None and image.size() != self._source.size():
            raise ValueError("an enhanced view must have the size of the image it renders")
        pixmap = QPixmap.fromImage(self._source if image is None else image)
        self._base.setPixmap(pixmap)
        self._twin.setPixmap(pixmap)
        self._enhanced = image is not None

    def is_enhanced(self) -> bool:
        """True when the image on screen is an enhanced rendering, not the source pixels."""
        return self._enhanced

    def set_slice_wheel(self, on: bool) -> None:
        """Ctrl + wheel steps through slices (a volume) instead of zooming."""
        self._slice_wheel = bool(on)

    def clear(self) -> None:
        """Remove the image and overlay."""
        self._source = QImage()
        self._enhanced = False
        self._base.setPixmap(QPixmap())
        self._twin.setPixmap(QPixmap())
        self._overlay.setPixmap(QPixmap())
        self._layout_items()
        self.image_changed.emit()

    def has_image(self) -> bool:
        return not self._base.pixmap().isNull() and self._base.isVisible()

    def set_overlay(self, overlay: QImage | None) -> None:
        """Put ``overlay`` (same geometry as the image; rescaled if not) above the image."""
        if overlay is None or overlay.isNull():
            self._overlay.setPixmap(QPixmap())
        else:
            pixmap = QPixmap.fromImage(overlay)
            base = self._base.pixmap()
            scale = base.width() / pixmap.width() if not base.isNull() and pixmap.width() else 1.0
            self._overlay.setScale(scale)
            self._overlay.setPixmap(pixmap)
        self._layout_items()

    def has_overlay(self) -> bool:
        """True when an overlay pixmap is set (whether or not it is toggled on)."""
        return not self._overlay.pixmap().isNull()

    def overlay_shown(self) -> bool:
        """True when an overlay is on screen now."""
        return self.has_overlay() and self._overlay.isVisible() and self._base.isVisible()

    def overlay_item(self) -> QGraphicsPixmapItem:
        return self._overlay

    def image_item(self) -> QGraphicsPixmapItem:
        return self._base

    def layer_root(self) -> QGraphicsItem:
        """The parent of drawn layers: above the overlay, over the (left) image, shown
        only while the image is."""
        return self._layers

    def set_overlay_opacity(self, opacity: float) -> None:
        """Overlay opacity in [0, 1]."""
        self._overlay.setOpacity(max(0.0, min(1.0, float(opacity))))

    def overlay_opacity(self) -> float:
        return float(self._overlay.opacity())

    def set_overlay_visible(self, visible: bool) -> None:
        """Show or hide the overlay (the image stays); emits ``overlay_toggled``."""
        changed = visible != self._overlay_visible
        self._overlay_visible = bool(visible)
        self._layout_items()
        if changed:
            self.overlay_toggled.emit(self._overlay_visible)

    def overlay_visible(self) -> bool:
        """Whether the overlay is switched on (it may still have no pixmap yet)."""
        return self._overlay_visible

    def toggle_overlay(self) -> None:
        """Switch between the overlay and the original (Space)."""
        self.set_overlay_visible(not self._overlay_visible)

    def set_side_by_side(self, on: bool) -> None:
        """Show the original on the left and the overlaid copy on the right."""
        self._side_by_side = bool(on)
        self._layout_items()
        if self._fit_mode:
            self.fit()

    def side_by_side(self) -> bool:
        return self._side_by_side

    def set_message(self, text: str) -> None:
        """Show ``text`` in place of the image (errors, loading); empty text removes it."""
        if not text:
            self._message.hide()
            self._base.setVisible(True)
            self._layout_items()
            return
        self._message.setText(text)
        self._badge.hide()  # it speaks of an image, and none is shown
        self._base.setVisible(False)
        self._twin.setVisible(False)
        self._overlay.setVisible(False)
        self._layers.setVisible(False)
        self._message.setGeometry(self.viewport().rect())
        self._message.show()

    def message(self) -> str:
        """The message shown instead of the image, or ``""``."""
        return self._message.text() if not self._message.isHidden() else ""

    def _layout_items(self) -> None:
        base = self._base.pixmap()
        shown = self._base.isVisible() and not base.isNull()
        width = base.width() if not base.isNull() else 0
        twin_x = width + SIDE_GAP if self._side_by_side else 0
        self._twin.setPos(twin_x, 0)
        self._twin.setVisible(shown and self._side_by_side)
        self._overlay.setPos(twin_x, 0)
        self._overlay.setVisible(shown and self._overlay_visible and self.has_overlay())
        self._layers.setVisible(shown)
        if base.isNull():
            self._scene.setSceneRect(QRectF(0, 0, 1, 1))
        else:
            total = 2 * width + SIDE_GAP if self._side_by_side else width
            self._scene.setSceneRect(QRectF(0, 0, total, base.height()))

    # ------------------------------------------------------------------ zoom

    def scale_factor(self) -> float:
        """Current zoom: 1.0 means one image pixel per device-independent pixel."""
        return float(self.transform().m11())

    def is_fit(self) -> bool:
        return self._fit_mode

    def fit(self) -> None:
        """Fit the whole image (both images side by side) in the window (F or 0)."""
        self._fit_mode = True
        rect = self._scene.sceneRect()
        if rect.width() > 1 and rect.height() > 1:
            self.fitInView(rect, Qt.AspectRatioMode.KeepAspectRatio)
        self.zoom_changed.emit(self.scale_factor())

    def actual_size(self) -> None:
        """One image pixel per screen pixel (= key or Ctrl+1)."""
        self._fit_mode = False
        dpr = self.devicePixelRatioF() or 1.0
        self.setTransform(QTransform.fromScale(1.0 / dpr, 1.0 / dpr))
        self.zoom_changed.emit(self.scale_factor())

    def zoom_in(self) -> None:
        self._zoom(ZOOM_STEP)

    def zoom_out(self) -> None:
        self._zoom(1.0 / ZOOM_STEP)

    def _zoom(self, factor: float, under_mouse: bool = False) -> None:
        current = self.scale_factor()
        target = max(MIN_SCALE, min(MAX_SCALE, current * factor))
        if target == current:
            return
        self._fit_mode = False
        anchor = (
            QGraphicsView.ViewportAnchor.AnchorUnderMouse
            if under_mouse
            else QGraphicsView.ViewportAnchor.AnchorViewCenter
        )
        self.setTransformationAnchor(anchor)
        self.scale(target / current, target / current)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.zoom_changed.emit(self.scale_factor())

    # ------------------------------------------------------------------ events

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        delta = event.angleDelta().y()
        ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        if delta and ctrl and self._slice_wheel:
            self.slice_wheel.emit(-1 if delta > 0 else 1)  # wheel away from you: previous
            event.accept()
            return
        if delta:
            self._zoom(ZOOM_STEP ** (delta / 120.0), under_mouse=True)
        event.accept()

    def scrollContentsBy(self, dx: int, dy: int) -> None:  # noqa: N802 - Qt override
        """Panning scrolls the viewport's child widgets too: the badge stays in its corner."""
        super().scrollContentsBy(dx, dy)
        self._badge.move(8, 8)
        self._message.setGeometry(self.viewport().rect())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._message.setGeometry(self.viewport().rect())
        if self._fit_mode:
            self.fit()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        """Viewer keys when it has the focus (the review page also binds them window-wide)."""
        key = event.key()
        ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        if key in (Qt.Key.Key_Plus,) or (key == Qt.Key.Key_Equal and ctrl):
            self.zoom_in()
        elif key in (Qt.Key.Key_Minus, Qt.Key.Key_Underscore):
            self.zoom_out()
        elif key in (Qt.Key.Key_F, Qt.Key.Key_0) and not ctrl:
            self.fit()
        elif key == Qt.Key.Key_Equal or (key == Qt.Key.Key_1 and ctrl):
            self.actual_size()
        elif key == Qt.Key.Key_Space:
            if not event.isAutoRepeat():
                self.hold_original(True)
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def keyReleaseEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        """Space released: the overlay comes back."""
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self.hold_original(False)
            event.accept()
            return
        super().keyReleaseEvent(event)

    def hold_original(self, held: bool) -> None:
        """Space held: show the original image; released: the overlay again (if it was on)."""
        if held:
            self._held_over = self._overlay_visible
            self.set_overlay_visible(False)
        elif getattr(self, "_held_over", False):
            self._held_over = False
            self.set_overlay_visible(True)


class OverlayBar(QWidget):
    """The slim strip under the viewer: overlay method, opacity, legend and key hints."""

    method_changed = Signal(str)  # "none" | "gradcam" | "ig"
    opacity_changed = Signal(float)
    side_by_side_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, opacity: float = 0.4) -> None:
        super().__init__(parent)
        self.setObjectName("overlayBar")
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        self.buttons: dict[str, QToolButton] = {}
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.setSpacing(4)
        caption = QLabel("Overlay:")
        top.addWidget(caption)
        for method in OVERLAY_METHODS:
            button = QToolButton()
            short = "IG" if method == "ig" else OVERLAY_NAMES[method]  # keeps the bar narrow
            button.setText(f"{OVERLAY_KEYS[method]}  {short}")
            button.setToolTip(f"Show {OVERLAY_NAMES[method]} (key {OVERLAY_KEYS[method]})")
            button.setCheckable(True)
            button.setAutoRaise(False)
            button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            button.setObjectName(f"overlay_{method}")
            self._group.addButton(button)
            self.buttons[method] = button
            button.clicked.connect(lambda _=False, m=method: self.method_changed.emit(m))
            top.addWidget(button)
        self.buttons["none"].setChecked(True)
        top.addSpacing(10)
        top.addWidget(QLabel("Opacity"))
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName("overlayOpacity")
        self.slider.setRange(0, 100)
        self.slider.setSingleStep(5)
        self.slider.setPageStep(10)
        self.slider.setValue(round(opacity * 100))
        self.slider.setMinimumWidth(70)
        self.slider.setMaximumWidth(160)
        self.slider.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.slider.setToolTip("Overlay opacity")
        self._pct = QLabel()
        self._pct.setMinimumWidth(36)
        self.slider.valueChanged.connect(self._on_slider)
        top.addWidget(self.slider, 1)
        top.addWidget(self._pct)
        self.side_button = QToolButton()
        self.side_button.setObjectName("sideBySide")
        self.side_button.setText("S  Side by side")
        self.side_button.setToolTip("Original and overlay next to each other (key S)")
        self.side_button.setCheckable(True)
        self.side_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.side_button.toggled.connect(self.side_by_side_changed.emit)

        bottom = QHBoxLayout()
        bottom.setContentsMargins(0, 0, 0, 0)
        bottom.setSpacing(6)
        against = QLabel("against")
        against.setToolTip("Cool colours: evidence that speaks against the AI answer")
        self.legend = QLabel()
        self.legend.setObjectName("overlayLegend")
        self.legend.setToolTip(
            "Warm colours: evidence that supports the AI answer; cool colours: evidence "
            "against it. White outlines mark the few largest regions among the strongest "
            "10% of the support (specks are not outlined). Nothing is coloured outside the "
            "retina: the fundus field of view, or the tissue band of an OCT scan."
        )
        self._set_legend()
        supports = QLabel("supports")
        supports.setToolTip(self.legend.toolTip())
        self.masked_note = QLabel("· retina only")
        self.masked_note.setObjectName("overlayMaskNote")
        self.masked_note.setToolTip(self.legend.toolTip())
        self.masked_note.setStyleSheet("color: palette(placeholder-text);")
        for widget in (against, self.legend, supports, self.masked_note):
            bottom.addWidget(widget)
        bottom.addStretch(1)
        bottom.addWidget(self.side_button)
        # a row of its own, so neither the status nor the key hints are cut at 1280 px
        third = QHBoxLayout()
        third.setContentsMargins(0, 0, 0, 0)
        third.setSpacing(6)
        self.status = QLabel()
        self.status.setObjectName("overlayStatus")
        self.status.setWordWrap(True)
        third.addWidget(self.status, 1)
        self.hints = QLabel("hold Space: original · F1: every key")
        self.hints.setObjectName("viewerHints")
        self.hints.setToolTip(
            "hold Space: the original without the overlay · F or 0: fit · =: 1:1 · "
            "+ / − or the wheel: zoom · drag: pan · S: side by side · F1 or ?: every key"
        )
        self.hints.setStyleSheet("color: palette(placeholder-text);")
        third.addWidget(self.hints, 0, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(3)
        layout.addLayout(top)
        layout.addLayout(bottom)
        layout.addLayout(third)
        self._on_slider(self.slider.value())

    def _set_legend(self) -> None:
        self.legend.setPixmap(legend_pixmap(120, 12))

    def _on_slider(self, value: int) -> None:
        self._pct.setText(f"{value}%")
        self.opacity_changed.emit(value / 100.0)

    def method(self) -> str:
        for method, button in self.buttons.items():
            if button.isChecked():
                return method
        return "none"

    def set_method(self, method: str) -> None:
        """Check the button of ``method`` without emitting ``method_changed``."""
        if method in self.buttons:
            self.buttons[method].setChecked(True)

    def opacity(self) -> float:
        return self.slider.value() / 100.0

    def set_status(self, text: str) -> None:
        """One line about the overlay (computing, failed, hidden in blind mode)."""
        self.status.setText(text)
        self.status.setToolTip(text)
