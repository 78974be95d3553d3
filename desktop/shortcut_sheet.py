"""The keyboard shortcut sheet (F1 or ?): every key of the reading room on one page.

The keys listed here are the ones the review page, the worklist and the window install;
a test presses each listed review key to check the sheet does not lie.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QDialog, QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

# (group, [(keys, what they do)])
SHEET: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "Review an image",
        (
            ("1 … 9", "label the image; with a grading scheme: the answers keyed 1 … 9"),
            ("Enter", "confirm the AI answer (multi-label: save the ticked labels)"),
            ("U", "ungradable"),
            ("N", "write a note (saved with the image; Enter when done)"),
            ("Z  or  Ctrl+Z", "undo your last decision (kept in the history)"),
        ),
    ),
    (
        "Move along the list",
        (
            ("J  or  →", "next image"),
            ("K  or  ←", "previous image"),
            ("Shift+J  or  Shift+→", "next image not reviewed yet"),
            ("Alt+1 … Alt+8", "quick filters (Needs review, Cleared, …, All)"),
            ("Ctrl+F", "search the list"),
        ),
    ),
    (
        "Look at the image",
        (
            ("G / I / O", "Grad-CAM overlay / Integrated Gradients overlay / no overlay"),
            ("Space (hold)", "show the image without the overlay while held"),
            ("S", "overlay side by side with the image"),
            ("F  or  0", "fit the image to the viewer"),
            ("=", "actual size (one image pixel per screen pixel)"),
            ("+ / −", "zoom in / out (or the mouse wheel)"),
            ("L / Shift+L", "brightness up / down (the view only; the file is never changed)"),
            ("W / Shift+W", "contrast up / down"),
            ("Y / Shift+Y", "gamma up / down (up lifts the dark tones)"),
            ("Shift+R", "red-free view (the green channel as grey)"),
            ("Shift+E", "CLAHE: local contrast equalisation"),
            ("X", "original pixels (enhancement off)"),
        ),
    ),
    (
        "Mark lesions",
        (
            ("Shift+M", "marking mode on / off (Esc also leaves it)"),
            ("A, H, E, C, V, D …", "in marking mode: the lesion type (keys on its buttons)"),
            ("click / drag", "a point / a box"),
            ("Shift+drag", "a freehand outline"),
            ("Ctrl+click, Enter", "polygon corners; Enter or a double-click closes it"),
            ("Esc", "cancel the shape being drawn"),
            ("right-click, Delete", "select a mark, delete it"),
            ("Z  or  Ctrl+Z", "in marking mode: undo the last mark added or deleted"),
            ("Shift+H", "show / hide the marks layer (the overlay is separate)"),
        ),
    ),
    (
        "Window",
        (
            ("Ctrl+1 / Ctrl+2", "Review tab / Dashboard tab"),
            ("F5", "screen the images (on the dashboard: refresh)"),
            ("Ctrl+O", "open a folder of images"),
            ("Ctrl+,", "settings (reviewer, blind mode, auto-advance)"),
            ("Ctrl+P", "patient report PDF"),
            ("F1  or  ?", "this sheet"),
        ),
    ),
)


class ShortcutSheet(QDialog):
    """A small window listing every key; Esc, F1 or ? closes it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("shortcutSheet")
        self.setWindowTitle("Keyboard shortcuts")
        grid = QGridLayout()
        grid.setHorizontalSpacing(18)
        grid.setVerticalSpacing(3)
        for half, groups in enumerate((SHEET[:3], SHEET[3:])):
            row = 0
            for title, entries in groups:
                heading = QLabel(f"<b>{title}</b>")
                heading.setContentsMargins(0, 8 if row else 0, 0, 2)
                grid.addWidget(heading, row, half * 2, 1, 2)
                row += 1
                for keys, what in entries:
                    key_label = QLabel(f"<b>{keys}</b>")
                    key_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
                    text = QLabel(what)
                    text.setWordWrap(True)
                    grid.addWidget(key_label, row, half * 2)
                    grid.addWidget(text, row, half * 2 + 1)
                    row += 1
        for col in (1, 3):
            grid.setColumnStretch(col, 1)
        close = QPushButton("Close  Esc")
        close.clicked.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignRight)
        for key in ("F1", "?"):
            QShortcut(QKeySequence(key), self, activated=self.close)
        hint = self.sizeHint()
        self.resize(max(980, hint.width()), max(600, hint.height()))

    def texts(self) -> str:
        """Everything the sheet says, as plain text (for tests and screen readers)."""
        return "\n".join(f"{k}: {w}" for _, entries in SHEET for k, w in entries)
