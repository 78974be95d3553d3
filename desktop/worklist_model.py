"""The worklist's data: one plain row per image, sortable and filterable at 100 000 rows.

* :func:`row_from_prediction` is the one row builder: rows loaded from the store and rows
  streamed by screening come from the same stored record.
* :class:`WorklistModel` holds plain row dicts (no per-row widgets); ``data()`` only reads a
  dict. Rows arrive in chunks (one ``beginInsertRows`` per chunk) and a review updates a
  single row (one ``dataChanged``). Sorting happens here, with a precomputed key per row,
  because a Python ``lessThan`` is far too slow for 100 000 rows.
* :class:`WorklistFilter` filters only (quick filter + text); it forwards sort requests to
  the source model so the view's header clicks still sort.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush

from engine.store import REFERRED_STATES
from engine.triage import TRIAGE_STATES

from .style import current_is_dark, triage_style, triage_text
from .thumbnails import ThumbnailCache

ImageIdRole = Qt.ItemDataRole.UserRole + 1
RowRole = Qt.ItemDataRole.UserRole + 2

COL_IMAGE, COL_LABEL, COL_CONFIDENCE, COL_TRIAGE, COL_UNCERTAINTY, COL_REVIEW, COL_PATIENT = range(
    7
)
HEADERS = ("Image", "AI label", "Confidence", "Triage", "Uncertainty", "Review", "Patient / eye")
HEADER_TIPS = (
    "File name (thumbnail appears once made)",
    "The model's answer",
    "Calibrated confidence of the AI label (0–1)",
    "What the triage decided, with the reason in the tooltip",
    "Mutual information (model disagreement) when available, else predictive entropy; higher = less sure",
    "Current reviewed label and reviewer",
    "Patient identifier and eye (from the file name)",
)

# Quick filters: key, short button text, full name.
QUICK_FILTERS: tuple[tuple[str, str, str], ...] = (
    ("refer", "Refer", "Refer: a confident finding"),
    ("needs-review", "Needs review", "Needs review"),
    ("auto-cleared", "Cleared", "Auto-cleared"),
    ("ungradable", "Ungradable", "Ungradable"),
    ("out-of-distribution", "OOD", "Out-of-distribution"),
    ("error", "Errors", "Errors"),
    ("reviewed", "Reviewed", "Reviewed"),
    ("disagrees", "Disagrees", "Disagrees with AI"),
    ("all", "All", "All"),
)
QUICK_FILTER_KEYS = tuple(k for k, _, _ in QUICK_FILTERS)

# Not a visible column: a random but stable order, so a reviewer can audit the first N images
# as an unbiased sample of the run instead of the model's own "most informative" choice.
COL_RANDOM = 1000
RANDOM_SEED = "eyetriage-qc"

SORTS: tuple[tuple[str, int, Qt.SortOrder], ...] = (
    ("Most informative first", COL_UNCERTAINTY, Qt.SortOrder.DescendingOrder),
    ("Least confident first", COL_CONFIDENCE, Qt.SortOrder.AscendingOrder),
    ("Triage state", COL_TRIAGE, Qt.SortOrder.AscendingOrder),
    ("Patient", COL_PATIENT, Qt.SortOrder.AscendingOrder),
    ("File name", COL_IMAGE, Qt.SortOrder.AscendingOrder),
    ("Not yet reviewed first", COL_REVIEW, Qt.SortOrder.AscendingOrder),
    ("Random sample (quality control)", COL_RANDOM, Qt.SortOrder.AscendingOrder),
)

# Columns (and their sorts) that reveal the AI's answer: hidden in blind mode until the
# reader has recorded their own label for the image.
AI_COLUMNS = (COL_LABEL, COL_CONFIDENCE, COL_TRIAGE, COL_UNCERTAINTY)
# Quick filters that reveal the AI's answer (which images it cleared, was unsure of, or
# disagrees with a reader): not offered in blind mode.
AI_FILTERS = ("refer", "needs-review", "auto-cleared", "disagrees")
# Triage states that do not depend on the AI's answer (image quality, familiarity, errors).
ANSWER_FREE_STATES = ("ungradable", "out-of-distribution", "error")
HIDDEN = "hidden"  # what an AI cell says in blind mode
MEMO_ROWS = 2000  # rows whose cell values are remembered (a few screens' worth)
_DECORATION = int(Qt.ItemDataRole.DecorationRole.value)

_NEG_INF = float("-inf")
# Most urgent first: the triage rule's own order (a confident finding leads).
TRIAGE_ORDER = {state: i for i, state in enumerate(TRIAGE_STATES)}


def group_thousands(n: int) -> str:
    """``1604`` -> ``1 604`` (narrow no-break space, as in the clinic's style)."""
    return f"{n:,}".replace(",", "\u202f")


# --------------------------------------------------------------------------- plain rows


def review_fields(review: dict | None, ai_label: str | None, triage: str | None) -> dict[str, Any]:
    """The review part of a row: reviewed label, reviewer, action and the disagree flag."""
    if not review:
        return {"reviewed_label": None, "reviewer": None, "review_action": None, "disagrees": False}
    labels = list(review.get("labels") or [])
    action = review.get("action")
    if labels:
        reviewed = ";".join(labels)
        disagrees = ai_label is not None and set(labels) != set(ai_label.split(";"))
    else:
        reviewed = "ungradable" if action == "ungradable" else None
        disagrees = action == "ungradable" and triage != "ungradable"
    return {
        "reviewed_label": reviewed,
        "reviewer": review.get("reviewer"),
        "review_action": action,
        "disagrees": bool(disagrees),
    }


def row_from_prediction(
    record: dict, display: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """The one worklist row builder: a row from a stored prediction record.

    ``record`` has the shape of :meth:`engine.store.Workspace.latest_predictions` entries,
    which is also what screening hands back chunk by chunk, so loaded and streamed rows are
    the same. ``display`` turns a label into its display name. Plain dict: safe to build
    in a worker thread.
    """
    label = record.get("label")
    path = str(record["path"])
    row: dict[str, Any] = {
        "image_id": int(record["image_id"]),
        "path": path,
        "name": Path(path).name,
        "sha256": record.get("image_sha256"),
        "patient": record.get("patient"),
        "eye": record.get("eye"),
        "label": label,
        "display_label": ";".join((display or str)(x) for x in label.split(";"))
        if label
        else label,
        "confidence": record.get("confidence"),
        "entropy": record.get("entropy"),
        "mutual_info": record.get("mutual_info"),
        "triage": record.get("triage"),
        "triage_reason": record.get("triage_reason") or "",
        "error": record.get("error"),
        "prediction_id": record.get("id"),
        "stale": bool(record.get("stale")),
        "kind": record.get("kind") or "image",
        "n_slices": record.get("n_slices"),
        "key_slice": record.get("key_slice"),  # 1-based
    }
    row.update(review_fields(record.get("review"), label, record.get("triage")))
    return row


def uncertainty_value(row: dict) -> float | None:
    """Mutual information when the run measured it, otherwise the predictive entropy."""
    mi = row.get("mutual_info")
    return mi if mi is not None else row.get("entropy")


def informative_key(row: dict) -> tuple[float, float, float]:
    """Ascending key of "how informative to review": mutual info, entropy, low confidence."""
    mi, ent, conf = row.get("mutual_info"), row.get("entropy"), row.get("confidence")
    return (
        _NEG_INF if mi is None else float(mi),
        _NEG_INF if ent is None else float(ent),
        _NEG_INF if conf is None else -float(conf),
    )


def random_key(row: dict) -> bytes:
    """Stable pseudo-random rank of an image (by its id), the same on every machine."""
    import hashlib

    return hashlib.blake2b(f"{RANDOM_SEED}:{row['image_id']}".encode(), digest_size=8).digest()


def _column_key(column: int) -> Callable[[dict], Any]:
    if column == COL_RANDOM:
        return random_key
    if column == COL_UNCERTAINTY:
        return informative_key
    if column == COL_CONFIDENCE:
        return lambda r: (r["confidence"] is None, r["confidence"] or 0.0)
    if column == COL_TRIAGE:
        return lambda r: (TRIAGE_ORDER.get(r["triage"] or "", 9), informative_key(r))
    if column == COL_PATIENT:
        return lambda r: (r["patient"] or "\uffff", r["eye"] or "", r["name"])
    if column == COL_LABEL:
        return lambda r: (r["display_label"] or "\uffff", r["name"])
    if column == COL_REVIEW:
        return lambda r: (r["reviewed_label"] is not None, r["reviewed_label"] or "", r["name"])
    return lambda r: r["name"].lower()


def needs_a_person(row: dict) -> bool:
    """The store's rule: every triage state but auto-cleared sends the image to a person."""
    return row.get("triage") in REFERRED_STATES


def is_reviewed(row: dict) -> bool:
    """The image has a current review (a label or "ungradable")."""
    return bool(row.get("reviewed_label"))


def row_categories(row: dict) -> tuple[str, ...]:
    """The quick filters a row belongs to, plus ``<filter>:left`` while it is unreviewed
    and ``person``/``person:left`` for images that need a person."""
    cats = ["all"]
    reviewed = is_reviewed(row)
    if row.get("triage"):
        cats.append(row["triage"])
        if not reviewed:
            cats.append(f"{row['triage']}:left")
    if needs_a_person(row):
        cats.append("person")
        if not reviewed:
            cats.append("person:left")
    if reviewed:
        cats.append("reviewed")
    if row.get("disagrees"):
        cats.append("disagrees")
    return tuple(cats)


def _eye_text(eye: str | None) -> str:
    return {"right": "OD (right)", "left": "OS (left)"}.get(eye or "", "")


# --------------------------------------------------------------------------- model


class WorklistModel(QAbstractTableModel):
    """Rows of plain dicts, one per image. Emits ``counts_changed`` with per-filter counts."""

    counts_changed = Signal(dict)
    sorted_changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[dict] = []
        self._index: dict[int, int] = {}  # image_id -> row (rebuilt lazily when dirty)
        self._index_dirty = False
        self._ids: set[int] = set()
        self._counts: Counter[str] = Counter()
        self._sort: tuple[int, Qt.SortOrder] | None = (
            COL_UNCERTAINTY,
            Qt.SortOrder.DescendingOrder,
        )
        self.thumbnails: ThumbnailCache | None = None
        self._blind = False
        self._reader = ""
        # image_id -> (row dict, {(column, role): value}): a repaint asks each visible cell
        # for about eight roles, and working each out again in Python made a repaint of the
        # table cost tens of milliseconds while screening streamed rows in
        self._memo: dict[int, tuple[dict, dict[tuple[int, int], Any]]] = {}
        self._display_name: Callable[[str], str] = lambda x: x.replace("_", " ")

    @property
    def display_name(self) -> Callable[[str], str]:
        """Label -> display name, for reviewed labels (the AI label's is in the row already)."""
        return self._display_name

    @display_name.setter
    def display_name(self, fn: Callable[[str], str]) -> None:
        self._display_name = fn
        self.forget_cells()

    # ---- blind mode
    def set_blind(self, blind: bool, reader: str) -> None:
        """Blind mode: hide the AI's columns of every image ``reader`` has not labelled."""
        blind, reader = bool(blind), (reader or "").strip()
        if (blind, reader) == (self._blind, self._reader):
            return
        self._blind, self._reader = blind, reader
        self.forget_cells()
        if blind and self._sort is not None and self._sort[0] in AI_COLUMNS:
            self.sort(COL_IMAGE, Qt.SortOrder.AscendingOrder)
        if self._rows:
            self.dataChanged.emit(
                self.index(0, 0), self.index(len(self._rows) - 1, len(HEADERS) - 1)
            )

    def is_blind(self) -> bool:
        return self._blind

    def hides_ai(self, row: dict) -> bool:
        """True when blind mode hides this row's AI answer (the reader has not labelled it)."""
        return self._blind and row.get("reviewer") != self._reader

    def unread_count(self) -> int:
        """Screened images the reader has not labelled yet (what blind mode still hides)."""
        return sum(1 for r in self._rows if r.get("triage") and r.get("reviewer") != self._reader)

    def reviewed_ids(self, image_ids: Iterable[int]) -> list[int]:
        """Those of ``image_ids`` that have a current review."""
        out = []
        for image_id in image_ids:
            i = self._pos(int(image_id))
            if i is not None and is_reviewed(self._rows[i]):
                out.append(int(image_id))
        return out

    # ---- reading
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(HEADERS)

    def index(
        self,
        row: int,
        column: int,
        parent: QModelIndex | QPersistentModelIndex = QModelIndex(),  # noqa: B008
    ) -> QModelIndex:
        # one call into Python where the inherited index() makes two (rowCount and
        # columnCount): the filter asks for an index for every value it reads, so a repaint
        # of 13 rows of the worklist makes some 1,450 calls into Python instead of some
        # 2,200; each call waits its turn for the interpreter while a background thread
        # holds it
        if parent.isValid() or not (0 <= row < len(self._rows) and 0 <= column < len(HEADERS)):
            return QModelIndex()
        return self.createIndex(row, column)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TIPS[section]
        return None

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if not index.isValid():
            return None
        r = self._rows[index.row()]
        col = index.column()
        if role == _DECORATION:  # thumbnails have their own bounded cache
            return self._cell(r, col, role)
        memo = self._memo.get(r["image_id"])
        if memo is None or memo[0] is not r:  # a replaced row is a new dict: computed afresh
            if len(self._memo) >= MEMO_ROWS:
                self._memo.clear()
            memo = self._memo[r["image_id"]] = (r, {})
        key = (col, role)
        cells = memo[1]
        if key in cells:
            return cells[key]
        value = cells[key] = self._cell(r, col, role)
        return value

    def forget_cells(self) -> None:
        """Drop the remembered cell values (blind mode, reader or theme changed)."""
        self._memo.clear()

    def _cell(self, r: dict, col: int, role: int) -> Any:
        """What ``data()`` answers for one cell of row ``r`` (remembered per row object)."""
        hidden = col in AI_COLUMNS and self.hides_ai(r)
        if hidden and not (col == COL_TRIAGE and r.get("triage") in ANSWER_FREE_STATES):
            if role == Qt.ItemDataRole.DisplayRole:
                return HIDDEN if r.get("triage") else ""
            if role == Qt.ItemDataRole.ToolTipRole:
                return "Hidden in blind mode until you record your own label for this image"
            if role in (Qt.ItemDataRole.ForegroundRole, Qt.ItemDataRole.DecorationRole):
                return None
        if col in (COL_LABEL, COL_CONFIDENCE) and r.get("triage") == "ungradable":
            if role == Qt.ItemDataRole.DisplayRole:  # no grade for an ungradable image
                return "—"
            if role == Qt.ItemDataRole.ToolTipRole:
                return "No grade: the image is ungradable"
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(r, col)
        if role == ImageIdRole:
            return r["image_id"]
        if role == RowRole:
            return r
        if role == Qt.ItemDataRole.DecorationRole and col == COL_IMAGE:
            return self.thumbnails.icon(r) if self.thumbnails is not None else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(r, col)
        if role == Qt.ItemDataRole.ForegroundRole and col == COL_TRIAGE:
            if is_reviewed(r):
                return None  # reviewed: plain text, the state's colour no longer calls
            return QBrush(triage_style(r["triage"]).color(current_is_dark()))
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_CONFIDENCE, COL_UNCERTAINTY):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _display(self, r: dict, col: int) -> str:
        if col == COL_IMAGE:
            if r.get("kind") == "volume" and r.get("n_slices"):
                return f"{r['name']} · {r['n_slices']} slices"
            return r["name"]
        if col == COL_PATIENT:
            eye = {"right": "OD", "left": "OS"}.get(r["eye"] or "", "")
            return " · ".join(x for x in (r["patient"], eye) if x)
        if col == COL_LABEL:
            return r["display_label"] or ("—" if r["error"] else "")
        if col == COL_CONFIDENCE:
            c = r["confidence"]
            return "" if c is None else f"{c:.2f}"
        if col == COL_UNCERTAINTY:
            u = uncertainty_value(r)
            return "" if u is None else f"{u:.3f}"
        if col == COL_TRIAGE:
            if is_reviewed(r):
                return "✔ Reviewed"
            return triage_text(r["triage"], r["display_label"])
        if col == COL_REVIEW:
            if not r["reviewed_label"]:
                return "not reviewed"
            flag = "≠ AI " if r["disagrees"] else "✓ "
            shown = ", ".join(self.display_name(x) for x in r["reviewed_label"].split(";"))
            return f"{flag}{shown} ({r['reviewer']})"
        return ""

    @staticmethod
    def _tooltip(r: dict, col: int) -> str | None:
        if col == COL_TRIAGE:
            reason = r["triage_reason"] or r["error"] or ""
            words = triage_text(r["triage"], r["display_label"]).split(" ", 1)[-1]
            text = f"{words} — {reason}" if reason else words
            return f"Reviewed. Triage was {text}" if is_reviewed(r) else text
        if col == COL_IMAGE:
            extra = "\nThe file changed since it was screened." if r["stale"] else ""
            if r.get("kind") == "volume" and r.get("key_slice"):
                extra = f"\nOCT volume: most suspicious slice {r['key_slice']}" + extra
            return r["path"] + extra
        if col == COL_PATIENT:
            return (
                " · ".join(
                    x
                    for x in (r["patient"] and f"patient {r['patient']}", _eye_text(r["eye"]))
                    if x
                )
                or None
            )
        if col == COL_UNCERTAINTY:
            parts = []
            if r["mutual_info"] is not None:
                parts.append(f"mutual information {r['mutual_info']:.3f} (model disagreement)")
            if r["entropy"] is not None:
                parts.append(f"entropy {r['entropy']:.3f} (spread of the answer)")
            return "; ".join(parts) or None
        if col == COL_REVIEW and r["disagrees"]:
            return (
                f"The reviewer ({r['reviewer']}) disagrees with the AI label {r['display_label']}"
            )
        return None

    # ---- access
    def row(self, i: int) -> dict:
        return self._rows[i]

    def rows(self) -> list[dict]:
        return list(self._rows)

    def row_of(self, image_id: int) -> int | None:
        return self._pos(image_id)

    def counts(self) -> dict[str, int]:
        """Images per quick filter, ``<filter>:left`` still unreviewed, and ``person`` /
        ``person:left`` (images that need a person, and those of them not reviewed yet)."""
        keys = [*QUICK_FILTER_KEYS, *(f"{k}:left" for k in TRIAGE_ORDER), "person", "person:left"]
        return {k: self._counts.get(k, 0) for k in keys}

    # ---- writing
    def clear(self) -> None:
        self.set_rows([])

    def set_rows(self, rows: Iterable[dict]) -> None:
        """Replace all rows (a model reset) and sort them."""
        self.beginResetModel()
        self._rows = list(rows)
        self.forget_cells()
        if self._sort is not None:
            self._rows.sort(
                key=_column_key(self._sort[0]),
                reverse=self._sort[1] == Qt.SortOrder.DescendingOrder,
            )
        self._reindex()
        self._recount()
        self.endResetModel()
        self.counts_changed.emit(self.counts())

    def refresh_rows(self, rows: Iterable[dict]) -> None:
        """Bring the worklist up to date with a fresh read of the store, without a reset.

        When the store holds every image shown (and perhaps more), rows equal to those shown
        are left alone, changed ones are replaced, new ones inserted, and the rows re-sorted
        only if the order no longer holds: the view keeps its selection and scroll position,
        and re-reading a workspace at the end of a run costs little (the rows a run streamed
        in equal the stored ones). Otherwise, as :meth:`set_rows`.
        """
        rows = list(rows)
        if not self._rows or not self._ids <= {r["image_id"] for r in rows}:
            self.set_rows(rows)
            return
        changed = []
        for r in rows:
            i = self._pos(r["image_id"])
            if i is None or self._rows[i] != r:
                changed.append(r)
        if not changed:
            return
        self.upsert_rows(changed)
        if self._sort is not None and not self._in_order():
            self._resort()

    def _in_order(self) -> bool:
        """True when the rows are in the current sort order."""
        column, order = self._sort  # type: ignore[misc]
        keys = [_column_key(column)(r) for r in self._rows]
        if order == Qt.SortOrder.DescendingOrder:
            return all(not (a < b) for a, b in zip(keys, keys[1:], strict=False))
        return all(not (b < a) for a, b in zip(keys, keys[1:], strict=False))

    def upsert_rows(self, rows: Iterable[dict]) -> None:
        """Add a chunk of rows (one insert) and update rows already present (by image id)."""
        new: list[dict] = []
        changed: list[int] = []
        for r in rows:
            if r["image_id"] not in self._ids:
                new.append(r)
                self._ids.add(r["image_id"])
                continue
            i = self._pos(r["image_id"])
            if i is None:
                new.append(r)
            else:
                self._replace(i, r)
                changed.append(i)
        if changed:
            self.dataChanged.emit(
                self.index(min(changed), 0), self.index(max(changed), len(HEADERS) - 1)
            )
        if new:
            if self._sort is None or not self._rows:
                self._append(new)
                if self._sort is not None:
                    self._resort()
            else:
                self._insert_sorted(new)
        if new or changed:
            self.counts_changed.emit(self.counts())

    def _append(self, new: list[dict]) -> None:
        start = len(self._rows)
        self.beginInsertRows(QModelIndex(), start, start + len(new) - 1)
        self._rows.extend(new)
        for k, r in enumerate(new, start):
            self._index[r["image_id"]] = k
            self._counts.update(row_categories(r))
        self.endInsertRows()

    def _insert_sorted(self, new: list[dict]) -> None:
        """Insert each new row at its place in the current order (no full re-sort, so the
        proxy only filters the new rows; adjacent rows are inserted together)."""
        column, order = self._sort  # type: ignore[misc]
        key = _column_key(column)
        desc = order == Qt.SortOrder.DescendingOrder
        rows = self._rows
        placed: list[tuple[int, int, dict]] = []  # (position in old list, tie order, row)
        for n, r in enumerate(new):
            k = key(r)
            lo, hi = 0, len(rows)
            while lo < hi:  # first position whose key sorts after k (stable: after equals)
                mid = (lo + hi) // 2
                km = key(rows[mid])
                if (km < k) if desc else (k < km):
                    hi = mid
                else:
                    lo = mid + 1
            placed.append((lo, n, r))
        groups: dict[int, list[dict]] = {}
        for pos, _, r in placed:
            groups.setdefault(pos, []).append(r)
        ordered = [(pos, sorted(rs, key=key, reverse=desc)) for pos, rs in groups.items()]
        shift = 0
        for pos, rs in sorted(ordered, key=lambda t: t[0]):
            at = pos + shift
            self.beginInsertRows(QModelIndex(), at, at + len(rs) - 1)
            self._rows[at:at] = rs
            self.endInsertRows()
            shift += len(rs)
            for r in rs:
                self._counts.update(row_categories(r))
        self._index_dirty = True
        self.sorted_changed.emit()

    def update_row(self, image_id: int, **fields: Any) -> bool:
        """Change some fields of one row (e.g. after a review); one ``dataChanged``."""
        i = self._pos(image_id)
        if i is None:
            return False
        self._replace(i, {**self._rows[i], **fields})
        self.dataChanged.emit(self.index(i, 0), self.index(i, len(HEADERS) - 1))
        self.counts_changed.emit(self.counts())
        return True

    def set_review(self, image_id: int, review: dict | None) -> bool:
        """Refresh one row's review columns from the store's current review."""
        i = self._pos(image_id)
        if i is None:
            return False
        r = self._rows[i]
        return self.update_row(image_id, **review_fields(review, r["label"], r["triage"]))

    def thumbnail_ready(self, image_id: int) -> None:
        i = self._pos(image_id)
        if i is not None:
            idx = self.index(i, COL_IMAGE)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])

    def _replace(self, i: int, r: dict) -> None:
        self._counts.subtract(row_categories(self._rows[i]))
        self._rows[i] = r
        self._counts.update(row_categories(r))

    def _reindex(self) -> None:
        self._index = {r["image_id"]: i for i, r in enumerate(self._rows)}
        self._ids = set(self._index)
        self._index_dirty = False

    def _pos(self, image_id: int) -> int | None:
        if self._index_dirty:
            self._reindex()
        return self._index.get(image_id)

    def _recount(self) -> None:
        self._counts = Counter()
        for r in self._rows:
            self._counts.update(row_categories(r))

    # ---- sorting
    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Sort by a column (precomputed keys; keeps selections via persistent indexes).

        In blind mode an order by the AI's columns would reveal the answer: the rows are
        then ordered by file name instead."""
        if self._blind and column in AI_COLUMNS:
            column, order = COL_IMAGE, Qt.SortOrder.AscendingOrder
        self._sort = (column, order) if column >= 0 else None
        self._resort()

    def sort_state(self) -> tuple[int, Qt.SortOrder] | None:
        return self._sort

    def _resort(self) -> None:
        if self._sort is None or len(self._rows) < 2:
            return
        column, order = self._sort
        self.layoutAboutToBeChanged.emit()
        old_ids = [r["image_id"] for r in self._rows]
        self._rows.sort(key=_column_key(column), reverse=order == Qt.SortOrder.DescendingOrder)
        self._reindex()
        persistent = self.persistentIndexList()
        if persistent:
            new_list = []
            for p in persistent:
                new_row = self._index[old_ids[p.row()]]
                new_list.append(self.index(new_row, p.column()))
            self.changePersistentIndexList(persistent, new_list)
        self.layoutChanged.emit()
        self.sorted_changed.emit()


class WorklistFilter(QSortFilterProxyModel):
    """Quick filter + text filter over :class:`WorklistModel`; sorting is the source's job."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._quick = "needs-review"
        self._text = ""
        self.setDynamicSortFilter(False)

    def quick_filter(self) -> str:
        return self._quick

    def set_quick_filter(self, key: str) -> None:
        if key not in QUICK_FILTER_KEYS:
            raise ValueError(f"unknown quick filter {key!r}")
        if key != self._quick:
            self.beginFilterChange()
            self._quick = key
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def set_text(self, text: str) -> None:
        text = text.strip().lower()
        if text != self._text:
            self.beginFilterChange()
            self._text = text
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(
        self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex
    ) -> bool:
        src = self.sourceModel()
        r = src.row(source_row)  # type: ignore[attr-defined]
        q = self._quick
        if q != "all":
            if q == "reviewed":
                if not r["reviewed_label"]:
                    return False
            elif q == "disagrees":
                if not r["disagrees"]:
                    return False
            elif r["triage"] != q:
                return False
        if self._text:
            hidden = src.hides_ai(r)  # type: ignore[attr-defined]
            hay = " ".join(
                str(x)
                for x in (
                    r["name"],
                    r["patient"],
                    None if hidden else r["display_label"],
                    r["reviewer"],
                    r["reviewed_label"],
                    None if hidden and r["triage"] not in ANSWER_FREE_STATES else r["triage"],
                )
                if x
            ).lower()
            return self._text in hay
        return True

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Forward to the source model (fast key sort); this proxy keeps source order."""
        src = self.sourceModel()
        if isinstance(src, WorklistModel):
            src.sort(column, order)

    def visible_ids(self) -> list[int]:
        """Image ids of the rows shown, in display order."""
        src = self.sourceModel()
        return [
            src.row(self.mapToSource(self.index(i, 0)).row())["image_id"]
            for i in range(self.rowCount())
        ]  # type: ignore[attr-defined]
