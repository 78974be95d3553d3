"""Exchange with other programs: results out (CSV/JSON), reviews in (CSV).

The export is written atomically (temporary file, fsync, rename) and audited; an import is
checked row by row first and stored all together or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
from pathlib import Path

from ..csvsafe import SafeDictWriter, formula_plain
from ..fileio import atomic_file
from ..jsonable import to_jsonable
from ..safefiles import UnreadableFile, path_text, read_text
from .common import (
    BOOL_FIELDS,
    PREDICTION_VALUES,
    REVIEW_ACTIONS,
    StoreError,
    normalise_path,
    prediction_dict,
    review_label,
)
from .common import (
    number as to_number,
)
from .grading import Grading
from .rules import active_hash, check_review_labels, current_reviews, latest_prediction_rows
from .writes import Writes, check_slice

EXPORT_COLUMNS = (
    *("path", "patient", "eye", "modality", "sha256"),
    *("kind", "n_slices", "acquired"),
    *PREDICTION_VALUES,
    "key_slice",
    *("reviewed_label", "review_action", "reviewer", "reviewed_at"),
    *("model_hash", "settings_key", "predicted_at"),
    "marks",
)
# Each question of the workspace's grading scheme adds a column ``grade_<question>`` after
# these (the effective answer about the image as a whole; several values joined with ";").
GRADE_PREFIX = "grade_"


class Exchange(Grading, Writes):
    """Export of results and import of reviews."""

    def export_columns(self) -> list[str]:
        """The export's columns: :data:`EXPORT_COLUMNS`, then one ``grade_<question>`` per
        question of the workspace's scheme."""
        return [*EXPORT_COLUMNS, *(GRADE_PREFIX + q.key for q in self.scheme().questions)]

    def export_rows(self) -> list[dict]:
        """One row per image: its latest prediction (active model) and current review.

        Columns are :data:`EXPORT_COLUMNS`; images never screened have empty prediction
        fields. A volume is one row (``kind`` volume, ``n_slices`` B-scans, ``key_slice``
        its most suspicious one, 1-based). ``conformal_set`` is a list, ``quality``/``probabilities`` are dicts and
        ``reviewed_label`` joins multiple labels with ``;``. ``marks`` counts the image's
        live lesion marks (all B-scans together) and each ``grade_<question>`` holds the
        scheme's effective answer about the image (values joined with ``;``).
        """
        questions = [q.key for q in self.scheme().questions]
        grades = self.all_grades()
        mark_counts = self.mark_counts()
        with self._read() as conn:
            latest = {
                r["image_id"]: prediction_dict(r)
                for r in latest_prediction_rows(conn, active_hash(conn))
            }
            current = current_reviews(conn)
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
                kind=image["kind"],
                n_slices=image["n_slices"],
                acquired=image["acquired"],
                predicted_at=pred.get("created_at"),
                reviewed_label=None if review is None else review_label(review),
                review_action=None if review is None else review["action"],
                reviewer=None if review is None else review["reviewer"],
                reviewed_at=None if review is None else review["created_at"],
                marks=mark_counts.get(image["id"], 0),
            )
            answers = grades.get((image["id"], None), {})
            for key in questions:
                row[GRADE_PREFIX + key] = ";".join(answers[key]) if key in answers else None
            for field in BOOL_FIELDS:
                if row[field] is not None:
                    row[field] = bool(row[field])
            out.append(row)
        return out

    def write_export(self, out: str | os.PathLike[str], fmt: str, deidentify: bool = False) -> int:
        """Write :meth:`export_rows` as ``"csv"`` or ``"json"`` atomically; returns row count.

        The file appears complete or not at all (temporary file, fsync, ``os.replace``).
        In CSV, ``conformal_set`` is joined with ``|`` and dicts are JSON text. With
        ``deidentify`` patients become pseudonyms, dates visit numbers, paths item numbers,
        and hashes are left out (:mod:`engine.deidentify`).
        """
        from ..deidentify import deidentified_columns, deidentify_rows

        if fmt not in ("csv", "json"):
            raise StoreError(f"export format must be 'csv' or 'json', got {fmt!r}")
        out = Path(out).expanduser()
        if not out.parent.is_dir():
            raise StoreError(f"export folder {out.parent} does not exist")
        rows = self.export_rows()
        columns = self.export_columns()
        if deidentify:
            rows = deidentify_rows(rows)
            columns = deidentified_columns(columns)
        with atomic_file(out, "w", encoding="utf-8", newline="") as handle:
            if fmt == "json":
                json.dump(to_jsonable(rows), handle, ensure_ascii=False, indent=1)
                handle.write("\n")
            else:
                writer = SafeDictWriter(handle, fieldnames=columns)
                writer.writeheader()
                for row in rows:
                    writer.writerow(_csv_row(row))
        if self.readonly:  # read-only storage: the export is written, the audit cannot be
            return len(rows)
        with self._write() as conn:
            self._audit(
                conn,
                "system",
                "export",
                {"path": str(out), "format": fmt, "rows": len(rows), "deidentified": deidentify},
            )
        return len(rows)

    def import_reviews_csv(
        self,
        csv_path: str | os.PathLike[str],
        default_reviewer: str | None = None,
        report: dict | None = None,
    ) -> int:
        """Import reviews from a CSV with columns ``path,label,reviewer[,action,note,slice]``.

        Idempotent: a row that repeats its reviewer's current review of the image (same
        labels, action, note and slice), or an earlier row of the same file, is not recorded
        again; ``report`` (if given) receives ``recorded`` and ``duplicates`` counts.

        ``label`` may hold several labels separated by ``;``; ``slice`` (1-based) notes the
        B-scan of an OCT volume the review was made on. ``path`` may be absolute,
        relative to the CSV's folder, or a bare file name matching exactly one image.
        Every row is checked first; any bad row raises :class:`StoreError` naming its row
        number (header = row 1) and nothing is imported. Returns the number imported.
        """
        csv_path = Path(csv_path).expanduser()
        try:
            text = read_text(csv_path)  # regular files only: a FIFO is refused, not opened
            reader = csv.DictReader(io.StringIO(text, newline=""))
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            records = list(enumerate(reader, start=2))
        except UnreadableFile as exc:
            raise StoreError(f"cannot read {exc}") from None
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
            for number, raw in records:
                where = f"{csv_path.name} row {number}"
                if None in raw:
                    raise StoreError(f"{where}: more fields than header columns")
                # a cell an export protected with an apostrophe reads back as it was
                record = {k: formula_plain(v) if isinstance(v, str) else v for k, v in raw.items()}
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
                check_review_labels(conn, image_id, labels, where)
                raw_slice = (record.get("slice") or "").strip()
                slice_no = None
                if raw_slice:
                    slice_no = to_number(raw_slice, int, f"{where}: slice")
                    item = conn.execute(
                        "SELECT kind, n_slices FROM images WHERE id = ?", (image_id,)
                    ).fetchone()
                    check_slice(slice_no, item, f"{where}: slice")
                prepared.append(
                    (image_id, reviewer, list(dict.fromkeys(labels)), action, note, slice_no)
                )
            current: dict[tuple[int, str], tuple] = {}
            for image_id, reviewer, *_ in prepared:
                if (image_id, reviewer) not in current:
                    review = current_reviews(conn, [image_id], reviewer=reviewer).get(image_id)
                    current[(image_id, reviewer)] = (
                        None
                        if review is None
                        else (
                            review["labels"],
                            review["action"],
                            review["note"],
                            review.get("slice"),
                        )
                    )
            recorded = 0
            for image_id, reviewer, labels, action, note, slice_no in prepared:
                if current[(image_id, reviewer)] == (labels, action, note, slice_no):
                    continue  # already this reviewer's current review: importing is idempotent
                if action == "skip" and _has_skip(conn, image_id, reviewer, note):
                    continue  # a skip sets no label, so it is never the current review
                self._insert_review(
                    conn,
                    image_id,
                    reviewer,
                    labels,
                    action,
                    None,
                    None,
                    None,
                    note,
                    audit=False,
                    slice=slice_no,
                )
                current[(image_id, reviewer)] = (labels, action, note, slice_no)
                recorded += 1
            duplicates = len(prepared) - recorded
            if report is not None:
                report.update(recorded=recorded, duplicates=duplicates)
            self._audit(
                conn,
                fallback or "system",
                "import_reviews",
                {
                    "file": path_text(os.path.abspath(csv_path)),
                    "rows": len(prepared),
                    "recorded": recorded,
                    "duplicates": duplicates,
                },
            )
        return recorded

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
            "SELECT id FROM images WHERE path = ?", (normalise_path(candidate),)
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


def _csv_row(row: dict) -> dict:
    out = dict(row)
    if out.get("conformal_set") is not None:
        out["conformal_set"] = "|".join(out["conformal_set"])
    for field in ("quality", "probabilities"):
        if out.get(field) is not None:
            out[field] = json.dumps(out[field], ensure_ascii=False)
    return out


def _has_skip(conn: sqlite3.Connection, image_id: int, reviewer: str, note: str | None) -> bool:
    """Whether this reviewer already has a standing (not undone) skip of the image with the
    same note: re-importing the same sheet must not add it again."""
    row = conn.execute(
        "SELECT 1 FROM reviews r WHERE r.image_id = ? AND r.reviewer = ? AND r.action = 'skip'"
        " AND r.note IS ? AND NOT EXISTS (SELECT 1 FROM reviews u WHERE u.undoes = r.id)"
        " LIMIT 1",
        (image_id, reviewer, note),
    ).fetchone()
    return row is not None
