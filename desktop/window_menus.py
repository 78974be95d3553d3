"""The main window's actions, toolbar and menu bar, built from plain lists.

Every action carries its key in the toolbar text (menus show the plain text), and works
window-wide. The window decides what each action does; this module only lays them out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QMainWindow, QSizePolicy, QToolBar, QWidget

THEMES = (("light", "Light theme"), ("dark", "Dark theme"), ("system", "Follow the system"))

__all__ = ["THEMES", "THEME_MENU", "add_action", "build_menus", "build_toolbar"]


def add_action(
    window: QMainWindow,
    text: str,
    key: str | QKeySequence.StandardKey | None,
    slot: Callable[..., Any],
    tip: str = "",
) -> QAction:
    """A window-wide action with an optional key and tooltip, connected to ``slot``."""
    action = QAction(text, window)
    if key is not None:
        action.setShortcut(QKeySequence(key))
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
    if tip:
        action.setToolTip(tip)
        action.setStatusTip(tip)
    action.triggered.connect(slot)
    window.addAction(action)
    return action


def build_toolbar(
    window: QMainWindow, items: Sequence[tuple[QAction, str] | Callable[[QToolBar], None] | None]
) -> QToolBar:
    """The fixed text toolbar: ``(action, text with its key)``, a callable that adds its own
    widgets, or ``None`` for a separator; the last item is pushed to the right edge."""
    tb = QToolBar("Main")
    tb.setObjectName("mainToolbar")
    tb.setMovable(False)
    tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    window.addToolBar(tb)
    for n, item in enumerate(items):
        if n == len(items) - 1:
            spacer = QWidget()
            spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
            tb.addWidget(spacer)
        if item is None:
            tb.addSeparator()
        elif isinstance(item, tuple):
            action, text = item
            action.setIconText(text)  # the toolbar shows the key; menus show the plain text
            tb.addAction(action)
        else:
            item(tb)
    return tb


THEME_MENU = "themes"  # in place of a menu's actions: the theme choice


def build_menus(
    window: QMainWindow,
    menus: Sequence[tuple[str, Sequence[QAction | None] | str]],
    set_theme: Callable[[str], None],
) -> dict[str, QAction]:
    """The menu bar from ``(title, actions)`` (``None`` = separator); a menu whose actions
    are :data:`THEME_MENU` offers the themes. Returns the theme actions by key."""
    bar = window.menuBar()
    theme_actions: dict[str, QAction] = {}
    for title, actions in menus:
        menu = bar.addMenu(title)
        if actions == THEME_MENU:
            group = QActionGroup(window)
            for key, text in THEMES:
                theme = QAction(text, window, checkable=True)
                theme.triggered.connect(lambda _=False, k=key: set_theme(k))
                group.addAction(theme)
                menu.addAction(theme)
                theme_actions[key] = theme
            continue
        for action in actions:
            if action is None:
                menu.addSeparator()
            else:
                menu.addAction(action)
    return theme_actions
