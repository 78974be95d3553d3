"""The ``eyetriage`` executable: the desktop application or the headless command line.

``eyetriage`` alone (or ``eyetriage gui``) opens the application once it exists; every other
sub-command goes to :mod:`engine.cli`. Keeping the dispatch here lets ``engine`` stay free
of any GUI import.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gui"] or not argv:
        try:
            from desktop.app import run_app  # noqa: PLC0415 - Qt only when the GUI is wanted
        except ImportError:
            if argv:
                print("eyetriage: the desktop application is not part of this build yet", file=sys.stderr)
                return 1
        else:
            return run_app(argv[1:])
    from engine.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
