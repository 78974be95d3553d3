"""The workspace view: a "Review" tab (quick filters over the worklist and the review page)
and a "Dashboard" tab, with placeholders until the real pages are installed."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QSplitter, QTabWidget, QVBoxLayout, QWidget

from .pages import (
    DashboardPlaceholder,
    DashboardView,
    ReviewPlaceholder,
    ReviewView,
    make_dashboard_page,
    make_review_page,
)
from .worklist import QuickFilterBar, WorklistPanel

REVIEW_TITLE = "Review  (Ctrl+1)"
DASHBOARD_TITLE = "Dashboard  (Ctrl+2)"


def as_widget(page: ReviewView | DashboardView) -> QWidget:
    """A page is a widget as well as an interface."""
    assert isinstance(page, QWidget), f"{type(page).__name__} is not a widget"
    return page


class WorkspaceView(QTabWidget):
    """The two tabs of an open workspace; :meth:`install_pages` swaps in the real pages."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.filter_bar = QuickFilterBar()
        self.worklist = WorklistPanel()
        self.filter_bar.changed.connect(self.worklist.set_quick_filter)
        self.worklist.model.counts_changed.connect(self.filter_bar.set_counts)
        self.review_page: ReviewView = ReviewPlaceholder()
        self.dashboard_page: DashboardView = DashboardPlaceholder()
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("reviewSplitter")
        self.splitter.addWidget(self.worklist)
        self.splitter.addWidget(as_widget(self.review_page))
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setSizes([520, 840])
        review_tab = QWidget()
        lay = QVBoxLayout(review_tab)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.filter_bar)
        lay.addWidget(self.splitter, 1)
        self.addTab(review_tab, REVIEW_TITLE)
        self.addTab(as_widget(self.dashboard_page), DASHBOARD_TITLE)
        self.pages_installed = False

    def dashboard_shown(self) -> bool:
        return self.currentWidget() is as_widget(self.dashboard_page)

    def install_pages(self, parent: QWidget) -> None:
        """Replace the placeholders by the real review and dashboard pages (once)."""
        if self.pages_installed:
            return
        self.pages_installed = True
        review = make_review_page(parent)
        old = as_widget(self.review_page)
        self.splitter.replaceWidget(1, as_widget(review))
        old.deleteLater()
        self.review_page = review
        dashboard = make_dashboard_page(parent)
        old = as_widget(self.dashboard_page)
        i = self.indexOf(old)
        self.blockSignals(True)  # no "tab changed" while the widget is swapped
        self.removeTab(i)
        self.insertTab(i, as_widget(dashboard), DASHBOARD_TITLE)
        self.blockSignals(False)
        old.deleteLater()
        self.dashboard_page = dashboard
