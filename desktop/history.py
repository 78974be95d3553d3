"""Model history: every model version of a workspace, with its audit metrics; roll back to any.

The list comes from the engine's version lifecycle (``engine.improve.model_history``) and a
rollback goes through ``engine.improve.rollback``, the same function as ``eyetriage
rollback``: it refuses rejected or never-accepted versions and records the change in the
audit log. Reading the history is a
small query, so it is done on the GUI thread when the dialog opens.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

COLUMNS = [
    "Active",
    "Name",
    "Version",
    "Created",
    "Parent",
    "Strategy",
    "Status",
    "Audit balanced accuracy",
]
STATUS_WORDS = {
    "original": "original",
    "accepted": "accepted",
    "rejected": "✕ discarded",
    "candidate": "not yet decided",
}
CAN_ACTIVATE = ("original", "accepted")  # rejected or undecided versions cannot be rolled back to


def audit_balanced_accuracy(entry: dict) -> float | None:
    """The version's balanced accuracy on its audit set, wherever the engine put it."""
    for key in ("audit_balanced_accuracy", "balanced_accuracy"):
        if isinstance(entry.get(key), int | float):
            return float(entry[key])
    metrics = entry.get("metrics") or {}
    if not isinstance(metrics, dict):
        return None
    for path in (("audit", "balanced_accuracy"), ("after", "balanced_accuracy")):
        node: Any = metrics
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, int | float):
            return float(node)
    value = metrics.get("audit_balanced_accuracy", metrics.get("balanced_accuracy"))
    return float(value) if isinstance(value, int | float) else None


def short_date(text: str | None) -> str:
    """``2026-11-03 14:02`` from an ISO timestamp."""
    if not text:
        return "—"
    return str(text).replace("T", " ")[:16]


class ModelHistoryDialog(QDialog):
    """A table of every model version; "Roll back to this version" makes one active.

    ``rolled_back(hash, path)`` is emitted after the engine switched the active model;
    ``error(message)`` when it could not.
    """

    rolled_back = Signal(str, str)
    error = Signal(str)

    def __init__(
        self,
        ws_folder: Path,
        actor: str,
        is_busy: Callable[[], bool] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Model history")
        self.ws_folder = Path(ws_folder)
        self.actor = actor or "desktop"
        self.is_busy = is_busy or (lambda: False)
        self.entries: list[dict] = []

        intro = QLabel(
            "Every model version of this workspace, oldest first. Versions never change; "
            "rolling back makes an earlier one active again and re-screens the worklist."
        )
        intro.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(lambda _i: self.rollback_selected())
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.note = QLabel()
        self.note.setObjectName("notice")
        self.note.setWordWrap(True)

        self.rollback_button = QPushButton("Roll back to this version  Ctrl+R")
        self.rollback_button.setShortcut(QKeySequence("Ctrl+R"))
        self.rollback_button.clicked.connect(self.rollback_selected)
        close = QPushButton("Close  Esc")
        close.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.note, 1)
        buttons.addWidget(self.rollback_button)
        buttons.addWidget(close)

        lay = QVBoxLayout(self)
        lay.addWidget(intro)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)
        self.resize(980, 420)
        self.reload()

    # ---- contents
    def reload(self) -> None:
        """Read the versions from the store and fill the table."""
        try:
            from engine.improve import model_history

            self.entries = [dict(e) for e in model_history(self.ws_folder)]
        except Exception as exc:  # noqa: BLE001 - say it in the dialog
            self.entries = []
            self.note.setText(f"Cannot read the model versions: {exc}")
        names = {e.get("hash"): e.get("name") for e in self.entries}
        self.table.setRowCount(len(self.entries))
        bold = QFont(self.font())
        bold.setBold(True)
        for r, e in enumerate(self.entries):
            parent = e.get("parent")
            bacc = audit_balanced_accuracy(e)
            bacc_tip = "Balanced accuracy of this version on its audit set"
            bacc_text = "—" if bacc is None else f"{bacc * 100:.1f} %"
            child = next(
                (c for c in self.entries if c.get("parent") == e.get("hash") and c is not e), None
            )
            before = (child or {}).get("metrics_before") or {}
            if bacc is None and isinstance(before.get("balanced_accuracy"), int | float):
                bacc_text = f"{before['balanced_accuracy'] * 100:.1f} % (as parent)"
                bacc_tip = (
                    f"Measured on the audit set of {child.get('name') or 'its child'} "
                    "when that version was made"
                )
            status = str(e.get("status") or ("active" if e.get("active") else ""))
            cells = [
                "✓ active" if e.get("active") else "",
                str(e.get("name") or Path(str(e.get("path") or "")).stem or "—"),
                str(e.get("hash") or "")[:8],
                short_date(e.get("created_at")),
                (
                    f"{names.get(parent) or ''} {str(parent)[:8]}".strip()
                    if parent
                    else "— (original)"
                ),
                str(e.get("strategy") or "—"),
                STATUS_WORDS.get(status, status.replace("_", " ") or "—"),
                bacc_text,
            ]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c == 2:
                    item.setToolTip(str(e.get("hash") or ""))
                if e.get("active"):
                    item.setFont(bold)
                if c == 7:
                    item.setToolTip(bacc_tip)
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(r, c, item)
        active_row = next((r for r, e in enumerate(self.entries) if e.get("active")), -1)
        if self.entries:
            self.table.selectRow(active_row if active_row >= 0 else len(self.entries) - 1)
        elif not self.note.text():
            self.note.setText("No model versions yet: screen the images with a model first.")
        self._update_buttons()

    def active_hash(self) -> str | None:
        return next((e.get("hash") for e in self.entries if e.get("active")), None)

    def selected(self) -> dict | None:
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows else None

    def select_hash(self, model_hash: str) -> bool:
        """Select the row of a version (by full or short hash)."""
        for r, e in enumerate(self.entries):
            if str(e.get("hash") or "").startswith(model_hash):
                self.table.selectRow(r)
                return True
        return False

    def _update_buttons(self) -> None:
        e = self.selected()
        status = str((e or {}).get("status") or "original")
        ok = e is not None and not e.get("active") and status in CAN_ACTIVATE
        self.rollback_button.setEnabled(ok)
        if e is None:
            tip = "Select a version"
        elif e.get("active"):
            tip = "This version is already in use"
        elif status == "rejected":
            tip = "This version was discarded after comparison; it cannot become active"
        elif status == "candidate":
            tip = "This version was never accepted; it cannot be rolled back to"
        else:
            tip = "Make the selected version active and re-screen the worklist (Ctrl+R)"
        self.rollback_button.setToolTip(tip)

    # ---- rolling back
    def rollback_selected(self) -> bool:
        """Make the selected version active through the engine (audited)."""
        e = self.selected()
        if e is None or e.get("active"):
            return False
        if self.is_busy():
            self.note.setText("Screening is running: wait for it to finish (or cancel it) first.")
            return False
        model_hash = str(e.get("hash"))
        from engine.improve import ImproveError, rollback

        from .workers import readable_error

        try:
            row = rollback(self.ws_folder, model_hash, self.actor)
        except Exception as exc:  # noqa: BLE001 - say it in the dialog, change nothing
            why = str(exc) if isinstance(exc, ImproveError) else readable_error(exc)
            message = f"Could not roll back to {model_hash[:8]}: {why}"
            self.note.setText(message)
            self.error.emit(message)
            return False
        path = row.get("path") or e.get("path")
        self.note.setText(f"Version {model_hash[:8]} is active again.")
        self.reload()
        self.rolled_back.emit(model_hash, str(path or ""))
        return True
