"""Background work for the shell: screening a folder into a workspace, loading the worklist.

Workers get plain data (paths, numbers, dicts), never widgets, and hand back plain dicts.
Each opens its own :class:`engine.store.Workspace` connection (SQLite connections must not
cross threads); screening rows come from the engine as it stores them, and every worklist
row is built by :func:`desktop.worklist_model.row_from_prediction`. Every job reports
errors as a readable message and always emits ``finished``; :meth:`ScreenJob.wait` lets
the window cancel and wait before it closes.
torch is imported inside the worker, so the window never waits for it.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal

from engine.triage import DEFAULT_THRESHOLD

from .worklist_model import row_from_prediction


@dataclass
class ScreenRequest:
    """Everything a screening run needs, as plain data."""

    workspace: Path
    model_path: Path
    image_folder: Path | None = None
    paths: list[Path] | None = None
    device: str = "auto"
    batch_size: int = 32
    uncertainty: str = "mc"
    policy: str = "threshold"
    threshold: float = DEFAULT_THRESHOLD
    refer_findings: bool = False
    engine: str = "auto"
    keep_names: bool = False  # store the patient names DICOM files carry
    extra: dict[str, Any] = field(default_factory=dict)


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


def screening_events(request: ScreenRequest, state: Any) -> Iterator[dict[str, Any]]:
    """The screening run as plain events (runs in a worker thread).

    Yields ``{"kind": "status", "message"}``, ``{"kind": "rows", "rows", "run_id"}`` per
    chunk and finally ``{"kind": "done", ...}`` (the engine's summary plus ``device``).
    """
    from engine.engines import engine_cache_dir
    from engine.screen import ScreenSettings
    from engine.triage import TriagePolicy
    from engine.volumes import discover_items
    from engine.workspace_screen import iter_screen_into_workspace

    paths: list[Any] = list(request.paths or [])
    if not paths:
        if request.image_folder is None:
            raise ValueError("no images to screen: choose an image folder first")
        folder = Path(request.image_folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the image folder {folder} does not exist (moved or unplugged?)"
            )
        yield {"kind": "status", "message": f"Looking for images in {folder.name}…"}
        paths = discover_items(folder)  # images, DICOM files and OCT volumes
    if not paths:
        yield {
            "kind": "done",
            "status": "finished",
            "counts": {},
            "screened": 0,
            "skipped": 0,
            "unreadable": [],
            "run_id": None,
            "device": "",
            "message": "no images found",
        }
        return
    yield {"kind": "status", "message": "Loading the model…"}
    from engine.models import load_model  # torch: imported here, off the GUI thread

    lm = load_model(request.model_path, device=request.device)
    device = str(lm.device).split(":")[0].upper()
    yield {"kind": "status", "message": f"Screening on {device}…", "device": device}
    if state.cancelled():
        yield {
            "kind": "done",
            "status": "cancelled",
            "counts": {},
            "screened": 0,
            "skipped": 0,
            "unreadable": [],
            "run_id": None,
            "device": device,
        }
        return
    settings = ScreenSettings(
        batch_size=request.batch_size,
        device=request.device,
        uncertainty=request.uncertainty,
        policy=TriagePolicy(
            kind=request.policy, threshold=request.threshold, refer_findings=request.refer_findings
        ),
        engine=request.engine,
        engine_cache=engine_cache_dir(request.workspace),
    )
    display = lm.spec.display
    actor = str(request.extra.get("actor") or "desktop")
    events = iter_screen_into_workspace(
        request.workspace, paths, [lm], settings, state, actor=actor, keep_names=request.keep_names
    )
    try:
        for event in events:
            if event["kind"] == "chunk":
                # the engine hands back the rows it stored: no second look at the database
                rows = [row_from_prediction(record, display) for record in event["records"]]
                yield {"kind": "rows", "rows": rows, "run_id": event["run_id"]}
            else:
                yield {**event, "device": device}
    finally:
        events.close()  # records a cancelled run even when we stop early


def start_now(worker: Any) -> None:
    """Queue a superqt worker on the global thread pool at once.

    ``worker.start()`` called from the event loop defers the start by a timer tick; a
    window closing in between waited for a job that had not begun, and the job then ran
    while the application was being torn down. Started here, the pool's ``waitForDone``
    at shutdown covers it. The caller keeps a reference until ``finished``.
    """
    QThreadPool.globalInstance().start(worker)


class ScreenJob(QObject):
    """One screening run in a superqt worker, adapted to Qt signals on the GUI thread.

    Signals: ``progress(done, total, message, rate)`` (throttled), ``status(str)``,
    ``rows(list)`` once per chunk, ``done(dict)`` with the run summary, ``failed(str)`` with
    a readable message, and ``finished()`` always, last.
    """

    progress = Signal(int, int, str, float)
    status = Signal(str)
    rows = Signal(list)
    done = Signal(dict)
    failed = Signal(str)
    finished = Signal()

    def __init__(
        self, request: ScreenRequest, parent: QObject | None = None, min_interval: float = 0.2
    ) -> None:
        super().__init__(parent)
        from engine.tasks import TaskState

        self.request = request
        self.state = TaskState(on_progress=self._on_progress_thread, min_interval=min_interval)
        self.device = ""
        self.run_id: int | None = None
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self.started_at = 0.0
        self._stopped = threading.Event()
        self._running = False
        self._worker: Any = None

    def _on_progress_thread(self, done: int, total: int, message: str) -> None:
        # called in the worker thread: a queued signal carries plain numbers to the GUI
        self.progress.emit(done, total, message, self.state.rate())

    def _events(self) -> Iterator[dict[str, Any]]:
        try:
            yield from screening_events(self.request, self.state)
        finally:
            self._stopped.set()

    def start(self) -> None:
        from superqt.utils import create_worker

        self.started_at = time.monotonic()
        self._running = True
        worker = create_worker(
            self._events, _start_thread=False, _connect={"errored": self._on_error}
        )
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        start_now(worker)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "rows":
            self.run_id = event.get("run_id")
            self.rows.emit(event["rows"])
        elif kind == "status":
            self.device = event.get("device") or self.device
            self.status.emit(event["message"])
        elif kind == "done":
            self.device = event.get("device", "")
            self.run_id = event.get("run_id") or self.run_id
            self.summary = event
            self.done.emit(event)

    def _on_error(self, exc: BaseException) -> None:
        from .crash import log

        log.error("screening failed\n%s", "".join(traceback.format_exception(exc)))
        self.error = readable_error(exc)
        self.failed.emit(self.error)

    def _on_finished(self) -> None:
        self._running = False
        self.finished.emit()

    def is_running(self) -> bool:
        return self._running

    def cancel(self) -> None:
        """Ask the run to stop after the current batch (the run is recorded as cancelled)."""
        self.state.cancel()

    def wait(self, timeout_s: float = 120.0) -> bool:
        """Block until the worker's generator has ended; True when it has (or never ran)."""
        if self._worker is None:
            return True
        return self._stopped.wait(timeout_s)


def readable_error(exc: BaseException) -> str:
    """A message a clinician can act on, from an exception."""
    from engine.images import ImageError

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
        from superqt.utils import create_worker

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
