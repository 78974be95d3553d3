"""The grading panel: the workspace's scheme questions, each option with its key.

Shown in the review panel area. One block per question (ICDR grade, maculopathy, image
quality ...): its title, the AI's answer in the grader's terms (hidden in blind mode) and
one button per option with its hotkey printed on it; a multi-choice question's buttons
toggle. A chooser on top switches the workspace's scheme (a preset, or a JSON file).
The page binds the keys and saves answers; this module only shows them.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from engine.schemes import PRESETS, Scheme, normalise_key

from .evidence import WARN

LOAD_FROM_FILE = "file"
PRESET_NAMES = {
    "model": "The model's labels",
    "icdr": "ICDR: DR grade, maculopathy, quality",
    "referable": "Referable / non-referable",
    "dme": "DME present / absent",
    "glaucoma": "Glaucoma suspect",
}


class AnswerButton(QPushButton):
    """An option button that never widens the panel: a long label is cut with an ellipsis
    to the width it gets (the whole label is in the tooltip)."""

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self._full = text
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def full_text(self) -> str:
        return self._full

    def set_full_text(self, text: str) -> None:
        self._full = text
        self._elide()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(60, super().minimumSizeHint().height())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        room = max(20, self.width() - 16)
        self.setText(self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, room))


class GradingPanel(QWidget):
    """Scheme chooser and one block of option buttons per question.

    Signals: ``answer_clicked(question, value)`` when an option button is clicked;
    ``scheme_chosen(name)`` with a preset name or ``"file"`` for "Load from file…".
    """

    answer_clicked = Signal(str, str)
    scheme_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("gradingPanel")
        self.heading = QLabel("<b>Grading</b>")
        self.heading.setObjectName("gradingHeading")
        self.chooser = QComboBox()
        self.chooser.setObjectName("schemeChooser")
        self.chooser.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.chooser.setToolTip("The workspace's grading scheme (kept for every reader)")
        self.chooser.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.chooser.setMinimumContentsLength(14)
        for name in PRESETS:
            self.chooser.addItem(PRESET_NAMES.get(name, name), name)
        self.chooser.addItem("Load from file…", LOAD_FROM_FILE)
        self.chooser.activated.connect(self._on_chosen)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.heading)
        top.addWidget(self.chooser, 1)
        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(0, 0, 0, 0)
        self.body_layout.setSpacing(2)
        self.note = QLabel()
        self.note.setObjectName("gradingNote")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: palette(placeholder-text); font-size: 9pt;")
        self.note.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.setSpacing(3)
        layout.addLayout(top)
        layout.addWidget(self.body)
        layout.addWidget(self.note)
        self._scheme: Scheme | None = None
        self.buttons: dict[tuple[str, str], AnswerButton] = {}
        self.ai_labels: dict[str, QLabel] = {}
        self.titles: dict[str, QLabel] = {}

    # ------------------------------------------------------------------ scheme

    def scheme(self) -> Scheme | None:
        return self._scheme

    def set_scheme(
        self, scheme: Scheme, unbound: dict[str, str] | None = None, shared: bool = False
    ) -> None:
        """Build one block per question. ``unbound``: hotkey → why it is not bound (a key
        the page already uses); ``shared``: the questions are the review's own labels
        (the "model" scheme), answered with the review buttons above, so none are shown."""
        self._scheme = scheme
        unbound = unbound or {}
        index = self.chooser.findData(scheme.name)
        self.chooser.blockSignals(True)
        if index < 0:
            self.chooser.insertItem(
                self.chooser.count() - 1, f"{scheme.name} (custom)", scheme.name
            )
            index = self.chooser.findData(scheme.name)
        self.chooser.setCurrentIndex(index)
        self.chooser.blockSignals(False)
        while self.body_layout.count():
            item = self.body_layout.takeAt(0)
            widget = item.widget() if item is not None else None
            if widget is not None:
                widget.deleteLater()
        self.buttons.clear()
        self.ai_labels.clear()
        self.titles.clear()
        if shared or not scheme.questions:
            # one row: the chooser; what it means is in its tooltip
            self.note.setText("")
            self.note.hide()
            self.chooser.setToolTip(
                "The workspace's grading scheme. With the model's labels your review above is "
                "the answer; choose a scheme (ICDR, referable …) to grade in other terms."
                if scheme.questions
                else "This scheme asks no questions (only lesions are marked)."
            )
            self.body.hide()
            return
        self.chooser.setToolTip("The workspace's grading scheme (kept for every reader)")
        self.body.show()
        notes = []
        for q in scheme.questions:
            block = QWidget()
            grid = QGridLayout(block)
            grid.setContentsMargins(0, 4, 0, 0)
            grid.setSpacing(3)
            kind = " (any that apply)" if q.kind == "multi" else ""
            title = QLabel(f"<b>{q.title}</b>{kind}")
            title.setMinimumWidth(60)
            title.setWordWrap(True)
            self.titles[q.key] = title
            ai = QLabel()
            ai.setObjectName(f"ai_{q.key}")
            ai.setWordWrap(True)
            self.ai_labels[q.key] = ai
            grid.addWidget(title, 0, 0, 1, 2)
            grid.addWidget(ai, 1, 0, 1, 2)
            columns = 2 if max((len(o.label) for o in q.options), default=0) <= 14 else 1
            for i, o in enumerate(q.options):
                key = normalise_key(o.hotkey) if o.hotkey else ""
                if key in unbound:
                    notes.append(f"{key} ({o.label}): {unbound[key]}")
                    key = ""
                button = AnswerButton(f"{key}  {o.label}" if key else o.label)
                button.setObjectName(f"grade_{q.key}_{o.value}")
                button.setCheckable(True)
                button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
                button.setMinimumHeight(24)
                button.setToolTip(
                    f"{q.title}: {o.label}"
                    + (f" (key {key})" if key else "")
                    + (" — toggles" if q.kind == "multi" else "")
                )
                button.clicked.connect(
                    lambda _=False, qk=q.key, v=o.value: self.answer_clicked.emit(qk, v)
                )
                self.buttons[(q.key, o.value)] = button
                grid.addWidget(button, 2 + i // columns, i % columns, 1, 3 - columns)
            self.body_layout.addWidget(block)
        self.note.setText(
            (f"{WARN} Keys not bound (already used): " + "; ".join(notes)) if notes else ""
        )
        self.note.setVisible(bool(notes))

    # ------------------------------------------------------------------ answers

    def show_answers(
        self, answers: dict[str, list[str]], ai: dict[str, str | None], hidden: bool
    ) -> None:
        """Tick the grader's answers; say the AI's answer per question (or that it is
        hidden in blind mode)."""
        if self._scheme is None:
            return
        for (question, value), button in self.buttons.items():
            chosen = value in answers.get(question, [])
            button.setChecked(chosen)
            text = button.full_text().removeprefix("✓ ")
            button.set_full_text(f"✓ {text}" if chosen else text)
        for q in self._scheme.questions:
            label = self.ai_labels.get(q.key)
            if label is None:
                continue
            if hidden:
                label.setText("AI: hidden (blind mode) until you commit")
                label.setStyleSheet("color: palette(placeholder-text);")
                continue
            value = ai.get(q.key)
            option = q.option(value) if value else None
            if option is None:
                label.setText("AI: no answer in these terms")
                label.setStyleSheet("color: palette(placeholder-text);")
            else:
                label.setText(f"AI: {option.label}")
                label.setStyleSheet("")

    def clear_answers(self) -> None:
        """No image: nothing ticked, no AI answer."""
        for button in self.buttons.values():
            button.setChecked(False)
            button.set_full_text(button.full_text().removeprefix("✓ "))
        for label in self.ai_labels.values():
            label.setText("")

    def _on_chosen(self, index: int) -> None:
        name = self.chooser.itemData(index)
        if name is not None:
            self.scheme_chosen.emit(str(name))
