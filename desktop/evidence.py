"""The evidence panel: what the AI says about one image, in numbers and in words.

Shows the AI answer with its calibrated confidence, one probability bar per class (name
and number beside each), the conformal prediction set with its coverage sentence, the
uncertainty in plain words, quality and out-of-distribution warnings, and the triage
state with its reason. Every state has an icon and a word, never colour alone. In blind
mode the answer, bars, set, uncertainty and triage reason are hidden until revealed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from engine.triage import median_grade_spread

from .style import TRIAGE_STYLES, current_is_dark, triage_style

if TYPE_CHECKING:
    from engine.modelfile import ModelSpec

WARN = "⚠"
OK = "✓"
DEMO_BANNER = "⚠ Demo model"


def percent(p: float) -> str:
    """``0.583`` -> ``"58%"`` (``"<1%"`` and ``">99%"`` at the ends)."""
    if p < 0.005:
        return "<1%"
    if p > 0.995:
        return ">99%"
    return f"{p:.0%}"


def label_names(spec: ModelSpec | None, labels: list[str]) -> list[str]:
    """Display names of ``labels`` (the spec's names when it has them)."""
    return [spec.display(x) if spec is not None else x.replace("_", " ") for x in labels]


class ProbabilityBars(QWidget):
    """One row per class: name, a bar and the probability as a number."""

    ROW_HEIGHT = 22

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("probabilityBars")
        self._rows: list[tuple[str, float, bool]] = []
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_rows(self, rows: list[tuple[str, float, bool]]) -> None:
        """``(display name, probability, is the AI answer)`` per class, in label order."""
        self._rows = [(name, float(p), bool(top)) for name, p, top in rows]
        self.setFixedHeight(max(1, len(self._rows)) * self.ROW_HEIGHT)
        self.setAccessibleDescription("; ".join(f"{n} {p:.2f}" for n, p, _ in self._rows))
        self.update()

    def rows(self) -> list[tuple[str, float, bool]]:
        return list(self._rows)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(260, max(1, len(self._rows)) * self.ROW_HEIGHT)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        bold = QFont(painter.font())
        bold.setBold(True)
        normal = QFont(painter.font())
        metrics = QFontMetrics(bold)  # the widest case: the AI answer's row is bold
        name_w = min(
            int(self.width() * 0.62),  # long names ("diabetic retinopathy") stay whole
            max((metrics.horizontalAdvance(n) for n, _, _ in self._rows), default=0) + 8,
        )
        num_w = metrics.horizontalAdvance("0.00") + 10
        bar_x = name_w
        bar_w = max(10, self.width() - name_w - num_w)
        text_colour = pal.color(QPalette.ColorRole.WindowText)
        track = pal.color(QPalette.ColorRole.Mid)
        track.setAlpha(70)
        fill = pal.color(QPalette.ColorRole.Highlight)
        soft = QColor(fill)
        soft.setAlpha(120)
        for i, (name, p, top) in enumerate(self._rows):
            y = i * self.ROW_HEIGHT
            painter.setFont(bold if top else normal)
            painter.setPen(text_colour)
            shown = QFontMetrics(bold if top else normal).elidedText(
                name, Qt.TextElideMode.ElideRight, name_w - 6
            )
            painter.drawText(
                QRectF(0, y, name_w - 4, self.ROW_HEIGHT),
                Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                shown,
            )
            bar = QRectF(bar_x, y + 5, bar_w, self.ROW_HEIGHT - 10)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(track)
            painter.drawRoundedRect(bar, 3, 3)
            painter.setBrush(fill if top else soft)
            painter.drawRoundedRect(
                QRectF(bar.x(), bar.y(), bar.width() * max(0.0, min(1.0, p)), bar.height()), 3, 3
            )
            painter.setPen(text_colour)
            painter.drawText(
                QRectF(bar_x + bar_w + 4, y, num_w, self.ROW_HEIGHT),
                Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                f"{p:.2f}",
            )
        painter.end()


def _label(name: str, wrap: bool = True, selectable: bool = False) -> QLabel:
    label = QLabel()
    label.setObjectName(name)
    label.setWordWrap(wrap)
    label.setTextFormat(Qt.TextFormat.PlainText)
    if selectable:
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class EvidencePanel(QWidget):
    """The AI's evidence for the image on screen; :meth:`show_prediction` fills it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("evidencePanel")
        self._spec: ModelSpec | None = None
        self.demo_banner = _label("demoBanner")
        self.demo_banner.setText(DEMO_BANNER)
        self.demo_banner.setStyleSheet(
            "QLabel { background: #fff3cd; color: #5c4400; border: 1px solid #e0b000;"
            " border-radius: 3px; padding: 0px 4px; font-weight: bold; }"
        )
        self.demo_banner.hide()
        self.file_label = _label("fileLabel", wrap=False, selectable=True)
        self.file_label.setStyleSheet("color: palette(placeholder-text);")
        self.file_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        heading = _label("aiHeading")
        heading.setText("AI answer · calibrated confidence")
        self.heading = heading
        heading.setStyleSheet("color: palette(placeholder-text); font-size: 9pt;")
        self.answer_label = _label("aiAnswer")
        big = QFont(self.answer_label.font())
        big.setPointSizeF(big.pointSizeF() * 1.3)
        big.setBold(True)
        self.answer_label.setFont(big)
        self.hidden_label = _label("blindNotice")
        self.set_label_keys("1–9")
        self.hidden_label.setStyleSheet(
            "QLabel { border: 1px dashed palette(mid); border-radius: 3px; padding: 6px; }"
        )
        self.bars = ProbabilityBars()
        self.set_label = _label("conformalSet")
        self.uncertainty_label = _label("uncertaintyWords")
        self.quality_label = _label("qualityWarning")
        self.ood_label = _label("oodWarning")
        self.triage_label = _label("triageState")
        self.triage_label.setTextFormat(Qt.TextFormat.RichText)
        self.reason_label = _label("triageReason", selectable=True)
        self.reason_label.setStyleSheet("color: palette(placeholder-text);")
        self.error_label = _label("predictionError", selectable=True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(4)
        layout.addWidget(self.file_label)
        top = QHBoxLayout()  # the demo notice shares the heading's line: the panel fits 720 px
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(heading, 1)
        top.addWidget(self.demo_banner)
        layout.addLayout(top)
        layout.addWidget(self.answer_label)
        layout.addWidget(self.hidden_label)
        layout.addWidget(self.bars)
        layout.addWidget(self.set_label)
        layout.addWidget(self.uncertainty_label)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        layout.addWidget(line)
        layout.addWidget(self.triage_label)
        layout.addWidget(self.reason_label)
        layout.addWidget(self.quality_label)
        layout.addWidget(self.ood_label)
        layout.addWidget(self.error_label)
        self._answer_widgets = (
            self.answer_label,
            self.bars,
            self.set_label,
            self.uncertainty_label,
            self.reason_label,
        )
        self.show_prediction(None)

    # ------------------------------------------------------------------ public

    def set_spec(self, spec: ModelSpec | None) -> None:
        """The active model's description (labels, names, conformal coverage, demo flag)."""
        self._spec = spec
        self.demo_banner.setVisible(bool(spec is not None and spec.demo))
        if spec is not None and spec.demo:
            from engine.modelcard import DEMO_NOTICE

            self.demo_banner.setToolTip(DEMO_NOTICE)

    def set_label_keys(self, keys: str) -> None:
        """The label keys quoted in the blind-mode notice (e.g. ``"1–4"``)."""
        self.hidden_label.setText(
            f"Hidden in blind mode: choose your label first (keys {keys} or U); the AI answer "
            "and overlay appear after you commit."
        )

    def set_file(self, text: str) -> None:
        """The file name (and patient/eye) line above the answer."""
        self.file_label.setText(text)
        self.file_label.setToolTip(text)

    def show_prediction(self, pred: dict[str, Any] | None, hidden: bool = False) -> None:
        """Fill the panel from a prediction dict of the store (``None``: not screened).

        With ``hidden`` (blind mode) the answer, bars, set, uncertainty and triage reason
        stay hidden; quality and out-of-distribution warnings still show, since they
        help judge gradability without anchoring on the answer.
        """
        for widget in (
            self.set_label,
            self.uncertainty_label,
            self.quality_label,
            self.ood_label,
            self.error_label,
            self.reason_label,
        ):
            widget.clear()
        self.bars.set_rows([])
        self.triage_label.clear()
        if pred is None:
            self.answer_label.setText("Not screened yet")
            self.hidden_label.hide()
            for widget in self._answer_widgets[1:]:
                widget.hide()
            self.answer_label.show()
            for widget in (self.triage_label, self.quality_label, self.ood_label, self.error_label):
                widget.hide()
            return
        self._fill(pred)
        ungradable = pred.get("triage") == "ungradable" and not pred.get("error")
        if ungradable:  # no grade for an image too poor to grade: the guess is not shown
            self.answer_label.setText("No grade: the image is ungradable")
        for widget in self._answer_widgets:
            shown = not hidden and bool(self._has_content(widget))
            if ungradable and widget in (self.bars, self.set_label, self.uncertainty_label):
                shown = False
            widget.setVisible(shown)
        self.hidden_label.setVisible(hidden)
        self.triage_label.setVisible(not hidden and bool(self.triage_label.text()))
        for widget in (self.quality_label, self.ood_label, self.error_label):
            widget.setVisible(bool(widget.text()))

    def is_hidden(self) -> bool:
        """True while blind mode hides the answer."""
        return not self.hidden_label.isHidden()

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _has_content(widget: QWidget) -> bool:
        if isinstance(widget, ProbabilityBars):
            return bool(widget.rows())
        return bool(widget.text()) if isinstance(widget, QLabel) else True

    def _fill(self, pred: dict[str, Any]) -> None:
        spec = self._spec
        probs: dict[str, float] = dict(pred.get("probabilities") or {})
        labels = (
            list(spec.labels)
            if spec is not None and set(spec.labels) >= set(probs)
            else list(probs)
        )
        multilabel = spec is not None and spec.task == "multilabel"
        label = pred.get("label")
        error = pred.get("error")
        calibrated = spec is not None and abs(float(spec.temperature) - 1.0) > 1e-6
        self.heading.setText(
            "AI answer · calibrated confidence" if calibrated else "AI answer · confidence"
        )
        confidence = pred.get("confidence")
        if error:
            self.answer_label.setText("No answer (the image could not be screened)")
            self.error_label.setText(f"✕ {error}")
        elif label is not None:
            if multilabel:
                present = [x for x in str(label).split(";") if x in probs]
                answer = ", ".join(label_names(spec, present)) or "no finding"
            else:
                answer = label_names(spec, [str(label)])[0]
            if confidence is not None:
                answer += f" — {percent(float(confidence))}"
            self.answer_label.setText(answer)
        else:
            self.answer_label.setText("No answer")
        top = {str(label)} if not multilabel else set(str(label or "").split(";"))
        names = label_names(spec, labels)
        self.bars.set_rows(
            [(n, float(probs.get(x, 0.0)), x in top) for n, x in zip(names, labels, strict=True)]
        )
        cset = pred.get("conformal_set")
        if cset:
            coverage = None
            if spec is not None and spec.conformal:
                coverage = 1.0 - float(spec.conformal.get("alpha", 0.1))
            shown = ", ".join(label_names(spec, list(cset)))
            if coverage is not None:
                sentence = f"right for {coverage:.0%} of images on average"
            else:
                sentence = "right at the model's stated average rate"
            self.set_label.setText(f"Plausible answers: {{{shown}}} · {sentence}")
            self.set_label.setToolTip(
                "A conformal prediction set. Its coverage is an average over images like the "
                "calibration images, not a probability for this one image."
            )
        ood = bool(pred.get("ood")) or pred.get("triage") == "out-of-distribution"
        if ood and not error:
            # a confidence measured on unfamiliar images means little: never "confident" here
            self.uncertainty_label.setText(
                "The confidence is not reliable: the image is unlike those the model learned from."
            )
        elif probs and confidence is not None and not error:
            self.uncertainty_label.setText(
                self._uncertainty_words(pred, probs, labels, multilabel, cset)
            )
        if spec is not None and spec.task == "ordinal" and label is not None and not error:
            note = self._median_words(spec, labels, probs, str(label))
            if note:
                text = self.uncertainty_label.text()
                self.uncertainty_label.setText(f"{text}\n{note}" if text else note)
        quality_ok = pred.get("quality_ok")
        quality = pred.get("quality") or {}
        if quality_ok is not None and not bool(quality_ok):
            reasons = "; ".join(quality.get("reasons") or []) or "below the quality gate"
            self.quality_label.setText(f"{WARN} Poor image quality: {reasons}")
        elif quality_ok:
            self.quality_label.setText(f"{OK} Image quality acceptable")
        if pred.get("ood"):
            score = pred.get("ood_score")
            extra = f" (score {float(score):.2f})" if score is not None else ""
            self.ood_label.setText(
                f"{WARN} Unlike the images the model was trained on: out of distribution{extra}"
            )
        triage = pred.get("triage")
        if triage:
            # the worklist's glyph, word and colour for the state (one table: desktop.style)
            look = triage_style(triage) if triage in TRIAGE_STYLES else None
            icon, words = (look.glyph, look.word) if look else ("•", str(triage))
            colour = look.color(current_is_dark()).name() if look else "#666666"
            if triage == "refer" and label:
                found = [x for x in str(label).split(";") if x]
                words = f"{words}: {', '.join(label_names(spec, found))}"
            self.triage_label.setText(
                f'<span style="color:{colour}; font-weight:bold;">{icon} {words}</span>'
            )
            self.triage_label.setAccessibleName(f"Triage: {words}")
        reason = str(pred.get("triage_reason") or "")
        if reason and triage == "out-of-distribution" and self.ood_label.text():
            # the OOD line already says it: the reason is printed once, in that line
            if reason not in self.ood_label.text():
                self.ood_label.setText(f"{WARN} {reason[:1].upper()}{reason[1:]}")
            reason = ""
        elif reason and triage == "out-of-distribution":
            self.ood_label.setText(f"{WARN} {reason[:1].upper()}{reason[1:]}")
            reason = ""
        elif reason and triage == "ungradable" and self.quality_label.text():
            # the quality line already names the gate's reasons (and stays in blind mode),
            # the out-of-distribution line the model's unfamiliarity: say neither twice
            said = set(quality.get("reasons") or [])
            rest = [
                part
                for part in reason.split("; ")
                if part not in said and not (part.startswith("also ") and self.ood_label.text())
            ]
            reason = "; ".join(rest)
        if reason:
            self.reason_label.setText(reason)

    @staticmethod
    def _median_words(
        spec: ModelSpec, labels: list[str], probs: dict[str, float], label: str
    ) -> str:
        """For a graded (ordinal) answer that is not the most probable single grade: why."""
        spread = median_grade_spread(labels, probs, label)
        if spread is None:
            return ""
        milder, worse = spread
        name = label_names(spec, [label])[0]
        return (
            f"{name} is the middle grade of the answer: {percent(milder)} for {name} or "
            f"milder, {percent(worse)} for {name} or more severe."
        )

    @staticmethod
    def _uncertainty_words(
        pred: dict[str, Any],
        probs: dict[str, float],
        labels: list[str],
        multilabel: bool,
        cset: Any,
    ) -> str:
        from engine.uncertainty_stats import describe_uncertainty, normalised_entropy

        vector = [float(probs.get(x, 0.0)) for x in labels]
        try:
            norm = float(normalised_entropy(vector, multilabel=multilabel))
            words = describe_uncertainty(
                max(0.0, min(1.0, float(pred["confidence"]))),
                len(cset) if cset and not multilabel else None,
                max(0.0, min(1.0, norm)),
                max(0.0, float(pred.get("mutual_info") or 0.0)),
            )
        except ValueError:
            return ""
        return f"The model is {words}."

    def texts(self) -> dict[str, str]:
        """Visible texts by part (for tests and accessibility checks)."""
        parts = {
            "demo": self.demo_banner,
            "answer": self.answer_label,
            "hidden": self.hidden_label,
            "set": self.set_label,
            "uncertainty": self.uncertainty_label,
            "quality": self.quality_label,
            "ood": self.ood_label,
            "triage": self.triage_label,
            "reason": self.reason_label,
            "error": self.error_label,
        }
        out = {}
        for key, widget in parts.items():
            if widget.isHidden():
                continue
            text = widget.text()
            if widget.textFormat() == Qt.TextFormat.RichText:
                from PySide6.QtGui import QTextDocumentFragment

                text = QTextDocumentFragment.fromHtml(text).toPlainText()
            out[key] = text
        return out
