"""The first-run page: open a folder, open a workspace, try the demo, or pick a recent one."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

NOT_A_DEVICE_FALLBACK = (
    "EyeTriage is a research and workflow tool, not a medical device: it triages images for a "
    "clinician's review and does not diagnose."
)


def not_a_device_text() -> str:
    try:
        from engine.modelcard import NOT_A_DEVICE
    except ImportError:  # pragma: no cover
        return NOT_A_DEVICE_FALLBACK
    return NOT_A_DEVICE


class WelcomePage(QWidget):
    """Big buttons with their shortcuts printed on them, and the recent workspaces."""

    open_folder = Signal()
    open_workspace = Signal()
    try_demo = Signal()
    open_recent = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        title = QLabel("EyeTriage")
        title.setObjectName("title")
        subtitle = QLabel(
            "Screen a folder of fundus photographs or OCT scans, then review the images that need a human."
        )
        subtitle.setWordWrap(True)

        self.folder_button = self._big(
            "Open folder…", "Ctrl+O", "Screen a folder of images (the folder is only read)"
        )
        self.workspace_button = self._big(
            "Open workspace…", "Ctrl+Shift+O", "Continue where you left off"
        )
        self.demo_button = self._big(
            "▶  Try the demo",
            "Ctrl+D",
            "Synthetic images and the demo model — not for clinical use",
        )
        self.folder_button.clicked.connect(self.open_folder)
        self.workspace_button.clicked.connect(self.open_workspace)
        self.demo_button.clicked.connect(self.try_demo)

        actions = QVBoxLayout()
        actions.setSpacing(10)
        for b in (self.folder_button, self.workspace_button, self.demo_button):
            actions.addWidget(b)
        actions.addStretch(1)

        recent_title = QLabel("Recent workspaces")
        recent_title.setStyleSheet("font-weight: 600;")
        self.recent = QListWidget()
        self.recent.setMinimumWidth(320)
        self.recent.itemActivated.connect(
            lambda item: self.open_recent.emit(item.data(Qt.ItemDataRole.UserRole))
        )
        self.recent_empty = QLabel("None yet. Your workspaces will be listed here.")
        self.recent_empty.setObjectName("notice")
        recent_box = QVBoxLayout()
        recent_box.addWidget(recent_title)
        recent_box.addWidget(self.recent, 1)
        recent_box.addWidget(self.recent_empty)
        recent_box.addStretch(0)
        self._recent_box = recent_box

        columns = QHBoxLayout()
        columns.setSpacing(32)
        columns.addLayout(actions, 1)
        columns.addLayout(recent_box, 1)

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        self.notice = QLabel("Note: " + not_a_device_text())
        self.notice.setObjectName("notice")
        self.notice.setWordWrap(True)

        inner = QVBoxLayout()
        inner.setSpacing(14)
        inner.addWidget(title)
        inner.addWidget(subtitle)
        inner.addSpacing(10)
        inner.addLayout(columns, 1)
        inner.addWidget(line)
        inner.addWidget(self.notice)

        box = QWidget()
        box.setLayout(inner)
        box.setMaximumWidth(980)
        outer = QHBoxLayout(self)
        outer.setContentsMargins(40, 30, 40, 24)
        outer.addStretch(1)
        outer.addWidget(box, 8)
        outer.addStretch(1)

    def _big(self, text: str, key: str, hint: str) -> QPushButton:
        b = QPushButton(f"{text}    [{key}]\n{hint}")
        b.setObjectName("bigButton")
        b.setToolTip(f"{hint} ({key})")
        b.setMinimumHeight(72)
        return b

    def set_recent(self, folders: list[str]) -> None:
        """Show these recent workspaces (newest first; the registry leaves out vanished ones)."""
        self.recent.clear()
        for f in folders:
            p = Path(f)
            item = QListWidgetItem(f"{p.name}\n{p}")
            item.setData(Qt.ItemDataRole.UserRole, str(p))
            item.setToolTip(str(p))
            self.recent.addItem(item)
        empty = self.recent.count() == 0
        self.recent.setVisible(not empty)
        self.recent_empty.setVisible(empty)
        self._recent_box.setStretch(self._recent_box.count() - 1, 1 if empty else 0)
