"""The pages of the workspace view, behind typed interfaces.

The main window talks to its review and dashboard pages only through :class:`ReviewView`
and :class:`DashboardView`. The real pages (``desktop.review``, ``desktop.dashboard``) are
made when a workspace is first opened (their modules load in the background just after the
window appears, see :func:`preload_page_modules`), so the window appears at once; until
then, and in a shell built with ``pages=False`` (the shell's own tests), a placeholder implementing the same interface stands in. A page that fails raises: nothing
is called by name and nothing is swallowed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QWidget

if TYPE_CHECKING:
    from engine.modelfile import ModelSpec

__all__ = [
    "DashboardPlaceholder",
    "DashboardView",
    "ReviewPlaceholder",
    "ReviewView",
    "make_dashboard_page",
    "make_review_page",
    "preload_page_modules",
]


@runtime_checkable
class ReviewView(Protocol):
    """What the window needs of the review page.

    Signals: ``reviewed(int)`` after a review of that image was saved or undone, and
    ``current_changed(int)`` when the page shows another image.
    """

    reviewed: Any
    current_changed: Any

    def set_workspace(self, ws_folder: Path, model_path: Path | None) -> None: ...
    def set_reviewer(self, name: str) -> None: ...
    def set_blind(self, blind: bool) -> None: ...
    def set_auto_advance(self, on: bool) -> None: ...
    def show_image(self, image_id: int) -> None: ...
    def clear_image(self, message: str) -> None: ...
    def set_queue(self, image_ids: list[int], reviewed: Iterable[int] | None = None) -> None: ...
    def shutdown(self) -> None: ...


@runtime_checkable
class DashboardView(Protocol):
    """What the window needs of the dashboard page."""

    def set_workspace(self, ws_folder: Path | None, spec: ModelSpec | None) -> None: ...
    def refresh(self) -> None: ...
    def set_blind(self, blind: bool, unread: int) -> None: ...


class _Placeholder(QLabel):
    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWordWrap(True)
        self.setObjectName("notice")


class ReviewPlaceholder(_Placeholder):
    """Stands in for the review page before a workspace is open (does nothing)."""

    reviewed = Signal(int)
    current_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Open a folder or a workspace to review images.", parent)

    def set_workspace(self, ws_folder: Path, model_path: Path | None) -> None:
        """Nothing to show here."""

    def set_reviewer(self, name: str) -> None:
        """No decisions are made here."""

    def set_blind(self, blind: bool) -> None:
        """No answers are shown here."""

    def set_auto_advance(self, on: bool) -> None:
        """No queue is walked here."""

    def show_image(self, image_id: int) -> None:
        """No image is shown here."""

    def set_queue(self, image_ids: list[int], reviewed: Iterable[int] | None = None) -> None:
        """No queue is walked here."""

    def clear_image(self, message: str) -> None:
        """No image is shown here."""

    def shutdown(self) -> None:
        """No workers run here."""


class DashboardPlaceholder(_Placeholder):
    """Stands in for the dashboard before a workspace is open (does nothing)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("The dashboard appears once a workspace is open.", parent)

    def set_workspace(self, ws_folder: Path | None, spec: ModelSpec | None) -> None:
        """Nothing to show here."""

    def refresh(self) -> None:
        """Nothing to read here."""

    def set_blind(self, blind: bool, unread: int) -> None:
        """Nothing is shown here."""


def make_review_page(parent: QWidget) -> ReviewView:
    """The real review page (imports the viewer, evidence and loader modules)."""
    from .review import ReviewPage

    page: ReviewView = ReviewPage(parent)
    return page


def make_dashboard_page(parent: QWidget) -> DashboardView:
    """The real dashboard page (imports Qt Charts)."""
    from .dashboard import DashboardPage

    page: DashboardView = DashboardPage(parent)
    return page


PRELOADED = threading.Event()  # set once preload_page_modules has run


def preload_page_modules() -> None:
    """Import what the pages need (in a worker), so opening a workspace does not wait.

    torch, timm and ONNX Runtime are not among them: screening runs in a child process,
    and loading those libraries holds this interpreter for up to half a second at a time,
    which would freeze the window just after it appeared. They load here only when the
    reader first asks for an attribution overlay.
    """
    import importlib

    # the engine modules the first image's evidence reads too: imported on the window's
    # thread, each first import also had PySide read its source (4 ms, bench_gui)
    for name in (
        "desktop.review",
        "desktop.dashboard",
        "engine.overlay",
        "engine.metrics",
        "engine.uncertainty_stats",
    ):
        importlib.import_module(name)
    PRELOADED.set()
