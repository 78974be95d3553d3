"""The store's writes: images, model versions, runs, predictions, reviews and the audit log.

Each public method is one transaction. Reviews and the audit log are append-only (triggers
refuse UPDATE and DELETE); "undo" is a new review that cancels an earlier one.
"""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from .base import StoreBase
from .common import (
    BOOL_FIELDS,
    PREDICTION_VALUES,
    REAL_FIELDS,
    REVIEW_ACTIONS,
    RUN_STATUSES,
    SLICE_VALUES,
    TRIAGE_STATES,
    StoreError,
    as_list,
    check_labels,
    check_reviewer,
    clean_image_row,
    dumps,
    now,
    number,
    settings_key,
)
from .rules import check_review_labels, current_reviews

PREDICTION_FIELDS = {"image_id", "path", "image_sha256", "key_slice", "slices", *PREDICTION_VALUES}
SLICE_FIELDS = {"slice", *SLICE_VALUES}


class Writes(StoreBase):
    """Appending and updating rows; every method is one transaction."""

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
        **item: Any,
    ) -> int:
        """Add an image or update the one at the same resolved path; return its id.

        A changed ``sha256`` means the file changed: the new hash is stored (older
        predictions keep the hash they were made on) and the change is audited.
        Arguments left as ``None`` keep what is already stored. ``item`` takes the item
        fields of :meth:`add_images` (``kind``, ``n_slices``, ``acquired``, ``facts``,
        ``patient_name``).
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
                    **item,
                )
            ]
        )[0]

    def add_images(self, rows: list[dict]) -> list[int]:
        """Add or update many images in one transaction (see :meth:`add_image`).

        Besides the file's facts a row may say what kind of item it is (``kind``: image or
        volume, with ``n_slices`` B-scans), when it was acquired (``acquired``,
        YYYY-MM-DD), what the file says (``facts``: a dict, e.g. where each fact came from
        and the device) and the patient's name (``patient_name``: pass it only when the
        user keeps names). The kind and slice count always follow the file; the other
        fields left empty keep what is stored.
        """
        clean = [clean_image_row(i, row) for i, row in enumerate(rows)]
        ids: list[int] = []
        changed: list[dict] = []
        with self._write() as conn:
            stamp = now()
            for row in clean:
                old = conn.execute(
                    "SELECT id, sha256 FROM images WHERE path = ?", (row["path"],)
                ).fetchone()
                if old is None:
                    cur = conn.execute(
                        "INSERT INTO images (path, sha256, size_bytes, width, height, modality,"
                        " patient, eye, kind, n_slices, acquired, facts, patient_name,"
                        " added_at, updated_at)"
                        " VALUES (:path, :sha256, :size_bytes, :width, :height, :modality,"
                        " :patient, :eye, :kind, :n_slices, :acquired, :facts, :patient_name,"
                        " :now, :now)",
                        {**row, "now": stamp},
                    )
                    ids.append(int(cur.lastrowid))
                    continue
                conn.execute(
                    "UPDATE images SET sha256 = :sha256,"
                    " size_bytes = coalesce(:size_bytes, size_bytes),"
                    " width = coalesce(:width, width), height = coalesce(:height, height),"
                    " modality = coalesce(:modality, modality),"
                    " patient = coalesce(:patient, patient), eye = coalesce(:eye, eye),"
                    " kind = :kind, n_slices = :n_slices,"
                    " acquired = coalesce(:acquired, acquired), facts = coalesce(:facts, facts),"
                    " patient_name = coalesce(:patient_name, patient_name),"
                    " updated_at = :now WHERE id = :id",
                    {**row, "now": stamp, "id": old["id"]},
                )
                if old["sha256"] != row["sha256"]:
                    changed.append(
                        {"path": row["path"], "old_sha256": old["sha256"], "sha256": row["sha256"]}
                    )
                ids.append(int(old["id"]))
            if changed:
                self._audit(conn, "system", "image_changed", {"images": changed})
        return ids

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
                        dumps(metrics),
                        dumps(description),
                        now(),
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
                (model_hash, dumps(settings), key, now()),
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
                (status, now(), dumps(counts), run_id),
            )
            if cur.rowcount == 0:
                raise StoreError(f"unknown run id {run_id}")
            self._audit(
                conn, "system", "finish_run", {"run_id": run_id, "status": status, "counts": counts}
            )

    def add_predictions(self, run_id: int, rows: list[dict]) -> list[int]:
        """Store predictions of one run in one transaction; returns their ids.

        Each row names its image by ``image_id`` or ``path``; ``model_hash`` and
        ``settings_key`` come from the run, ``image_sha256`` defaults to the image's
        current hash. JSON fields (probabilities, conformal_set, quality) take Python
        objects. A volume's row may name its most suspicious B-scan (``key_slice``) and
        carry one dict per B-scan (``slices``: ``slice`` plus :data:`SLICE_VALUES`); slice
        numbers are 1-based and must lie within the volume. A bad row raises
        :class:`StoreError` naming its index (and slice) and nothing is stored.
        """
        with self._write() as conn:
            run = conn.execute(
                "SELECT model_hash, settings_key FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if run is None:
                raise StoreError(f"unknown run id {run_id}")
            stamp = now()
            ids = []
            for index, row in enumerate(rows):
                values = self._prediction_values(conn, index, row)
                slices = values.pop("slices")
                values.update(
                    run_id=run_id,
                    model_hash=run["model_hash"],
                    settings_key=run["settings_key"],
                    created_at=stamp,
                )
                columns = ", ".join(values)
                placeholders = ", ".join(f":{c}" for c in values)
                cur = conn.execute(
                    f"INSERT INTO predictions ({columns}) VALUES ({placeholders})", values
                )
                prediction_id = int(cur.lastrowid)
                if slices:
                    conn.executemany(
                        "INSERT INTO slice_predictions (prediction_id, slice, label, confidence,"
                        " finding, probabilities, ood_score, quality_ok, triage, triage_reason,"
                        " error) VALUES (:prediction_id, :slice, :label, :confidence, :finding,"
                        " :probabilities, :ood_score, :quality_ok, :triage, :triage_reason,"
                        " :error)",
                        [{**one, "prediction_id": prediction_id} for one in slices],
                    )
                ids.append(prediction_id)
        return ids

    def _prediction_values(self, conn: sqlite3.Connection, index: int, row: dict) -> dict:
        if not isinstance(row, dict):
            raise StoreError(f"prediction row {index} must be a dict, got {type(row).__name__}")
        unknown = set(row) - PREDICTION_FIELDS - {"model_hash", "settings_key", "run_id"}
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
        image = conn.execute(
            "SELECT sha256, kind, n_slices FROM images WHERE id = ?", (image_id,)
        ).fetchone()
        sha = row.get("image_sha256") or image["sha256"]
        where = f"prediction row {index}"
        key_slice = number(row.get("key_slice"), int, f"{where}: key_slice")
        if key_slice is not None:
            check_slice(key_slice, image, f"{where}: key_slice")
        slices = [
            _slice_values(f"{where} slice row {j}", one, image)
            for j, one in enumerate(row.get("slices") or [])
        ]
        numbers = [one["slice"] for one in slices]
        if len(set(numbers)) != len(numbers):
            twice = sorted({n for n in numbers if numbers.count(n) > 1})
            raise StoreError(f"{where}: slice(s) {twice} given more than once")
        values: dict[str, Any] = {
            "image_id": image_id,
            "image_sha256": sha,
            "probabilities": dumps(row.get("probabilities")),
            "label": None if row.get("label") is None else str(row["label"]),
            "conformal_set": dumps(as_list(row.get("conformal_set"))),
            "quality": dumps(row.get("quality")),
            "triage": triage,
            "triage_reason": row.get("triage_reason"),
            "error": None if row.get("error") is None else str(row["error"]),
            "uncertainty_method": row.get("uncertainty_method"),
            "key_slice": key_slice,
            "slices": slices,
        }
        for field in REAL_FIELDS:
            values[field] = number(row.get(field), float, f"prediction row {index}: {field}")
        for field in BOOL_FIELDS:
            value = row.get(field)
            values[field] = None if value is None else int(bool(value))
        return values

    def add_review(
        self,
        image: int | str | os.PathLike[str],
        reviewer: str,
        labels: list[str],
        action: str = "correct",
        prediction_id: int | None = None,
        seconds: float | None = None,
        note: str | None = None,
        slice: int | None = None,
    ) -> int:
        """Append a review of ``image`` (id or path); returns the review id.

        ``confirm`` without labels takes the label of ``prediction_id``; ``confirm`` and
        ``correct`` need labels; ``undo`` cancels this reviewer's latest effective review
        of the image. A review of a volume labels the volume and may note one of its
        B-scans (``slice``, 1-based). The review and its audit entry are written in one
        transaction.
        """
        reviewer = check_reviewer(reviewer)
        if action not in REVIEW_ACTIONS:
            raise StoreError(f"review action must be one of {REVIEW_ACTIONS}, got {action!r}")
        labels = check_labels(labels)
        if seconds is not None:
            try:
                seconds = float(seconds)
            except (TypeError, ValueError):
                raise StoreError(f"seconds must be a number, got {seconds!r}") from None
            if not math.isfinite(seconds) or seconds < 0:
                raise StoreError(f"seconds must be a finite number >= 0, got {seconds!r}")
        slice = number(slice, int, "review slice")
        with self._write() as conn:
            image_id = self._resolve_image(conn, image)
            if slice is not None:
                if action == "undo":
                    raise StoreError("an undo cannot note a slice")
                item = conn.execute(
                    "SELECT kind, n_slices FROM images WHERE id = ?", (image_id,)
                ).fetchone()
                check_slice(slice, item, f"review of image {image_id}: slice")
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
            check_review_labels(conn, image_id, labels)
            return self._insert_review(
                conn,
                image_id,
                reviewer,
                labels,
                action,
                prediction_id,
                None,
                seconds,
                note,
                slice=slice,
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
        slice: int | None = None,
    ) -> int:
        cur = conn.execute(
            "INSERT INTO reviews (image_id, reviewer, labels, action, prediction_id, undoes,"
            " seconds, note, slice, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_id,
                reviewer,
                dumps(labels),
                action,
                prediction_id,
                undoes,
                seconds,
                note,
                slice,
                now(),
            ),
        )
        review_id = int(cur.lastrowid)
        if audit:
            details = {"review_id": review_id, "image_id": image_id, "action": action}
            details.update({"labels": labels} if undoes is None else {"undoes": undoes})
            if slice is not None:
                details["slice"] = slice
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
        restored = current_reviews(conn, [image_id], excluding=int(target["id"]))
        labels = restored[image_id]["labels"] if image_id in restored else []
        return self._insert_review(
            conn, image_id, reviewer, labels, "undo", None, int(target["id"]), None, None
        )

    def undo_last_review(self, reviewer: str) -> int | None:
        """Append an ``undo`` cancelling ``reviewer``'s latest effective review.

        Returns the undo review's id, or ``None`` if there is nothing left to undo.
        Repeated calls walk further back.
        """
        reviewer = check_reviewer(reviewer)
        with self._write() as conn:
            target = self._last_effective(conn, reviewer)
            if target is None:
                return None
            return self._insert_undo(conn, reviewer, target)

    def audit(self, actor: str, action: str, details: dict | None = None) -> None:
        """Append an entry to the audit log (its own transaction)."""
        if not isinstance(actor, str) or not actor.strip():
            raise StoreError("audit actor must be a non-empty string")
        if not isinstance(action, str) or not action.strip():
            raise StoreError("audit action must be a non-empty string")
        with self._write() as conn:
            self._audit(conn, actor, action, details)


def check_slice(value: int, image: sqlite3.Row, what: str) -> None:
    """A 1-based slice number must name a B-scan of a volume."""
    if image["kind"] != "volume":
        raise StoreError(f"{what}: {value} given, but the item is a single image, not a volume")
    if not 1 <= value <= int(image["n_slices"]):
        raise StoreError(
            f"{what}: {value} is outside the volume's slices 1-{int(image['n_slices'])}"
        )


def _slice_values(where: str, row: Any, image: sqlite3.Row) -> dict[str, Any]:
    """A checked ``slice_predictions`` row; :class:`StoreError` names ``where`` it is wrong."""
    if not isinstance(row, dict):
        raise StoreError(f"{where} must be a dict, got {type(row).__name__}")
    unknown = set(row) - SLICE_FIELDS
    if unknown:
        raise StoreError(f"{where}: unknown field(s) {sorted(unknown)}")
    if row.get("slice") is None:
        raise StoreError(f"{where}: needs its 1-based 'slice' number")
    value = number(row["slice"], int, f"{where}: slice")
    check_slice(value, image, f"{where}: slice")
    triage = row.get("triage")
    if triage not in TRIAGE_STATES:
        raise StoreError(f"{where}: triage must be one of {TRIAGE_STATES}, got {triage!r}")
    quality_ok = row.get("quality_ok")
    return {
        "slice": value,
        "label": None if row.get("label") is None else str(row["label"]),
        "confidence": number(row.get("confidence"), float, f"{where}: confidence"),
        "finding": number(row.get("finding"), float, f"{where}: finding"),
        "probabilities": dumps(row.get("probabilities")),
        "ood_score": number(row.get("ood_score"), float, f"{where}: ood_score"),
        "quality_ok": None if quality_ok is None else int(bool(quality_ok)),
        "triage": triage,
        "triage_reason": row.get("triage_reason"),
        "error": None if row.get("error") is None else str(row["error"]),
    }
