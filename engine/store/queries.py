"""The store's reads: everything the CLI, the desktop and the engine ask of a workspace.

Callers never write SQL of their own: each question has a method here (or, for a read
without opening the workspace for writing, a module function), and each method answers
it with one snapshot and as few statements as it can.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from .base import StoreBase
from .common import (
    database_path,
    image_dict,
    loads,
    model_dict,
    normalise_path,
    prediction_dict,
    review_dict,
    slice_dict,
)
from .rules import (
    active_hash,
    current_reviews,
    latest_prediction_rows,
    prediction_records,
    prediction_rows_by_id,
)

_IMAGE_FACTS = "id, path, sha256, patient, eye, kind, n_slices, acquired, facts, patient_name"


class Queries(StoreBase):
    """Read-only questions; none of them changes the database."""

    # ------------------------------------------------------------------ images

    def image_id(self, path: str | os.PathLike[str]) -> int | None:
        """The id of the image at ``path`` (resolved), or ``None``."""
        row = self._one("SELECT id FROM images WHERE path = ?", (normalise_path(path),))
        return None if row is None else int(row[0])

    def images(self) -> list[dict]:
        """All images and volumes, in the order they were added (``facts`` parsed)."""
        rows = self._all("SELECT * FROM images ORDER BY id")
        return [image_dict(r) for r in rows]

    def image(self, image_id: int) -> dict | None:
        """One item's row (path, sha256, patient, eye, kind, n_slices, acquired, facts...),
        or ``None``."""
        row = self._one("SELECT * FROM images WHERE id = ?", (int(image_id),))
        return None if row is None else image_dict(row)

    def image_record(self, image_id: int) -> dict | None:
        """What a reader sees of one image, or ``None`` if it is not in the workspace.

        ``image_id``, ``path``, ``sha256``, ``patient``, ``eye``, ``kind``, ``n_slices``,
        ``acquired``, ``facts`` (what the file says and where each fact came from),
        ``patient_name`` (only stored when the user keeps names), ``prediction`` (its latest
        prediction of the active model, of any model when none is active, JSON parsed; or
        ``None``) and ``review`` (its current review or ``None``).
        """
        with self._read() as conn:
            image = conn.execute(
                f"SELECT {_IMAGE_FACTS} FROM images WHERE id = ?", (int(image_id),)
            ).fetchone()
            if image is None:
                return None
            latest = latest_prediction_rows(conn, active_hash(conn), [int(image_id)])
            review = current_reviews(conn, [int(image_id)]).get(int(image_id))
        prediction = None
        if latest:
            prediction = prediction_dict(latest[0])
            prediction.pop("current_sha256")
        return {
            "image_id": int(image["id"]),
            "path": image["path"],
            "sha256": image["sha256"],
            "patient": image["patient"],
            "eye": image["eye"],
            "kind": image["kind"],
            "n_slices": image["n_slices"],
            "acquired": image["acquired"],
            "facts": loads(image["facts"]),
            "patient_name": image["patient_name"],
            "prediction": prediction,
            "review": review,
        }

    # ------------------------------------------------------------------ models

    def active_model(self) -> dict | None:
        """The active model's row (metrics/description parsed), or ``None``."""
        row = self._one("SELECT * FROM models WHERE active = 1")
        return None if row is None else model_dict(row)

    def models(self) -> list[dict]:
        """All registered model versions, oldest registration first."""
        rows = self._all("SELECT * FROM models ORDER BY registered_at, rowid")
        return [model_dict(r) for r in rows]

    def model_path(self, model_hash: str) -> Path | None:
        """The file recorded for a model version, or ``None`` (unknown hash, or no file)."""
        row = self._one("SELECT path FROM models WHERE hash = ?", (model_hash,))
        return Path(row[0]) if row is not None and row[0] else None

    # ------------------------------------------------------------------ runs & predictions

    def runs(self) -> list[dict]:
        """All runs, oldest first (settings and counts parsed)."""
        rows = self._all("SELECT * FROM runs ORDER BY id")
        out = []
        for r in rows:
            d = dict(r)
            d["settings"] = loads(d["settings"])
            d["counts"] = loads(d["counts"])
            out.append(d)
        return out

    def done_image_hashes(self, model_hash: str, settings_key: str) -> set[str]:
        """Image sha256s already screened without error by this model and settings key."""
        rows = self._all(
            "SELECT DISTINCT image_sha256 FROM predictions WHERE model_hash = ?"
            " AND settings_key = ? AND triage != 'error' AND error IS NULL",
            (model_hash, settings_key),
        )
        return {r[0] for r in rows}

    def done_images(self, model_hash: str, settings_key: str) -> set[tuple[int, str]]:
        """``(image id, sha256)`` pairs already screened without error by this model and
        settings key: a file is done only if *that* file, with *that* content, was screened
        (a copy of a screened file under a new name still needs its own prediction)."""
        rows = self._all(
            "SELECT DISTINCT image_id, image_sha256 FROM predictions WHERE model_hash = ?"
            " AND settings_key = ? AND triage != 'error' AND error IS NULL",
            (model_hash, settings_key),
        )
        return {(int(r[0]), r[1]) for r in rows}

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
        return [prediction_dict(r) for r in self._rows_of("predictions", image)]

    def latest_predictions(self, model_hash: str | None = None) -> list[dict]:
        """Per image, its latest prediction with image info and current review.

        ``model_hash`` defaults to the active model (any model when none is active).
        Each dict (a *prediction record*) has the prediction columns, ``path``,
        ``patient``, ``eye``, ``modality``, ``width``, ``height``, ``stale`` (the file
        changed since) and ``review`` (the current review dict or ``None``).
        """
        with self._read() as conn:
            if model_hash is None:
                model_hash = active_hash(conn)
            return prediction_records(conn, latest_prediction_rows(conn, model_hash))

    def prediction_records(self, prediction_ids: Sequence[int]) -> list[dict]:
        """The records of these predictions, in the given order (same shape as
        :meth:`latest_predictions`); unknown ids are left out.

        Screening uses it to hand back exactly what it stored, with each image's current
        review, in two statements per chunk.
        """
        ids = [int(i) for i in prediction_ids]
        with self._read() as conn:
            records = prediction_records(conn, prediction_rows_by_id(conn, ids))
        by_id = {r["id"]: r for r in records}
        return [by_id[i] for i in ids if i in by_id]

    def slice_predictions(self, prediction_id: int) -> list[dict]:
        """A volume prediction's per-B-scan results, by slice number (1-based); empty for
        an image's prediction or an unknown id."""
        rows = self._all(
            "SELECT * FROM slice_predictions WHERE prediction_id = ? ORDER BY slice",
            (int(prediction_id),),
        )
        return [slice_dict(r) for r in rows]

    def unscreened_by(self, model_hash: str, screened_by: str) -> int:
        """How many images with a prediction of ``screened_by`` have none of ``model_hash``."""
        row = self._one(
            "SELECT count(DISTINCT image_id) FROM predictions WHERE model_hash = ?"
            " AND image_id NOT IN (SELECT image_id FROM predictions WHERE model_hash = ?)",
            (screened_by, model_hash),
        )
        return int(row[0])

    # ------------------------------------------------------------------ reviews & audit

    def current_review(self, image_id: int | str | os.PathLike[str]) -> dict | None:
        """The review that sets the image's label now, after undos; ``None`` if unlabelled.

        Skips and undos never set a label; an undone review no longer counts, so the
        label falls back to the review before it.
        """
        with self._read() as conn:
            resolved = self._resolve_image(conn, image_id)
            return current_reviews(conn, [resolved]).get(resolved)

    def reviews(self, image_id: int | str | os.PathLike[str] | None = None) -> list[dict]:
        """Every review row (of one image if given), oldest first, labels parsed."""
        return [review_dict(r) for r in self._rows_of("reviews", image_id)]

    def review(self, review_id: int) -> dict | None:
        """One review row by id (labels parsed), or ``None``."""
        row = self._one("SELECT * FROM reviews WHERE id = ?", (int(review_id),))
        return None if row is None else review_dict(row)

    def audit_log(self) -> list[dict]:
        """The whole audit log, oldest first (details parsed)."""
        rows = self._all("SELECT * FROM audit ORDER BY id")
        return [{**dict(r), "details": loads(r["details"])} for r in rows]


def registered_model_path(folder: str | os.PathLike[str], model_hash: str) -> Path | None:
    """The file a workspace records for a model version, read without opening it for writing.

    For code that only looks a model up (loading a LoRA adapter's base model): the database
    is opened read-only, nothing is migrated or created, and any failure (not a workspace,
    locked, unreadable) answers ``None``.
    """
    db_path = database_path(folder)
    if not db_path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT path FROM models WHERE hash = ?", (model_hash,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return Path(row[0]) if row and row[0] else None


__all__ = ["Queries", "registered_model_path"]
