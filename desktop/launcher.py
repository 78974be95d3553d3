"""The ``eyetriage`` executable: the desktop application, or the headless command line.

``eyetriage`` alone (or ``eyetriage gui ...``) opens the application; ``--self-test`` checks
an installation headless; ``--worker ...`` is the child-process entry used by long tasks
(model improvement) so it works the same in a frozen bundle; every other sub-command goes
to :mod:`engine.cli`. Keeping the dispatch here lets ``engine`` stay free of GUI imports.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        from engine.worker import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] == ["--self-test"]:
        from engine.selftest import main as selftest_main

        return selftest_main(argv[1:])
    if not argv or argv[0] == "gui" or (argv[0] == "--demo"):
        from desktop.app import run_app  # Qt only when the GUI is wanted

        return run_app(argv[1:] if argv and argv[0] == "gui" else argv)
    from engine.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    # freeze_support lets multiprocessing children of a frozen app start correctly
    import multiprocessing

    multiprocessing.freeze_support()
    sys.exit(main())
