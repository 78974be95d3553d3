"""The :class:`Workspace` facade: one object with every store operation.

Callers use only this class (and the names :mod:`engine.store` exports); the parts it is
made of are split by concern so each stays small enough to read in one sitting.
"""

from __future__ import annotations

from .exchange import Exchange
from .grading import Grading
from .queries import Queries
from .summaries import Summaries
from .writes import Writes


class Workspace(Summaries, Exchange, Grading, Queries, Writes):
    """An open workspace folder. Use :meth:`open`; close it (or use ``with``) when done.

    One instance may be shared between threads (calls are serialised by a lock); each
    process opens its own. Other processes may write at the same time.
    """
