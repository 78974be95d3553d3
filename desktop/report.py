"""The per-patient PDF screening report.

The PDF is drawn with ``QPainter`` on a ``QPdfWriter`` (A4, 300 dpi) and needs no window,
so it works offscreen and from a worker thread (a ``QGuiApplication`` must exist). Each
page holds :data:`IMAGES_PER_PAGE` images of the patient with, per image, the photograph,
the Grad-CAM overlay, the AI result in words and the reviewer's decision with the grader's
answers in the workspace's scheme (the lesion marks drawn on the photograph, with a
legend); every page ends
with the not-a-medical-device note and its page number. A file that cannot be read or an
overlay that cannot be computed becomes a box that says why, never a crash.

Writing reports with overlays runs the model: call these functions from a worker, not
from the GUI thread. torch is imported only when overlays are wanted.

Why one module of about 700 lines: it is one document; its data, words and drawing share
the page geometry (margins, picture size, line heights) and change together.

Why one module of about 680 lines: page layout, the per-image block and the overlay
worker all measure against the same page geometry; split, the geometry constants would
be shared across files for no reader's benefit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QMarginsF, QRectF, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetricsF,
    QGuiApplication,
    QImage,
    QPageLayout,
    QPageSize,
    QPainter,
    QPdfWriter,
    QPen,
)

from engine.modelcard import DEMO_NOTICE, NOT_A_DEVICE
from engine.modelfile import ModelSpec
from engine.store import Workspace
from engine.triage import needs_human

from .qimage import pil_to_qimage

if TYPE_CHECKING:
    from PIL import Image

    from engine.models import LoadedModel
    from engine.tasks import TaskState

__all__ = [
    "IMAGES_PER_PAGE",
    "REPORT_TITLE",
    "patients_in_workspace",
    "report_page_count",
    "write_all_patient_reports",
    "write_patient_report",
]

REPORT_TITLE = "EyeTriage screening report"
DEMO_DETAIL = "The demo model was trained on synthetic images only."
IMAGES_PER_PAGE = 2
DPI = 300
DISPLAY_LONGEST = 800  # pixels of the photograph kept for the PDF
EYE_WORDS = {"right": "right eye (OD)", "left": "left eye (OS)"}
TRIAGE_WORDS = {
    "refer": "refer",
    "auto-cleared": "auto-cleared",
    "needs-review": "needs review",
    "ungradable": "ungradable",
    "out-of-distribution": "out of distribution",
    "error": "error",
}
ACTION_WORDS = {
    "confirm": "confirmed the AI",
    "correct": "graded",
    "ungradable": "marked ungradable",
}

# Layout in millimetres (A4 portrait, 210 x 297).
_PAGE_W, _PAGE_H = 210.0, 297.0
_MARGIN_X, _MARGIN_TOP = 15.0, 13.0
_FOOTER_H = 17.0
_BLOCK_H = 110.0
_PICTURE = 55.0  # side of the square box an image is fitted into


def report_page_count(n_images: int) -> int:
    """Pages of a report on ``n_images`` images (the layout is fixed: no surprises)."""
    return max(1, math.ceil(n_images / IMAGES_PER_PAGE))


# --------------------------------------------------------------------------- data


@dataclass
class _ModelInfo:
    name: str
    version: str  # short hash
    demo: bool
    spec: ModelSpec | None


def _safe_name(patient: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", patient).strip("._") or "patient"


def _open_ws(ws_folder: Path) -> Workspace:
    """The workspace, never created here (StoreError names a folder that is not one)."""
    return Workspace.open(Path(ws_folder), create=False)


def patients_in_workspace(ws_folder: Path) -> list[str]:
    """Patients with at least one screened image, sorted (images without a patient are left out)."""
    with _open_ws(ws_folder) as ws:
        return sorted({r["patient"] for r in ws.latest_predictions() if r["patient"]})


def _model_info(ws: Workspace, spec: ModelSpec | None, model_path: Path | None) -> _ModelInfo:
    active = ws.active_model()
    if spec is None and model_path is not None and Path(model_path).is_file():
        from engine.modelfile import read_spec

        with contextlib.suppress(Exception):
            spec = read_spec(model_path)
    if spec is None and active and isinstance(active.get("description"), dict):
        with contextlib.suppress(Exception):
            spec = ModelSpec.from_json(json.dumps(active["description"]))
    name = (spec.name if spec is not None and spec.name else None) or (
        active["name"] if active else "unknown model"
    )
    version = str(active["hash"])[:12] if active else "unknown"
    return _ModelInfo(name or "unknown model", version, bool(spec is not None and spec.demo), spec)


def _load_model(ws: Workspace, model_path: Path | None) -> tuple[LoadedModel | None, str]:
    """The model for overlays, or ``None`` and the reason in words."""
    if model_path is None:
        active = ws.active_model()
        model_path = Path(active["path"]) if active and active.get("path") else None
    if model_path is None:
        return None, "no model file is known for this workspace"
    if not Path(model_path).is_file():
        return None, f"the model file {Path(model_path).name} was not found"
    try:
        from engine.models import load_model

        return load_model(model_path), ""
    except Exception as exc:  # noqa: BLE001 - any failure only drops the overlays
        return None, f"the model could not be loaded ({exc})"


def _patient_rows(ws: Workspace, patient: str) -> list[dict]:
    rows = [r for r in ws.latest_predictions() if r["patient"] == patient]
    order = {"right": 0, "left": 1}
    return sorted(rows, key=lambda r: (order.get(r["eye"] or "", 2), Path(r["path"]).name))


# --------------------------------------------------------------------------- words


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * float(value):.0f}%"


def _time_words(iso: str | None) -> str:
    if not iso:
        return "time unknown"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.utcoffset() is not None:
        moment = moment.astimezone()  # the reader's local time, with its zone
    return moment.strftime("%Y-%m-%d %H:%M %Z").strip()


def _uncertainty_words(row: dict, spec: ModelSpec | None) -> str:
    from engine.uncertainty_stats import describe_uncertainty

    confidence, entropy = row.get("confidence"), row.get("entropy")
    probs = row.get("probabilities") or {}
    if confidence is None or entropy is None or not probs:
        return "not available"
    n = len(probs)
    multilabel = spec is not None and spec.task == "multilabel"
    max_entropy = n * math.log(2.0) if multilabel else math.log(max(2, n))
    norm = min(1.0, max(0.0, float(entropy) / max_entropy))
    cset = row.get("conformal_set")
    try:
        return describe_uncertainty(
            min(1.0, max(0.0, float(confidence))),
            len(cset) if cset else None,
            norm,
            max(0.0, float(row.get("mutual_info") or 0.0)),
        )
    except ValueError:
        return "not available"


def _ai_lines(row: dict, spec: ModelSpec | None) -> list[tuple[str, str]]:
    def show(label: str) -> str:
        return spec.display(label) if spec is not None else label.replace("_", " ")

    triage = TRIAGE_WORDS.get(row["triage"], row["triage"])
    if row["triage"] == "refer" and row.get("label"):
        triage = f"refer: {', '.join(show(x) for x in str(row['label']).split(';'))}"
    reason = row.get("triage_reason")
    triage_text = f"{triage} — {reason}" if reason else triage
    if row["triage"] == "error" or row.get("label") is None:
        return [
            ("Result", "no result: the image could not be screened"),
            ("Triage", triage_text),
            ("Reason", row.get("error") or reason or "unknown"),
        ]
    lines = [
        ("Result", f"{show(row['label'])}, confidence {_pct(row.get('confidence'))}"),
        ("Triage", triage_text),
        ("Uncertainty", _uncertainty_words(row, spec)),
    ]
    cset = row.get("conformal_set")
    if cset:
        lines.append(("Plausible set", ", ".join(show(x) for x in cset)))
    else:
        lines.append(("Plausible set", "not available for this model"))
    quality = row.get("quality") or {}
    if row.get("quality_ok") == 0 and quality.get("reasons"):
        lines.append(("Quality", "; ".join(str(x) for x in quality["reasons"])))
    if row.get("ood"):
        lines.append(("Unusual", "unlike the images the model was trained on"))
    return lines


def _review_lines(row: dict, spec: ModelSpec | None) -> list[tuple[str, str]]:
    review = row.get("review")
    if not review:
        return [
            ("Decision", "not reviewed yet: the AI result has not been checked by a clinician"),
            *_grading_lines(row),
        ]

    def show(label: str) -> str:
        return spec.display(label) if spec is not None else label.replace("_", " ")

    labels = review.get("labels") or []
    label = ", ".join(show(x) for x in labels) or (
        "ungradable" if review["action"] == "ungradable" else "—"
    )
    action = ACTION_WORDS.get(review["action"], review["action"])
    if review["action"] == "correct" and row.get("label") is not None:
        action = "agrees with the AI" if labels == [row["label"]] else "differs from the AI"
    lines = [
        ("Label", f"{label} ({action})"),
        ("Reviewer", f"{review['reviewer']}, {_time_words(review.get('created_at'))}"),
    ]
    if review.get("slice"):
        lines.append(("Slice", f"read at B-scan {review['slice']}"))
    lines += _grading_lines(row)
    if review.get("note"):
        lines.append(("Note", str(review["note"])))
    return lines


def _grading_lines(row: dict) -> list[tuple[str, str]]:
    """The grader's answers in the workspace's scheme, one labelled line."""
    answers = row.get("grading") or []
    if not answers:
        return []
    return [("Grading", " · ".join(f"{title}: {words}" for title, words in answers))]


def _attach_grading(ws: Workspace, rows: list[dict]) -> None:
    """Give each row its grader's answers (``grading``: ``[(question, words)]``), the
    marks on the picture the report shows (``marks``; a volume's: on its key B-scan) and
    the scheme they belong to."""
    from engine.schemes import answer_words

    scheme = ws.scheme()
    for row in rows:
        image_id = int(row["image_id"])
        answers = answer_words(scheme, ws.grades(image_id))
        lines = [(title.split(" (")[0], words) for title, words in answers]
        row["grading"] = lines
        slice_index = None
        if row.get("kind") == "volume" and row.get("n_slices"):
            slice_index = int(row.get("key_slice") or 1) - 1
        row["marks"] = ws.marks(image_id, slice_index)
        row["scheme"] = scheme


def picture_source(row: dict) -> tuple[object, str]:
    """What to draw for a row and its caption: the file, or for an OCT volume its most
    suspicious B-scan (the one the AI result rests on)."""
    n, key = row.get("n_slices"), row.get("key_slice")
    if row.get("kind") != "volume" or not n:
        return row["path"], "Photograph"
    from engine.volumes import slice_source

    index = (key or 1) - 1
    caption = f"B-scan {index + 1} of {n}" + (" (most suspicious)" if key else "")
    return slice_source(row["path"], index), caption


# --------------------------------------------------------------------------- drawing


class _Painter:
    """Millimetre drawing helpers over a QPainter on the PDF writer."""

    def __init__(self, painter: QPainter, family: str) -> None:
        self.p = painter
        self.family = family
        self.scale = DPI / 25.4

    def r(self, x: float, y: float, w: float, h: float) -> QRectF:
        s = self.scale
        return QRectF(x * s, y * s, w * s, h * s)

    def font(self, size: float, bold: bool = False) -> QFont:
        font = QFont(self.family)
        font.setPointSizeF(size)
        font.setBold(bold)
        return font

    def text(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        text: str,
        size: float = 9.5,
        bold: bool = False,
        color: str = "#1a1a1a",
        flags: Qt.AlignmentFlag | int = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop,
    ) -> float:
        """Draw wrapped text in a box; returns the height used in mm (clipped to ``h``)."""
        self.p.setFont(self.font(size, bold))
        self.p.setPen(QColor(color))
        rect = self.r(x, y, w, h)
        wrap = int(flags) | int(Qt.TextFlag.TextWordWrap)
        used = self.p.boundingRect(rect, wrap, text)
        if used.height() > rect.height():  # keep whole lines only, end with an ellipsis
            metrics = QFontMetricsF(self.p.font(), self.p.device())
            lines = max(1, int(rect.height() // metrics.lineSpacing()))
            text = _fit_lines(text, metrics, rect.width(), lines)
            used = self.p.boundingRect(rect, wrap, text)
        self.p.save()
        self.p.setClipRect(rect)
        self.p.drawText(rect, wrap, text)
        self.p.restore()
        return min(used.height(), rect.height()) / self.scale

    def labelled(
        self, x: float, y: float, w: float, h: float, lines: list[tuple[str, str]]
    ) -> None:
        """``label: value`` lines, the label in bold, wrapped, until the box is full."""
        bottom = y + h
        label_w = 25.0
        for label, value in lines:
            if bottom - y < 4.0:
                break
            self.text(x, y + 0.3, label_w, 5.0, label, size=8.5, bold=True, color="#444444")
            used = self.text(x + label_w, y, w - label_w, bottom - y, value, size=9)
            y += max(used, 4.0) + 1.0

    def picture(self, x: float, y: float, side: float, image: QImage) -> None:
        """Fit ``image`` into a ``side`` x ``side`` mm box, centred, aspect kept."""
        scale = min(side / image.width(), side / image.height())
        w, h = image.width() * scale, image.height() * scale
        target = self.r(x + (side - w) / 2, y + (side - h) / 2, w, h)
        self.p.drawImage(target, image)
        self.p.setPen(QPen(QColor("#999999"), 1.5))
        self.p.setBrush(Qt.BrushStyle.NoBrush)
        self.p.drawRect(target)

    def placeholder(self, x: float, y: float, side: float, title: str, reason: str) -> None:
        pen = QPen(QColor("#888888"), 3)
        pen.setStyle(Qt.PenStyle.DashLine)
        self.p.setPen(pen)
        self.p.setBrush(QColor("#f2f2f2"))
        self.p.drawRect(self.r(x, y, side, side))
        self.text(
            x + 4, y + side / 2 - 12, side - 8, 7, title, size=10, bold=True, color="#333333",
            flags=Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
        )  # fmt: skip
        self.text(
            x + 4, y + side / 2 - 4, side - 8, side / 2, reason, size=8.5, color="#333333",
            flags=Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop,
        )  # fmt: skip

    def rule(self, y: float, color: str = "#bbbbbb") -> None:
        self.p.setPen(QPen(QColor(color), 2))
        s = self.scale
        self.p.drawLine(
            round(_MARGIN_X * s), round(y * s), round((_PAGE_W - _MARGIN_X) * s), round(y * s)
        )

    def banner(self, x: float, y: float, w: float, h: float, title: str, detail: str) -> None:
        """A framed warning: ``title`` in bold, then ``detail`` in plain text."""
        self.p.setPen(QPen(QColor("#b36b00"), 3))
        self.p.setBrush(QColor("#fff1d6"))
        self.p.drawRect(self.r(x, y, w, h))
        middle = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        bold = self.font(11, bold=True)
        title_w = QFontMetricsF(bold, self.p.device()).horizontalAdvance(title) / self.scale
        self.text(
            x + 3, y, title_w + 1, h, title, size=11, bold=True, color="#5c3700", flags=middle
        )
        rest = w - title_w - 10
        self.text(x + title_w + 7, y, rest, h, detail, size=9, color="#5c3700", flags=middle)


def _fit_lines(text: str, metrics: QFontMetricsF, width: float, lines: int) -> str:
    """The start of ``text`` that wraps into ``lines`` lines, ending with an ellipsis."""
    words, out, current = text.split(), [], ""
    for word in words:
        trial = f"{current} {word}".strip()
        if metrics.horizontalAdvance(trial) <= width or not current:
            current = trial
            continue
        out.append(current)
        current = word
        if len(out) == lines:
            break
    if len(out) < lines and current:
        out.append(current)
    out = out[:lines]
    if out and " ".join(out) != " ".join(words):
        out[-1] = metrics.elidedText(out[-1] + " …", Qt.TextElideMode.ElideRight, width)
        if not out[-1].endswith("…"):
            out[-1] += " …"
    return "\n".join(out)


class _Overlay:
    """Grad-CAM overlays on demand, or the reason they cannot be made."""

    def __init__(self, lm: LoadedModel | None, reason: str) -> None:
        self.lm, self.reason = lm, reason

    def make(self, row: dict, original: Image.Image) -> Image.Image:
        from engine.explain import explain_file, render_explanation

        assert self.lm is not None
        target = row["label"] if row.get("label") in self.lm.spec.labels else None
        source, _ = picture_source(row)
        exp = explain_file(self.lm, source, method="gradcam", target=target)
        return render_explanation(original, exp, alpha=0.45, contour_top_pct=10)


def _draw_page_frame(
    d: _Painter,
    page: int,
    pages: int,
    patient: str,
    info: _ModelInfo,
    rows: list[dict],
    overlay_note: str,
) -> float:
    """Header (full on page 1, short after) and footer; returns where the images start."""
    content_w = _PAGE_W - 2 * _MARGIN_X
    x, y = _MARGIN_X, _MARGIN_TOP
    if page == 1:
        d.text(x, y, content_w, 10, REPORT_TITLE, size=18, bold=True)
        y += 10
        reviewed = sum(1 for r in rows if r.get("review"))
        human = sum(1 for r in rows if needs_human(r["triage"]))
        findings = sum(1 for r in rows if r["triage"] == "refer")
        d.text(
            x, y, content_w, 7,
            f"Patient {patient}  ·  {len(rows)} image{'s' if len(rows) != 1 else ''}  ·  "
            f"report date {datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
            size=11, bold=True,
        )  # fmt: skip
        y += 7
        d.text(
            x, y, content_w, 6,
            f"Model: {info.name}, version {info.version}"
            + ("  ·  demo model" if info.demo else ""),
            size=9.5,
        )  # fmt: skip
        y += 5.5
        summary = (
            f"Summary: {human} of {len(rows)} images need a clinician ({findings} referred "
            f"with a confident finding); {reviewed} of {len(rows)} reviewed."
        )
        if overlay_note:
            summary += f" {overlay_note}"
        y += d.text(x, y, content_w, 10, summary, size=9.5) + 1.5
        if info.demo:
            d.banner(x, y, content_w, 8, "⚠ Demo — not for clinical use", DEMO_DETAIL)
            y += 9.5
    else:
        d.text(
            x, y, content_w, 6,
            f"{REPORT_TITLE}  ·  patient {patient}  ·  model {info.name}, version {info.version}"
            + ("  ·  DEMO — NOT FOR CLINICAL USE" if info.demo else ""),
            size=8.5, color="#444444",
        )  # fmt: skip
        y += 6
    d.rule(y)
    # footer
    fy = _PAGE_H - _FOOTER_H + 2
    d.rule(fy - 1.5)
    note = NOT_A_DEVICE + (f"  {DEMO_NOTICE}" if info.demo else "")
    d.text(x, fy, content_w - 28, _FOOTER_H - 5, note, size=7.5, color="#444444")
    d.text(
        _PAGE_W - _MARGIN_X - 26, fy, 26, 6, f"Page {page} of {pages}", size=8.5, bold=True,
        flags=Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop,
    )  # fmt: skip
    return y + 3


def _draw_block(
    d: _Painter,
    y: float,
    index: int,
    total: int,
    row: dict,
    spec: ModelSpec | None,
    overlay: _Overlay | None,
) -> None:
    """One image: heading, photograph and overlay side by side, AI result and review below."""
    from engine.images import load_display_image

    x = _MARGIN_X
    content_w = _PAGE_W - 2 * _MARGIN_X
    eye = EYE_WORDS.get(row.get("eye") or "", "eye not recorded")
    what = Path(row["path"]).name
    if row.get("kind") == "volume" and row.get("n_slices"):
        what += f" (OCT volume, {row['n_slices']} B-scans)"
    if row.get("acquired"):
        what += f"  ·  {row['acquired']}"
    d.text(
        x, y, content_w, 6, f"Image {index} of {total}  ·  {eye}  ·  {what}",
        size=11, bold=True,
    )  # fmt: skip
    y += 7
    gap = 6.0
    original = None
    caption = "Photograph"
    marks = row.get("marks") or []
    try:
        source, caption = picture_source(row)
        original = load_display_image(source, longest=DISPLAY_LONGEST)
        shown = _with_marks(source, marks, row.get("scheme")) if marks else original
        d.picture(x, y, _PICTURE, pil_to_qimage(shown))
    except Exception as exc:  # noqa: BLE001 - an unreadable file must not stop the report
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        d.placeholder(x, y, _PICTURE, "Image not available", f"{reason}: {row['path']}")
    if marks and original is not None:
        count = f"{len(marks)} lesion mark{'s' if len(marks) != 1 else ''}"
        d.text(x, y + _PICTURE + 0.5, _PICTURE, 5, f"{caption} · {count}", size=8, color="#444444")
        _draw_legend(d, x, y + _PICTURE + 4.5, _PICTURE + gap + _PICTURE, marks, row.get("scheme"))
    else:
        d.text(x, y + _PICTURE + 0.5, _PICTURE, 5, caption, size=8, color="#444444")
    ox = x + _PICTURE + gap
    if overlay is not None:
        if original is None:
            d.placeholder(ox, y, _PICTURE, "No overlay", "the image could not be read")
        elif overlay.lm is None:
            d.placeholder(ox, y, _PICTURE, "No overlay", overlay.reason)
        else:
            try:
                d.picture(ox, y, _PICTURE, pil_to_qimage(overlay.make(row, original)))
            except Exception as exc:  # noqa: BLE001
                d.placeholder(ox, y, _PICTURE, "No overlay", f"it could not be computed ({exc})")
            else:
                d.text(
                    ox, y + _PICTURE + 0.5, _PAGE_W - _MARGIN_X - ox, 8,
                    "Grad-CAM: warm supports the AI's answer, cool opposes it; outline: top 10%",
                    size=8, color="#444444",
                )  # fmt: skip
    side_x = ox + (_PICTURE + gap if overlay is not None else 0)
    side_w = min(_PICTURE, _PAGE_W - _MARGIN_X - side_x)
    text_y = y + _PICTURE + 9
    text_h = _BLOCK_H - (text_y - (y - 7)) - 4
    column_w = (content_w - gap) / 2
    if side_w >= 45:  # room beside the pictures: probabilities there
        _draw_probabilities(d, side_x, y, side_w, row, spec)
    d.text(x, text_y, column_w, 6, "AI result", size=10, bold=True)
    d.labelled(x, text_y + 5.5, column_w, text_h - 5.5, _ai_lines(row, spec))
    cx = x + column_w + gap
    d.text(cx, text_y, column_w, 6, "Reviewer decision", size=10, bold=True)
    d.labelled(cx, text_y + 5.5, column_w, text_h - 5.5, _review_lines(row, spec))


def _with_marks(source: object, marks: list, scheme: object) -> Image.Image:
    """The picture at full resolution with the grader's marks drawn on it (the marks are
    in full-resolution pixels), reduced for the page afterwards."""
    from engine.images import load_display_image
    from engine.marks import render_marks

    full = load_display_image(source)  # type: ignore[arg-type]
    drawn = render_marks(full, marks, scheme)  # type: ignore[arg-type]
    drawn.thumbnail((DISPLAY_LONGEST, DISPLAY_LONGEST))
    return drawn


def _draw_legend(d: _Painter, x: float, y: float, w: float, marks: list, scheme: object) -> None:
    """Colour swatch, lesion name and count for each lesion type marked (one row; words
    as well as colour)."""
    from engine.marks import legend

    if scheme is None:
        return
    entries = legend(scheme, marks)  # type: ignore[arg-type]
    cx = x
    font = d.font(7.5)
    metrics = QFontMetricsF(font, d.p.device())
    for label, colour, count in entries:
        words = f"{label} {count}"
        width = metrics.horizontalAdvance(words) / d.scale + 5.0
        if cx + width > x + w:
            d.text(cx, y, 8, 4, "…", size=7.5, color="#444444")
            break
        d.p.setPen(QPen(QColor("#333333"), 1))
        d.p.setBrush(QColor(colour))
        d.p.drawRect(d.r(cx, y + 0.6, 2.4, 2.4))
        d.text(cx + 3.0, y, width - 3.0, 4, words, size=7.5, color="#444444")
        cx += width


def _draw_probabilities(
    d: _Painter, x: float, y: float, w: float, row: dict, spec: ModelSpec | None
) -> None:
    """Per-class probabilities as labelled bars (numbers and words, not colour alone)."""
    probs = row.get("probabilities") or {}
    if not probs:
        return
    d.text(x, y, w, 6, "AI probabilities", size=9, bold=True, color="#333333")
    y += 6
    for label, value in sorted(probs.items(), key=lambda kv: -float(kv[1]))[:6]:
        name = spec.display(label) if spec is not None else label.replace("_", " ")
        d.text(x, y, w, 5, f"{name}  {_pct(value)}", size=8.5)
        y += 4.6
        d.p.setPen(Qt.PenStyle.NoPen)
        d.p.setBrush(QColor("#dddddd"))
        d.p.drawRect(d.r(x, y, w - 2, 2.4))
        d.p.setBrush(QColor("#3b6fb6"))
        d.p.drawRect(d.r(x, y, (w - 2) * min(1.0, max(0.0, float(value))), 2.4))
        y += 4.4


def _ensure_app() -> None:
    if QGuiApplication.instance() is not None:
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("PDF reports need a Qt application; create it on the main thread")
    QGuiApplication([])


def _render(
    out_pdf: Path,
    patient: str,
    rows: list[dict],
    info: _ModelInfo,
    overlay: _Overlay | None,
) -> Path:
    _ensure_app()
    out_pdf = Path(out_pdf)
    if not out_pdf.parent.is_dir():
        raise OSError(f"report folder {out_pdf.parent} does not exist")
    tmp = out_pdf.with_name(f".{out_pdf.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    writer = QPdfWriter(str(tmp))
    writer.setResolution(DPI)
    writer.setPageLayout(
        QPageLayout(
            QPageSize(QPageSize.PageSizeId.A4),
            QPageLayout.Orientation.Portrait,
            QMarginsF(0, 0, 0, 0),
            QPageLayout.Unit.Millimeter,
        )
    )
    writer.setTitle(f"{REPORT_TITLE} — patient {patient}")
    writer.setCreator("EyeTriage")
    pages = report_page_count(len(rows))
    overlay_note = ""
    if overlay is not None and overlay.lm is None:
        overlay_note = f"Overlays are left out: {overlay.reason}."
    painter = QPainter()
    if not painter.begin(writer):
        raise OSError(f"cannot write {out_pdf}")
    try:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        d = _Painter(painter, QGuiApplication.font().family())
        for page in range(1, pages + 1):
            if page > 1:
                writer.newPage()
            y = _draw_page_frame(d, page, pages, patient, info, rows, overlay_note)
            first = (page - 1) * IMAGES_PER_PAGE
            for i, row in enumerate(rows[first : first + IMAGES_PER_PAGE]):
                _draw_block(d, y + i * _BLOCK_H, first + i + 1, len(rows), row, info.spec, overlay)
            if not rows:
                d.text(_MARGIN_X, y + 4, _PAGE_W - 2 * _MARGIN_X, 10, "No screened images.")
    finally:
        painter.end()
    try:
        os.replace(tmp, out_pdf)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return out_pdf


# --------------------------------------------------------------------------- public API


def write_patient_report(
    ws_folder: Path,
    patient: str,
    out_pdf: Path,
    spec: ModelSpec | None = None,
    model_path: Path | None = None,
    with_overlays: bool = True,
) -> Path:
    """Write the PDF screening report of one patient; returns ``out_pdf``.

    Uses each image's latest prediction of the active model and its current review.
    ``model_path`` (default: the active model's file) is loaded only for the Grad-CAM
    overlays; when it cannot be, the report says so and goes on without them. Raises
    ``ValueError`` if the patient has no screened image, ``StoreError`` if ``ws_folder``
    is not a workspace.
    """
    with _open_ws(Path(ws_folder)) as ws:
        rows = _patient_rows(ws, patient)
        if not rows:
            raise ValueError(f"patient {patient!r} has no screened images in this workspace")
        _attach_grading(ws, rows)
        info = _model_info(ws, spec, model_path)
        overlay = _Overlay(*_load_model(ws, model_path)) if with_overlays else None
    return _render(Path(out_pdf), patient, rows, info, overlay)


def write_all_patient_reports(
    ws_folder: Path,
    out_dir: Path,
    spec: ModelSpec | None = None,
    model_path: Path | None = None,
    with_overlays: bool = True,
    state: TaskState | None = None,
) -> list[Path]:
    """One report per patient as ``out_dir/patient-<id>.pdf``; returns the files written.

    ``state`` receives progress per patient and is checked for cancellation between
    patients (the reports already written stay). The model is loaded once for all.
    """
    if state is not None and state.cancelled():
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _open_ws(Path(ws_folder)) as ws:
        all_rows = ws.latest_predictions()
        _attach_grading(ws, all_rows)
        info = _model_info(ws, spec, model_path)
        overlay = _Overlay(*_load_model(ws, model_path)) if with_overlays else None
    patients = sorted({r["patient"] for r in all_rows if r["patient"]})
    order = {"right": 0, "left": 1}
    written: list[Path] = []
    for i, patient in enumerate(patients):
        if state is not None:
            if state.cancelled():
                break
            state.progress(i, len(patients), f"report of patient {patient}")
        rows = sorted(
            (r for r in all_rows if r["patient"] == patient),
            key=lambda r: (order.get(r["eye"] or "", 2), Path(r["path"]).name),
        )
        written.append(
            _render(out_dir / f"patient-{_safe_name(patient)}.pdf", patient, rows, info, overlay)
        )
    if state is not None and not state.cancelled():
        state.progress(len(patients), len(patients), "reports written")
    return written
