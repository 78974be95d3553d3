"""The review page's decision panel: label keys, actions, the note and the review status.

Plain widgets with the key of each action printed on its button; the page connects them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .evidence import WARN

MAX_LABEL_KEYS = 9  # keys 1..9 label the image


def _key_button(text: str, tip: str, name: str) -> QPushButton:
    button = QPushButton(text)
    button.setObjectName(name)
    button.setToolTip(tip)
    button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    button.setMinimumHeight(26)
    button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return button


class ReviewPanel(QWidget):
    """Decision buttons (keys printed on them), the note field and the review status."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reviewPanel")
        self.heading = QLabel()
        self.heading.setObjectName("reviewHeading")
        self.heading.setWordWrap(True)
        self.label_box = QWidget()
        self.label_grid = QGridLayout(self.label_box)
        self.label_grid.setContentsMargins(0, 0, 0, 0)
        self.label_grid.setSpacing(4)
        self.label_buttons: list[QPushButton] = []
        self.label_checks: list[QCheckBox] = []
        self.confirm_button = _key_button(
            "Enter  Confirm AI", "Save the AI answer as your label (Enter)", "confirmButton"
        )
        self.ungradable_button = _key_button(
            "U  Ungradable", "The image cannot be graded (U)", "ungradableButton"
        )
        self.note_button = _key_button(
            "N  Note", "Write a note saved with your next decision (N)", "noteButton"
        )
        self.undo_button = _key_button(
            "Z  Undo", "Undo your last decision (Z); it is kept in the history", "undoButton"
        )
        self.prev_button = _key_button(
            "K ←  Back", "Previous image in the worklist (K or ←)", "previousButton"
        )
        self.next_button = _key_button(
            "J →  Next", "Next image in the worklist (J or →)", "nextButton"
        )
        self.next_unreviewed_button = _key_button(
            "⇧J  Unreviewed",
            "Next image of the list without a review (Shift+J or Shift+→)",
            "nextUnreviewedButton",
        )
        self.progress_label = QLabel()
        self.progress_label.setObjectName("reviewProgress")
        self.progress_label.setWordWrap(True)
        actions = QGridLayout()
        actions.setSpacing(3)
        actions.addWidget(self.confirm_button, 0, 0)
        actions.addWidget(self.ungradable_button, 0, 1)
        actions.addWidget(self.note_button, 1, 0)
        actions.addWidget(self.undo_button, 1, 1)
        moves = QHBoxLayout()  # the three moves on one row
        moves.setSpacing(3)
        for button in (self.prev_button, self.next_button, self.next_unreviewed_button):
            moves.addWidget(button)
        actions.addLayout(moves, 2, 0, 1, 2)
        self.note_edit = QLineEdit()
        self.note_edit.setObjectName("noteEdit")
        self.note_edit.setPlaceholderText("Note, saved with your next decision (Enter: done)")
        self.note_edit.setClearButtonEnabled(True)
        self.note_edit.hide()
        self.current_label = QLabel("Not reviewed")
        self.current_label.setObjectName("currentReview")
        self.current_label.setWordWrap(True)
        self.prompt_label = QLabel()
        self.prompt_label.setObjectName("reviewPrompt")
        self.prompt_label.setWordWrap(True)
        self.prompt_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.mode_label = QLabel()
        self.mode_label.setObjectName("reviewMode")
        self.mode_label.setStyleSheet("color: palette(placeholder-text); font-size: 9pt;")
        self.mode_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.setSpacing(4)
        layout.addWidget(self.heading)
        layout.addWidget(self.label_box)
        layout.addLayout(actions)
        layout.addWidget(self.note_edit)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.current_label)
        layout.addWidget(self.prompt_label)
        layout.addWidget(self.mode_label)
        self._labels: list[str] = []
        self._multilabel = False
        self._keys = True
        self.set_prompt("")

    def set_labels(
        self, labels: list[str], names: list[str], multilabel: bool, keys: bool = True
    ) -> bool:
        """One button (or checkbox for a multi-label task) per label; returns True if rebuilt.

        ``keys=False``: the digits belong to the grading scheme's answers, so the buttons
        show none (they are still clicked)."""
        if (
            labels == self._labels
            and multilabel == self._multilabel
            and keys == self._keys
            and (self.label_buttons or self.label_checks)
        ):
            return False
        self._labels = list(labels)
        self._multilabel = multilabel
        self._keys = keys
        for widget in (*self.label_buttons, *self.label_checks):
            self.label_grid.removeWidget(widget)
            widget.deleteLater()
        self.label_buttons, self.label_checks = [], []
        columns = 2 if max((len(n) for n in names), default=0) <= 12 else 1
        for i, name in enumerate(names):
            key = str(i + 1) if i < MAX_LABEL_KEYS and keys else ""
            text = f"{key}  {name}" if key else name
            if multilabel:
                widget: QWidget = QCheckBox(text)
                widget.setFocusPolicy(Qt.FocusPolicy.NoFocus)
                widget.setToolTip(
                    f"Tick or untick {name}"
                    + (f" ({key})" if key else "")
                    + "; Enter saves the ticked labels"
                )
                self.label_checks.append(widget)  # type: ignore[arg-type]
            else:
                widget = _key_button(
                    text, f"Label the image {name} (key {key})" if key else name, f"label_{i + 1}"
                )
                widget.setCheckable(True)  # checked = the current review's label
                self.label_buttons.append(widget)  # type: ignore[arg-type]
            widget.setObjectName(f"label_{i + 1}")
            self.label_grid.addWidget(widget, i // columns, i % columns)
        self.confirm_button.setText(
            "Enter  Save ticked labels" if multilabel else "Enter  Confirm AI"
        )
        return True

    def set_progress(self, done: int, total: int) -> None:
        """The list's progress: how many are reviewed and how many remain."""
        if total == 0:
            self.progress_label.setText("")
            self.progress_label.hide()
            return
        left = total - done
        self.progress_label.setText(
            f"<b>{left} left</b> in this list · {done} of {total} reviewed"
            if left
            else f"<b>All {total} reviewed</b> in this list"
        )
        self.progress_label.show()

    def set_current(self, text: str) -> None:
        self.current_label.setText(text)

    def set_prompt(self, text: str, warning: bool = False) -> None:
        """A one-line message under the buttons (saved, nothing to undo, name needed…)."""
        self.prompt_label.setText(f"{WARN} {text}" if warning and text else text)
        self.prompt_label.setProperty("warning", warning)
        self.prompt_label.setStyleSheet("color: #b35c00; font-weight: bold;" if warning else "")
        self.prompt_label.setVisible(bool(text))


def ago(iso: str | None) -> str:
    """``"2 min ago"`` from an ISO-8601 UTC timestamp."""
    if not iso:
        return ""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0.0, (datetime.now(UTC) - then).total_seconds())
    if seconds < 45:
        return "just now"
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min ago"
    if seconds < 86400:
        return f"{round(seconds / 3600)} h ago"
    return f"on {then.date().isoformat()}"
