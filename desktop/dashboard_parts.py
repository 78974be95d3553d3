"""Building blocks of the dashboard: titled panels with an empty state, charts, captions.

Small Qt helpers without data of their own; :mod:`desktop.dashboard` puts them together.
"""

from __future__ import annotations

from PySide6.QtCharts import QChart, QChartView, QValueAxis
from PySide6.QtCore import QMargins, Qt
from PySide6.QtGui import QColor, QPainter, QPalette
from PySide6.QtWidgets import QGroupBox, QLabel, QSizePolicy, QStackedLayout, QVBoxLayout, QWidget

__all__ = ["Panel", "axis", "caption", "chart_view", "is_dark", "mix", "new_chart", "stack"]


def is_dark(widget: QWidget) -> bool:
    return widget.palette().color(QPalette.ColorRole.Window).lightness() < 128


class Panel(QGroupBox):
    """A titled panel that shows either its content or a plain-words empty state."""

    def __init__(self, title: str, content: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.stack = QStackedLayout()
        self.content = content
        self.empty_label = QLabel()
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setMargin(12)
        self.stack.addWidget(content)
        self.stack.addWidget(self.empty_label)
        self.setLayout(self.stack)

    def show_content(self) -> None:
        self.stack.setCurrentWidget(self.content)

    def show_empty(self, message: str) -> None:
        self.empty_label.setText(message)
        self.stack.setCurrentWidget(self.empty_label)

    def is_empty(self) -> bool:
        return self.stack.currentWidget() is self.empty_label


def chart_view(chart: QChart) -> QChartView:
    view = QChartView(chart)
    view.setRenderHint(QPainter.RenderHint.Antialiasing)
    view.setMinimumHeight(210)
    view.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
    return view


def new_chart() -> QChart:
    chart = QChart()
    chart.setMargins(QMargins(4, 4, 4, 4))
    chart.setBackgroundRoundness(0)
    chart.legend().setAlignment(Qt.AlignmentFlag.AlignBottom)
    return chart


def axis(title: str, lo: float, hi: float, fmt: str = "%d%%") -> QValueAxis:
    axis = QValueAxis()
    axis.setRange(lo, hi)
    axis.setTitleText(title)
    axis.setLabelFormat(fmt)
    axis.setTickCount(6)
    return axis


def stack(main: QWidget, caption: QWidget, stretch_last: bool = True) -> QWidget:
    """A panel body: the chart or table, its caption below, no margins."""
    box = QWidget()
    lay = QVBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    if stretch_last:
        lay.addWidget(main, 1)
        lay.addWidget(caption)
    else:
        lay.addWidget(main)
        lay.addWidget(caption)
        lay.addStretch(1)
    return box


def caption() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def mix(a: QColor, b: QColor, t: float) -> QColor:
    t = max(0.0, min(1.0, t))
    return QColor(
        round(a.red() + (b.red() - a.red()) * t),
        round(a.green() + (b.green() - a.green()) * t),
        round(a.blue() + (b.blue() - a.blue()) * t),
    )
