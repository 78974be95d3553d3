"""The one child-process runner for long worker tasks (``eyetriage --worker ...``).

:class:`WorkerProcess` builds the command (the frozen executable itself, or ``python -m
engine``), starts the child in its own session, reads its JSON lines on two daemon threads
(stdout: events; stderr: kept as a tail and passed on as ``stderr`` events), kills the whole
process tree on cancel, removes half-written model files a killed child left, and turns the
way the child ended into one sentence. The command line waits on it (:meth:`wait`,
:meth:`events`); the desktop polls it from a timer on the GUI thread (:meth:`drain`,
:meth:`finished`, :meth:`outcome`). :class:`ImproveProcess` is the improvement task.

A child that dies for any reason leaves the store unchanged: a new version is registered
only after its file is complete, in one transaction.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .config import MODELS_DIR, ImproveCancelled, ImproveConfig, ImproveError

STDERR_TAIL_LINES = 20
UNCHANGED = "Nothing was changed: the current model stays active."


def worker_command(args: list[str]) -> list[str]:
    """The command that runs ``--worker ARGS``: the frozen executable itself, or ``-m engine``."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "--worker", *args]
    return [sys.executable, "-m", "engine", "--worker", *args]


def worker_env() -> dict[str, str]:
    """The child's environment: unbuffered output, and this source tree first on the path."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if not getattr(sys, "frozen", False):
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill the child and everything it started (its process group; ``taskkill /T`` on Windows)."""
    if proc.poll() is not None:
        return
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session
    else:  # pragma: no cover - Windows
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["taskkill", "/T", "/F", "/PID", str(proc.pid)],
                capture_output=True,
                timeout=10,
                check=False,
            )
        with contextlib.suppress(OSError):
            proc.kill()


def exit_message(
    returncode: int,
    stderr_tail: list[str],
    task: str = "The improvement process",
    after: str = UNCHANGED,
) -> str:
    """Why a child ended without a result, in words (``task`` names it, ``after`` says what
    that means for the user's data)."""
    if returncode < 0:
        head = (
            f"{task} stopped unexpectedly (exit code {returncode}): it crashed "
            "or was ended by the system, for example when the computer ran out of memory."
        )
    else:
        head = f"{task} ended with exit code {returncode} before it finished."
    last = next((s.strip() for s in reversed(stderr_tail) if s.strip()), "")
    tail = f" Its last message: {last}" if last else ""
    return f"{head}{tail}\n\n{after}".rstrip()


def failure_message(error: str, after: str = UNCHANGED) -> str:
    """A failure the child reported itself, and what that means (nothing changed)."""
    text = error.strip().rstrip(".") or "the task failed"
    return f"{text[0].upper()}{text[1:]}.\n\n{after}".rstrip()


class WorkerProcess:
    """One ``--worker`` child with line-by-line JSON events and a hard cancel.

    Events are dicts: ``progress``, ``log``, ``done``, ``error`` (from the child) and
    ``stderr`` (a line the child wrote to stderr). ``on_event`` is called from a reader
    thread for every event; the same events are queued for :meth:`events` (blocking) or
    :meth:`drain` (non-blocking) — use one of the two.

    With ``stdin_pipe`` the child's standard input is a pipe that stays open for
    :meth:`send`, and ``stdin_line`` (one line of text) is written to it right after the
    child starts; otherwise the child's input is empty.
    ``task_words`` and ``after_failure`` word how a failed child is reported.
    """

    task_words = "The improvement process"
    after_failure = UNCHANGED

    def __init__(
        self,
        args: list[str],
        work_folder: str | os.PathLike | None = None,
        on_event: Callable[[dict], None] | None = None,
        stdin_line: str | None = None,
        stdin_pipe: bool = False,
    ) -> None:
        self.args = list(args)
        self.stdin_line = stdin_line
        self.stdin_pipe = stdin_pipe or stdin_line is not None
        self._stdin_lock = threading.Lock()
        self.work_folder = Path(work_folder) if work_folder is not None else None
        self.on_event = on_event
        self.proc: subprocess.Popen | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self.cancelled = False
        self.stderr_tail: list[str] = []
        self._events: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0
        self._outcome: tuple[str, Any] | None = None

    # ---- starting
    def command(self) -> list[str]:
        return worker_command(self.args)

    def start(self) -> None:
        """Spawn the child in its own session, so cancel can kill its process group."""
        if self.proc is not None:
            raise ImproveError("this task was already started")
        cmd = self.command()
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self._started_at = time.time()
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=worker_env(),
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **kwargs,
            )
        except OSError as e:
            raise ImproveError(
                f"{self.task_words} could not be started ({Path(cmd[0]).name}: "
                f"{e.strerror or e}). Check that EyeTriage is installed completely."
            ) from None
        if self.stdin_line is not None:
            self.send(self.stdin_line)
        for target, stream in (
            (self._read_stdout, self.proc.stdout),
            (self._read_stderr, self.proc.stderr),
        ):
            t = threading.Thread(target=target, args=(stream,), daemon=True, name="worker-reader")
            t.start()
            self._threads.append(t)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def send(self, line: str) -> bool:
        """Write one line to the child's standard input; False when it is no longer listening."""
        proc = self.proc
        if proc is None or proc.stdin is None:
            return False
        with self._stdin_lock:
            try:
                proc.stdin.write(line.rstrip("\n") + "\n")
                proc.stdin.flush()
            except (OSError, ValueError):  # the child has ended (broken pipe, closed file)
                return False
        return True

    def close_stdin(self) -> None:
        """End the child's standard input (a child that reads it sees end of file)."""
        proc = self.proc
        if proc is not None and proc.stdin is not None:
            with self._stdin_lock, contextlib.suppress(OSError, ValueError):
                proc.stdin.close()

    # ---- reading
    def _emit(self, event: dict) -> None:
        self._events.put(event)
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(event)

    def _read_stdout(self, stream) -> None:  # noqa: ANN001
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "log", "message": line}
            if not isinstance(event, dict) or "event" not in event:
                event = {"event": "log", "message": line}
            if event.get("event") == "done":
                self.result = dict(event.get("result") or {})
            elif event.get("event") == "error":
                self.error = str(event.get("message") or "unknown error")
            self._emit(event)
        stream.close()

    def _read_stderr(self, stream) -> None:  # noqa: ANN001
        for line in stream:
            text = line.rstrip()
            self.stderr_tail.append(text)
            del self.stderr_tail[:-STDERR_TAIL_LINES]
            if text.strip():
                self._emit({"event": "stderr", "message": text})
        stream.close()

    def drain(self) -> list[dict]:
        """Every event that arrived since the last call (never blocks)."""
        out = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return out
            if event is not None:
                out.append(event)

    def events(self) -> Iterator[dict]:
        """Events as they arrive, until the child ends (generator form of ``on_event``)."""
        while True:
            try:
                event = self._events.get(timeout=0.2)
            except queue.Empty:
                if self.finished() and self._events.empty():
                    return
                continue
            if event is None:
                return
            yield event
            if event.get("event") in ("done", "error"):
                return

    # ---- state
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def finished(self) -> bool:
        """The child has ended (and is reaped) and all its output has been read."""
        if self.proc is None or self.proc.poll() is None:
            return False
        return all(not t.is_alive() for t in self._threads)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`finished`; False if ``timeout`` seconds passed first."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        for t in self._threads:
            t.join(timeout=5)
        return self.finished()

    def outcome(self) -> tuple[str, Any]:
        """``("done", result)``, ``("cancelled", message)`` or ``("failed", message)``.

        Only once :meth:`finished`; a child that ended without a result had its half-written
        model files removed.
        """
        if self._outcome is not None:
            return self._outcome
        if not self.finished():
            raise ImproveError("the task has not finished yet")
        assert self.proc is not None
        rc = int(self.proc.returncode)
        if self.cancelled:
            outcome: tuple[str, Any] = ("cancelled", f"Cancelled. {self.after_failure}".strip())
        elif rc == 0 and self.result is not None:
            outcome = ("done", self.result)
        elif self.error:
            outcome = ("failed", self.failure_text(self.error))
        else:
            outcome = (
                "failed",
                exit_message(rc, self.stderr_tail, self.task_words, self.after_failure),
            )
        self.close_stdin()
        if outcome[0] != "done":
            self.clean_temporary_files()
        self._outcome = outcome
        self._events.put(None)
        return outcome

    def failure_text(self, error: str) -> str:
        """What the user is told of a failure the child reported itself."""
        return failure_message(error, self.after_failure)

    # ---- ending
    def wait(self, timeout: float | None = None) -> dict:
        """The result dict; raises :class:`ImproveError` (or ImproveCancelled) otherwise."""
        if self.proc is None:
            raise ImproveError("the task was not started")
        if not self.join(timeout):
            raise ImproveError(f"the worker process is still running after {timeout} s")
        kind, value = self.outcome()
        if kind == "done":
            return value
        if kind == "cancelled":
            raise ImproveCancelled(value)
        raise ImproveError(value)

    def cancel(self) -> None:
        """Kill the child and every process it started (returns at once)."""
        self.cancelled = True
        if self.proc is None:
            return
        kill_tree(self.proc)

    def clean_temporary_files(self) -> None:
        """Remove half-written model files the killed child left (``models/.*.tmp``)."""
        if self.work_folder is None:
            return
        folder = self.work_folder / MODELS_DIR
        if not folder.is_dir():
            return
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime >= self._started_at - 1:
                    p.unlink()


class ImproveProcess(WorkerProcess):
    """:func:`engine.improve.improve` in a child process (``--worker improve WS --config``)."""

    def __init__(
        self,
        ws_folder: str | os.PathLike,
        config: ImproveConfig,
        on_event: Callable[[dict], None] | None = None,
    ) -> None:
        folder = Path(ws_folder).expanduser().resolve()
        args = ["improve", str(folder), "--config", json.dumps(config.to_dict())]
        super().__init__(args, folder, on_event)
        self.ws_folder = folder
        self.config = config
