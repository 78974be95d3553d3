"""The engine's improvement child process, seen from the GUI thread as Qt signals.

The engine's :class:`engine.improve.ImproveProcess` builds the command, starts the child in
its own session, reads its JSON lines, kills the whole process tree on cancel and explains
how the child ended. :class:`ImproveRun` owns one and polls it from a :class:`QTimer` on the
GUI thread, so no Qt object is touched from the engine's reader threads.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

POLL_MS = 50  # how often the GUI thread collects the child's events


class ImproveRun(QObject):
    """One improvement run in a child process, reporting its JSON lines as signals.

    ``progress(dict)`` / ``log(str)`` while it runs; then exactly one of ``succeeded(result)``,
    ``failed(message)`` or ``cancelled()``; then always ``ended()``.
    """

    progress = Signal(dict)
    log = Signal(str)
    succeeded = Signal(dict)
    failed = Signal(str)
    cancelled = Signal()
    ended = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.proc = None  # engine.improve.ImproveProcess
        self.result: dict | None = None
        self.error: str | None = None
        self.pid = 0
        self._running = False
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self._poll)

    def start(self, ws_folder: Path, config: dict) -> None:
        """Start the child (returns at once)."""
        from engine.improve import ImproveConfig, ImproveError, ImproveProcess

        self._running = True
        try:
            proc = ImproveProcess(Path(ws_folder), ImproveConfig.from_dict(config))
            proc.start()
        except ImproveError as exc:  # could not start: say so once the caller is listening
            self.error = str(exc)
            QTimer.singleShot(0, lambda: self._finish("failed", self.error))
            return
        self.proc = proc
        self.pid = proc.pid
        self._timer.start()

    def is_running(self) -> bool:
        return self._running

    def cancel(self) -> None:
        """Kill the child and everything it started; ``cancelled`` follows."""
        if self._running and self.proc is not None:
            self.proc.cancel()

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until the child has ended and report it (used when the window closes)."""
        if self.proc is None or not self._running:
            return True
        done = self.proc.join(msecs / 1000)
        self._poll()
        return done

    # ---- the timer
    def _poll(self) -> None:
        proc = self.proc
        if proc is None or not self._running:
            return
        for event in proc.drain():
            kind = event.get("event")
            if kind == "progress":
                self.progress.emit(event)
            elif kind in ("log", "stderr"):
                self.log.emit(str(event.get("message", "")))
            elif kind == "error":
                self.log.emit(f"error: {event.get('message')}")
        if proc.finished():
            kind, value = proc.outcome()
            self._finish(kind, value)

    def _finish(self, kind: str, value: object) -> None:
        if not self._running:
            return
        self._running = False
        self._timer.stop()
        if kind == "done":
            self.result = dict(value)  # type: ignore[call-overload]
            self.succeeded.emit(self.result)
        elif kind == "cancelled":
            self.cancelled.emit()
        else:
            self.error = str(value)
            self.failed.emit(self.error)
        self.ended.emit()
