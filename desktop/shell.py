"""What the window's controllers may use of the main window (a typed, narrow surface).

Controllers (screening, exports and reports, Improve model) hold a :class:`Shell`, not the
whole :class:`~desktop.mainwindow.MainWindow`, so what they depend on is written down here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PySide6.QtWidgets import QStatusBar, QWidget

    from .settings import AppSettings
    from .workers import FunctionJob


class Shell(Protocol):
    """The main window as its controllers see it."""

    settings: AppSettings
    ws_folder: Path | None
    image_folder: Path | None

    @property
    def model_path(self) -> Path | None:
        """The chosen model file."""
        ...

    @property
    def spec(self) -> Any:
        """The chosen model's description."""
        ...

    def window_widget(self) -> QWidget:
        """The parent for dialogs."""
        ...

    def statusBar(self) -> QStatusBar:  # noqa: N802 - Qt API
        ...

    def show_error(self, title: str, text: str) -> None: ...

    def run_job(self, job: FunctionJob) -> None:
        """Start a background job and keep it alive until it finished."""
        ...

    def save_settings(self) -> None: ...

    def set_model(self, path: Path | None) -> bool:
        """Use another model file; False (the user was told why) if it is unusable."""
        ...

    def model_choices(self) -> list[tuple[str, str]]:
        """``(label, path)`` of every model that can be chosen now."""
        ...

    def set_image_folder(self, folder: Path) -> None:
        """Screen ``folder`` from now on (remembered with the workspace)."""
        ...
