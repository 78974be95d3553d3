"""The workspace schema and its migrations (append only: never edit a released one).

The schema version is the highest row of the ``migrations`` table; a database from a newer
program is refused by :meth:`engine.store.Workspace.open`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable

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


_ITEMS_V2 = """
ALTER TABLE images ADD COLUMN kind TEXT NOT NULL DEFAULT 'image'
    CHECK (kind IN ('image', 'volume'));
ALTER TABLE images ADD COLUMN n_slices INTEGER CHECK (n_slices IS NULL OR n_slices >= 1);
ALTER TABLE images ADD COLUMN acquired TEXT
    CHECK (acquired IS NULL OR acquired GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]');
ALTER TABLE images ADD COLUMN facts TEXT;
ALTER TABLE images ADD COLUMN patient_name TEXT;
CREATE INDEX images_visit ON images(patient, eye, acquired);

ALTER TABLE predictions ADD COLUMN key_slice INTEGER CHECK (key_slice IS NULL OR key_slice >= 1);

CREATE TABLE slice_predictions (
    prediction_id INTEGER NOT NULL REFERENCES predictions(id),
    slice INTEGER NOT NULL CHECK (slice >= 1),
    label TEXT,
    confidence REAL,
    finding REAL,
    probabilities TEXT,
    ood_score REAL,
    quality_ok INTEGER CHECK (quality_ok IS NULL OR quality_ok IN (0, 1)),
    triage TEXT NOT NULL CHECK (triage IN
        ('auto-cleared', 'needs-review', 'ungradable', 'out-of-distribution', 'error')),
    triage_reason TEXT,
    error TEXT,
    PRIMARY KEY (prediction_id, slice)
);

ALTER TABLE reviews ADD COLUMN slice INTEGER CHECK (slice IS NULL OR slice >= 1);
"""


def _migration_2_items(conn: sqlite3.Connection) -> None:
    """Items: an image or an OCT volume, with its slice count, acquisition date, what the file
    says (``facts``: JSON with where each fact came from and the device) and, only when the
    user keeps them, the patient's name; a volume's most suspicious slice and one row per
    B-scan (``slice_predictions``); the slice a reviewer noted. Slice numbers are 1-based,
    as the reader sees them."""
    for statement in _split_sql(_ITEMS_V2):
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


_TRIAGE_CHECK = re.compile(r"(triage\s+IN\s*\()([^)]*)(\))", re.IGNORECASE)


def _migration_3_refer_state(conn: sqlite3.Connection) -> None:
    """Allow the triage state 'refer' (a confident finding) in ``predictions`` and, where
    it exists, ``slice_predictions`` (one row per B-scan of an OCT volume).

    SQLite cannot alter a CHECK constraint, so each table is rebuilt: its own CREATE
    statement (whatever columns earlier migrations gave it) with 'refer' added to the
    triage list, every column copied, then its indexes and triggers recreated and the
    AUTOINCREMENT counter kept. The migration runner turns foreign keys off around
    migrations and checks them before each commit.
    """
    for table in ("predictions", "slice_predictions"):
        _widen_triage_check(conn, table)


def _widen_triage_check(conn: sqlite3.Connection, table: str) -> None:
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    if row is None:
        return  # a table this workspace does not have
    sql = row[0]
    match = _TRIAGE_CHECK.search(sql)
    if match is None:
        if table == "predictions":
            raise sqlite3.DatabaseError("predictions table has no triage CHECK list to widen")
        return  # no CHECK list: 'refer' is already allowed
    states = [x.strip() for x in match.group(2).split(",") if x.strip()]
    if "'refer'" in states:
        return
    widened = _TRIAGE_CHECK.sub(
        lambda m: m.group(1) + ", ".join(["'refer'", *states]) + m.group(3), sql, count=1
    )
    rebuilt = f"{table}_rebuilt"
    new_sql = re.sub(
        rf"^\s*CREATE\s+TABLE\s+(\"{table}\"|{table})\b",
        f"CREATE TABLE {rebuilt}",
        widened,
        count=1,
        flags=re.IGNORECASE,
    )
    extras = [
        r[0]
        for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ?"
            " AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name",
            (table,),
        )
    ]
    has_sequence = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone()
    seq = (
        conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        if has_sequence
        else None
    )
    columns = ", ".join(
        '"' + str(r[1]).replace('"', '""') + '"'
        for r in conn.execute(f'PRAGMA table_info("{table}")')
    )
    conn.execute(new_sql)
    conn.execute(f'INSERT INTO {rebuilt} ({columns}) SELECT {columns} FROM "{table}"')
    conn.execute(f'DROP TABLE "{table}"')
    conn.execute(f'ALTER TABLE {rebuilt} RENAME TO "{table}"')
    for statement in extras:
        conn.execute(statement)
    if seq is not None:  # keep ids of deleted rows from ever coming back
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, seq[0]))


_GRADING_V4 = """
CREATE TABLE schemes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL CHECK (length(trim(created_by)) > 0)
);
CREATE TRIGGER schemes_no_update BEFORE UPDATE ON schemes
BEGIN SELECT RAISE(ABORT, 'schemes are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER schemes_no_delete BEFORE DELETE ON schemes
BEGIN SELECT RAISE(ABORT, 'schemes are append-only: DELETE is not allowed'); END;

CREATE TABLE grades (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images(id),
    slice_index INTEGER CHECK (slice_index IS NULL OR slice_index >= 0),
    scheme_id INTEGER REFERENCES schemes(id),
    question TEXT NOT NULL,
    answer TEXT NOT NULL DEFAULT '[]',
    reviewer TEXT NOT NULL CHECK (length(trim(reviewer)) > 0),
    created_at TEXT NOT NULL,
    undoes INTEGER REFERENCES grades(id)
);
CREATE INDEX grades_image ON grades(image_id, slice_index, question);
CREATE UNIQUE INDEX grades_undone_once ON grades(undoes) WHERE undoes IS NOT NULL;
CREATE TRIGGER grades_no_update BEFORE UPDATE ON grades
BEGIN SELECT RAISE(ABORT, 'grades are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER grades_no_delete BEFORE DELETE ON grades
BEGIN SELECT RAISE(ABORT, 'grades are append-only: DELETE is not allowed'); END;

CREATE TABLE marks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL UNIQUE,
    image_id INTEGER NOT NULL REFERENCES images(id),
    slice_index INTEGER CHECK (slice_index IS NULL OR slice_index >= 0),
    scheme_id INTEGER REFERENCES schemes(id),
    lesion TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('point', 'box', 'polygon', 'freehand')),
    points TEXT NOT NULL,
    reviewer TEXT NOT NULL CHECK (length(trim(reviewer)) > 0),
    created_at TEXT NOT NULL,
    restores TEXT REFERENCES marks(uid)
);
CREATE INDEX marks_image ON marks(image_id, slice_index);
CREATE TRIGGER marks_no_update BEFORE UPDATE ON marks
BEGIN SELECT RAISE(ABORT, 'marks are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER marks_no_delete BEFORE DELETE ON marks
BEGIN SELECT RAISE(ABORT, 'marks are append-only: DELETE is not allowed'); END;

CREATE TABLE mark_deletions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mark_uid TEXT NOT NULL UNIQUE REFERENCES marks(uid),
    reviewer TEXT NOT NULL CHECK (length(trim(reviewer)) > 0),
    created_at TEXT NOT NULL
);
CREATE TRIGGER mark_deletions_no_update BEFORE UPDATE ON mark_deletions
BEGIN SELECT RAISE(ABORT, 'mark deletions are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER mark_deletions_no_delete BEFORE DELETE ON mark_deletions
BEGIN SELECT RAISE(ABORT, 'mark deletions are append-only: DELETE is not allowed'); END;
"""


def _migration_4_grading(conn: sqlite3.Connection) -> None:
    """Grading schemes, graders' answers and lesion marks, all append-only.

    ``schemes``: each change of a workspace's scheme is a new row (the newest is current).
    ``grades``: one answer (a JSON list of option values) to one question about an image
    or a volume's B-scan (``slice_index``, 0-based); the effective answer is the newest row
    no later row ``undoes``. ``marks``: one drawn lesion (``points``: JSON ``[[x, y], ...]``
    in full-resolution pixels), identified by ``uid``; ``mark_deletions`` holds a tombstone
    per deleted mark, and undoing a deletion adds a copy of the mark under a new uid that
    ``restores`` the old one.
    """
    for statement in _split_sql(_GRADING_V4):
        conn.execute(statement)


# Ordered; migration i (1-based) brings the schema from version i-1 to i. Append only.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migration_1_initial,
    _migration_2_items,
    _migration_3_refer_state,
    _migration_4_grading,
)
SCHEMA_VERSION: int = len(MIGRATIONS)


def user_schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in ``migrations`` (0 for a new or foreign database)."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"
    ).fetchone()
    if not has_table:
        return 0
    row = conn.execute("SELECT max(version) FROM migrations").fetchone()
    return int(row[0] or 0)
