"""Palettes and triage styling: calm neutral greys, one accent colour, words beside colours.

Every triage state has a colour, a glyph and a word, so colour is never the only signal.
Sizes are in points (not pixels) so text stays readable at 100% and 200% scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#2f6f9f"  # a quiet clinical blue


@dataclass(frozen=True)
class TriageStyle:
    """How one triage state is shown: glyph, word, colours for light and dark themes."""

    state: str
    glyph: str
    word: str
    light: str
    dark: str

    @property
    def text(self) -> str:
        """Glyph and word together, e.g. ``⚠ Needs review``."""
        return f"{self.glyph} {self.word}"

    def color(self, dark: bool = False) -> QColor:
        return QColor(self.dark if dark else self.light)


TRIAGE_STYLES: dict[str, TriageStyle] = {
    # a confident finding: urgent, never green, not the error red
    "refer": TriageStyle("refer", "⚑", "Refer", "#a3125c", "#f48fb1"),
    "auto-cleared": TriageStyle("auto-cleared", "✓", "Auto-cleared", "#2e7d4f", "#6fcf97"),
    "needs-review": TriageStyle("needs-review", "⚠", "Needs review", "#a15c00", "#f2b24c"),
    "ungradable": TriageStyle("ungradable", "⊘", "Ungradable", "#6b5b95", "#b7a6e0"),
    "out-of-distribution": TriageStyle(
        "out-of-distribution", "?", "Out-of-distribution", "#1f6f8b", "#6cc3e0"
    ),
    "error": TriageStyle("error", "✕", "Error", "#b3261e", "#f28b82"),
}
UNSCREENED = TriageStyle("", "·", "Not screened", "#6b7280", "#9ca3af")


def triage_style(state: str | None) -> TriageStyle:
    """The style of a triage state (unknown or missing states read "Not screened")."""
    return TRIAGE_STYLES.get(state or "", UNSCREENED)


def triage_text(state: str | None, finding: str | None = None) -> str:
    """Glyph and words of a state; a referral names its finding: ``⚑ Refer: glaucoma``."""
    style = triage_style(state)
    if state == "refer" and finding:
        return f"{style.text}: {finding.replace(';', ', ')}"
    return style.text


def _palette(dark: bool) -> QPalette:
    p = QPalette()
    if dark:
        window, base, alt, text, mid, button = (
            "#202225",
            "#17181a",
            "#1e2023",
            "#e6e6e6",
            "#8a8f98",
            "#2b2e33",
        )
        highlight, highlighted_text = "#3d7fb3", "#ffffff"
    else:
        window, base, alt, text, mid, button = (
            "#f3f4f6",
            "#ffffff",
            "#f7f8fa",
            "#1f2328",
            "#6b7280",
            "#e8eaee",
        )
        highlight, highlighted_text = ACCENT, "#ffffff"
    roles = {
        QPalette.ColorRole.Window: window,
        QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base,
        QPalette.ColorRole.AlternateBase: alt,
        QPalette.ColorRole.ToolTipBase: base,
        QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.PlaceholderText: mid,
        QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: button,
        QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: highlight,
        QPalette.ColorRole.HighlightedText: highlighted_text,
        QPalette.ColorRole.Link: highlight,
        QPalette.ColorRole.Mid: mid,
    }
    for role, colour in roles.items():
        p.setColor(role, QColor(colour))
    for role in (
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
        QPalette.ColorRole.WindowText,
    ):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(mid))
    return p


def light_palette() -> QPalette:
    return _palette(False)


def dark_palette() -> QPalette:
    return _palette(True)


def _system_prefers_dark(app: QApplication) -> bool:
    try:
        from PySide6.QtCore import Qt

        return app.styleHints().colorScheme() == Qt.ColorScheme.Dark
    except AttributeError:  # older Qt
        return False


def is_dark(theme: str, app: QApplication | None = None) -> bool:
    """Whether ``theme`` ("light", "dark" or "system") resolves to dark."""
    if theme == "dark":
        return True
    if theme == "system" and app is not None:
        return _system_prefers_dark(app)
    return False


STYLESHEET = """
QToolBar { spacing: 6px; padding: 4px; border: none; }
QToolBar QToolButton { padding: 4px 10px; }
QPushButton#bigButton { font-size: 13pt; padding: 12px 18px; text-align: left; }
QPushButton#filterButton { padding: 4px 10px; border: 1px solid palette(mid);
    border-radius: 4px; background: palette(base); }
QPushButton#filterButton:checked { background: palette(highlight);
    color: palette(highlighted-text); border-color: palette(highlight); }
QLabel#demoBanner { background: #8a4b00; color: #ffffff; font-weight: bold;
    padding: 4px 10px; border-radius: 3px; }
QLabel#notice { color: palette(mid); }
QLabel#title { font-size: 20pt; font-weight: 600; }
QTableView { gridline-color: transparent; }
"""


def apply_theme(app: QApplication, theme: str = "light") -> bool:
    """Apply the light or dark palette (Fusion style) and the stylesheet; returns dark."""
    dark = is_dark(theme, app)
    app.setProperty("eyetriage_dark", dark)  # first: widgets told of the palette read it
    app.setStyle("Fusion")
    app.setPalette(dark_palette() if dark else light_palette())
    app.setStyleSheet(STYLESHEET)
    return dark


def current_is_dark() -> bool:
    app = QApplication.instance()
    return bool(app.property("eyetriage_dark")) if app is not None else False


def bold(font: QFont) -> QFont:
    f = QFont(font)
    f.setBold(True)
    return f
