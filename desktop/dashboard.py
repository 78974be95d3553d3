"""The dashboard tab: how the screening went and how far the AI can be trusted.

Five panels, each with words beside every number and a friendly empty state:

1. triage counts (bar chart) and how many screened images have been reviewed;
2. the active model's referral curve (from its file) with one sentence explaining it;
3. a reliability diagram of the AI's confidence against reviewed labels;
4. Cohen's kappa between reviewers and with the AI;
5. a confusion matrix of reviewed label against AI label (counts plus shading).

Everything shown comes from :func:`load_dashboard_data`, which asks the store for its
dashboard totals and reviewer agreement (no image is opened, no model is run), so
:meth:`DashboardPage.refresh` is cheap enough for the GUI thread.
"""

from __future__ import annotations

import math
from pathlib import Path

from PySide6.QtCharts import (
    QBarCategoryAxis,
    QBarSet,
    QChart,
    QHorizontalBarSeries,
    QLineSeries,
    QScatterSeries,
    QValueAxis,
)
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QKeySequence, QPalette, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.modelfile import ModelSpec
from engine.store import TRIAGE_STATES

from .dashboard_data import (
    CALIBRATION_BINS,
    MIN_CALIBRATION_N,
    TRIAGE_WORDS,
    UNGRADABLE,
    DashboardData,
    kappa_words,
    load_dashboard_data,
    pct,
    referral_sentence,
)
from .dashboard_parts import Panel, axis, caption, chart_view, is_dark, mix, new_chart, stack

__all__ = [
    "MIN_CALIBRATION_N",
    "TRIAGE_WORDS",
    "DashboardData",
    "DashboardPage",
    "kappa_words",
    "load_dashboard_data",
    "referral_sentence",
]


class DashboardPage(QWidget):
    """The dashboard tab of one workspace; call :meth:`set_workspace`, then :meth:`refresh`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._ws_folder: Path | None = None
        self._spec: ModelSpec | None = None
        self.data = DashboardData(message="Open a workspace to see its dashboard.")

        self.title_label = QLabel("Dashboard")
        font = self.title_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.title_label.setFont(font)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.demo_label = QLabel("⚠ Demo — not for clinical use")
        self.demo_label.setStyleSheet(
            "QLabel { background: #fde7c4; color: #6b3d00; border: 1px solid #c77c00;"
            " border-radius: 3px; padding: 2px 8px; font-weight: bold; }"
        )
        self.demo_label.hide()
        self.refresh_button = QPushButton("Refresh (F5)")
        self.refresh_button.setShortcut(QKeySequence(Qt.Key.Key_F5))
        self.refresh_button.setToolTip("Read the workspace again")
        self.refresh_button.clicked.connect(self.refresh)
        header = QHBoxLayout()
        header.addWidget(self.title_label)
        header.addSpacing(12)
        header.addWidget(self.model_label, 1)
        header.addWidget(self.demo_label)
        header.addWidget(self.refresh_button)

        self.triage_panel = self._build_triage()
        self.referral_panel = self._build_referral()
        self.calibration_panel = self._build_calibration()
        self.agreement_panel = self._build_agreement()
        self.confusion_panel = self._build_confusion()

        grid = QGridLayout()
        grid.setSpacing(8)
        grid.addWidget(self.triage_panel, 0, 0)
        grid.addWidget(self.referral_panel, 0, 1)
        grid.addWidget(self.calibration_panel, 0, 2)
        grid.addWidget(self.agreement_panel, 1, 0)
        grid.addWidget(self.confusion_panel, 1, 1, 1, 2)
        for column in range(3):
            grid.setColumnStretch(column, 1)
        grid.setRowStretch(0, 5)
        grid.setRowStretch(1, 2)
        body = QWidget()
        body.setLayout(grid)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(body)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addLayout(header)
        layout.addWidget(scroll, 1)
        self._style_charts()
        self._apply(self.data)

    # ------------------------------------------------------------------ public API

    def set_workspace(self, ws_folder: Path | None, spec: ModelSpec | None) -> None:
        """Show ``ws_folder`` (``None`` clears) with ``spec`` as the active model, and refresh."""
        self._ws_folder = None if ws_folder is None else Path(ws_folder)
        self._spec = spec
        self.refresh()

    def refresh(self) -> None:
        """Re-read the store and redraw every panel (light: a few SQL queries)."""
        self.data = load_dashboard_data(self._ws_folder, self._spec)
        self._apply(self.data)

    # ------------------------------------------------------------------ building

    def _build_triage(self) -> Panel:
        self.triage_set = QBarSet("Images")
        self.triage_series = QHorizontalBarSeries()
        self.triage_series.append(self.triage_set)
        self.triage_series.setBarWidth(0.6)
        chart = new_chart()
        chart.addSeries(self.triage_series)
        chart.legend().hide()
        self.triage_axis = QBarCategoryAxis()
        self.triage_count_axis = QValueAxis()
        self.triage_count_axis.setTitleText("Images")
        self.triage_count_axis.setLabelFormat("%d")
        chart.addAxis(self.triage_axis, Qt.AlignmentFlag.AlignLeft)
        chart.addAxis(self.triage_count_axis, Qt.AlignmentFlag.AlignBottom)
        self.triage_series.attachAxis(self.triage_axis)
        self.triage_series.attachAxis(self.triage_count_axis)
        self.triage_chart = chart
        self.reviewed_label = caption()
        return Panel("Triage of screened images", stack(chart_view(chart), self.reviewed_label))

    def _build_referral(self) -> Panel:
        chart = new_chart()
        self.referral_accuracy = QLineSeries()
        self.referral_accuracy.setName("Accuracy")
        self.referral_sensitivity = QLineSeries()
        self.referral_sensitivity.setName("Sensitivity")
        self.referral_marker = QScatterSeries()
        self.referral_marker.setName("Read out below")
        self.referral_marker.setMarkerSize(9)
        for series in (self.referral_accuracy, self.referral_sensitivity, self.referral_marker):
            chart.addSeries(series)
        x = axis("Most uncertain images referred to a clinician", 0, 100)
        self.referral_y = y = axis("Of the kept images", 0, 100)
        chart.addAxis(x, Qt.AlignmentFlag.AlignBottom)
        chart.addAxis(y, Qt.AlignmentFlag.AlignLeft)
        for series in (self.referral_accuracy, self.referral_sensitivity, self.referral_marker):
            series.attachAxis(x)
            series.attachAxis(y)
        self.referral_chart = chart
        self.referral_text = caption()
        return Panel("Referral curve of the model", stack(chart_view(chart), self.referral_text))

    def _build_calibration(self) -> Panel:
        chart = new_chart()
        self.calibration_ideal = QLineSeries()
        self.calibration_ideal.setName("Ideal")
        self.calibration_ideal.append([QPointF(0, 0), QPointF(100, 100)])
        self.calibration_series = QLineSeries()
        self.calibration_series.setName("AI, reviewed images")
        self.calibration_series.setPointsVisible(True)
        chart.addSeries(self.calibration_ideal)
        chart.addSeries(self.calibration_series)
        x = axis("AI confidence", 0, 100)
        y = axis("Right (per reviewers)", 0, 100)
        chart.addAxis(x, Qt.AlignmentFlag.AlignBottom)
        chart.addAxis(y, Qt.AlignmentFlag.AlignLeft)
        for series in (self.calibration_ideal, self.calibration_series):
            series.attachAxis(x)
            series.attachAxis(y)
        self.calibration_chart = chart
        self.calibration_text = caption()
        return Panel(
            "Calibration: does the AI's confidence hold?",
            stack(chart_view(chart), self.calibration_text),
        )

    def _build_agreement(self) -> Panel:
        self.agreement_table = QTableWidget(0, 4)
        self.agreement_table.setHorizontalHeaderLabels(
            ["Compared", "Images (n)", "Cohen's kappa", "In words"]
        )
        self._setup_table(self.agreement_table)
        self.agreement_table.verticalHeader().hide()
        header = self.agreement_table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.agreement_text = caption()
        self.agreement_text.setText(
            "Kappa is 1 for full agreement and 0 for agreement no better than chance; "
            "images both sides graded are compared."
        )
        return Panel(
            "Agreement between reviewers and with the AI",
            stack(self.agreement_table, self.agreement_text, stretch_last=False),
        )

    def _build_confusion(self) -> Panel:
        self.confusion_table = QTableWidget(0, 0)
        self._setup_table(self.confusion_table)
        self.confusion_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.confusion_text = caption()
        return Panel(
            "Confusion matrix: reviewed label against AI label",
            stack(self.confusion_table, self.confusion_text, stretch_last=False),
        )

    @staticmethod
    def _setup_table(table: QTableWidget) -> None:
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        table.setWordWrap(False)
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 14)

    @staticmethod
    def _fit_height(table: QTableWidget, max_rows: int = 8) -> None:
        """Make the table exactly as tall as its rows (up to ``max_rows``, then scroll)."""
        rows = min(table.rowCount(), max_rows)
        height = table.horizontalHeader().height() + 2 * table.frameWidth()
        height += sum(table.rowHeight(i) for i in range(rows))
        table.setFixedHeight(height + 2)

    # ------------------------------------------------------------------ filling

    def _display(self, label: str) -> str:
        if label == UNGRADABLE:
            return "ungradable"
        return self._spec.display(label) if self._spec is not None else label.replace("_", " ")

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt override
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self._style_charts()
            self._apply(self.data)

    def _style_charts(self) -> None:
        """Chart theme from the palette (light or dark), then the dashed reference lines."""
        dark = is_dark(self)
        theme = QChart.ChartTheme.ChartThemeDark if dark else QChart.ChartTheme.ChartThemeLight
        for chart in (self.triage_chart, self.referral_chart, self.calibration_chart):
            chart.setTheme(theme)
            chart.setBackgroundBrush(self.palette().brush(QPalette.ColorRole.Base))
            chart.setBackgroundRoundness(0)
        pen = QPen(self.referral_sensitivity.pen())
        pen.setStyle(Qt.PenStyle.DashLine)
        pen.setWidthF(2.5)
        self.referral_sensitivity.setPen(pen)
        pen = QPen(QColor("#a8a8a8" if dark else "#7a7a7a"))
        pen.setStyle(Qt.PenStyle.DashLine)
        pen.setWidthF(1.5)
        self.calibration_ideal.setPen(pen)

    def _apply(self, data: DashboardData) -> None:
        self._apply_header(data)
        self._apply_triage(data)
        self._apply_referral()
        self._apply_calibration(data)
        self._apply_agreement(data)
        self._apply_confusion(data)

    def _apply_header(self, data: DashboardData) -> None:
        spec = self._spec
        if data.ok and data.model_name:
            name = spec.name if spec is not None and spec.name else data.model_name
            self.model_label.setText(
                f"Workspace {self._ws_folder.name if self._ws_folder else ''} · "
                f"active model: {name} (version {str(data.model_hash)[:12]})"
            )
        elif data.ok:
            self.model_label.setText(
                f"Workspace {self._ws_folder.name if self._ws_folder else ''} · no model yet"
            )
        else:
            self.model_label.setText(data.message)
        self.demo_label.setVisible(bool(spec is not None and spec.demo))

    def _apply_triage(self, data: DashboardData) -> None:
        if not data.ok or data.n_screened == 0:
            self.triage_panel.show_empty(
                data.message if not data.ok else "No screened images yet: run a screening first."
            )
            self.reviewed_label.setText("")
            return
        self.triage_panel.show_content()
        states = list(TRIAGE_STATES) + sorted(set(data.triage_counts) - set(TRIAGE_STATES))
        ordered = list(reversed(states))  # horizontal bars are drawn bottom-up
        self.triage_set.remove(0, self.triage_set.count())
        self.triage_axis.clear()
        self.triage_axis.append(
            [f"{TRIAGE_WORDS.get(s, s)}: {data.triage_counts.get(s, 0)}" for s in ordered]
        )
        self.triage_set.append([float(data.triage_counts.get(s, 0)) for s in ordered])
        top = max(data.triage_counts.values()) if data.triage_counts else 0
        self.triage_count_axis.setRange(0, max(4, math.ceil(top * 1.15)))
        self.triage_count_axis.applyNiceNumbers()
        text = (
            f"Reviewed {data.n_reviewed} of {data.n_screened} screened images "
            f"({pct(data.n_reviewed / data.n_screened)})."
        )
        needs = data.triage_counts.get("needs-review", 0)
        if needs:
            text += f" {needs} need a clinician's review."
        unscreened = data.n_images - data.n_screened
        if unscreened > 0:
            text += f" {unscreened} images are not screened yet."
        self.reviewed_label.setText(text)

    def triage_counts_shown(self) -> dict[str, int]:
        """The bar chart's counts by their words (what the user reads off the chart)."""
        return {
            self.triage_axis.at(i).rsplit(": ", 1)[0]: round(self.triage_set.at(i))
            for i in range(self.triage_set.count())
        }

    def _apply_referral(self) -> None:
        spec = self._spec
        self.referral_accuracy.clear()
        self.referral_sensitivity.clear()
        self.referral_marker.clear()
        if spec is None:
            self.referral_panel.show_empty("No model is active, so there is no referral curve.")
            self.referral_text.setText("")
            return
        curve = [p for p in spec.referral_curve or [] if p.get("accuracy") is not None]
        if not curve:
            self.referral_panel.show_empty(referral_sentence(None))
            self.referral_text.setText("")
            return
        self.referral_panel.show_content()
        for p in curve:
            x = 100 * float(p["referred"])
            self.referral_accuracy.append(x, 100 * float(p["accuracy"]))
            if p.get("sensitivity") is not None:
                self.referral_sensitivity.append(x, 100 * float(p["sensitivity"]))
        self.referral_sensitivity.setVisible(self.referral_sensitivity.count() > 0)
        values = [100 * float(p["accuracy"]) for p in curve] + [
            100 * float(p["sensitivity"]) for p in curve if p.get("sensitivity") is not None
        ]
        low = max(0.0, math.floor((min(values) - 5) / 10) * 10)
        step = 10.0 if low <= 50 else 5.0 if low <= 80 else 2.0
        self.referral_y.setTickType(QValueAxis.TickType.TicksDynamic)
        self.referral_y.setTickAnchor(low)
        self.referral_y.setTickInterval(step)
        self.referral_y.setRange(low, 100 + step / 3)  # headroom: lines at 100% stay visible
        marked = min(curve, key=lambda p: (abs(float(p["referred"]) - 0.2), -float(p["referred"])))
        self.referral_marker.append(
            100 * float(marked["referred"]), 100 * float(marked["accuracy"])
        )
        self.referral_text.setText(referral_sentence(spec.referral_curve))

    def _apply_calibration(self, data: DashboardData) -> None:
        from engine.metrics import expected_calibration_error, reliability_bins

        self.calibration_series.clear()
        n = len(data.confidence)
        if not data.ok:
            self.calibration_panel.show_empty(data.message)
            self.calibration_text.setText("")
            return
        if n < MIN_CALIBRATION_N:
            self.calibration_panel.show_empty(
                f"Not enough reviewed images yet (n = {n}; at least {MIN_CALIBRATION_N} "
                "graded reviews are needed to compare the AI's confidence with the reviewers)."
            )
            self.calibration_text.setText("")
            return
        self.calibration_panel.show_content()
        bins = reliability_bins(data.confidence, data.correct, n_bins=CALIBRATION_BINS)
        for b in bins:
            if b["count"]:
                self.calibration_series.append(100 * b["confidence"], 100 * b["accuracy"])
        ece = expected_calibration_error(data.confidence, data.correct, n_bins=CALIBRATION_BINS)
        mean_conf = sum(data.confidence) / n
        accuracy = sum(data.correct) / n
        if abs(mean_conf - accuracy) < 0.02:
            tendency = "its confidence matches how often it is right"
        elif mean_conf > accuracy:
            tendency = "it is over-confident"
        else:
            tendency = "it is under-confident"
        self.calibration_text.setText(
            f"On {n} reviewed images the AI's mean confidence is {pct(mean_conf)} and it was "
            f"right on {pct(accuracy)}: {tendency} (expected calibration error "
            f"{100 * ece:.0f} percentage points). Points below the dashed line mean "
            "over-confidence."
        )

    def _apply_agreement(self, data: DashboardData) -> None:
        table = self.agreement_table
        table.setRowCount(0)
        if not data.ok:
            self.agreement_panel.show_empty(data.message)
            return
        rows: list[tuple[str, int, float | None]] = []
        for p in data.agreement.get("pairs", []):
            rows.append((f"{p['a']} vs {p['b']}", int(p["n"]), p["kappa"]))
        for p in data.agreement.get("with_ai", []):
            rows.append((f"{p['reviewer']} vs AI", int(p["n"]), p["kappa"]))
        if not rows:
            self.agreement_panel.show_empty(
                "No reviews yet: agreement appears once images are reviewed."
            )
            return
        self.agreement_panel.show_content()
        table.setRowCount(len(rows))
        for i, (who, n, kappa) in enumerate(rows):
            kappa_text = "—" if kappa is None else f"{kappa:.2f}"
            items = [who, str(n), kappa_text, kappa_words(kappa)]
            for j, text in enumerate(items):
                item = QTableWidgetItem(text)
                if j in (1, 2):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                table.setItem(i, j, item)
        self._fit_height(table)
        if len(data.agreement.get("reviewers", [])) < 2:
            self.agreement_text.setText(
                "Only one reviewer so far: reviewer-to-reviewer agreement needs a second reader. "
                "Kappa is 1 for full agreement and 0 for chance."
            )
        else:
            self.agreement_text.setText(
                "Kappa is 1 for full agreement and 0 for agreement no better than chance; "
                "each pair is compared on the images both graded."
            )

    def _apply_confusion(self, data: DashboardData) -> None:
        table = self.confusion_table
        table.clear()
        total = sum(sum(row) for row in data.confusion)
        if not data.ok:
            self.confusion_panel.show_empty(data.message)
            return
        if total == 0:
            self.confusion_panel.show_empty(
                "No reviewed images yet: the matrix fills in as images are reviewed."
            )
            self.confusion_text.setText("")
            return
        self.confusion_panel.show_content()
        table.setRowCount(len(data.row_labels))
        table.setColumnCount(len(data.col_labels))
        table.setHorizontalHeaderLabels([f"AI: {self._display(c)}" for c in data.col_labels])
        table.setVerticalHeaderLabels([f"Reviewed: {self._display(r)}" for r in data.row_labels])
        dark = is_dark(self)
        base = self.palette().color(QPalette.ColorRole.Base)
        accent = QColor("#3b7dd8")
        for i, row in enumerate(data.confusion):
            row_total = sum(row)
            for j, count in enumerate(row):
                share = count / row_total if row_total else 0.0
                text = f"{count}  ({pct(share)})" if row_total else "0"
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                colour = mix(base, accent, 0.75 * share)
                item.setBackground(QBrush(colour))
                light_text = colour.lightness() < 140 or (dark and share < 0.5)
                item.setForeground(QBrush(QColor("#ffffff" if light_text else "#111111")))
                agree = data.row_labels[i] == data.col_labels[j]
                if agree:
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                item.setToolTip(
                    f"{count} of {row_total} images reviewed as {self._display(data.row_labels[i])} "
                    f"were labelled {self._display(data.col_labels[j])} by the AI"
                    + (" (agreement)" if agree else "")
                )
                table.setItem(i, j, item)
        self._fit_height(table)
        agree_n = sum(
            data.confusion[i][j]
            for i, r in enumerate(data.row_labels)
            for j, c in enumerate(data.col_labels)
            if r == c
        )
        text = (
            f"{total} reviewed images: the AI agreed with the reviewer on {agree_n} "
            f"({pct(agree_n / total)}; bold cells). Numbers are images, with the share of each "
            "row in brackets; darker shading means a larger share."
        )
        if data.left_out:
            text += (
                f" {data.left_out} reviewed images are left out (multi-label review or AI error)."
            )
        self.confusion_text.setText(text)

    def confusion_counts(self) -> list[list[int]]:
        """The counts shown in the confusion table, row by row."""
        table = self.confusion_table
        return [
            [int(table.item(i, j).text().split()[0]) for j in range(table.columnCount())]
            for i in range(table.rowCount())
        ]
