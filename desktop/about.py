"""Help > About: versions, the not-a-medical-device notice and the chosen model's card."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QPlainTextEdit, QVBoxLayout, QWidget

from .welcome import not_a_device_text

__all__ = ["about_text", "show_about"]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def about_text(spec: Any, model_hash: str = "") -> str:
    """The About text; ``spec`` is the chosen model's description (or ``None``)."""
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion

    lines = [
        f"EyeTriage {_version('eyetriage')}",
        f"torch {_version('torch')} · Qt {qVersion()} · PySide6 {pyside_version}",
        "",
        not_a_device_text(),
        "",
    ]
    if spec is None:
        lines.append("No model chosen yet.")
        return "\n".join(lines)
    from engine.modelcard import DEMO_NOTICE, model_card_text

    lines.append("Active model")
    lines.append(model_card_text(spec, model_hash))
    if getattr(spec, "demo", False):
        lines += ["", DEMO_NOTICE]
    return "\n".join(lines)


def show_about(parent: QWidget, text: str) -> QDialog:
    """Open the About dialog (window-modal, does not block the event loop)."""
    dlg = QDialog(parent)
    dlg.setWindowTitle("About EyeTriage")
    view = QPlainTextEdit(text)
    view.setReadOnly(True)
    view.setMinimumSize(640, 420)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
    buttons.rejected.connect(dlg.reject)
    lay = QVBoxLayout(dlg)
    lay.addWidget(view)
    lay.addWidget(buttons)
    dlg.open()
    return dlg
