"""Entry script of the frozen application (PyInstaller runs this as ``__main__``).

``freeze_support`` must run first so that a multiprocessing child of the frozen
executable starts as a child and not as a second copy of the application. A windowed
build has no console (``sys.stdout``/``sys.stderr`` are ``None``); they are pointed at
``os.devnull`` so a stray ``print`` or progress bar cannot crash the application, while
errors still reach the crash log (``desktop.crash``) in the user's log folder.
"""

from __future__ import annotations

import multiprocessing
import os
import sys


def _ensure_streams() -> None:
    """Give a console-less process harmless standard streams."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115


def run() -> int:
    """Start the launcher (GUI, CLI, ``--self-test`` or ``--worker``)."""
    _ensure_streams()
    from desktop.launcher import main

    return main()


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(run())
