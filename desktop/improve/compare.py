"""The compare dialog: current vs new model on the audit set, then Accept or Keep.

The verdict, its evidence and the cautions come from the engine's one acceptance rule
(:func:`engine.improve.judge`), the same rule ``eyetriage improve --accept-if-better``
follows. Missed disease is shown first; the review workload is shown with what it means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QGuiApplication, QImage, QKeySequence, QPixmap
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
from shiboken6 import isValid

from ..style import current_is_dark
from .dialog import STRATEGIES, format_eta

THUMB_H = 44  # thumbnail height in the changed-images list
MAX_THUMBS = 60  # thumbnails are made for the first rows only (cheap, in the background)
SAME_EPS = 0.0005  # differences smaller than this read "no change"
GOOD = ("#2e7d4f", "#6fcf97")  # light, dark
BAD = ("#b3261e", "#f28b82")
_JOBS: set[Any] = set()  # background jobs kept alive until they have finished

# key, word, higher is better, percent (else a plain number)
METRICS: list[tuple[str, str, bool, bool]] = [
    ("balanced_accuracy", "Balanced accuracy — mean of per-class accuracy", True, True),
    ("accuracy", "Accuracy — answers that match the reviewers", True, True),
    ("qwk", "Agreement on the grade (quadratic weighted kappa)", True, False),
    ("ece", "Calibration error (ECE) — confidence vs correctness", False, True),
]
WORKLOAD_WORD = "Review workload — audit images screening would send to a person"


# --------------------------------------------------------------------------- plain helpers
def metric_change(key: str, before: Any, after: Any) -> tuple[str, int]:
    """Text and direction (+1 better, -1 worse, 0 same) of a metric's change."""
    higher, percent = next(((h, p) for k, _, h, p in METRICS if k == key), (True, True))
    if before is None or after is None:
        return "—", 0
    d = float(after) - float(before)
    if abs(d) < SAME_EPS:
        return "= no change", 0
    better = (d > 0) == higher
    amount = f"{d * 100:+.1f} pts" if percent else f"{d:+.2f}"
    return (f"▲ {amount} better" if better else f"▼ {amount} worse"), (1 if better else -1)


def workload_change(before: Any, after: Any) -> str:
    """The workload's change, without calling it better or worse (that depends on disease)."""
    if before is None or after is None:
        return "—"
    d = float(after) - float(before)
    if abs(d) < SAME_EPS:
        return "= no change"
    return f"↓ {d * 100:+.1f} pts fewer to read" if d < 0 else f"↑ {d * 100:+.1f} pts more to read"


def format_metric(key: str, value: Any) -> str:
    """A metric value with its unit (``—`` when not applicable)."""
    percent = next((p for k, _, _, p in METRICS if k == key), True)
    if value is None:
        return "—"
    return f"{float(value) * 100:.1f} %" if percent else f"{float(value):.2f}"


def display_label(label: Any) -> str:
    if label is None:
        return "—"
    if isinstance(label, list | tuple):
        return ", ".join(display_label(x) for x in label) or "—"
    return str(label).replace("_", " ")


def _count(missed: Any, of: Any) -> str:
    return "—" if missed is None else f"{missed} of {of}"


def metric_rows(result: dict, evidence: dict) -> list[tuple[str, str, str, str, str, int]]:
    """The table's rows: (key, measure, current, new, change, direction), missed disease first."""
    rows: list[tuple[str, str, str, str, str, int]] = []
    before, after = result.get("before") or {}, result.get("after") or {}
    if evidence.get("negative_label") is not None:
        neg = display_label(evidence["negative_label"])
        findings = evidence.get("findings")
        mb, ma = evidence.get("missed_before"), evidence.get("missed_after")
        if mb is None or ma is None or ma == mb:
            change, d = "= no change", 0
        elif ma < mb:
            change, d = f"▲ {mb - ma} fewer missed — better", 1
        else:
            change, d = f"▼ {ma - mb} more missed — worse", -1
        rows.append(
            (
                "missed_disease",
                f"Missed disease — images with a finding called '{neg}'",
                _count(mb, findings),
                _count(ma, findings),
                change,
                d,
            )
        )
        names = display_label(evidence.get("finding_labels") or [])
        no_findings = evidence.get("no_findings")
        for key, word in (
            ("sensitivity", f"Disease found (sensitivity, {findings} images) — {names}"),
            ("specificity", f"'{neg}' images cleared (specificity, {no_findings} images)"),
        ):
            b, a = evidence.get(f"{key}_before"), evidence.get(f"{key}_after")
            if b is None and a is None:
                continue
            change, d = metric_change(key, b, a)
            rows.append((key, word, format_metric(key, b), format_metric(key, a), change, d))
    for key, word, _, _ in METRICS:
        b, a = before.get(key), after.get(key)
        if b is None and a is None:
            continue
        change, d = metric_change(key, b, a)
        rows.append((key, word, format_metric(key, b), format_metric(key, a), change, d))
    b, a = before.get("review_workload"), after.get("review_workload")
    if b is not None or a is not None:
        rows.append(
            (
                "review_workload",
                WORKLOAD_WORD,
                format_metric("review_workload", b),
                format_metric("review_workload", a),
                workload_change(b, a),
                0,
            )
        )
    return rows


def sentence(text: str) -> str:
    """An engine note ("calibration kept …") as a sentence: capital first, full stop last."""
    text = str(text).strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def compare_summary(result: dict, n: Any) -> str:
    """The opening line: the audit set and how the new version was made."""
    strategy = next((w for k, w, _ in STRATEGIES if k == result.get("strategy")), "?")
    word = "image" if n == 1 else "images"
    line = (
        f"Audit set: {n} reviewed {word}, never used for training. The new version learned "
        f"from {result.get('n_train', '?')} images ({strategy.split(' —')[0].lower()}, "
        f"{result.get('epochs_run', '?')} epochs, took {format_eta(result.get('seconds'))})."
    )
    sl = result.get("self_learning") or {}
    if result.get("pseudo_labels"):
        helped = sl.get("helped")
        verdict_word = (
            "" if helped is None else (" It helped." if helped else " It did not help here.")
        )
        line += (
            f" Self-learning added {result['pseudo_labels']} confident unreviewed images."
            + verdict_word
        )
    return line


def load_thumbnails(paths: list[str], height: int = THUMB_H * 2) -> list[QImage | None]:
    """Small images for the changed-images list, made off the GUI thread.

    The engine decodes them (Pillow: the one file rule, DICOM, EXIF orientation) and each
    becomes a QImage from its pixels; no Qt image plugin runs here. A plugin read in a
    worker thread holds the interpreter while Qt locks an object's mutex, and the window
    deleting a widget holds that mutex while it waits for the interpreter: the test suite
    hung on exactly that. A file that cannot be read shows no thumbnail.
    """
    from engine.images import open_image, to_rgb

    from ..qimage import pil_to_qimage

    out: list[QImage | None] = []
    for p in paths:
        try:
            im, _ = open_image(p, min_side=height)
            im = to_rgb(im)
        except Exception:  # noqa: BLE001 - a bad file just has no thumbnail
            out.append(None)
            continue
        im = im.resize((max(1, round(im.width * height / max(1, im.height))), height))
        out.append(pil_to_qimage(im))
    return out


def _why(exc: BaseException) -> str:
    """An engine error's own sentence, or a readable one for anything else."""
    from engine.improve import ImproveError

    from ..workers import readable_error

    return str(exc) if isinstance(exc, ImproveError) else readable_error(exc)


def _read_only_table(rows: int, headers: list[str]) -> QTableWidget:
    t = QTableWidget(rows, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.verticalHeader().hide()
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    return t


# --------------------------------------------------------------------------- the dialog
class CompareDialog(QDialog):
    """Old vs new model on the audit set, the images whose answer changed, Accept or Keep.

    ``decided(str)`` carries "accepted" or "rejected" after the engine recorded the choice;
    ``error(str)`` when it could not.
    """

    decided = Signal(str)
    error = Signal(str)

    def __init__(
        self, ws_folder: Path, result: dict, actor: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        from engine.improve import judge

        self.setWindowTitle("Compare the models on the audit set")
        self.ws_folder = Path(ws_folder)
        self.result = result
        self.actor = actor or "desktop"
        self.decision = ""
        self._thumb_job: Any = None
        before, after = result.get("before") or {}, result.get("after") or {}
        dark = int(current_is_dark())
        self.verdict_result = judge(result)
        v = self.verdict_result
        self.direction = v.direction

        n = after.get("n", before.get("n"))
        self.head = QLabel(compare_summary(result, n))
        self.head.setWordWrap(True)
        self.verdict = QLabel(v.headline)
        self.verdict.setWordWrap(True)
        colour = "" if not v.direction else f" color: {(GOOD if v.direction > 0 else BAD)[dark]};"
        self.verdict.setStyleSheet(f"font-weight: 600;{colour}")
        self.verdict.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reasons = QLabel("\n".join(v.reasons))
        self.reasons.setWordWrap(True)
        self.reasons.setStyleSheet(f"color: {BAD[dark]};")
        self.reasons.setVisible(bool(v.reasons))

        rows = metric_rows(result, v.evidence)
        self.metrics = _read_only_table(
            len(rows), ["Measure", "Current model", "New model", "Change"]
        )
        self.metrics.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.metrics.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.metric_rows: dict[str, tuple[str, str, str]] = {}
        for r, (key, word, b_text, a_text, change, d) in enumerate(rows):
            for c, value in enumerate((word, b_text, a_text, change)):
                item = QTableWidgetItem(value)
                if c in (1, 2):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                if c == 3 and d:
                    item.setForeground(QColor((GOOD if d > 0 else BAD)[dark]))
                if key == "missed_disease":
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.metrics.setItem(r, c, item)
            self.metric_rows[key] = (b_text, a_text, change)
        hh = self.metrics.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in (1, 2, 3):
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        vh = self.metrics.verticalHeader()
        vh.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        vh.setDefaultSectionSize(self.metrics.fontMetrics().height() + 10)
        height = hh.height() + sum(self.metrics.rowHeight(r) for r in range(len(rows))) + 6
        self.metrics.setMinimumHeight(height)
        self.metrics.setMaximumHeight(height)

        self.workload = QLabel(v.workload)
        self.workload.setWordWrap(True)
        self.workload.setVisible(bool(v.workload))
        notes = [sentence(w) for w in result.get("warnings") or []]
        self.notes = QLabel("\n".join(f"Note: {w}" for w in notes))
        self.notes.setObjectName("notice")
        self.notes.setWordWrap(True)
        self.notes.setVisible(bool(notes))

        changed = list(result.get("changed") or [])
        self.changed_label = QLabel(self._changed_text(changed))
        self.changed = _read_only_table(
            len(changed), ["File", "Before → after", "Reviewer's answer", "Result"]
        )
        self.changed.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.changed.setIconSize(QSize(THUMB_H, THUMB_H))
        self._fill_changed(changed, dark)

        recommend = v.recommend
        self.accept_button = QPushButton(
            ("Accept new model" if recommend else "Accept anyway") + "  Ctrl+Enter"
        )
        self.accept_button.setShortcut(QKeySequence("Ctrl+Return"))
        self.accept_button.setToolTip(
            "Make the new version active and re-screen the worklist in the background"
        )
        self.accept_button.clicked.connect(self.accept_new)
        self.keep_button = QPushButton("Keep current model  Esc")
        self.keep_button.setToolTip("Discard the new version (it stays listed in Model history)")
        self.keep_button.clicked.connect(self.reject)
        (self.accept_button if recommend else self.keep_button).setDefault(True)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.keep_button)
        buttons.addWidget(self.accept_button)

        lay = QVBoxLayout(self)
        lay.addWidget(self.head)
        lay.addWidget(self.verdict)
        lay.addWidget(self.reasons)
        lay.addWidget(self.metrics)
        lay.addWidget(self.workload)
        lay.addWidget(self.notes)
        lay.addWidget(self.changed_label)
        lay.addWidget(self.changed, 1)
        lay.addLayout(buttons)
        self._fit_to_screen()
        if changed:
            self._load_thumbnails(changed[:MAX_THUMBS])

    def _fit_to_screen(self) -> None:
        screen = QGuiApplication.primaryScreen()
        avail = screen.availableGeometry() if screen is not None else None
        w, h = 900, 720
        if avail is not None:
            w, h = min(w, avail.width() - 40), min(h, avail.height() - 60)
        self.resize(max(560, w), max(420, h))

    @staticmethod
    def _changed_text(changed: list[dict]) -> str:
        if not changed:
            return "No audit image changed its answer."
        fixed = sum(
            1 for c in changed if c.get("truth") is not None and c.get("after") == c.get("truth")
        )
        broke = sum(
            1 for c in changed if c.get("truth") is not None and c.get("before") == c.get("truth")
        )
        noun, pronoun = ("image", "its") if len(changed) == 1 else ("images", "their")
        return (
            f"{len(changed)} audit {noun} changed {pronoun} answer: "
            f"✓ {fixed} now right, ✕ {broke} now wrong."
        )

    def _fill_changed(self, changed: list[dict], dark: int) -> None:
        for r, c in enumerate(changed):
            path = str(c.get("path") or "")
            name = QTableWidgetItem(Path(path).name or str(c.get("image_id")))
            name.setToolTip(path)
            self.changed.setItem(r, 0, name)
            text = f"{display_label(c.get('before'))} → {display_label(c.get('after'))}"
            self.changed.setItem(r, 1, QTableWidgetItem(text))
            self.changed.setItem(r, 2, QTableWidgetItem(display_label(c.get("truth"))))
            truth = c.get("truth")
            if truth is not None and c.get("after") == truth:
                res, d = "✓ now right", 1
            elif truth is not None and c.get("before") == truth:
                res, d = "✕ now wrong", -1
            else:
                res, d = "· still wrong", 0
            item = QTableWidgetItem(res)
            if d:
                item.setForeground(QColor((GOOD if d > 0 else BAD)[dark]))
            self.changed.setItem(r, 3, item)
            self.changed.setRowHeight(r, THUMB_H + 6)
        ch = self.changed.horizontalHeader()
        ch.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2, 3):
            ch.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)

    def _load_thumbnails(self, rows: list[dict]) -> None:
        """Make the thumbnails in the background; the job outlives the dialog if need be."""
        from ..workers import FunctionJob

        paths = [str(c.get("path") or "") for c in rows]
        job = FunctionJob(load_thumbnails, paths)  # no parent: it may end after the dialog
        _JOBS.add(job)
        job.finished.connect(lambda: _JOBS.discard(job))
        job.returned.connect(lambda images, d=self: isValid(d) and d._set_thumbnails(images))
        self._thumb_job = job
        job.start()

    def _set_thumbnails(self, images: list[QImage | None]) -> None:
        for r, img in enumerate(images):
            item = self.changed.item(r, 0)
            if img is not None and item is not None:
                item.setIcon(QPixmap.fromImage(img))

    def metric_texts(self) -> dict[str, tuple[str, str, str]]:
        """Shown text per metric key: (current, new, change)."""
        return dict(self.metric_rows)

    def accept_new(self) -> None:
        """Make the new version active (engine ``accept``, audited)."""
        from engine.improve import accept

        try:
            accept(self.ws_folder, self.result["model"], self.actor)
        except Exception as exc:  # noqa: BLE001 - say it, change nothing else
            self.error.emit(f"The new model could not be made active: {_why(exc)}")
            return
        self.decision = "accepted"
        self._finish_thumbs()
        self.decided.emit("accepted")
        super().accept()

    def reject(self) -> None:  # Keep current model, Esc, window close
        if self.decision:
            super().reject()
            return
        from engine.improve import reject

        try:
            reject(self.ws_folder, self.result["model"], self.actor)
        except Exception as exc:  # noqa: BLE001
            self.error.emit(f"The new version could not be discarded: {_why(exc)}")
        self.decision = "rejected"
        self._finish_thumbs()
        self.decided.emit("rejected")
        super().reject()

    def _finish_thumbs(self) -> None:
        if self._thumb_job is not None:
            self._thumb_job.wait(10)
