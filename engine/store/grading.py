"""Grading in the store: the workspace's scheme, graders' answers and lesion marks.

All three are append-only, like reviews: a scheme change adds a row (the newest is the
workspace's scheme; the "model" preset when there is none); an answer adds a row (the
effective answer to a question is the newest row no later row undoes); deleting a mark
adds a tombstone, and undoing the deletion adds a copy of the mark under a new uid. The
rules for what a valid answer or mark is live in :mod:`engine.schemes` and
:mod:`engine.marks`; this module only applies them and keeps the rows.

Slice indices here are 0-based (``slice_index``), as the viewer counts B-scans; reviews
keep their 1-based ``slice`` number.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from typing import TYPE_CHECKING, Any

from .base import StoreBase
from .common import StoreError, check_reviewer, dumps, loads, now

if TYPE_CHECKING:
    from ..marks import Mark
    from ..schemes import Scheme


class EntryError(StoreError, ValueError):
    """An answer or mark the workspace's scheme does not allow; the message says why."""


class Grading(StoreBase):
    """Schemes, grades and marks; every write is one transaction and one audit entry."""

    # ------------------------------------------------------------------ scheme

    def set_scheme(self, scheme: Scheme, actor: str) -> int:
        """Make ``scheme`` the workspace's scheme (a new row; earlier ones are kept).

        The scheme is validated first (:class:`engine.schemes.SchemeError`, a
        ``ValueError``, says what is wrong). Returns the new scheme row's id.
        """
        actor = check_reviewer(actor)
        scheme.validate()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO schemes (name, definition, created_at, created_by)"
                " VALUES (?, ?, ?, ?)",
                (scheme.name, json.dumps(scheme.to_dict(), ensure_ascii=False), now(), actor),
            )
            scheme_id = int(cur.lastrowid)
            self._audit(conn, actor, "set_scheme", {"scheme_id": scheme_id, "name": scheme.name})
        return scheme_id

    def scheme(self) -> Scheme:
        """The workspace's current scheme: the newest stored one, else the "model" preset
        built from the active model's labels (no questions when no model is active)."""
        with self._read() as conn:
            return self._current_scheme(conn)[1]

    def scheme_id(self) -> int | None:
        """The id of the current scheme row (``None`` while the default preset applies)."""
        return self._current_scheme_row(self._connection())[0]

    def schemes(self) -> list[dict]:
        """Every scheme the workspace has had, oldest first: id, name, created_at,
        created_by and ``definition`` (the scheme as plain data)."""
        rows = self._all("SELECT * FROM schemes ORDER BY id")
        return [{**dict(r), "definition": loads(r["definition"])} for r in rows]

    def _current_scheme_row(self, conn: sqlite3.Connection) -> tuple[int | None, Any]:
        with self._lock:
            row = conn.execute(
                "SELECT id, definition FROM schemes ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return (None, None) if row is None else (int(row["id"]), loads(row["definition"]))

    def _current_scheme(self, conn: sqlite3.Connection) -> tuple[int | None, Scheme]:
        from ..schemes import Scheme, preset

        scheme_id, definition = self._current_scheme_row(conn)
        if definition is not None:
            return scheme_id, Scheme.from_dict(definition)
        model = conn.execute("SELECT description FROM models WHERE active = 1").fetchone()
        description = model["description"] if model is not None else None
        spec = _spec_of(description)
        if spec is not None:
            return None, preset("model", spec=spec)
        parsed = loads(description) if description else None
        labels = parsed.get("labels") if isinstance(parsed, dict) else None
        return None, preset("model", labels if isinstance(labels, list) else None)

    # ------------------------------------------------------------------ grades

    def record_grade(
        self,
        image_id: int,
        question: str,
        values: list[str],
        reviewer: str,
        slice_index: int | None = None,
    ) -> int:
        """Append a grader's answer to ``question`` about an image (or a volume's 0-based
        B-scan ``slice_index``); returns the row id.

        ``values`` are option values of the current scheme's question (an empty list
        clears the answer). An unknown question or value, or several values for a
        single-choice question, raise :class:`EntryError` (a ``ValueError``) saying so.
        """
        reviewer = check_reviewer(reviewer)
        if isinstance(values, str) or not isinstance(values, list | tuple):
            raise EntryError(f"an answer must be a list of option values, got {values!r}")
        values = list(dict.fromkeys(str(v) for v in values))
        with self._write() as conn:
            image_id = self._resolve_image(conn, int(image_id))
            slice_index = self._check_slice_index(conn, image_id, slice_index)
            scheme_id, scheme = self._current_scheme(conn)
            q = scheme.question(question)
            if q is None:
                known = ", ".join(x.key for x in scheme.questions) or "none"
                raise EntryError(
                    f"the scheme {scheme.name!r} has no question {question!r} (its questions: "
                    f"{known})"
                )
            unknown = [v for v in values if q.option(v) is None]
            if unknown:
                raise EntryError(
                    f"{', '.join(map(repr, unknown))} is not an answer to {q.key!r}; "
                    f"choose from {', '.join(q.values)}"
                )
            if q.kind == "single" and len(values) > 1:
                raise EntryError(
                    f"{q.key!r} takes one answer, got {len(values)} ({', '.join(values)})"
                )
            cur = conn.execute(
                "INSERT INTO grades (image_id, slice_index, scheme_id, question, answer,"
                " reviewer, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (image_id, slice_index, scheme_id, q.key, dumps(values), reviewer, now()),
            )
            grade_id = int(cur.lastrowid)
            details: dict[str, Any] = {
                "grade_id": grade_id,
                "image_id": image_id,
                "question": q.key,
                "answer": values,
            }
            if slice_index is not None:
                details["slice_index"] = slice_index
            self._audit(conn, reviewer, "grade", details)
        return grade_id

    def undo_grade(
        self,
        image_id: int,
        reviewer: str,
        slice_index: int | None = None,
        question: str | None = None,
    ) -> int | None:
        """Cancel ``reviewer``'s latest effective answer on this image (slice; question if
        given) with a new row; the answer falls back to the one before. Returns the undo
        row's id, or ``None`` when there is nothing left to undo."""
        reviewer = check_reviewer(reviewer)
        with self._write() as conn:
            image_id = self._resolve_image(conn, int(image_id))
            sql = (
                "SELECT g.* FROM grades g WHERE g.image_id = ? AND g.slice_index IS ?"
                " AND g.reviewer = ? AND g.undoes IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM grades u WHERE u.undoes = g.id)"
            )
            params: tuple = (image_id, slice_index, reviewer)
            if question is not None:
                sql += " AND g.question = ?"
                params += (question,)
            target = conn.execute(sql + " ORDER BY g.id DESC LIMIT 1", params).fetchone()
            if target is None:
                return None
            cur = conn.execute(
                "INSERT INTO grades (image_id, slice_index, scheme_id, question, answer,"
                " reviewer, created_at, undoes) VALUES (?, ?, ?, ?, '[]', ?, ?, ?)",
                (
                    image_id,
                    target["slice_index"],
                    target["scheme_id"],
                    target["question"],
                    reviewer,
                    now(),
                    int(target["id"]),
                ),
            )
            undo_id = int(cur.lastrowid)
            self._audit(
                conn,
                reviewer,
                "undo_grade",
                {"grade_id": undo_id, "undoes": int(target["id"]), "image_id": image_id},
            )
        return undo_id

    def grades(self, image_id: int, slice_index: int | None = None) -> dict[str, list[str]]:
        """The effective answers about an image (or one 0-based B-scan): question → option
        values; questions never answered, or cleared, are left out."""
        rows = self._all(
            "SELECT g.question, g.answer FROM grades g WHERE g.image_id = ?"
            " AND g.slice_index IS ? AND g.undoes IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM grades u WHERE u.undoes = g.id)"
            " ORDER BY g.id",
            (int(image_id), slice_index),
        )
        out: dict[str, list[str]] = {}
        for r in rows:  # oldest first: the newest effective row wins
            out[r["question"]] = loads(r["answer"]) or []
        return {k: v for k, v in out.items() if v}

    def all_grades(self) -> dict[tuple[int, int | None], dict[str, list[str]]]:
        """Every image's (and B-scan's) effective answers, keyed ``(image_id,
        slice_index)``: what exports write."""
        rows = self._all(
            "SELECT g.image_id, g.slice_index, g.question, g.answer FROM grades g"
            " WHERE g.undoes IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM grades u WHERE u.undoes = g.id) ORDER BY g.id"
        )
        out: dict[tuple[int, int | None], dict[str, list[str]]] = {}
        for r in rows:
            key = (int(r["image_id"]), r["slice_index"])
            out.setdefault(key, {})[r["question"]] = loads(r["answer"]) or []
        return {k: {q: v for q, v in a.items() if v} for k, a in out.items()}

    def grade_history(self, image_id: int) -> list[dict]:
        """Every answer row about an image, oldest first (``answer`` parsed; an undo row
        names the row it ``undoes``)."""
        rows = self._all("SELECT * FROM grades WHERE image_id = ? ORDER BY id", (int(image_id),))
        return [{**dict(r), "answer": loads(r["answer"]) or []} for r in rows]

    # ------------------------------------------------------------------ marks

    def add_mark(
        self,
        image_id: int,
        lesion: str,
        kind: str,
        points: list[tuple[float, float]],
        reviewer: str,
        slice_index: int | None = None,
    ) -> str:
        """Append a lesion mark; returns its uid.

        The lesion must be one of the current scheme's lesion types and the geometry
        valid (:func:`engine.marks.check_geometry`: count of points per kind, finite,
        inside the image's stored width and height); otherwise :class:`EntryError` (a
        ``ValueError``) says why.
        """
        return self._add_marks(
            [
                dict(
                    image_id=image_id,
                    lesion=lesion,
                    kind=kind,
                    points=points,
                    slice_index=slice_index,
                )
            ],
            reviewer,
        )[0]

    def add_marks(self, rows: list[dict], reviewer: str, source: str | None = None) -> list[str]:
        """Append several marks in one transaction (all or none); returns their uids.

        Each row has ``image_id``, ``lesion``, ``kind``, ``points`` and optionally
        ``slice_index``, and, for marks brought from elsewhere (a COCO import), the
        ``uid``, ``reviewer`` and ``created_at`` they had there (an existing uid gets a new
        one). ``reviewer`` is who adds them (the audit entry's actor, and the marks'
        reviewer when a row names none); ``source`` is noted in the audit entry.
        """
        return self._add_marks(rows, reviewer, source)

    def _add_marks(self, rows: list[dict], reviewer: str, source: str | None = None) -> list[str]:
        """Append several marks in one transaction (all or none)."""
        from ..marks import MarkError, check_geometry

        reviewer = check_reviewer(reviewer)
        uids: list[str] = []
        with self._write() as conn:
            scheme_id, scheme = self._current_scheme(conn)
            stamp = now()
            for row in rows:
                image_id = self._resolve_image(conn, int(row["image_id"]))
                slice_index = self._check_slice_index(conn, image_id, row.get("slice_index"))
                size = conn.execute(
                    "SELECT kind, width, height FROM images WHERE id = ?", (image_id,)
                ).fetchone()
                if slice_index is None and size["kind"] == "volume":
                    raise EntryError(
                        f"a mark on OCT volume {image_id} needs its B-scan (slice_index)"
                    )
                lesion = row["lesion"]
                if scheme.lesion(lesion) is None:
                    known = ", ".join(t.key for t in scheme.lesion_types) or "none"
                    raise EntryError(
                        f"the scheme {scheme.name!r} has no lesion type {lesion!r} (its "
                        f"lesion types: {known})"
                    )
                try:
                    pts = check_geometry(row["kind"], row["points"], size["width"], size["height"])
                except MarkError as exc:
                    raise EntryError(f"mark on image {image_id}: {exc}") from None
                uid = row.get("uid") or uuid.uuid4().hex
                taken = conn.execute("SELECT 1 FROM marks WHERE uid = ?", (uid,)).fetchone()
                if taken or uid in uids:
                    uid = uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO marks (uid, image_id, slice_index, scheme_id, lesion, kind,"
                    " points, reviewer, created_at, restores) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        uid,
                        image_id,
                        slice_index,
                        scheme_id,
                        lesion,
                        row["kind"],
                        json.dumps([[x, y] for x, y in pts]),
                        check_reviewer(row.get("reviewer") or reviewer),
                        str(row.get("created_at") or stamp),
                        None,
                    ),
                )
                uids.append(uid)
            details: dict[str, Any] = {"marks": uids} if len(uids) > 1 else {"mark": uids[0]}
            if source:
                details["source"] = source
            if uids:
                self._audit(conn, reviewer, "add_mark", details)
        return uids

    def delete_mark(self, uid: str, reviewer: str) -> None:
        """Delete a live mark: a tombstone row is appended, the mark's row stays."""
        reviewer = check_reviewer(reviewer)
        with self._write() as conn:
            self._live_mark(conn, uid)
            conn.execute(
                "INSERT INTO mark_deletions (mark_uid, reviewer, created_at) VALUES (?, ?, ?)",
                (uid, reviewer, now()),
            )
            self._audit(conn, reviewer, "delete_mark", {"mark": uid})

    def restore_mark(self, uid: str, reviewer: str) -> str:
        """Undo the deletion of mark ``uid``: a copy of it (same lesion, kind, points,
        slice and drawing reviewer) is appended under a new uid, which is returned."""
        reviewer = check_reviewer(reviewer)
        with self._write() as conn:
            row = conn.execute("SELECT * FROM marks WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                raise StoreError(f"no mark {uid!r} in this workspace")
            deleted = conn.execute(
                "SELECT 1 FROM mark_deletions WHERE mark_uid = ?", (uid,)
            ).fetchone()
            if deleted is None:
                raise StoreError(f"mark {uid!r} is not deleted; there is nothing to restore")
            again = conn.execute("SELECT uid FROM marks WHERE restores = ?", (uid,)).fetchone()
            if again is not None:
                raise StoreError(f"mark {uid!r} was already restored as {again['uid']!r}")
            new_uid = uuid.uuid4().hex
            conn.execute(
                "INSERT INTO marks (uid, image_id, slice_index, scheme_id, lesion, kind, points,"
                " reviewer, created_at, restores) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_uid,
                    row["image_id"],
                    row["slice_index"],
                    row["scheme_id"],
                    row["lesion"],
                    row["kind"],
                    row["points"],
                    row["reviewer"],
                    now(),
                    uid,
                ),
            )
            self._audit(conn, reviewer, "restore_mark", {"mark": new_uid, "restores": uid})
        return new_uid

    def marks(self, image_id: int, slice_index: int | None = None) -> list[Mark]:
        """The live marks on an image (on one 0-based B-scan of a volume when
        ``slice_index`` is given; ``None``: the marks on the image as a whole), oldest
        first."""
        rows = self._all(
            f"{_LIVE_MARKS} AND m.image_id = ? AND m.slice_index IS ? ORDER BY m.id",
            (int(image_id), slice_index),
        )
        return [_mark(r) for r in rows]

    def all_marks(self) -> list[Mark]:
        """Every live mark of the workspace (``image_id`` set), by image then drawing order."""
        rows = self._all(f"{_LIVE_MARKS} ORDER BY m.image_id, m.id")
        return [_mark(r) for r in rows]

    def mark_counts(self) -> dict[int, int]:
        """Live marks per image id (all slices together); images without marks are absent."""
        rows = self._all(
            "SELECT m.image_id, count(*) FROM marks m WHERE NOT EXISTS"
            " (SELECT 1 FROM mark_deletions d WHERE d.mark_uid = m.uid) GROUP BY m.image_id"
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def mark_rows(self, uid: str) -> dict | None:
        """A mark's stored row, live or deleted (``deleted``: the tombstone or ``None``)."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM marks WHERE uid = ?", (uid,)).fetchone()
            if row is None:
                return None
            tomb = conn.execute(
                "SELECT reviewer, created_at FROM mark_deletions WHERE mark_uid = ?", (uid,)
            ).fetchone()
        return {
            **dict(row),
            "points": loads(row["points"]),
            "deleted": None if tomb is None else dict(tomb),
        }

    def set_image_sizes(self, sizes: dict[int, tuple[int, int]]) -> None:
        """Record the full-resolution ``(width, height)`` of images (for a volume: of its
        B-scans), the pixel frame marks are checked against; one transaction. Screening
        records them; the viewer may too, for an image stored without its size."""
        clean = []
        for image_id, (width, height) in sizes.items():
            if isinstance(width, bool) or isinstance(height, bool):
                raise StoreError(f"image {image_id}: size must be whole numbers")
            w, h = int(width), int(height)
            if w <= 0 or h <= 0:
                raise StoreError(f"image {image_id}: size {w}×{h} is not a picture's size")
            clean.append((w, h, int(image_id), w, h))
        if not clean:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE images SET width = ?, height = ? WHERE id = ?"
                " AND (width IS NOT ? OR height IS NOT ?)",
                clean,
            )

    # ------------------------------------------------------------------ helpers

    def _live_mark(self, conn: sqlite3.Connection, uid: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM marks WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            raise StoreError(f"no mark {uid!r} in this workspace")
        if conn.execute("SELECT 1 FROM mark_deletions WHERE mark_uid = ?", (uid,)).fetchone():
            raise StoreError(f"mark {uid!r} is already deleted")
        return row

    def _check_slice_index(
        self, conn: sqlite3.Connection, image_id: int, slice_index: Any
    ) -> int | None:
        """``None``, or a valid 0-based B-scan index of the volume ``image_id``."""
        if slice_index is None:
            return None
        if isinstance(slice_index, bool) or not isinstance(slice_index, int):
            raise EntryError(f"slice_index must be a whole number, got {slice_index!r}")
        item = conn.execute(
            "SELECT kind, n_slices FROM images WHERE id = ?", (image_id,)
        ).fetchone()
        if item["kind"] != "volume":
            raise EntryError(
                f"slice_index {slice_index} given, but image {image_id} is a single image"
            )
        n = int(item["n_slices"])
        if not 0 <= slice_index < n:
            raise EntryError(
                f"slice_index {slice_index} is outside volume {image_id}'s B-scans 0-{n - 1}"
            )
        return slice_index


_LIVE_MARKS = (
    "SELECT m.* FROM marks m WHERE NOT EXISTS"
    " (SELECT 1 FROM mark_deletions d WHERE d.mark_uid = m.uid)"
)


def _mark(row: sqlite3.Row) -> Mark:
    from ..marks import Mark

    return Mark(
        uid=row["uid"],
        lesion=row["lesion"],
        kind=row["kind"],
        points=[(float(x), float(y)) for x, y in loads(row["points"])],
        reviewer=row["reviewer"],
        created_at=row["created_at"],
        slice_index=row["slice_index"],
        image_id=int(row["image_id"]),
    )


def _spec_of(description: str | None) -> Any:
    """The active model's :class:`engine.modelfile.ModelSpec`, or ``None``."""
    if not description:
        return None
    from ..modelfile import ModelFileError, ModelSpec

    try:
        return ModelSpec.from_json(description)
    except ModelFileError:
        return None
