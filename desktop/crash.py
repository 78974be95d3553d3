"""Crash handler: exceptions and Qt warnings go to a rotating log file, and the user is told.

A windowed (frozen) application has no console, so an uncaught exception would otherwise
vanish. ``sys.excepthook``, ``threading.excepthook`` and Qt's message handler all write to
``<user log folder>/eyetriage.log``; an uncaught exception on the GUI thread also shows a
readable message box saying what happened and where the log is.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import (
    QMessageLogContext,
    QStandardPaths,
    QThread,
    QtMsgType,
    qInstallMessageHandler,
)

LOG_NAME = "eyetriage.log"
log = logging.getLogger("eyetriage")

_state: dict[str, object] = {}


def default_log_dir() -> Path:
    """``AppLocalDataLocation/logs`` (e.g. ``~/.local/share/EyeTriage/EyeTriage/logs``)."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppLocalDataLocation)
    return Path(base or Path.home() / ".eyetriage") / "logs"


def log_path() -> Path | None:
    """The log file in use, once the handler is installed."""
    p = _state.get("path")
    return p if isinstance(p, Path) else None


def _on_gui_thread() -> bool:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    return app is not None and QThread.currentThread() is app.thread()


def _show_error(summary: str, details: str) -> None:
    """A readable message box; only on the GUI thread and never recursively."""
    if _state.get("showing") or not _on_gui_thread() or not _state.get("dialogs", True):
        return
    from PySide6.QtWidgets import QMessageBox

    _state["showing"] = True
    try:
        box = QMessageBox()
        box.setIcon(QMessageBox.Icon.Critical)
        box.setWindowTitle("EyeTriage — unexpected error")
        box.setText(
            f"Something went wrong: {summary}\n\n"
            "Your saved reviews are safe (every review is written to the workspace at once). "
            "You can keep working, or restart EyeTriage if something looks wrong."
        )
        box.setInformativeText(f"The details are in the log file:\n{log_path()}")
        box.setDetailedText(details)
        box.exec()
    finally:
        _state["showing"] = False


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    details = "".join(traceback.format_exception(exc_type, exc, tb))
    log.error("uncaught exception\n%s", details)
    _show_error(f"{exc_type.__name__}: {exc}", details)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    details = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    name = args.thread.name if args.thread is not None else "?"
    log.error("uncaught exception in thread %s\n%s", name, details)


_QT_LEVELS = {
    QtMsgType.QtDebugMsg: logging.DEBUG,
    QtMsgType.QtInfoMsg: logging.INFO,
    QtMsgType.QtWarningMsg: logging.WARNING,
    QtMsgType.QtCriticalMsg: logging.ERROR,
    QtMsgType.QtFatalMsg: logging.CRITICAL,
}


def _qt_message_handler(mode: QtMsgType, context: QMessageLogContext, message: str) -> None:
    where = f" ({context.file}:{context.line})" if context.file else ""
    log.log(_QT_LEVELS.get(mode, logging.WARNING), "Qt: %s%s", message, where)


def install_crash_handler(log_dir: str | Path | None = None, dialogs: bool = True) -> Path:
    """Route uncaught exceptions and Qt messages to a rotating log file; returns its path.

    ``dialogs=False`` logs without showing message boxes (tests, batch use). Calling it
    again moves the log to the new folder.
    """
    folder = Path(log_dir) if log_dir is not None else default_log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_NAME
    old = _state.get("handler")
    if isinstance(old, logging.Handler):
        log.removeHandler(old)
        old.close()
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=1_000_000, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    _state.update(handler=handler, path=path, dialogs=dialogs)
    if "previous" not in _state:
        _state["previous"] = (sys.excepthook, threading.excepthook)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    qInstallMessageHandler(_qt_message_handler)
    log.info("EyeTriage started; logging to %s", path)
    return path


def uninstall_crash_handler() -> None:
    """Restore the previous hooks and close the log file (tests)."""
    previous = _state.pop("previous", None)
    if previous is not None:
        sys.excepthook, threading.excepthook = previous  # type: ignore[assignment]
    qInstallMessageHandler(None)
    handler = _state.pop("handler", None)
    if isinstance(handler, logging.Handler):
        log.removeHandler(handler)
        handler.close()
    _state.pop("path", None)
