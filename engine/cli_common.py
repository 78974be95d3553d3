"""What every ``eyetriage`` sub-command module shares: errors, exit codes, output helpers.

Kept free of heavy imports so the store-only commands start fast, and separate from
``cli.py`` so the command modules (``cli_explain``, ``cli_improve``) never import the
module that imports them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from .jsonable import to_jsonable

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_COLLAPSED = 3  # training ended with a one-class model; nothing was written
KNOWN_ERRORS = {
    "ModelFileError",
    "DatasetError",
    "StoreError",
    "ImageError",
    "CliError",
    "ImproveError",
    "UnreadableFile",
    "CollapsedModelError",
    "ClusterError",
}


class CliError(Exception):
    """A failure the user can act on; printed as one line, exit status 1."""


def err(msg: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"eyetriage: {msg}", file=sys.stderr)


def print_json(obj: Any) -> None:
    """``obj`` as indented, valid JSON (NaN becomes null) on stdout."""
    print(json.dumps(to_jsonable(obj), indent=2, allow_nan=False))


def known_error(e: BaseException) -> str | None:
    """The message of an error that already reads as a sentence for the user, else None."""
    names = {c.__name__ for c in type(e).__mro__}
    if names & KNOWN_ERRORS:
        return str(e)
    if isinstance(e, ValueError | FileNotFoundError | PermissionError):
        return str(e)
    return None


class Progress:
    """A one-line progress bar on a terminal; sparse plain lines otherwise (logs, CI)."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label = label
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.last_line = 0.0

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 and total else None
        from .tasks import format_eta

        msg = message if message and message != self.label else ""
        text = f"{self.label} {done}/{total} · {rate:.1f}/s · ETA {format_eta(eta)} {msg}".rstrip()
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else width
            print(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\033[K", end="", file=sys.stderr
            )
            if done >= total:
                print(file=sys.stderr)
        elif done >= total or time.monotonic() - self.last_line > 5:
            self.last_line = time.monotonic()
            print(text, file=sys.stderr)
