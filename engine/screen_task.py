"""Screening a workspace as one task of plain events, run in a child process for the window.

The desktop screens in a child process (``eyetriage --worker screen``, see
:mod:`engine.worker`) so that the window's interpreter never runs the decoding threads, the
model, the quality gate or the engine export: run as threads of the window's process, they
took the interpreter lock from the window for 100 to 400 ms at a time while screening
(``benchmarks/bench_gui.py``), and the window also had to load torch while it was on screen.
The child screens with the same engine function as the command line's ``screen``
(:func:`engine.workspace_screen.iter_screen_into_workspace`), so the workspace holds the
same rows whichever started the run.

The request (:class:`ScreenRequest`) is the child's first line of standard input, as JSON
(a list of files could be too long for a command line); a later line ``cancel``, or the end
of its input (the window has gone), stops the run after the current batch, and the run is
recorded as cancelled. The child answers with one JSON event per line (``status``,
``progress``, ``records``, then ``done`` or ``error``): :class:`ScreenProcess` starts it and
reads them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .improve.process import WorkerProcess
from .tasks import TaskState
from .triage import DEFAULT_THRESHOLD

KEPT = "Images screened before it stopped are kept in the workspace."
# loaded by the child before it reads its request
WARM_MODULES = (
    "engine.models",
    "engine.screen",
    "engine.workspace_screen",
    "engine.backends",
    "engine.volumes",
    "timm",
)


@dataclass
class ScreenRequest:
    """Everything a screening run needs, as plain data (sent to the child as JSON)."""

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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (paths as text)."""
        d = asdict(self)
        for key in ("workspace", "model_path", "image_folder"):
            d[key] = None if d[key] is None else str(d[key])
        d["paths"] = None if self.paths is None else [str(p) for p in self.paths]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScreenRequest:
        """The request from :meth:`to_dict`; unknown keys are refused in words."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown screening settings: {', '.join(unknown)}")
        values = dict(d)
        for key in ("workspace", "model_path", "image_folder"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if values.get("paths") is not None:
            values["paths"] = [Path(p) for p in values["paths"]]
        return cls(**values)


def _request_line(request: ScreenRequest) -> str:
    d = request.to_dict()
    d["workspace"] = str(Path(request.workspace).expanduser().resolve())
    return json.dumps(d)


def _done(status: str, device: str, message: str | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": status,
        "counts": {},
        "screened": 0,
        "skipped": 0,
        "unreadable": [],
        "run_id": None,
        "device": device,
    }
    if message:
        summary["message"] = message
    return {"event": "done", "result": summary}


def screening_events(request: ScreenRequest, state: TaskState) -> Iterator[dict[str, Any]]:
    """The screening run as plain events.

    Yields ``{"event": "status", "message"}`` (with ``device`` once the model is loaded),
    ``{"event": "records", "records", "run_id"}`` per stored chunk (the rows the engine
    stored, in the shape of :meth:`engine.store.Workspace.latest_predictions`) and finally
    ``{"event": "done", "result"}`` with the engine's summary plus ``device``. Progress goes
    to ``state``. Errors that stop the whole run are raised (a file that cannot be read is a
    row with its reason, never an error of the run).
    """
    from .engines import engine_cache_dir
    from .screen import ScreenSettings
    from .triage import TriagePolicy
    from .volumes import discover_items
    from .workspace_screen import iter_screen_into_workspace

    paths: list[Any] = list(request.paths or [])
    if not paths:
        if request.image_folder is None:
            raise ValueError("no images to screen: choose an image folder first")
        folder = Path(request.image_folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the image folder {folder} does not exist (moved or unplugged?)"
            )
        yield {"event": "status", "message": f"Looking for images in {folder.name}…"}
        paths = discover_items(folder)  # images, DICOM files and OCT volumes
    if not paths:
        yield _done("finished", "", "no images found")
        return
    yield {"event": "status", "message": "Loading the model…"}
    from .models import load_model

    lm = load_model(request.model_path, device=request.device)
    device = str(lm.device).split(":")[0].upper()
    yield {"event": "status", "message": f"Screening on {device}…", "device": device}
    if state.cancelled():
        yield _done("cancelled", device)
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
    actor = str(request.extra.get("actor") or "desktop")
    events = iter_screen_into_workspace(
        request.workspace, paths, [lm], settings, state, actor=actor, keep_names=request.keep_names
    )
    try:
        for event in events:
            if event["kind"] == "chunk":
                yield {"event": "records", "records": event["records"], "run_id": event["run_id"]}
            else:
                summary = {k: v for k, v in event.items() if k != "kind"}
                yield {"event": "done", "result": {**summary, "device": device}}
    finally:
        events.close()  # records a cancelled run even when the caller stops early


class _Lines:
    """Lines of text from a file descriptor, read with ``os.read``: a thread blocked in it
    holds no lock of a Python file object, so the process can always exit."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = b""

    def readline(self) -> str | None:
        """The next line without its newline; ``None`` at the end of the input."""
        while b"\n" not in self._buf:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                rest, self._buf = self._buf, b""
                return rest.decode("utf-8", "replace") if rest else None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace")


def listen_for_cancel(lines: _Lines, state: TaskState) -> threading.Thread:
    """Cancel ``state`` when the input says ``cancel`` or ends (a daemon thread)."""

    def listen() -> None:
        while True:
            line = lines.readline()
            if line is None or line.strip() == "cancel":
                break
        state.cancel()

    thread = threading.Thread(target=listen, daemon=True, name="cancel-listener")
    thread.start()
    return thread


def warm_up() -> None:
    """Import what screening needs (torch, timm, the screener, ONNX Runtime when installed)
    before the request arrives: a spare child is ready when it is handed one."""
    for name in WARM_MODULES:
        importlib.import_module(name)
    with contextlib.suppress(ImportError):
        importlib.import_module("onnxruntime")


def run_worker(stdin_fd: int, emit: Callable[[dict], None]) -> None:
    """The child's side: load the libraries, read the request from ``stdin_fd``, screen and
    emit every event (``done`` last); input that ends before a request (a spare that was not
    needed) ends it quietly. Raises what stopped the run; the worker entry turns it into
    one ``error`` event.
    """
    warm_up()
    lines = _Lines(stdin_fd)
    line = lines.readline()
    if line is None:
        return
    if not line.strip():
        raise ValueError("no screening request was given on standard input")
    request = ScreenRequest.from_dict(json.loads(line))

    def progress(done: int, total: int, message: str) -> None:
        emit(
            {
                "event": "progress",
                "done": done,
                "total": total,
                "message": message,
                "rate": state.rate(),
            }
        )

    state = TaskState(on_progress=progress, min_interval=0.2)
    listen_for_cancel(lines, state)
    for event in screening_events(request, state):
        emit(event)


class ScreenProcess(WorkerProcess):
    """A screening run in a child process (``--worker screen``, request on stdin).

    Made with a request, the child gets it as soon as it starts. Made without one, it is a
    spare: started ahead of time, it loads the screening libraries and waits, and
    :meth:`submit` hands it the request later (the run then starts without that wait); a
    spare whose input ends unused exits quietly. :meth:`stop` asks the child to stop after
    the current batch (the run is recorded as cancelled and ``done`` still follows);
    :meth:`cancel` kills it at once.
    """

    task_words = "The screening process"
    after_failure = KEPT

    def __init__(
        self, request: ScreenRequest | None = None, on_event: Callable[[dict], None] | None = None
    ) -> None:
        line = None if request is None else _request_line(request)
        super().__init__(["screen"], None, on_event, stdin_line=line, stdin_pipe=True)
        self.request = request

    def submit(self, request: ScreenRequest) -> bool:
        """Hand a waiting spare its request; False when it can no longer take one."""
        if self.request is not None or not self.running():
            return False
        self.request = request
        return self.send(_request_line(request))

    def failure_text(self, error: str) -> str:
        """The child's own words (they may begin with a file name: kept as written)."""
        return error

    def stop(self) -> None:
        """Stop after the current batch (cooperative; the child records a cancelled run)."""
        self.send("cancel")
