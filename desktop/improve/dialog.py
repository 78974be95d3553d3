"""The Improve dialog: choose how to fine-tune, run it in a child process, show progress.

If the child dies without a result the dialog says why, and nothing in the workspace
changes; a finished run hands its result to the compare dialog.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtGui import QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .run import ImproveRun

MIN_NEW_REVIEWS = 20  # new reviews needed before Improve is offered (engine default too)

STRATEGIES: list[tuple[str, str, str]] = [
    (
        "head",
        "Head only — fast, hard to overfit",
        "Keeps the image features and retrains only the last layer. Best for a few dozen "
        "corrections; takes seconds to a few minutes on a CPU.",
    ),
    (
        "full",
        "Full fine-tuning",
        "Adjusts every layer. Can learn more from many reviews, but is slower and can "
        "overfit when there are only a few.",
    ),
    (
        "lora",
        "LoRA adapters — vision transformers",
        "Trains small adapters beside a large backbone (vision transformers). The new "
        "version stores only the adapter (a few MB) and the base model's hash.",
    ),
]


def format_eta(seconds: float | None) -> str:
    """``0:45`` (or ``--:--`` when unknown)."""
    from engine.tasks import format_eta as _fmt

    return _fmt(seconds)


def progress_text(event: dict, epochs: int) -> str:
    """``epoch 2/5 · loss 0.41 · ETA 0:45`` from a progress event."""
    parts = []
    if event.get("epoch") is not None:
        parts.append(f"epoch {event['epoch']}/{event.get('epochs') or epochs}")
    if event.get("loss") is not None:
        parts.append(f"loss {float(event['loss']):.2f}")
    if event.get("eta_s") is not None:
        parts.append(f"ETA {format_eta(float(event['eta_s']))}")
    if not parts and event.get("message"):
        parts.append(str(event["message"]))
    return " · ".join(parts) or "working…"


class ImproveDialog(QDialog):
    """Choose how to fine-tune, run it in a child process, report progress or why it failed.

    ``result_ready(result)`` is emitted when the child delivered a new model version.
    """

    result_ready = Signal(dict)

    def __init__(self, ws_folder: Path, status: dict | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Improve the model")
        self.ws_folder = Path(ws_folder)
        self.status = status or {}
        self.run: ImproveRun | None = None
        self.outcome = ""  # "", "running", "done", "failed", "cancelled"
        self.message = ""

        title = QLabel("Learn from the reviewers' decisions")
        font = title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.25)
        title.setFont(font)
        self.summary = QLabel(self._summary_text())
        self.summary.setWordWrap(True)

        form = QFormLayout()
        self.strategy = QComboBox()
        for key, word, _ in STRATEGIES:
            self.strategy.addItem(word, key)
        self.strategy.currentIndexChanged.connect(self._explain_strategy)
        form.addRow("&Strategy:", self.strategy)
        self.strategy_note = QLabel()
        self.strategy_note.setObjectName("notice")
        self.strategy_note.setWordWrap(True)
        form.addRow("", self.strategy_note)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        self.epochs.setValue(5)
        self.epochs.setSuffix(" epochs")
        self.epochs.setToolTip("Passes over the training images (early stopping may end sooner)")
        form.addRow("&Epochs:", self.epochs)
        self.weight = QDoubleSpinBox()
        self.weight.setRange(1.0, 10.0)
        self.weight.setSingleStep(0.5)
        self.weight.setDecimals(1)
        self.weight.setValue(2.0)
        self.weight.setSuffix(" ×")
        self.weight.setToolTip("How much more an image counts when a reviewer corrected the AI")
        form.addRow("&Corrected-image weight:", self.weight)
        self.self_learning = QCheckBox(
            "Self-learning: also learn from unreviewed images the model is very sure about "
            "(at a lower weight)"
        )
        form.addRow("", self.self_learning)
        self.training_data = QCheckBox(
            "Also use the model's original training data (when available)"
        )
        form.addRow("", self.training_data)
        self.options = QWidget()
        self.options.setLayout(form)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress_label = QLabel("Not started.")
        self.progress_label.setWordWrap(True)
        self.details_button = QToolButton()
        self.details_button.setText("Details ▸")
        self.details_button.setCheckable(True)
        self.details_button.toggled.connect(self._toggle_details)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setMaximumBlockCount(2000)
        self.details.setMinimumHeight(120)
        self.details.hide()

        self.start_button = QPushButton("Start  Ctrl+Enter")
        self.start_button.setDefault(True)
        self.start_button.setShortcut(QKeySequence("Ctrl+Return"))
        self.start_button.clicked.connect(self.start)
        self.close_button = QPushButton("Close  Esc")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.details_button)
        buttons.addStretch(1)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.close_button)

        lay = QVBoxLayout(self)
        lay.addWidget(title)
        lay.addWidget(self.summary)
        lay.addWidget(self.options)
        lay.addWidget(self.progress)
        lay.addWidget(self.progress_label)
        lay.addWidget(self.details, 1)
        lay.addLayout(buttons)
        self._explain_strategy()
        self.resize(640, 420)

    def _summary_text(self) -> str:
        s = self.status
        new, total = s.get("new_reviews"), s.get("reviewed_total")
        train, audit = s.get("train_n"), s.get("audit_n")
        lines = []
        if new is not None:
            lines.append(
                f"{new} new reviews since the active model was made; {total} reviewed images in all."
            )
        if train is not None and audit is not None:
            lines.append(
                f"{train} images to learn from · {audit} kept aside as the audit set "
                "(never trained on) to compare old and new."
            )
        lines.append(
            "The current model stays active until you have compared the two and accepted "
            "the new one."
        )
        return "\n".join(lines)

    def _explain_strategy(self) -> None:
        self.strategy_note.setText(STRATEGIES[self.strategy.currentIndex()][2])

    def _toggle_details(self, on: bool) -> None:
        self.details.setVisible(on)
        self.details_button.setText("Details ▾" if on else "Details ▸")

    def config(self) -> dict:
        """The chosen settings as the engine's ``ImproveConfig`` dictionary."""
        from engine.improve import ImproveConfig

        cfg = ImproveConfig(
            epochs=self.epochs.value(),
            strategy=self.strategy.currentData(),
            corrected_weight=round(self.weight.value(), 2),
            self_learning=self.self_learning.isChecked(),
            include_training_data=self.training_data.isChecked(),
            min_new_reviews=int(self.status.get("min_new_reviews") or MIN_NEW_REVIEWS),
        )
        return cfg.to_dict()

    def set_options(
        self,
        strategy: str = "head",
        epochs: int = 5,
        corrected_weight: float = 2.0,
        self_learning: bool = False,
    ) -> None:
        """Set the choices (used by scripts and tests)."""
        self.strategy.setCurrentIndex(max(0, self.strategy.findData(strategy)))
        self.epochs.setValue(epochs)
        self.weight.setValue(corrected_weight)
        self.self_learning.setChecked(self_learning)

    # ---- running
    def is_running(self) -> bool:
        return self.run is not None and self.run.is_running()

    def start(self) -> None:
        """Start the child process with the chosen settings."""
        if self.is_running():
            return
        try:
            config = self.config()
        except Exception as exc:  # noqa: BLE001 - the engine part may be missing in a build
            self._fail(f"Improving is not available: {exc}")
            return
        run = ImproveRun(self)
        run.progress.connect(self._on_progress)
        run.log.connect(self.details.appendPlainText)
        run.succeeded.connect(self._on_succeeded)
        run.failed.connect(self._fail)
        run.cancelled.connect(self._on_cancelled)
        run.ended.connect(self._on_ended)
        self.run = run
        self.outcome, self.message = "running", ""
        self.options.setEnabled(False)
        self.start_button.setEnabled(False)
        self.close_button.setText("Cancel  Esc")
        self.close_button.setToolTip("Stop the improvement now; nothing will change")
        self.progress.setRange(0, 0)
        self.progress_label.setText("Starting: loading the model and the reviewed images…")
        self.details.appendPlainText(
            f"strategy {config.get('strategy')} · {config.get('epochs')} epochs"
        )
        run.start(self.ws_folder, config)

    def cancel(self) -> None:
        """Kill the run (the whole process tree)."""
        if self.is_running() and self.run is not None:
            self.progress_label.setText("Cancelling…")
            self.close_button.setEnabled(False)
            self.run.cancel()

    def _on_progress(self, event: dict) -> None:
        done, total = event.get("done"), event.get("total")
        if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(1.0, float(done) / float(total))))
        self.progress_label.setText(progress_text(event, self.epochs.value()))

    def _on_succeeded(self, result: dict) -> None:
        self.outcome = "done"
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        secs = result.get("seconds")
        took = f" in {format_eta(float(secs))}" if secs is not None else ""
        self.message = f"Finished{took}: compare the new version with the current model."
        self.progress_label.setText(self.message)
        self.result_ready.emit(result)

    def _fail(self, message: str) -> None:
        self.outcome, self.message = "failed", message
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label.setText("✕ " + message)
        self._idle()

    def _on_cancelled(self) -> None:
        self.outcome = "cancelled"
        self.message = "Cancelled. Nothing was changed: the current model stays active."
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label.setText(self.message)
        self._idle()

    def _idle(self) -> None:
        self.options.setEnabled(True)
        self.start_button.setEnabled(True)
        self.start_button.setText("Try again  Ctrl+Enter")
        self.close_button.setEnabled(True)
        self.close_button.setText("Close  Esc")
        self.close_button.setToolTip("")

    def _on_ended(self) -> None:
        if self.outcome == "done":
            self.accept()

    # ---- closing
    def reject(self) -> None:  # Esc and the Close/Cancel button
        if self.is_running():
            self.cancel()
            return
        super().reject()

    def shutdown(self, msecs: int = 30_000) -> None:
        """Kill a running child and wait for it (the window is closing)."""
        if self.is_running() and self.run is not None:
            self.run.cancel()
            self.run.wait(msecs)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        if self.is_running():
            self.cancel()
            event.ignore()
            return
        super().closeEvent(event)
