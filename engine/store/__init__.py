"""The workspace store: one SQLite file holding images, models, runs, predictions and reviews.

A workspace is a folder ``W`` with ``W/workspace.sqlite`` and ``W/cache/``. The database
stays a plain SQLite file (sqlite-utils and Datasette open it). Rules the store keeps:

* every write is one ``BEGIN IMMEDIATE`` transaction, so a crash (even ``kill -9``) at
  any moment leaves either all of a write or none of it; WAL mode, ``synchronous=FULL``,
  foreign keys on and a busy timeout so several processes can write at once;
* reviews (and the audit log) are append-only, enforced by triggers; the current label of
  an image is its latest effective review, and "undo" is a new review that cancels an
  earlier one;
* source images are only referenced by path, never touched;
* the schema is versioned in ``migrations`` and a database from a newer program is refused;
* SQL lives only in this package: the CLI, the desktop and the rest of the engine call
  :class:`Workspace` methods (or :func:`registered_model_path`).

The parts, by concern: :mod:`.schema` (tables and migrations), :mod:`.base` (connection
and transactions), :mod:`.rules` (active model, latest prediction, current review),
:mod:`.writes`, :mod:`.queries`, :mod:`.exchange` (export/import) and :mod:`.summaries`
(agreement, patient roll-up, dashboard totals); :mod:`.workspace` joins them.

Only the standard library is imported at module level; ``sqlite_utils`` (which pulls in
numpy) is imported when :attr:`Workspace.db` is first used, and ``engine.metrics`` only
inside :meth:`Workspace.agreement`, so store-only commands start fast.
"""

from __future__ import annotations

from .common import (
    DB_NAME,
    REFERRED_STATES,
    REVIEW_ACTIONS,
    RUN_STATUSES,
    TRIAGE_STATES,
    StoreError,
    database_path,
    is_workspace,
    settings_key,
    sha256_file,
)
from .exchange import EXPORT_COLUMNS
from .grading import EntryError
from .queries import registered_model_path
from .schema import SCHEMA_VERSION
from .workspace import Workspace

__all__ = [
    "DB_NAME",
    "EXPORT_COLUMNS",
    "EntryError",
    "REFERRED_STATES",
    "REVIEW_ACTIONS",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "TRIAGE_STATES",
    "StoreError",
    "Workspace",
    "database_path",
    "is_workspace",
    "registered_model_path",
    "settings_key",
    "sha256_file",
]
