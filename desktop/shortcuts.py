"""Single-key shortcuts for a page that never steal keys from a text field.

A reader types a note or a search while the page's one-key actions (Enter, 1–9, J/K…) stay
installed window-wide; when a text field has the focus, the key goes to the field instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QLineEdit,
    QPlainTextEdit,
    QTextEdit,
    QWidget,
)

Binding = tuple[Sequence[Any], Callable[[], None]]  # (keys or key strings, slot)
TEXT_FIELDS = (QLineEdit, QTextEdit, QPlainTextEdit, QAbstractSpinBox)  # keep their keys


class PageShortcuts:
    """Window-wide shortcuts owned by ``page`` (active while it is visible)."""

    def __init__(self, page: QWidget, bindings: Sequence[Binding]) -> None:
        self.page = page
        self.shortcuts: list[QShortcut] = []
        for keys, slot in bindings:
            self.shortcuts += self.make(keys, slot)

    def make(self, keys: Sequence[Any], slot: Callable[[], None]) -> list[QShortcut]:
        """Shortcuts for ``keys`` with the same text-field rule, kept apart from
        :attr:`shortcuts` (the page's fixed keys): for keys that come and go, such as a
        grading scheme's; delete them with ``deleteLater`` when they go."""
        made = []
        for key in keys:
            shortcut = QShortcut(QKeySequence(key), self.page)
            shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
            shortcut.setAutoRepeat(False)
            shortcut.activated.connect(lambda s=shortcut, f=slot: self._run(s, f))
            made.append(shortcut)
        return made

    def _run(self, shortcut: QShortcut, slot: Callable[[], None]) -> None:
        """Run ``slot``, unless a text field has the focus: then the key goes to the field.

        Text fields already keep letters and digits; Enter has to be handed back here, so
        Enter in a note field (or any search box of the window) never triggers the action.
        """
        focus = QApplication.focusWidget()
        if isinstance(focus, TEXT_FIELDS):
            sequence = shortcut.key()
            if sequence.count():
                combo = sequence[0]
                same = [sc for sc in self.shortcuts if sc.key() == sequence and sc.isEnabled()]
                for sc in same:  # or the forwarded key would trigger the shortcut again
                    sc.setEnabled(False)
                try:
                    for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
                        event = QKeyEvent(kind, combo.key(), combo.keyboardModifiers())
                        QApplication.sendEvent(focus, event)
                finally:
                    for sc in same:
                        sc.setEnabled(True)
            return
        slot()
