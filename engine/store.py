"""The workspace store: one SQLite file holding images, models, runs, predictions and reviews.

A workspace is a folder ``W`` with ``W/workspace.sqlite`` and ``W/cache/``. The database
stays a plain SQLite file (sqlite-utils and Datasette open it). Rules this module keeps:

* every write is one ``BEGIN IMMEDIATE`` transaction, so a crash (even ``kill -9``) at
  any moment leaves either all of a write or none of it; WAL mode, ``synchronous=FULL``,
  foreign keys on and a busy timeout so several processes can write at once;
* reviews (and the audit log) are append-only, enforced by triggers; the current label of
  an image is its latest effective review, and "undo" is a new review that cancels an
  earlier one;
* source images are only referenced by path, never touched;
* the schema is versioned in ``migrations`` and a database from a newer program is refused.

Only the standard library is imported at module level; ``sqlite_utils`` (which pulls in
numpy) is imported when :attr:`Workspace.db` is first used, and ``engine.metrics`` only
inside :meth:`Workspace.agreement`, so store-only commands start fast.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .naming import normalise_eye

if TYPE_CHECKING:
    import sqlite_utils

__all__ = [
    "DB_NAME",
    "REVIEW_ACTIONS",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "TRIAGE_STATES",
    "StoreError",
    "Workspace",
    "settings_key",
    "sha256_file",
]

TRIAGE_STATES = ("auto-cleared", "needs-review", "ungradable", "out-of-distribution", "error")
REVIEW_ACTIONS = ("confirm", "correct", "ungradable", "skip", "undo")
RUN_STATUSES = ("running", "finished", "cancelled", "failed")
REFERRED_STATES = ("needs-review", "ungradable", "out-of-distribution", "error")
# Actions whose review sets the image's label; "skip" and "undo" do not.
LABELLING_ACTIONS = ("confirm", "correct", "ungradable")
# Most to least urgent: the state shown for an eye with several images.
_TRIAGE_SEVERITY = ("needs-review", "ungradable", "out-of-distribution", "error", "auto-cleared")

DB_NAME = "workspace.sqlite"
CACHE_DIR = "cache"
BUSY_TIMEOUT_MS = 10_000
_CHUNK = 1 << 20


class StoreError(Exception):
    """A workspace operation was refused; the message says what was wrong."""


def _now() -> str:
    """ISO-8601 UTC timestamp with microseconds, e.g. ``2025-01-02T03:04:05.123456+00:00``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _json_default(value: Any) -> Any:
    """Let numpy scalars/arrays (and sets/paths) through json without importing numpy."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (an OSError names the unreadable path)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def settings_key(settings: dict) -> str:
    """Stable 16-hex-digit hash of the canonical JSON of ``settings`` (key order ignored).

    Two screenings with equal keys would give equal predictions, so incremental
    re-screening can skip images already done under the same key.
    """
    if not isinstance(settings, dict):
        raise StoreError(f"settings must be a dict, got {type(settings).__name__}")
    try:
        canonical = json.dumps(
            settings,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=True,
            default=_json_default,
        )
    except TypeError as exc:
        raise StoreError(f"settings are not JSON-serialisable: {exc}") from None
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- schema

_SCHEMA_V1 = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER,
    width INTEGER,
    height INTEGER,
    modality TEXT,
    patient TEXT,
    eye TEXT CHECK (eye IS NULL OR eye IN ('right', 'left')),
    added_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX images_patient ON images(patient);
CREATE INDEX images_sha256 ON images(sha256);

CREATE TABLE models (
    hash TEXT PRIMARY KEY,
    path TEXT,
    name TEXT,
    parent TEXT,
    created_at TEXT,
    metrics TEXT,
    description TEXT,
    active INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    registered_at TEXT NOT NULL
);
CREATE UNIQUE INDEX models_one_active ON models(active) WHERE active = 1;

CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_hash TEXT NOT NULL REFERENCES models(hash),
    settings TEXT NOT NULL,
    settings_key TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'finished', 'cancelled', 'failed')),
    counts TEXT
);
CREATE INDEX runs_model ON runs(model_hash);

CREATE TABLE predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    image_id INTEGER NOT NULL REFERENCES images(id),
    model_hash TEXT NOT NULL REFERENCES models(hash),
    settings_key TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    probabilities TEXT,
    label TEXT,
    confidence REAL,
    entropy REAL,
    mutual_info REAL,
    top_std REAL,
    conformal_set TEXT,
    ood_score REAL,
    ood INTEGER CHECK (ood IS NULL OR ood IN (0, 1)),
    quality TEXT,
    quality_ok INTEGER CHECK (quality_ok IS NULL OR quality_ok IN (0, 1)),
    triage TEXT NOT NULL CHECK (triage IN
        ('auto-cleared', 'needs-review', 'ungradable', 'out-of-distribution', 'error')),
    triage_reason TEXT,
    error TEXT,
    uncertainty_method TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX predictions_image_model ON predictions(image_id, model_hash);
CREATE INDEX predictions_model_image ON predictions(model_hash, image_id);
CREATE INDEX predictions_done ON predictions(model_hash, settings_key, image_sha256);
CREATE INDEX predictions_run ON predictions(run_id);

CREATE TABLE reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    reviewer TEXT NOT NULL CHECK (length(trim(reviewer)) > 0),
    labels TEXT NOT NULL DEFAULT '[]',
    action TEXT NOT NULL CHECK (action IN ('confirm', 'correct', 'ungradable', 'skip', 'undo')),
    prediction_id INTEGER REFERENCES predictions(id),
    undoes INTEGER REFERENCES reviews(id),
    seconds REAL,
    note TEXT,
    created_at TEXT NOT NULL,
    CHECK ((action = 'undo') = (undoes IS NOT NULL))
);
CREATE INDEX reviews_image ON reviews(image_id);
CREATE INDEX reviews_reviewer ON reviews(reviewer);
CREATE UNIQUE INDEX reviews_undone_once ON reviews(undoes) WHERE undoes IS NOT NULL;
CREATE TRIGGER reviews_no_update BEFORE UPDATE ON reviews
BEGIN SELECT RAISE(ABORT, 'reviews are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER reviews_no_delete BEFORE DELETE ON reviews
BEGIN SELECT RAISE(ABORT, 'reviews are append-only: DELETE is not allowed'); END;

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    details TEXT
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: DELETE is not allowed'); END;
"""


def _migration_1_initial(conn: sqlite3.Connection) -> None:
    """Images, models, runs, predictions, append-only reviews and audit."""
    for statement in _split_sql(_SCHEMA_V1):
        conn.execute(statement)


def _split_sql(script: str) -> list[str]:
    """Split a script into statements (``executescript`` would commit our transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


# Ordered; migration i (1-based) brings the schema from version i-1 to i. Append only.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migration_1_initial,)
SCHEMA_VERSION: int = len(MIGRATIONS)

_PREDICTION_FIELDS = {
    "image_id",
    "path",
    "image_sha256",
    "probabilities",
    "label",
    "confidence",
    "entropy",
    "mutual_info",
    "top_std",
    "conformal_set",
    "ood_score",
    "ood",
    "quality",
    "quality_ok",
    "triage",
    "triage_reason",
    "error",
    "uncertainty_method",
}
_REAL_FIELDS = ("confidence", "entropy", "mutual_info", "top_std", "ood_score")
_BOOL_FIELDS = ("ood", "quality_ok")

EXPORT_COLUMNS = (
    "path",
    "patient",
    "eye",
    "modality",
    "sha256",
    "label",
    "confidence",
    "entropy",
    "mutual_info",
    "top_std",
    "conformal_set",
    "probabilities",
    "ood_score",
    "ood",
    "quality",
    "quality_ok",
    "triage",
    "triage_reason",
    "error",
    "uncertainty_method",
    "reviewed_label",
    "review_action",
    "reviewer",
    "reviewed_at",
    "model_hash",
    "settings_key",
    "predicted_at",
)


class Workspace:
    """An open workspace folder. Use :meth:`open`; close it (or use ``with``) when done.

    One instance may be shared between threads (calls are serialised by a lock); each
    process opens its own. Other processes may write at the same time.
    """

    path: Path
    db_path: Path
    cache_dir: Path

    def __init__(self, folder: Path, conn: sqlite3.Connection) -> None:
        self.path = folder
        self.db_path = folder / DB_NAME
        self.cache_dir = folder / CACHE_DIR
        self.conn = conn
        self._lock = threading.RLock()
        self._db: sqlite_utils.Database | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, folder: str | os.PathLike[str], create: bool = True) -> Workspace:
        """Open (and with ``create`` make) the workspace in ``folder``, migrating its schema.

        Raises :class:`StoreError` if ``folder`` is not a workspace and ``create`` is
        false, if the file is not a SQLite database, or if it was written by a newer
        program (schema version above :data:`SCHEMA_VERSION`).
        """
        folder = Path(folder).expanduser().resolve()
        db_path = folder / DB_NAME
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"workspace path {folder} is a file, not a folder")
        if not db_path.is_file():
            if not create:
                raise StoreError(f"{folder} is not an EyeTriage workspace (no {DB_NAME})")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create workspace folder {folder}: {exc}") from None
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
                version = _user_schema_version(conn)
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

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None  # type: ignore[assignment]
                self._db = None

    def __enter__(self) -> Workspace:
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
        return _user_schema_version(self._connection())

    # ------------------------------------------------------------------ internals

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError(f"workspace {self.path} is closed")
        return self.conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front so
        concurrent writers wait (busy timeout) instead of failing half way."""
        with self._lock:
            conn = self._connection()
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
        if _user_schema_version(self._connection()) == SCHEMA_VERSION:
            return  # the usual case: no write lock needed to open
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
        # Each migration commits with its own row, so a crash between them resumes cleanly.
        for version, migration in enumerate(MIGRATIONS, start=1):
            with self._write() as conn:
                applied = conn.execute(
                    "SELECT 1 FROM migrations WHERE version = ?", (version,)
                ).fetchone()
                if applied:
                    continue
                migration(conn)
                conn.execute(
                    "INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, migration.__name__.removeprefix("_migration_"), _now()),
                )

    def _audit(self, conn: sqlite3.Connection, actor: str, action: str, details: Any) -> None:
        conn.execute(
            "INSERT INTO audit (at, actor, action, details) VALUES (?, ?, ?, ?)",
            (_now(), actor, action, _dumps(details)),
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
            key = _normalise_path(image)
            row = conn.execute("SELECT id FROM images WHERE path = ?", (key,)).fetchone()
            if row is None:
                raise StoreError(f"unknown image {key} (add it to the workspace first)")
            return int(row[0])
        raise StoreError(f"image must be an image id or a path, got {type(image).__name__}")

    # ------------------------------------------------------------------ images

    def add_image(
        self,
        path: str | os.PathLike[str],
        sha256: str,
        size_bytes: int,
        width: int | None = None,
        height: int | None = None,
        modality: str | None = None,
        patient: str | None = None,
        eye: str | None = None,
    ) -> int:
        """Add an image or update the one at the same resolved path; return its id.

        A changed ``sha256`` means the file changed: the new hash is stored (older
        predictions keep the hash they were made on) and the change is audited.
        Arguments left as ``None`` keep what is already stored.
        """
        return self.add_images(
            [
                dict(
                    path=path,
                    sha256=sha256,
                    size_bytes=size_bytes,
                    width=width,
                    height=height,
                    modality=modality,
                    patient=patient,
                    eye=eye,
                )
            ]
        )[0]

    def add_images(self, rows: list[dict]) -> list[int]:
        """Add or update many images in one transaction (see :meth:`add_image`)."""
        clean = [_clean_image_row(i, row) for i, row in enumerate(rows)]
        ids: list[int] = []
        changed: list[dict] = []
        with self._write() as conn:
            now = _now()
            for row in clean:
                old = conn.execute(
                    "SELECT id, sha256 FROM images WHERE path = ?", (row["path"],)
                ).fetchone()
                if old is None:
                    cur = conn.execute(
                        "INSERT INTO images (path, sha256, size_bytes, width, height, modality,"
                        " patient, eye, added_at, updated_at)"
                        " VALUES (:path, :sha256, :size_bytes, :width, :height, :modality,"
                        " :patient, :eye, :now, :now)",
                        {**row, "now": now},
                    )
                    ids.append(int(cur.lastrowid))
                    continue
                conn.execute(
                    "UPDATE images SET sha256 = :sha256,"
                    " size_bytes = coalesce(:size_bytes, size_bytes),"
                    " width = coalesce(:width, width), height = coalesce(:height, height),"
                    " modality = coalesce(:modality, modality),"
                    " patient = coalesce(:patient, patient), eye = coalesce(:eye, eye),"
                    " updated_at = :now WHERE id = :id",
                    {**row, "now": now, "id": old["id"]},
                )
                if old["sha256"] != row["sha256"]:
                    changed.append(
                        {"path": row["path"], "old_sha256": old["sha256"], "sha256": row["sha256"]}
                    )
                ids.append(int(old["id"]))
            if changed:
                self._audit(conn, "system", "image_changed", {"images": changed})
        return ids

    def image_id(self, path: str | os.PathLike[str]) -> int | None:
        """The id of the image at ``path`` (resolved), or ``None``."""
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT id FROM images WHERE path = ?", (_normalise_path(path),))
                .fetchone()
            )
        return None if row is None else int(row[0])

    def images(self) -> list[dict]:
        """All images, in the order they were added."""
        with self._lock:
            rows = self._connection().execute("SELECT * FROM images ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ models

    def register_model(
        self,
        hash: str,
        path: str | os.PathLike[str] | None,
        name: str | None,
        parent: str | None = None,
        created_at: str | None = None,
        metrics: dict | None = None,
        description: dict | None = None,
        activate: bool = False,
    ) -> None:
        """Record a model version (idempotent per hash; versions are immutable).

        Registering a known hash again only refreshes its file path (the file may have
        been moved). With ``activate`` it also becomes the active model.
        """
        if not isinstance(hash, str) or not hash.strip():
            raise StoreError("model hash must be a non-empty string (sha256 of the model file)")
        path_text = None if path is None else str(Path(path).expanduser().resolve())
        with self._write() as conn:
            known = conn.execute("SELECT path FROM models WHERE hash = ?", (hash,)).fetchone()
            if known is None:
                conn.execute(
                    "INSERT INTO models (hash, path, name, parent, created_at, metrics,"
                    " description, active, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    (
                        hash,
                        path_text,
                        name,
                        parent,
                        created_at,
                        _dumps(metrics),
                        _dumps(description),
                        _now(),
                    ),
                )
                self._audit(
                    conn,
                    "system",
                    "register_model",
                    {"hash": hash, "name": name, "path": path_text, "parent": parent},
                )
            elif path_text is not None and known["path"] != path_text:
                conn.execute("UPDATE models SET path = ? WHERE hash = ?", (path_text, hash))
            if activate:
                self._activate(conn, hash, "system")

    def _activate(self, conn: sqlite3.Connection, hash: str, actor: str) -> None:
        if conn.execute("SELECT 1 FROM models WHERE hash = ?", (hash,)).fetchone() is None:
            raise StoreError(f"unknown model {hash!r}: register it before activating it")
        previous = conn.execute("SELECT hash FROM models WHERE active = 1").fetchone()
        previous_hash = None if previous is None else previous[0]
        if previous_hash == hash:
            return
        conn.execute("UPDATE models SET active = 0 WHERE active = 1")
        conn.execute("UPDATE models SET active = 1 WHERE hash = ?", (hash,))
        self._audit(conn, actor, "set_active_model", {"hash": hash, "previous": previous_hash})

    def set_active_model(self, hash: str, actor: str = "system") -> None:
        """Make ``hash`` the one active model (audited with the previous one)."""
        with self._write() as conn:
            self._activate(conn, hash, actor)

    def active_model(self) -> dict | None:
        """The active model's row (metrics/description parsed), or ``None``."""
        with self._lock:
            row = self._connection().execute("SELECT * FROM models WHERE active = 1").fetchone()
        return None if row is None else _model_dict(row)

    def models(self) -> list[dict]:
        """All registered model versions, oldest registration first."""
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT * FROM models ORDER BY registered_at, rowid")
                .fetchall()
            )
        return [_model_dict(r) for r in rows]

    # ------------------------------------------------------------------ runs & predictions

    def start_run(self, model_hash: str, settings: dict) -> int:
        """Start a screening run of a registered model; returns the run id."""
        key = settings_key(settings)
        with self._write() as conn:
            if (
                conn.execute("SELECT 1 FROM models WHERE hash = ?", (model_hash,)).fetchone()
                is None
            ):
                raise StoreError(f"unknown model {model_hash!r}: register it before screening")
            cur = conn.execute(
                "INSERT INTO runs (model_hash, settings, settings_key, started_at, status)"
                " VALUES (?, ?, ?, ?, 'running')",
                (model_hash, _dumps(settings), key, _now()),
            )
            run_id = int(cur.lastrowid)
            self._audit(conn, "system", "start_run", {"run_id": run_id, "model_hash": model_hash})
        return run_id

    def finish_run(self, run_id: int, status: str, counts: dict) -> None:
        """Close a run as finished, cancelled or failed, with its counts."""
        if status not in RUN_STATUSES or status == "running":
            raise StoreError(
                f"run status must be one of 'finished', 'cancelled', 'failed', got {status!r}"
            )
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, counts = ? WHERE id = ?",
                (status, _now(), _dumps(counts), run_id),
            )
            if cur.rowcount == 0:
                raise StoreError(f"unknown run id {run_id}")
            self._audit(
                conn, "system", "finish_run", {"run_id": run_id, "status": status, "counts": counts}
            )

    def runs(self) -> list[dict]:
        """All runs, oldest first (settings and counts parsed)."""
        with self._lock:
            rows = self._connection().execute("SELECT * FROM runs ORDER BY id").fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["settings"] = _loads(d["settings"])
            d["counts"] = _loads(d["counts"])
            out.append(d)
        return out

    def done_image_hashes(self, model_hash: str, settings_key: str) -> set[str]:
        """Image sha256s already screened without error by this model and settings key."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT DISTINCT image_sha256 FROM predictions WHERE model_hash = ?"
                    " AND settings_key = ? AND triage != 'error' AND error IS NULL",
                    (model_hash, settings_key),
                )
                .fetchall()
            )
        return {r[0] for r in rows}

    def add_predictions(self, run_id: int, rows: list[dict]) -> list[int]:
        """Store predictions of one run in one transaction; returns their ids.

        Each row names its image by ``image_id`` or ``path``; ``model_hash`` and
        ``settings_key`` come from the run, ``image_sha256`` defaults to the image's
        current hash. JSON fields (probabilities, conformal_set, quality) take Python
        objects. A bad row raises :class:`StoreError` naming its index and nothing is
        stored.
        """
        with self._write() as conn:
            run = conn.execute(
                "SELECT model_hash, settings_key FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if run is None:
                raise StoreError(f"unknown run id {run_id}")
            now = _now()
            ids = []
            for index, row in enumerate(rows):
                values = self._prediction_values(conn, index, row)
                values.update(
                    run_id=run_id,
                    model_hash=run["model_hash"],
                    settings_key=run["settings_key"],
                    created_at=now,
                )
                columns = ", ".join(values)
                placeholders = ", ".join(f":{c}" for c in values)
                cur = conn.execute(
                    f"INSERT INTO predictions ({columns}) VALUES ({placeholders})", values
                )
                ids.append(int(cur.lastrowid))
        return ids

    def _prediction_values(self, conn: sqlite3.Connection, index: int, row: dict) -> dict:
        if not isinstance(row, dict):
            raise StoreError(f"prediction row {index} must be a dict, got {type(row).__name__}")
        unknown = set(row) - _PREDICTION_FIELDS - {"model_hash", "settings_key", "run_id"}
        if unknown:
            raise StoreError(f"prediction row {index}: unknown field(s) {sorted(unknown)}")
        if row.get("image_id") is not None:
            image_ref: Any = row["image_id"]
        elif row.get("path") is not None:
            image_ref = row["path"]
        else:
            raise StoreError(f"prediction row {index}: needs 'image_id' or 'path'")
        try:
            image_id = self._resolve_image(conn, image_ref)
        except StoreError as exc:
            raise StoreError(f"prediction row {index}: {exc}") from None
        triage = row.get("triage")
        if triage not in TRIAGE_STATES:
            raise StoreError(
                f"prediction row {index}: triage must be one of {TRIAGE_STATES}, got {triage!r}"
            )
        sha = row.get("image_sha256")
        if sha is None:
            sha = conn.execute("SELECT sha256 FROM images WHERE id = ?", (image_id,)).fetchone()[0]
        values: dict[str, Any] = {
            "image_id": image_id,
            "image_sha256": sha,
            "probabilities": _dumps(row.get("probabilities")),
            "label": None if row.get("label") is None else str(row["label"]),
            "conformal_set": _dumps(_as_list(row.get("conformal_set"))),
            "quality": _dumps(row.get("quality")),
            "triage": triage,
            "triage_reason": row.get("triage_reason"),
            "error": None if row.get("error") is None else str(row["error"]),
            "uncertainty_method": row.get("uncertainty_method"),
        }
        for field in _REAL_FIELDS:
            value = row.get(field)
            try:
                values[field] = None if value is None else float(value)
            except (TypeError, ValueError):
                raise StoreError(
                    f"prediction row {index}: {field} must be a number, got {value!r}"
                ) from None
        for field in _BOOL_FIELDS:
            value = row.get(field)
            values[field] = None if value is None else int(bool(value))
        return values

    def _rows_of(self, table: str, image: int | str | os.PathLike | None) -> list[sqlite3.Row]:
        """All rows of ``table`` (of one image if given), oldest first."""
        with self._read() as conn:
            if image is None:
                return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            image_id = self._resolve_image(conn, image)
            return conn.execute(
                f"SELECT * FROM {table} WHERE image_id = ? ORDER BY id", (image_id,)
            ).fetchall()

    def predictions(self, image: int | str | os.PathLike | None = None) -> list[dict]:
        """All stored predictions (of one image if given), oldest first, JSON parsed."""
        return [_prediction_dict(r) for r in self._rows_of("predictions", image)]

    def latest_predictions(self, model_hash: str | None = None) -> list[dict]:
        """Per image, its latest prediction with image info and current review.

        ``model_hash`` defaults to the active model (any model when none is active).
        Each dict has the prediction columns, ``path``, ``patient``, ``eye``,
        ``modality``, ``width``, ``height``, ``stale`` (the file changed since) and
        ``review`` (the current review dict or ``None``).
        """
        with self._read() as conn:
            if model_hash is None:
                active = conn.execute("SELECT hash FROM models WHERE active = 1").fetchone()
                model_hash = None if active is None else active[0]
            rows = self._latest_prediction_rows(conn, model_hash)
            current = self._current_reviews(conn)
        out = []
        for r in rows:
            d = _prediction_dict(r)
            d["stale"] = d.pop("current_sha256") != d["image_sha256"]
            d["review"] = current.get(d["image_id"])
            out.append(d)
        return out

    @staticmethod
    def _latest_prediction_rows(
        conn: sqlite3.Connection, model_hash: str | None
    ) -> list[sqlite3.Row]:
        where, params = ("WHERE model_hash = ?", (model_hash,)) if model_hash else ("", ())
        return conn.execute(
            "SELECT p.*, i.path, i.patient, i.eye, i.modality, i.width, i.height,"
            " i.sha256 AS current_sha256"
            " FROM predictions p JOIN images i ON i.id = p.image_id"
            f" WHERE p.id IN (SELECT max(id) FROM predictions {where} GROUP BY image_id)"
            " ORDER BY i.id",
            params,
        ).fetchall()

    # ------------------------------------------------------------------ reviews

    def add_review(
        self,
        image: int | str | os.PathLike[str],
        reviewer: str,
        labels: list[str],
        action: str = "correct",
        prediction_id: int | None = None,
        seconds: float | None = None,
        note: str | None = None,
    ) -> int:
        """Append a review of ``image`` (id or path); returns the review id.

        ``confirm`` without labels takes the label of ``prediction_id``; ``confirm`` and
        ``correct`` need labels; ``undo`` cancels this reviewer's latest effective review
        of the image. The review and its audit entry are written in one transaction.
        """
        reviewer = _check_reviewer(reviewer)
        if action not in REVIEW_ACTIONS:
            raise StoreError(f"review action must be one of {REVIEW_ACTIONS}, got {action!r}")
        labels = _check_labels(labels)
        if seconds is not None:
            try:
                seconds = float(seconds)
            except (TypeError, ValueError):
                raise StoreError(f"seconds must be a number, got {seconds!r}") from None
            if not math.isfinite(seconds) or seconds < 0:
                raise StoreError(f"seconds must be a finite number >= 0, got {seconds!r}")
        with self._write() as conn:
            image_id = self._resolve_image(conn, image)
            if action == "undo":
                target = self._last_effective(conn, reviewer, image_id)
                if target is None:
                    raise StoreError(
                        f"nothing to undo: {reviewer!r} has no effective review of image {image_id}"
                    )
                return self._insert_undo(conn, reviewer, target)
            if prediction_id is not None:
                pred = conn.execute(
                    "SELECT image_id, label FROM predictions WHERE id = ?", (prediction_id,)
                ).fetchone()
                if pred is None:
                    raise StoreError(f"unknown prediction id {prediction_id}")
                if pred["image_id"] != image_id:
                    raise StoreError(
                        f"prediction {prediction_id} belongs to image {pred['image_id']}, "
                        f"not image {image_id}"
                    )
                if action == "confirm" and not labels and pred["label"] is not None:
                    labels = [pred["label"]]
            if action in ("confirm", "correct") and not labels:
                raise StoreError(f"a {action!r} review needs at least one label")
            return self._insert_review(
                conn, image_id, reviewer, labels, action, prediction_id, None, seconds, note
            )

    def _insert_review(
        self,
        conn: sqlite3.Connection,
        image_id: int,
        reviewer: str,
        labels: list[str],
        action: str,
        prediction_id: int | None,
        undoes: int | None,
        seconds: float | None,
        note: str | None,
        audit: bool = True,
    ) -> int:
        cur = conn.execute(
            "INSERT INTO reviews (image_id, reviewer, labels, action, prediction_id, undoes,"
            " seconds, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_id,
                reviewer,
                _dumps(labels),
                action,
                prediction_id,
                undoes,
                seconds,
                note,
                _now(),
            ),
        )
        review_id = int(cur.lastrowid)
        if audit:
            details = {"review_id": review_id, "image_id": image_id, "action": action}
            details.update({"labels": labels} if undoes is None else {"undoes": undoes})
            self._audit(conn, reviewer, "review", details)
        return review_id

    @staticmethod
    def _last_effective(
        conn: sqlite3.Connection, reviewer: str, image_id: int | None = None
    ) -> sqlite3.Row | None:
        """The reviewer's most recent review (not an undo) that no undo has cancelled."""
        sql = (
            "SELECT r.* FROM reviews r WHERE r.reviewer = ? AND r.action != 'undo'"
            " AND NOT EXISTS (SELECT 1 FROM reviews u WHERE u.undoes = r.id)"
        )
        params: tuple = (reviewer,)
        if image_id is not None:
            sql += " AND r.image_id = ?"
            params += (image_id,)
        return conn.execute(sql + " ORDER BY r.id DESC LIMIT 1", params).fetchone()

    def _insert_undo(self, conn: sqlite3.Connection, reviewer: str, target: sqlite3.Row) -> int:
        image_id = int(target["image_id"])
        # The undo row carries the labels that are current once the target is cancelled,
        # so even a reader that just takes the latest row sees the restored label.
        restored = self._current_reviews(conn, image_id, excluding=int(target["id"]))
        labels = restored[image_id]["labels"] if image_id in restored else []
        return self._insert_review(
            conn, image_id, reviewer, labels, "undo", None, int(target["id"]), None, None
        )

    def undo_last_review(self, reviewer: str) -> int | None:
        """Append an ``undo`` cancelling ``reviewer``'s latest effective review.

        Returns the undo review's id, or ``None`` if there is nothing left to undo.
        Repeated calls walk further back.
        """
        reviewer = _check_reviewer(reviewer)
        with self._write() as conn:
            target = self._last_effective(conn, reviewer)
            if target is None:
                return None
            return self._insert_undo(conn, reviewer, target)

    def _current_reviews(
        self,
        conn: sqlite3.Connection,
        image_id: int | None = None,
        reviewer: str | None = None,
        excluding: int | None = None,
    ) -> dict[int, dict]:
        """Image id -> latest effective labelling review (optionally per one reviewer)."""
        sql = "SELECT * FROM reviews"
        clauses, params = [], []
        if image_id is not None:
            clauses.append("image_id = ?")
            params.append(image_id)
        if reviewer is not None:
            clauses.append("reviewer = ?")
            params.append(reviewer)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = conn.execute(sql + " ORDER BY id", params).fetchall()
        cancelled = {r["undoes"] for r in rows if r["action"] == "undo"}
        if excluding is not None:
            cancelled.add(excluding)
        current: dict[int, dict] = {}
        for r in rows:
            if r["action"] in LABELLING_ACTIONS and r["id"] not in cancelled:
                current[r["image_id"]] = _review_dict(r)
        return current

    def current_review(self, image_id: int | str | os.PathLike[str]) -> dict | None:
        """The review that sets the image's label now, after undos; ``None`` if unlabelled.

        Skips and undos never set a label; an undone review no longer counts, so the
        label falls back to the review before it.
        """
        with self._read() as conn:
            resolved = self._resolve_image(conn, image_id)
            return self._current_reviews(conn, resolved).get(resolved)

    def reviews(self, image_id: int | str | os.PathLike[str] | None = None) -> list[dict]:
        """Every review row (of one image if given), oldest first, labels parsed."""
        return [_review_dict(r) for r in self._rows_of("reviews", image_id)]

    # ------------------------------------------------------------------ audit

    def audit(self, actor: str, action: str, details: dict | None = None) -> None:
        """Append an entry to the audit log (its own transaction)."""
        if not isinstance(actor, str) or not actor.strip():
            raise StoreError("audit actor must be a non-empty string")
        if not isinstance(action, str) or not action.strip():
            raise StoreError("audit action must be a non-empty string")
        with self._write() as conn:
            self._audit(conn, actor, action, details)

    def audit_log(self) -> list[dict]:
        """The whole audit log, oldest first (details parsed)."""
        with self._lock:
            rows = self._connection().execute("SELECT * FROM audit ORDER BY id").fetchall()
        return [{**dict(r), "details": _loads(r["details"])} for r in rows]

    # ------------------------------------------------------------------ export / import

    def export_rows(self) -> list[dict]:
        """One row per image: its latest prediction (active model) and current review.

        Columns are :data:`EXPORT_COLUMNS`; images never screened have empty prediction
        fields. ``conformal_set`` is a list, ``quality``/``probabilities`` are dicts and
        ``reviewed_label`` joins multiple labels with ``;``.
        """
        with self._read() as conn:
            active = conn.execute("SELECT hash FROM models WHERE active = 1").fetchone()
            latest = {
                r["image_id"]: _prediction_dict(r)
                for r in self._latest_prediction_rows(conn, None if active is None else active[0])
            }
            current = self._current_reviews(conn)
            images = conn.execute("SELECT * FROM images ORDER BY id").fetchall()
        out = []
        for image in images:
            pred = latest.get(image["id"], {})
            review = current.get(image["id"])
            row = {c: pred.get(c) for c in EXPORT_COLUMNS}
            row.update(
                path=image["path"],
                patient=image["patient"],
                eye=image["eye"],
                modality=image["modality"],
                sha256=image["sha256"],
                predicted_at=pred.get("created_at"),
                reviewed_label=None if review is None else _review_label(review),
                review_action=None if review is None else review["action"],
                reviewer=None if review is None else review["reviewer"],
                reviewed_at=None if review is None else review["created_at"],
            )
            for field in _BOOL_FIELDS:
                if row[field] is not None:
                    row[field] = bool(row[field])
            out.append(row)
        return out

    def write_export(self, out: str | os.PathLike[str], fmt: str) -> int:
        """Write :meth:`export_rows` as ``"csv"`` or ``"json"`` atomically; returns row count.

        The file appears complete or not at all (temporary file, fsync, ``os.replace``).
        In CSV, ``conformal_set`` is joined with ``|`` and dicts are JSON text.
        """
        if fmt not in ("csv", "json"):
            raise StoreError(f"export format must be 'csv' or 'json', got {fmt!r}")
        out = Path(out).expanduser()
        if not out.parent.is_dir():
            raise StoreError(f"export folder {out.parent} does not exist")
        rows = self.export_rows()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                if fmt == "json":
                    json.dump(rows, handle, ensure_ascii=False, indent=1, default=_json_default)
                    handle.write("\n")
                else:
                    writer = csv.DictWriter(handle, fieldnames=list(EXPORT_COLUMNS))
                    writer.writeheader()
                    for row in rows:
                        writer.writerow(_csv_row(row))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        with self._write() as conn:
            self._audit(
                conn, "system", "export", {"path": str(out), "format": fmt, "rows": len(rows)}
            )
        return len(rows)

    def import_reviews_csv(
        self, csv_path: str | os.PathLike[str], default_reviewer: str | None = None
    ) -> int:
        """Import reviews from a CSV with columns ``path,label,reviewer[,action,note]``.

        ``label`` may hold several labels separated by ``;``. ``path`` may be absolute,
        relative to the CSV's folder, or a bare file name matching exactly one image.
        Every row is checked first; any bad row raises :class:`StoreError` naming its row
        number (header = row 1) and nothing is imported. Returns the number imported.
        """
        csv_path = Path(csv_path).expanduser()
        try:
            with csv_path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                header = [h.strip() for h in (reader.fieldnames or [])]
                reader.fieldnames = header
                records = list(enumerate(reader, start=2))
        except OSError as exc:
            raise StoreError(f"cannot read {csv_path}: {exc.strerror or exc}") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise StoreError(f"{csv_path.name} is not a readable UTF-8 CSV: {exc}") from None
        required = ["path", "label"] + ([] if default_reviewer else ["reviewer"])
        missing = [c for c in required if c not in header]
        if missing:
            raise StoreError(f"{csv_path.name}: missing column(s) {missing}; found {header}")
        fallback = default_reviewer.strip() if default_reviewer else None
        with self._write() as conn:
            by_name: dict[str, list[int]] = {}
            for row in conn.execute("SELECT id, path FROM images"):
                by_name.setdefault(Path(row["path"]).name, []).append(int(row["id"]))
            prepared = []
            for number, record in records:
                where = f"{csv_path.name} row {number}"
                if None in record:
                    raise StoreError(f"{where}: more fields than header columns")
                raw_path = (record.get("path") or "").strip()
                if not raw_path:
                    raise StoreError(f"{where}: empty path")
                image_id = self._find_image(conn, raw_path, csv_path.parent, by_name, where)
                reviewer = (record.get("reviewer") or "").strip() or fallback
                if not reviewer:
                    raise StoreError(f"{where}: no reviewer (and no default reviewer given)")
                action = (record.get("action") or "").strip() or "correct"
                if action not in REVIEW_ACTIONS or action == "undo":
                    allowed = [a for a in REVIEW_ACTIONS if a != "undo"]
                    raise StoreError(f"{where}: action {action!r} is not one of {allowed}")
                labels = [x.strip() for x in (record.get("label") or "").split(";") if x.strip()]
                if action in ("confirm", "correct") and not labels:
                    raise StoreError(f"{where}: empty label for a {action!r} review")
                note = (record.get("note") or "").strip() or None
                prepared.append((image_id, reviewer, list(dict.fromkeys(labels)), action, note))
            for image_id, reviewer, labels, action, note in prepared:
                self._insert_review(
                    conn, image_id, reviewer, labels, action, None, None, None, note, audit=False
                )
            self._audit(
                conn,
                fallback or "system",
                "import_reviews",
                {"file": str(csv_path.resolve()), "rows": len(prepared)},
            )
        return len(prepared)

    @staticmethod
    def _find_image(
        conn: sqlite3.Connection,
        raw_path: str,
        base: Path,
        by_name: dict[str, list[int]],
        where: str,
    ) -> int:
        candidate = Path(raw_path).expanduser()
        if not candidate.is_absolute():
            candidate = base / candidate
        row = conn.execute(
            "SELECT id FROM images WHERE path = ?", (_normalise_path(candidate),)
        ).fetchone()
        if row is not None:
            return int(row[0])
        matches = by_name.get(Path(raw_path.replace("\\", "/")).name, [])
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise StoreError(
                f"{where}: file name {raw_path!r} matches {len(matches)} images; give the full path"
            )
        raise StoreError(f"{where}: unknown image {raw_path!r} (not in this workspace)")

    # ------------------------------------------------------------------ summaries

    def agreement(self, weights: str | None = None, labels: list[str] | None = None) -> dict:
        """Cohen's kappa between reviewers, and of each reviewer with the AI.

        Uses each reviewer's current single label per image (multi-label reviews are
        left out; an ``ungradable`` review without labels counts as ``"ungradable"``)
        and, for the AI, the latest prediction of the active model. Pairs are compared
        on the images both rated. ``weights`` ("linear"/"quadratic") needs ordered
        classes: pass ``labels`` in order, else labels are sorted. ``kappa`` is ``None``
        when undefined (no images, or chance agreement already total).
        """
        from engine.metrics import cohen_kappa

        with self._read() as conn:
            reviewers = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT reviewer FROM reviews WHERE action != 'undo' ORDER BY reviewer"
                )
            ]
            per_reviewer: dict[str, dict[int, str]] = {}
            for reviewer in reviewers:
                current = self._current_reviews(conn, reviewer=reviewer)
                per_reviewer[reviewer] = {
                    image_id: single
                    for image_id, review in current.items()
                    if (single := _single_label(review)) is not None
                }
            active = conn.execute("SELECT hash FROM models WHERE active = 1").fetchone()
            ai = {
                r["image_id"]: r["label"]
                for r in self._latest_prediction_rows(conn, None if active is None else active[0])
                if r["label"] is not None and r["triage"] != "error"
            }
        reviewers = [r for r in reviewers if per_reviewer[r]]
        categories = list(labels) if labels else []
        seen = set(categories)
        extra = {v for d in (*per_reviewer.values(), ai) for v in d.values()} - seen
        categories += sorted(extra)
        index = {c: i for i, c in enumerate(categories)}

        def kappa(x: dict[int, str], y: dict[int, str]) -> tuple[int, float | None]:
            common = sorted(x.keys() & y.keys())
            if not common:
                return 0, None
            value = cohen_kappa(
                [index[x[i]] for i in common],
                [index[y[i]] for i in common],
                n_classes=len(categories),
                weights=weights,
            )
            return len(common), (None if math.isnan(value) else float(value))

        pairs = []
        for i, a in enumerate(reviewers):
            for b in reviewers[i + 1 :]:
                n, k = kappa(per_reviewer[a], per_reviewer[b])
                pairs.append({"a": a, "b": b, "n": n, "kappa": k})
        with_ai = []
        for reviewer in reviewers:
            n, k = kappa(per_reviewer[reviewer], ai)
            with_ai.append({"reviewer": reviewer, "n": n, "kappa": k})
        return {"reviewers": reviewers, "pairs": pairs, "with_ai": with_ai}

    def patient_rollup(self) -> list[dict]:
        """Per patient: image count, most urgent triage per eye, and whether referred.

        A patient is referred when any image's latest triage (active model) is
        needs-review, ungradable, out-of-distribution or error. Images without a patient
        are left out; images not yet screened are counted in ``unscreened``. Eyes are
        ``right``, ``left`` or ``unknown``.
        """
        with self._read() as conn:
            active = conn.execute("SELECT hash FROM models WHERE active = 1").fetchone()
            triage = {
                r["image_id"]: r["triage"]
                for r in self._latest_prediction_rows(conn, None if active is None else active[0])
            }
            images = conn.execute(
                "SELECT id, patient, eye FROM images WHERE patient IS NOT NULL ORDER BY patient, id"
            ).fetchall()
        patients: dict[str, dict] = {}
        for image in images:
            entry = patients.setdefault(
                image["patient"],
                {
                    "patient": image["patient"],
                    "images": 0,
                    "unscreened": 0,
                    "eyes": {},
                    "triage_counts": {},
                    "referred": False,
                },
            )
            entry["images"] += 1
            state = triage.get(image["id"])
            if state is None:
                entry["unscreened"] += 1
                continue
            entry["triage_counts"][state] = entry["triage_counts"].get(state, 0) + 1
            eye = image["eye"] or "unknown"
            previous = entry["eyes"].get(eye)
            if previous is None or _TRIAGE_SEVERITY.index(state) < _TRIAGE_SEVERITY.index(previous):
                entry["eyes"][eye] = state
            if state in REFERRED_STATES:
                entry["referred"] = True
        return list(patients.values())


# --------------------------------------------------------------------------- helpers


def _user_schema_version(conn: sqlite3.Connection) -> int:
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"
    ).fetchone()
    if not has_table:
        return 0
    row = conn.execute("SELECT max(version) FROM migrations").fetchone()
    return int(row[0] or 0)


def _normalise_path(path: str | os.PathLike[str]) -> str:
    """Absolute, resolved path text: the identity of an image."""
    return str(Path(path).expanduser().resolve())


def _clean_image_row(index: int, row: dict) -> dict:
    if not isinstance(row, dict):
        raise StoreError(f"image row {index} must be a dict, got {type(row).__name__}")
    if not row.get("path"):
        raise StoreError(f"image row {index}: missing 'path'")
    sha = row.get("sha256")
    if (
        not isinstance(sha, str)
        or len(sha) != 64
        or not all(c in "0123456789abcdef" for c in sha.lower())
    ):
        raise StoreError(
            f"image row {index} ({row['path']}): sha256 must be 64 hex digits, got {sha!r}"
        )
    raw_eye = row.get("eye")
    eye = normalise_eye(raw_eye)
    if raw_eye not in (None, "") and eye is None:
        raise StoreError(
            f"image row {index} ({row['path']}): eye {raw_eye!r} is not right/left/OD/OS/OI/R/L"
        )
    clean = {
        "path": _normalise_path(row["path"]),
        "sha256": sha.lower(),
        "modality": row.get("modality"),
        "patient": None if row.get("patient") in (None, "") else str(row["patient"]),
        "eye": eye,
    }
    for field in ("size_bytes", "width", "height"):
        value = row.get(field)
        try:
            clean[field] = None if value is None else int(value)
        except (TypeError, ValueError):
            raise StoreError(
                f"image row {index} ({row['path']}): {field} must be an integer, got {value!r}"
            ) from None
        if clean[field] is not None and clean[field] < 0:
            raise StoreError(f"image row {index} ({row['path']}): {field} must be >= 0")
    return clean


def _check_reviewer(reviewer: Any) -> str:
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise StoreError(f"reviewer must be a non-empty name, got {reviewer!r}")
    return reviewer.strip()


def _check_labels(labels: Any) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str) or not isinstance(labels, list | tuple):
        raise StoreError(f"labels must be a list of label names, got {labels!r}")
    clean = []
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise StoreError(f"each label must be a non-empty string, got {label!r}")
        clean.append(label.strip())
    return list(dict.fromkeys(clean))


def _as_list(value: Any) -> list | None:
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [str(v) for v in value]


def _model_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["metrics"] = _loads(d["metrics"])
    d["description"] = _loads(d["description"])
    d["active"] = bool(d["active"])
    return d


def _prediction_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    for field in ("probabilities", "conformal_set", "quality"):
        d[field] = _loads(d[field])
    return d


def _review_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["labels"] = _loads(d["labels"]) or []
    return d


def _review_label(review: dict) -> str:
    """A review's label as one string: labels joined by ``;`` (``ungradable`` if none)."""
    if review["labels"]:
        return ";".join(review["labels"])
    return "ungradable" if review["action"] == "ungradable" else ""


def _single_label(review: dict) -> str | None:
    labels = review["labels"]
    if len(labels) == 1:
        return labels[0]
    if not labels and review["action"] == "ungradable":
        return "ungradable"
    return None


def _csv_row(row: dict) -> dict:
    out = dict(row)
    if out.get("conformal_set") is not None:
        out["conformal_set"] = "|".join(out["conformal_set"])
    for field in ("quality", "probabilities"):
        if out.get(field) is not None:
            out[field] = json.dumps(out[field], ensure_ascii=False)
    return out
