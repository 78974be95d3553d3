"""Child-process entry for long tasks: ``eyetriage --worker improve WS --config JSON`` and
``eyetriage --worker screen`` (the request as one JSON line on stdin, see
:mod:`engine.screen_task`).

Prints one JSON object per line on stdout, and nothing else there (everything else the task
or a library prints goes to stderr): ``{"event": "progress", "done", "total", "epoch",
"loss", "eta_s", "message"}``, ``{"event": "log", "message"}`` (screening: ``status`` and
``records`` too), and finally ``{"event": "done", "result": {...}}`` (exit 0) or
``{"event": "error", "message"}`` (exit 1).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import TextIO

from .jsonable import to_jsonable


class _Emitter:
    """Writes events as single JSON lines to the real stdout, flushed at once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()  # progress may come from another thread

    def __call__(self, event: dict) -> None:
        line = json.dumps(to_jsonable(event), allow_nan=False) + "\n"
        with self._lock:
            self.out.write(line)
            self.out.flush()


BACKGROUND_NICENESS = 10  # POSIX: how much lower than its parent a worker child runs


def yield_to_the_window() -> None:
    """Run this process below normal CPU priority (best effort).

    A worker child computes while a person works in the window: on a machine with few cores
    its threads would otherwise take turns with the window's thread, and every repaint and
    key press would wait for them. At a lower priority the window runs first; when the window
    is idle the child still gets every core, so a run takes as long as before.
    """
    try:
        if os.name == "posix":
            niceness = os.nice(BACKGROUND_NICENESS)
            _lower_autogroup(niceness)
        elif os.name == "nt":  # pragma: no cover - Windows
            import ctypes

            below_normal = 0x4000  # BELOW_NORMAL_PRIORITY_CLASS
            kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
            kernel32.SetPriorityClass(kernel32.GetCurrentProcess(), below_normal)
    except (OSError, AttributeError):  # not allowed or not available: run at normal priority
        pass


def _lower_autogroup(niceness: int) -> None:
    """Linux with autogroup scheduling: give this process's group the same niceness.

    A child started in a session of its own (as worker children are) gets a scheduling
    group of its own, and the kernel shares the CPU between groups equally whatever the
    niceness of the processes inside them: a niced child still took half the cores from
    the window. The group's own niceness is what counts between groups. Only a process that
    leads its own session changes it (otherwise the group is its parent's too).
    """
    if os.getsid(0) != os.getpid():
        return  # the group is shared with the process that started this one: leave it
    for attempt in range(2):
        try:
            with open("/proc/self/autogroup", "w", encoding="ascii") as f:
                f.write(str(min(niceness, 19)))
            return
        except OSError as e:
            # the kernel lets an unprivileged process change a group once per 100 ms
            # (EAGAIN): a second child started just after the first tries again
            if e.errno != errno.EAGAIN or attempt:
                return  # no autogroup here (another kernel, or cgroups decide)
            time.sleep(0.15)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eyetriage --worker")
    sub = p.add_subparsers(dest="task", required=True)
    i = sub.add_parser("improve", help="fine-tune the active model of a workspace")
    i.add_argument("workspace")
    i.add_argument("--config", default="{}", help="ImproveConfig as JSON")
    sub.add_parser("screen", help="screen into a workspace (request: one JSON line on stdin)")
    return p


def _sentence(e: Exception) -> str:
    """The error as a sentence for the user; the traceback went to stderr (the details)."""
    from .cli_common import known_error

    known = known_error(e)
    if known:
        return known
    return (
        f"the task stopped with an unexpected error ({type(e).__name__}); the details are in "
        "the log"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one worker task; returns the exit status (0 done, 1 error, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    emit = _Emitter(sys.stdout)
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the event stream
    yield_to_the_window()
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as e:
            emit({"event": "error", "message": f"bad worker arguments: {' '.join(argv)}"})
            return int(e.code or 2)
        if args.task == "screen":
            return _screen(emit)
        try:
            from .improve import ImproveConfig, ImproveState, improve
            from .tasks import Cancelled

            config = ImproveConfig.from_dict(json.loads(args.config))
            state = ImproveState(emit)

            def log(message: str) -> None:
                emit({"event": "log", "message": str(message)})

            result = improve(args.workspace, config, state=state, log=log)
        except Cancelled:
            emit({"event": "error", "message": "cancelled"})
            return 1
        except Exception as e:  # noqa: BLE001 - every failure becomes one error event
            traceback.print_exc(file=sys.stderr)
            emit({"event": "error", "message": _sentence(e)})
            return 1
        emit({"event": "done", "result": result})
        return 0
    finally:
        sys.stdout = real_stdout


def _screen(emit: _Emitter) -> int:
    """Screening: ``done`` (exit 0) even when cancelled; ``error`` (exit 1) when the run as a
    whole could not go on, in the same words the window used for it."""
    from .screen_task import run_worker
    from .tasks import readable_error

    try:
        # a windowed bundle may have no sys.stdin object, but the pipe is descriptor 0
        run_worker(sys.stdin.fileno() if sys.stdin is not None else 0, emit)
    except Exception as e:  # noqa: BLE001 - every failure becomes one error event
        traceback.print_exc(file=sys.stderr)
        emit({"event": "error", "message": readable_error(e)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
