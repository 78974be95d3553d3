"""A small GUI-free progress/cancel object handed to every long engine task.

The desktop adapts it to Qt signals; the command line prints it. Progress callbacks are
throttled here so a fast loop cannot flood a slow receiver.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]


class Cancelled(Exception):
    """Raised inside a task that noticed its cancel flag."""


class TaskState:
    """Progress reporting and cooperative cancellation for one task.

    ``progress(done, total, message)`` may be called as often as convenient; the callback
    sees at most one call per ``min_interval`` seconds, plus always the final one.
    """

    def __init__(self, on_progress: ProgressFn | None = None, min_interval: float = 0.1) -> None:
        self._on_progress = on_progress
        self._min_interval = min_interval
        self._last = 0.0
        self._cancel = threading.Event()
        self.done = 0
        self.total = 0
        self.message = ""
        self.started = time.monotonic()

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.done, self.total, self.message = done, total, message
        now = time.monotonic()
        if self._on_progress and (done >= total or now - self._last >= self._min_interval):
            self._last = now
            self._on_progress(done, total, message)

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` when cancellation was requested."""
        if self._cancel.is_set():
            raise Cancelled()

    def rate(self) -> float:
        """Items per second since the task started."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


def readable_error(exc: BaseException) -> str:
    """A message a clinician can act on, from an exception (a task that stopped as a whole;
    files that cannot be read are reported per file and never stop a batch)."""
    from .images import ImageError

    if isinstance(exc, FileNotFoundError):
        return f"A file or folder is missing: {exc}"
    if isinstance(exc, ImageError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return f"EyeTriage is not allowed to read or write a file: {exc}"
    if isinstance(exc, MemoryError):
        return "Not enough memory. Try a smaller batch size in Settings."
    name = type(exc).__name__
    if name in ("ModelFileError", "StoreError", "ValueError"):
        return str(exc)
    return f"{name}: {exc}"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds + 0.5)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
