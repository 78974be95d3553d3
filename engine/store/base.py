"""The open workspace: connection, transactions, schema migration and the audit insert.

Every write is one ``BEGIN IMMEDIATE`` transaction (a crash, even ``kill -9``, leaves all
of a write or none of it); WAL mode, ``synchronous=FULL``, foreign keys on and a busy
timeout so several processes can write at once. One instance may be shared between
threads: calls are serialised by a lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from .common import (
    BUSY_TIMEOUT_MS,
    CACHE_DIR,
    DB_NAME,
    StoreError,
    database_path,
    dumps,
    normalise_path,
    now,
)
from .schema import MIGRATIONS, SCHEMA_VERSION, user_schema_version

if TYPE_CHECKING:
    import sqlite_utils


class StoreBase:
    """Connection and transaction plumbing shared by the store's parts."""

    path: Path
    db_path: Path
    cache_dir: Path

    def __init__(self, folder: Path, conn: sqlite3.Connection) -> None:
        self.path = folder
        self.db_path = database_path(folder)
        self.cache_dir = folder / CACHE_DIR
        self.conn = conn
        self._lock = threading.RLock()
        self._db: sqlite_utils.Database | None = None
        self.readonly = False  # opened for viewing and export only (see open)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, folder: str | os.PathLike[str], create: bool = True) -> Self:
        """Open (and with ``create`` make) the workspace in ``folder``, migrating its schema.

        Raises :class:`StoreError` if ``folder`` is not a workspace and ``create`` is
        false, if the file is not a SQLite database, or if it was written by a newer
        program (schema version above :data:`SCHEMA_VERSION`).
        """
        folder = Path(folder).expanduser().resolve()
        db_path = database_path(folder)
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"workspace path {folder} is a file, not a folder")
        if not db_path.is_file():
            if not create:
                raise StoreError(f"{folder} is not an EyeTriage workspace (no {DB_NAME})")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create workspace folder {folder}: {exc}") from None
        elif not (os.access(db_path, os.W_OK) and os.access(folder, os.W_OK)):
            return cls._open_readonly(folder, db_path)
        conn = sqlite3.connect(
            db_path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            try:
                version = user_schema_version(conn)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{db_path} is not a usable SQLite database: {exc}") from None
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{db_path} has schema version {version} but this program understands "
                    f"up to {SCHEMA_VERSION}; it was written by a newer EyeTriage - "
                    "please upgrade"
                )
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"could not switch {db_path} to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            workspace = cls(folder, conn)
            workspace._migrate()
            workspace.cache_dir.mkdir(exist_ok=True)
        except BaseException:
            conn.close()
            raise
        return workspace

    @classmethod
    def _open_readonly(cls, folder: Path, db_path: Path) -> Self:
        """A workspace on read-only storage (a CD, a locked share, no write permission):
        opened for viewing and export; any write raises :class:`StoreError` saying so."""
        uri = db_path.as_uri()
        conn = None
        for query in ("mode=ro", "mode=ro&immutable=1"):  # WAL needs -shm; immutable does not
            try:
                conn = sqlite3.connect(f"{uri}?{query}", uri=True, check_same_thread=False)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                break
            except sqlite3.Error:
                if conn is not None:
                    conn.close()
                conn = None
        if conn is None:
            raise StoreError(f"{db_path} is read-only and could not be opened for reading")
        conn.isolation_level = None
        conn.row_factory = sqlite3.Row
        try:
            version = user_schema_version(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{db_path} is not a usable SQLite database: {exc}") from None
        if version != SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"{db_path} has schema version {version}, this program {SCHEMA_VERSION}, and "
                "the workspace is read-only, so it cannot be upgraded"
            )
        workspace = cls(folder, conn)
        workspace.readonly = True
        return workspace

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None  # type: ignore[assignment]
                self._db = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"

    @property
    def db(self) -> sqlite_utils.Database:
        """A ``sqlite_utils.Database`` on the same connection, for ad-hoc queries."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self._connection())
        return self._db

    def schema_version(self) -> int:
        """The schema version recorded in the ``migrations`` table."""
        return user_schema_version(self._connection())

    # ------------------------------------------------------------------ transactions

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError(f"workspace {self.path} is closed")
        return self.conn

    def _one(self, sql: str, params: tuple = ()) -> sqlite3.Row | None:
        """The first row of one statement (or ``None``)."""
        with self._lock:
            return self._connection().execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        """Every row of one statement."""
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front so
        concurrent writers wait (busy timeout) instead of failing half way."""
        with self._lock:
            conn = self._connection()
            if self.readonly:
                raise StoreError(
                    f"workspace {self.path} is read-only (opened for viewing and export); "
                    "nothing can be saved to it"
                )
            if conn.in_transaction:  # nested call inside one of our own transactions
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for multi-statement reads."""
        with self._lock:
            conn = self._connection()
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _migrate(self) -> None:
        if user_schema_version(self._connection()) == SCHEMA_VERSION:
            return  # the usual case: no write lock needed to open
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
        # Each migration commits with its own row, so a crash between them resumes cleanly.
        # Foreign keys are off while migrating (a table rebuild drops and renames a parent
        # table, which SQLite allows only so) and checked before each migration commits.
        self._connection().execute("PRAGMA foreign_keys = OFF")
        try:
            for version, migration in enumerate(MIGRATIONS, start=1):
                with self._write() as conn:
                    applied = conn.execute(
                        "SELECT 1 FROM migrations WHERE version = ?", (version,)
                    ).fetchone()
                    if applied:
                        continue
                    migration(conn)
                    broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(
                            f"schema migration {version} would break {len(broken)} references "
                            f"(first in table {broken[0][0]}); the workspace was left unchanged"
                        )
                    conn.execute(
                        "INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (version, migration.__name__.removeprefix("_migration_"), now()),
                    )
        finally:
            self._connection().execute("PRAGMA foreign_keys = ON")

    # ------------------------------------------------------------------ shared helpers

    def _audit(self, conn: sqlite3.Connection, actor: str, action: str, details: Any) -> None:
        conn.execute(
            "INSERT INTO audit (at, actor, action, details) VALUES (?, ?, ?, ?)",
            (now(), actor, action, dumps(details)),
        )

    def _resolve_image(self, conn: sqlite3.Connection, image: int | str | os.PathLike) -> int:
        if isinstance(image, bool):
            raise StoreError(f"image must be an image id or a path, got {image!r}")
        if isinstance(image, int):
            row = conn.execute("SELECT id FROM images WHERE id = ?", (image,)).fetchone()
            if row is None:
                raise StoreError(f"unknown image id {image}")
            return int(row[0])
        if isinstance(image, str | os.PathLike):
            key = normalise_path(image)
            row = conn.execute("SELECT id FROM images WHERE path = ?", (key,)).fetchone()
            if row is None:
                raise StoreError(f"unknown image {key} (add it to the workspace first)")
            return int(row[0])
        raise StoreError(f"image must be an image id or a path, got {type(image).__name__}")
