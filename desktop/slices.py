"""Moving through an OCT volume: slice number, slider, per-slice probability strip.

``SliceBar`` sits under the viewer when the item is a volume. It shows "Slice 23 / 49",
a slider, Page Up/Page Down buttons, a "Most suspicious" jump (M) and a strip with one bar
per B-scan: its height is that slice's probability of a finding and a slice the model sent
to review carries a mark as well as a colour. Clicking or dragging on the strip selects a
slice. In blind mode the strip and the jump are hidden: they would reveal the AI's answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPen, QPolygonF
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .style import triage_style


class SliceStrip(QWidget):
    """One bar per slice: height = finding probability; marked when the slice is referred."""

    slice_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sliceStrip")
        self._probs: list[float | None] = []
        self._states: list[str | None] = []
        self._current = 0
        self._key: int | None = None
        self.setMinimumHeight(34)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMouseTracking(False)
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(400, 38)

    def set_slices(
        self, probabilities: Sequence[float | None], states: Sequence[str | None], key: int | None
    ) -> None:
        self._probs = list(probabilities)
        self._states = list(states) + [None] * (len(self._probs) - len(states))
        self._key = key
        self._current = min(self._current, max(0, len(self._probs) - 1))
        self.update()

    def set_current(self, index: int) -> None:
        self._current = index
        self.update()

    def slice_at(self, x: float) -> int:
        n = max(1, len(self._probs))
        return max(0, min(n - 1, int(x / max(1, self.width()) * n)))

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._probs and event.button() == Qt.MouseButton.LeftButton:
            self.slice_clicked.emit(self.slice_at(event.position().x()))
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._probs and event.buttons() & Qt.MouseButton.LeftButton:
            self.slice_clicked.emit(self.slice_at(event.position().x()))
        event.accept()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        n = len(self._probs)
        if not n:
            return
        dark = self.palette().window().color().lightness() < 128
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        w, h = self.width(), self.height()
        mark_h = 6  # room for the "referred" marks above the bars
        base = h - 1
        step = w / n
        p.fillRect(self.rect(), self.palette().base())
        cleared = triage_style("auto-cleared").color(dark)
        referred = triage_style("needs-review").color(dark)
        grey = QColor("#8a8f98")
        for i, prob in enumerate(self._probs):
            x0 = i * step
            bar_w = max(1.0, step - (1.0 if step > 3 else 0.0))
            state = self._states[i] if i < len(self._states) else None
            colour = grey if state in (None, "error") else cleared
            if state not in (None, "auto-cleared"):
                colour = referred if state != "error" else triage_style("error").color(dark)
            height = (base - mark_h) * (prob if prob is not None else 0.0)
            if prob is None:  # unreadable or unknown: a flat grey line
                p.fillRect(QRectF(x0, base - 2, bar_w, 2), grey)
            else:
                p.fillRect(QRectF(x0, base - max(1.0, height), bar_w, max(1.0, height)), colour)
            if state not in (None, "auto-cleared"):
                cx = x0 + bar_w / 2
                tri = QPolygonF([QPointF(cx - 3, 0), QPointF(cx + 3, 0), QPointF(cx, mark_h - 1)])
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(colour)
                p.drawPolygon(tri)
        if self._key is not None and 0 <= self._key < n:
            pen = QPen(self.palette().text().color())
            pen.setStyle(Qt.PenStyle.DotLine)
            p.setPen(pen)
            x = self._key * step + step / 2
            p.drawLine(QPointF(x, mark_h), QPointF(x, base))
        pen = QPen(self.palette().highlight().color(), 2)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        x0 = self._current * step
        p.drawRect(QRectF(x0, 1, max(2.0, step), h - 2))
        p.end()


class SliceBar(QWidget):
    """Slice navigation for a volume; hidden for a single image."""

    slice_changed = Signal(int)  # 0-based

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sliceBar")
        self._n = 0
        self._key: int | None = None
        self._probs: list[float | None] = []
        self._blind = False
        self.label = QLabel()
        self.label.setObjectName("sliceLabel")
        self.label.setMinimumWidth(self.label.fontMetrics().horizontalAdvance("Slice 888 / 888"))
        self.prev_button = QToolButton()
        self.prev_button.setText("◀ PgUp")
        self.prev_button.setToolTip("Previous slice (Page Up, or Ctrl + wheel)")
        self.next_button = QToolButton()
        self.next_button.setText("PgDn ▶")
        self.next_button.setToolTip("Next slice (Page Down, or Ctrl + wheel)")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName("sliceSlider")
        self.slider.setMinimum(0)
        self.slider.setPageStep(5)
        self.key_button = QToolButton()
        self.key_button.setObjectName("keySliceButton")
        self.key_button.setToolTip("Go to the slice with the highest probability of a finding (M)")
        self.prob_label = QLabel()
        self.prob_label.setObjectName("sliceProbability")
        self.strip = SliceStrip()
        self.slider.setMinimumWidth(120)
        # two rows, so the slider keeps its width in a 1280 px window: navigation above,
        # the AI's per-slice answers (strip, probability, jump) below
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.prev_button)
        top.addWidget(self.label)
        top.addWidget(self.slider, 1)
        top.addWidget(self.next_button)
        answers = QHBoxLayout()
        answers.setContentsMargins(0, 0, 0, 0)
        answers.addWidget(self.strip, 1)
        answers.addWidget(self.prob_label)
        answers.addWidget(self.key_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 2, 8, 2)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addLayout(answers)
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.key_button.clicked.connect(self.jump_to_key)
        self.slider.valueChanged.connect(self._on_slider)
        self.strip.slice_clicked.connect(self.set_current)
        self.hide()

    # ------------------------------------------------------------------ content

    def set_volume(
        self,
        n_slices: int,
        probabilities: Sequence[float | None] = (),
        states: Sequence[str | None] = (),
        key: int | None = None,
        current: int | None = None,
    ) -> None:
        """Show the bar for a volume of ``n_slices`` (``current`` defaults to the key slice)."""
        self._n = max(0, int(n_slices))
        self._probs = list(probabilities) + [None] * (self._n - len(probabilities))
        self._key = key if key is not None and 0 <= key < self._n else None
        self.strip.set_slices(self._probs, states, self._key)
        self.slider.blockSignals(True)
        self.slider.setMaximum(max(0, self._n - 1))
        self.slider.blockSignals(False)
        start = current if current is not None else (self._key if self._key is not None else 0)
        self._apply_blind()
        self.setVisible(self._n > 1)
        self._show_current(max(0, min(self._n - 1, start)), emit=False)

    def clear(self) -> None:
        """A single image: no slice bar."""
        self._n = 0
        self._probs = []
        self._key = None
        self.strip.set_slices([], [], None)
        self.hide()

    def set_blind(self, blind: bool) -> None:
        """Hide the per-slice answers (strip, probability, jump) until the reader commits."""
        self._blind = blind
        self._apply_blind()
        self._update_words()

    def _apply_blind(self) -> None:
        self.strip.setVisible(not self._blind)
        self.key_button.setVisible(not self._blind and self._key is not None)
        self.prob_label.setVisible(not self._blind)
        if self._key is not None:
            self.key_button.setText(f"Most suspicious: {self._key + 1} (M)")

    # ------------------------------------------------------------------ navigation

    @property
    def n_slices(self) -> int:
        return self._n

    @property
    def key_slice(self) -> int | None:
        return self._key

    def current(self) -> int:
        return self.slider.value()

    def set_current(self, index: int) -> None:
        """Go to slice ``index`` (clamped); ``slice_changed`` is emitted when it moves."""
        if self._n:
            index = max(0, min(self._n - 1, int(index)))
            self._show_current(index, emit=index != self.slider.value())

    def step(self, delta: int) -> None:
        self.set_current(self.current() + delta)

    def jump_to_key(self) -> None:
        if self._key is not None and not self._blind:
            self.set_current(self._key)

    def _on_slider(self, value: int) -> None:
        self.strip.set_current(value)
        self._update_words()
        self.slice_changed.emit(value)

    def _show_current(self, index: int, emit: bool) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(index)
        self.slider.blockSignals(False)
        self.strip.set_current(index)
        self._update_words()
        if emit:
            self.slice_changed.emit(index)

    def _update_words(self) -> None:
        if not self._n:
            return
        i = self.slider.value()
        self.label.setText(f"Slice {i + 1} / {self._n}")
        prob = self._probs[i] if i < len(self._probs) else None
        self.prob_label.setText(
            "" if prob is None or self._blind else f"finding probability {prob:.2f}"
        )
        self.prev_button.setEnabled(i > 0)
        self.next_button.setEnabled(i < self._n - 1)
