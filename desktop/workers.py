"""Background work for the shell: screening a folder into a workspace, loading the worklist.

Screening runs in a child process (:class:`engine.screen_task.ScreenProcess`): the window's
interpreter never decodes, runs the model or imports torch for it, so the window stays
responsive while it screens. The child's events are collected by a timer on the GUI thread.
Other jobs run on the thread pool: they get plain data (paths, numbers, dicts), never
widgets, and hand back plain dicts; each opens its own :class:`engine.store.Workspace`
connection (SQLite connections must not cross threads). Every worklist row is built by
:func:`desktop.worklist_model.row_from_prediction`, from the records the engine stored.
Every job reports errors as a readable message and always emits ``finished``;
:meth:`ScreenJob.wait` lets the window cancel and wait before it closes.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, QTimer, Signal

# Imported with the window, before it is shown: importing superqt takes about 0.25 s of the
# interpreter, which froze the window when the first background job imported it.
from superqt.utils import create_worker

from engine.screen_task import ScreenRequest
from engine.tasks import readable_error

from .worklist_model import row_from_prediction

__all__ = [
    "FunctionJob",
    "ScreenJob",
    "ScreenRequest",
    "load_worklist_rows",
    "readable_error",
    "spec_from_description",
    "start_now",
]

POLL_MS = 40  # how often the GUI thread collects the screening child's events


def _display_fn(spec: Any):  # noqa: ANN202
    # without a model description, still never show an internal name like "diabetic_retinopathy"
    return spec.display if spec is not None else (lambda x: str(x).replace("_", " "))


def spec_from_description(description: dict | None) -> Any:
    """A ModelSpec from the JSON description stored with a registered model (or None)."""
    if not description:
        return None
    from engine.modelfile import ModelSpec

    try:
        return ModelSpec.from_json(json.dumps(description))
    except Exception:  # noqa: BLE001 - an unreadable description only loses display names
        return None


def load_worklist_rows(workspace: Path) -> dict[str, Any]:
    """Rows for the worklist from the store (active model), plus the active model's facts."""
    from engine.store import Workspace

    with Workspace.open(workspace, create=False) as ws:
        active = ws.active_model()
        spec = spec_from_description(active.get("description") if active else None)
        display = _display_fn(spec)
        rows = [row_from_prediction(p, display) for p in ws.latest_predictions()]
        n_images = len(ws.images())
    return {
        "rows": rows,
        "spec": spec,
        "model_path": active.get("path") if active else None,
        "model_hash": active.get("hash") if active else None,
        "n_images": n_images,
    }


def _model_display(model_path: Path) -> Any:
    """The label display of a model file, from its description (no torch); readable names
    even when the file cannot be read here (the child then reports why)."""
    from engine.modelfile import read_spec

    try:
        return _display_fn(read_spec(model_path))
    except Exception:  # noqa: BLE001 - the screening child says what is wrong with the file
        return _display_fn(None)


def start_now(worker: Any) -> None:
    """Queue a superqt worker on the global thread pool at once.

    ``worker.start()`` called from the event loop defers the start by a timer tick; a
    window closing in between waited for a job that had not begun, and the job then ran
    while the application was being torn down. Started here, the pool's ``waitForDone``
    at shutdown covers it. The caller keeps a reference until ``finished``.
    """
    QThreadPool.globalInstance().start(worker)


class ScreenJob(QObject):
    """One screening run in a child process, adapted to Qt signals on the GUI thread.

    Signals: ``progress(done, total, message, rate)`` (throttled in the child),
    ``status(str)``, ``rows(list)`` once per stored chunk, ``done(dict)`` with the run
    summary, ``failed(str)`` with a readable message, and ``finished()`` always, last.
    """

    progress = Signal(int, int, str, float)
    status = Signal(str)
    rows = Signal(list)
    done = Signal(dict)
    failed = Signal(str)
    finished = Signal()

    def __init__(
        self,
        request: ScreenRequest,
        parent: QObject | None = None,
        poll_ms: int = POLL_MS,
        spare: Any = None,
    ) -> None:
        super().__init__(parent)
        self._spare = spare  # a waiting engine.screen_task.ScreenProcess to hand the run to
        from engine.tasks import TaskState

        self.request = request
        self.state = TaskState()  # the cancel flag the window reads; progress is the child's
        self.device = ""
        self.run_id: int | None = None
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self.started_at = 0.0
        self.proc: Any = None  # engine.screen_task.ScreenProcess
        self._running = False
        self._display = _display_fn(None)
        self._timer = QTimer(self)
        self._timer.setInterval(poll_ms)
        self._timer.timeout.connect(self._poll)

    def start(self) -> None:
        """Hand the run to the spare process, or start a child (returns at once; a child
        that cannot start is ``failed``)."""
        from engine.screen_task import ScreenProcess

        self.started_at = time.monotonic()
        self._running = True
        self._display = _model_display(Path(self.request.model_path))
        spare, self._spare = self._spare, None
        if spare is not None and spare.submit(self.request):
            self.proc = spare
            self._timer.start()
            return
        if spare is not None:  # it ended meanwhile: make sure it is gone
            spare.cancel()
        proc = ScreenProcess(self.request)
        try:
            proc.start()
        except Exception as exc:  # noqa: BLE001 - said once the caller is listening
            self._report_error(exc)
            QTimer.singleShot(0, self._finish)
            return
        self.proc = proc
        self._timer.start()

    def _poll(self) -> None:
        proc = self.proc
        if proc is None or not self._running:
            return
        self._handle(proc.drain())
        if proc.finished():
            self._handle(proc.drain())
            kind, value = proc.outcome()
            if kind != "done" and self.summary is None:
                self.error = str(value)
                self.failed.emit(self.error)
            self._finish()

    def _handle(self, events: list[dict[str, Any]]) -> None:
        """The events of one poll, in order, except that the chunks of rows that arrived
        together are handed on as one (one worklist update, not one per chunk) with only the
        latest progress among them: a pass that handled three chunks held the window three
        times as long. Any other event (a status, the end) comes after the rows before it."""
        records: dict[str, Any] | None = None
        progress: dict[str, Any] | None = None

        def flush() -> None:
            nonlocal records, progress
            for pending in (records, progress):
                if pending is not None:
                    self._on_event(pending)
            records = progress = None

        for event in events:
            kind = event.get("event")
            if kind == "records":
                rows = [*(records or {}).get("records", []), *(event.get("records") or [])]
                records = {**event, "records": rows}
            elif kind == "progress":
                progress = event
            else:
                flush()
                self._on_event(event)
        flush()

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "records":
            self.run_id = event.get("run_id")
            rows = [row_from_prediction(r, self._display) for r in event.get("records") or []]
            self.rows.emit(rows)
        elif kind == "progress":
            self.state.progress(int(event["done"]), int(event["total"]), event.get("message", ""))
            self.progress.emit(
                int(event["done"]),
                int(event["total"]),
                str(event.get("message") or ""),
                float(event.get("rate") or 0.0),
            )
        elif kind == "status":
            self.device = event.get("device") or self.device
            self.status.emit(str(event.get("message") or ""))
        elif kind == "done":
            summary = dict(event.get("result") or {})
            self.device = summary.get("device", "") or self.device
            self.run_id = summary.get("run_id") or self.run_id
            self.summary = summary
            self.done.emit(summary)
        elif kind == "stderr":
            from .crash import log

            log.debug("screening: %s", event.get("message"))

    def _report_error(self, exc: BaseException) -> None:
        from .crash import log

        log.error("screening failed\n%s", "".join(traceback.format_exception(exc)))
        self.error = readable_error(exc)
        self.failed.emit(self.error)

    def _finish(self) -> None:
        if not self._running:
            return
        self._running = False
        self._timer.stop()
        self.finished.emit()

    def is_running(self) -> bool:
        return self._running

    def cancel(self) -> None:
        """Ask the run to stop after the current batch (the run is recorded as cancelled)."""
        self.state.cancel()
        if self.proc is not None:
            self.proc.stop()

    def wait(self, timeout_s: float = 120.0) -> bool:
        """Block until the child has ended; True when it has (or never ran)."""
        proc = self.proc
        return True if proc is None else proc.join(timeout_s)

    def kill(self) -> None:
        """End the child and everything it started at once (a run that did not stop when
        asked); the store stays consistent, one transaction per chunk."""
        if self.proc is not None:
            self.proc.cancel()
            self.proc.join(10)


class FunctionJob(QObject):
    """A small one-shot background call returning a value (``returned``/``failed``/``finished``)."""

    returned = Signal(object)
    failed = Signal(str)
    finished = Signal()

    def __init__(self, fn: Any, *args: Any, parent: QObject | None = None, **kwargs: Any) -> None:
        super().__init__(parent)
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._stopped = threading.Event()
        self._worker: Any = None

    def _call(self) -> Any:
        try:
            return self._fn(*self._args, **self._kwargs)
        finally:
            self._stopped.set()

    def start(self) -> None:
        worker = create_worker(
            self._call, _start_thread=False, _connect={"errored": self._on_error}
        )
        worker.returned.connect(self.returned.emit)
        worker.finished.connect(self.finished.emit)
        self._worker = worker
        start_now(worker)

    def _on_error(self, exc: BaseException) -> None:
        from .crash import log

        log.error("background task failed\n%s", "".join(traceback.format_exception(exc)))
        self.failed.emit(readable_error(exc))

    def wait(self, timeout_s: float = 60.0) -> bool:
        return True if self._worker is None else self._stopped.wait(timeout_s)
