"""The store's read rules, each in one place, as functions of an open connection.

* **the active model**: at most one row of ``models`` has ``active = 1``;
* **an image's current review**: its latest labelling review (confirm, correct,
  ungradable) that no ``undo`` has cancelled; skips and undos never set a label;
* **an image's latest prediction**: the newest prediction of the given model (of any model
  when none is given), joined with the image's facts;
* **the labels a review may give**: those of the model that last screened the image (the
  active model's when none has), one per image unless that model is multi-label.

Reads, writes, exports and summaries all call these, so a change of a rule changes every
screen, command and file that shows it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from .common import (
    IN_CHUNK,
    LABELLING_ACTIONS,
    StoreError,
    chunks,
    prediction_dict,
    review_dict,
)

# The image columns that travel with a prediction (``sha256`` as ``current_sha256``).
_IMAGE_COLUMNS = (
    "i.path, i.patient, i.eye, i.modality, i.width, i.height, i.sha256 AS current_sha256,"
    " i.kind, i.n_slices, i.acquired"
)


def active_hash(conn: sqlite3.Connection) -> str | None:
    """The hash of the active model, or ``None``."""
    row = conn.execute("SELECT hash FROM models WHERE active = 1").fetchone()
    return None if row is None else str(row[0])


def label_scheme(conn: sqlite3.Connection, image_id: int) -> tuple[str, list[str], str] | None:
    """``(model name, labels, task)`` a review of this image is checked against: the model
    of its latest prediction, else the active model; ``None`` when the workspace knows no
    model description (then any label is accepted)."""
    row = conn.execute(
        "SELECT m.name, m.description FROM predictions p JOIN models m ON m.hash = p.model_hash"
        " WHERE p.image_id = ? ORDER BY p.id DESC LIMIT 1",
        (image_id,),
    ).fetchone()
    if row is None:
        row = conn.execute("SELECT name, description FROM models WHERE active = 1").fetchone()
    if row is None or not row["description"]:
        return None
    try:
        description = json.loads(row["description"])
    except ValueError:
        return None
    labels = description.get("labels") if isinstance(description, dict) else None
    if not isinstance(labels, list) or not labels:
        return None
    return str(row["name"] or "the model"), [str(x) for x in labels], str(description.get("task"))


def check_review_labels(
    conn: sqlite3.Connection, image_id: int, labels: Sequence[str], where: str = ""
) -> None:
    """Refuse review labels the image's model does not know, or several labels for a model
    that gives one per image (:class:`StoreError` naming the label and the allowed ones)."""
    if not labels:
        return
    scheme = label_scheme(conn, image_id)
    if scheme is None:
        return
    name, allowed, task = scheme
    prefix = f"{where}: " if where else ""
    unknown = [x for x in labels if x not in allowed]
    if unknown:
        raise StoreError(
            f"{prefix}label {unknown[0]!r} is not a label of the model {name!r}; its labels: "
            f"{', '.join(allowed)}"
        )
    if len(labels) > 1 and task != "multilabel":
        raise StoreError(
            f"{prefix}the model {name!r} gives one label per image ({task}); got {len(labels)}: "
            f"{';'.join(labels)}"
        )


def current_reviews(
    conn: sqlite3.Connection,
    image_ids: Sequence[int] | None = None,
    reviewer: str | None = None,
    excluding: int | None = None,
) -> dict[int, dict]:
    """Image id -> its current review (optionally of one reviewer, or of some images).

    ``excluding`` treats that review as undone (to find what an undo restores).
    """
    clauses, params = [], []
    if reviewer is not None:
        clauses.append("reviewer = ?")
        params.append(reviewer)
    rows: list[sqlite3.Row] = []
    if image_ids is None:
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = conn.execute(f"SELECT * FROM reviews{where} ORDER BY id", params).fetchall()
    else:
        for part in chunks(sorted({int(i) for i in image_ids})):
            marks = ",".join("?" * len(part))
            where = " AND ".join([*clauses, f"image_id IN ({marks})"])
            rows += conn.execute(
                f"SELECT * FROM reviews WHERE {where} ORDER BY id", [*params, *part]
            ).fetchall()
        rows.sort(key=lambda r: r["id"])
    cancelled = {r["undoes"] for r in rows if r["action"] == "undo"}
    if excluding is not None:
        cancelled.add(excluding)
    current: dict[int, dict] = {}
    for r in rows:
        if r["action"] in LABELLING_ACTIONS and r["id"] not in cancelled:
            current[r["image_id"]] = review_dict(r)
    return current


def latest_prediction_rows(
    conn: sqlite3.Connection, model_hash: str | None, image_ids: Sequence[int] | None = None
) -> list[sqlite3.Row]:
    """Each image's newest prediction of ``model_hash`` (any model if ``None``), by image id.

    Rows hold the prediction columns plus the image's path, patient, eye, modality, size,
    ``current_sha256``, ``kind``, ``n_slices`` and ``acquired``. ``image_ids`` limits the answer to those images.
    """
    where, params = ("WHERE model_hash = ?", [model_hash]) if model_hash else ("", [])
    sql = (
        f"SELECT p.*, {_IMAGE_COLUMNS} FROM predictions p JOIN images i ON i.id = p.image_id"
        f" WHERE p.id IN (SELECT max(id) FROM predictions {where}{{only}} GROUP BY image_id)"
        " ORDER BY i.id"
    )
    if image_ids is None:
        return conn.execute(sql.format(only=""), params).fetchall()
    rows: list[sqlite3.Row] = []
    for part in chunks(sorted({int(i) for i in image_ids})):
        marks = ",".join("?" * len(part))
        only = f" {'AND' if where else 'WHERE'} image_id IN ({marks})"
        rows += conn.execute(sql.format(only=only), [*params, *part]).fetchall()
    return sorted(rows, key=lambda r: r["image_id"])


def prediction_rows_by_id(conn: sqlite3.Connection, ids: Sequence[int]) -> list[sqlite3.Row]:
    """Predictions by id, with the same image columns as :func:`latest_prediction_rows`."""
    rows: list[sqlite3.Row] = []
    for part in chunks([int(i) for i in ids]):
        marks = ",".join("?" * len(part))
        rows += conn.execute(
            f"SELECT p.*, {_IMAGE_COLUMNS} FROM predictions p JOIN images i ON i.id = p.image_id"
            f" WHERE p.id IN ({marks})",
            part,
        ).fetchall()
    return rows


def prediction_records(conn: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[dict]:
    """Prediction rows as records: JSON parsed, ``stale`` and the image's current ``review``.

    ``stale`` is true when the file changed after the prediction was made.
    """
    ids = [r["image_id"] for r in rows]
    # a few images: only their reviews; many: one pass over all reviews is cheaper
    current = current_reviews(conn, ids if len(ids) <= IN_CHUNK else None)
    out = []
    for r in rows:
        d = prediction_dict(r)
        d["stale"] = d.pop("current_sha256") != d["image_sha256"]
        d["review"] = current.get(d["image_id"])
        out.append(d)
    return out
