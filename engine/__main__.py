"""``python -m engine`` runs the headless command line (``--worker ...``: a child task)."""

import sys

if sys.argv[1:2] == ["--worker"]:
    from .worker import main as worker_main

    sys.exit(worker_main(sys.argv[2:]))

from .cli import main

sys.exit(main())
