"""Screening from the window: the setup dialog, the run in the background, its progress.

:class:`ScreeningController` owns the status-bar progress (label, bar, Cancel/Esc), starts
a :class:`~desktop.workers.ScreenJob` and reports back with plain signals: ``rows`` per
chunk (worklist rows, built by the engine's stored records), and ``ended`` once the job
has finished, with the run's summary (including the engine's activation decision).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.triage import TRIAGE_STATES

from .settings import AppSettings, add_screening_fields
from .shell import Shell
from .style import triage_style
from .workers import ScreenJob, ScreenRequest
from .worklist_model import group_thousands

__all__ = ["ScreeningController", "ScreeningDialog", "format_eta", "progress_text"]

SPARE_DELAY_MS = 300  # the next run's spare process starts this long after a run ends


def format_eta(seconds: float | None) -> str:
    from engine.tasks import format_eta as _fmt

    return _fmt(seconds)


def progress_text(done: int, total: int, rate: float, device: str) -> str:
    """``Screening 1 204 / 1 852 · 41 img/s · CPU · ETA 0:16``."""
    eta = (total - done) / rate if rate > 0 and total else None
    parts = [f"Screening {group_thousands(done)} / {group_thousands(total)}", f"{rate:.0f} img/s"]
    if device:
        parts.append(device)
    parts.append(f"ETA {format_eta(eta)}")
    return " · ".join(parts)


def summary_text(summary: dict) -> str:
    """``Screening finished: 48 images — ● 30 needs review, … · 12 already screened``."""
    counts = summary.get("counts") or {}
    order = {state: i for i, state in enumerate(TRIAGE_STATES)}  # most urgent first
    parts = [
        f"{triage_style(k).glyph} {n} {triage_style(k).word.lower()}"
        for k, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order)))
        if n
    ]
    word = {"cancelled": "Screening cancelled", "finished": "Screening finished"}.get(
        summary.get("status"), "Screening stopped"
    )
    skipped = summary.get("skipped") or 0
    extra = f" · {skipped} already screened" if skipped else ""
    return (
        f"{word}: {summary.get('screened', 0)} images"
        + (" — " + ", ".join(parts) if parts else "")
        + extra
    )


class DeferredProgressBar(QProgressBar):
    """A progress bar whose new value is drawn with the window's next paint.

    ``QProgressBar.setValue`` repaints at once, and an immediate repaint draws everything else
    of the window that is waiting to be drawn too (the worklist that just took in a chunk of
    rows): one progress step then held the window for tens of milliseconds."""

    def setValue(self, value: int) -> None:  # noqa: N802 - Qt name
        self.setUpdatesEnabled(False)  # no immediate repaint ...
        super().setValue(value)
        self.setUpdatesEnabled(True)  # ... an ordinary update, drawn with the rest


class ScreeningDialog(QDialog):
    """Choose folder, model, uncertainty method and triage policy before a run."""

    def __init__(
        self,
        parent: QWidget | None,
        settings: AppSettings,
        models: list[tuple[str, str]],
        current_model: str | None,
        image_folder: Path | None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Screen images")
        form = QFormLayout()
        self.folder = QLineEdit(str(image_folder) if image_folder else "")
        self.browse = QPushButton("Browse…")
        self.browse.setAutoDefault(False)  # Enter starts the run; it never opens Browse…
        self.browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(self.browse)
        # a label with a buddy: Alt+I jumps to the field and the "&" is drawn as an underline
        self.folder_label = QLabel("&Image folder:")
        self.folder_label.setBuddy(self.folder)
        form.addRow(self.folder_label, row)
        self.model = QComboBox()
        for label, path in models:
            self.model.addItem(label, path)
        if current_model:
            i = self.model.findData(current_model)
            if i >= 0:
                self.model.setCurrentIndex(i)
        form.addRow("&Model:", self.model)
        self.uncertainty, self.policy, self.threshold = add_screening_fields(form, settings)
        self.refer = QCheckBox("Review every finding before referral")
        self.refer.setToolTip(
            "A confident finding is normally 'Refer'; with this on it goes to Needs review first."
        )
        self.refer.setChecked(settings.refer_findings)
        form.addRow("Fi&ndings:", self.refer)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        go = buttons.addButton("Screen ▶", QDialogButtonBox.ButtonRole.AcceptRole)
        cancel = buttons.button(QDialogButtonBox.StandardButton.Cancel)
        cancel.setAutoDefault(False)  # else the button box makes Cancel the Enter button
        go.setDefault(True)
        self.go_button = go
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        note = QLabel("Images already screened with the same model and settings are skipped.")
        note.setObjectName("notice")
        layout.addWidget(note)
        layout.addWidget(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Folder of images to screen", self.folder.text()
        )
        if folder:
            self.folder.setText(folder)

    def values(self) -> dict[str, Any]:
        return {
            "image_folder": Path(self.folder.text()) if self.folder.text().strip() else None,
            "model_path": self.model.currentData(),
            "uncertainty": self.uncertainty.currentData(),
            "policy": self.policy.currentData(),
            "threshold": round(self.threshold.value(), 3),
            "refer_findings": self.refer.isChecked(),
        }


class ScreeningController(QObject):
    """One screening run at a time, with its progress in the window's status bar."""

    rows = Signal(list)  # worklist rows of one chunk
    running_changed = Signal(bool)
    ended = Signal(dict)  # the summary (or {"status": "failed", "error": ...}), always last

    def __init__(self, shell: Shell, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.shell = shell
        self.job: ScreenJob | None = None
        self.last_run: dict | None = None
        self._closing = False
        self.keep_spare = False  # keep a spare screening process ready (see prepare_spare)
        self.spare: Any = None  # engine.screen_task.ScreenProcess, started and waiting
        window = shell.window_widget()
        self.progress_label = QLabel()
        self.progress_bar = DeferredProgressBar()
        self.progress_bar.setMaximumWidth(220)
        self.progress_bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel  Esc")
        self.cancel_button.setToolTip("Stop screening after the current batch (Esc)")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_shortcut = QShortcut(QKeySequence("Esc"), window, activated=self.cancel)
        self.cancel_shortcut.setEnabled(False)
        bar = shell.statusBar()
        for w in (self.progress_label, self.progress_bar, self.cancel_button):
            bar.addWidget(w)
            w.hide()

    # ------------------------------------------------------------------ control

    def ask(self, models: list[tuple[str, str]], values: dict[str, Any]) -> dict[str, Any] | None:
        """Show the setup dialog prefilled with ``values``; the chosen values, or ``None``."""
        dlg = ScreeningDialog(
            self.shell.window_widget(),
            self.shell.settings,
            models,
            values.get("model_path"),
            values.get("image_folder"),
        )
        if dlg.exec() != QDialog.DialogCode.Accepted:
            return None
        return {**values, **dlg.values()}

    def start_screening(self, ask: bool = True, **overrides: Any) -> ScreenJob | None:
        """Start a run on the workspace's image folder with the user's settings.

        ``ask`` shows the setup dialog first (its choices are remembered); ``overrides``
        replace single values (``uncertainty``, ``batch_size``, ``paths``...). Returns the
        running job, or ``None`` when nothing was started (the user was told why).
        """
        shell = self.shell
        if shell.ws_folder is None:
            shell.show_error("No workspace", "Open a folder of images first (Ctrl+O).")
            return None
        if self.is_running():
            return self.job
        settings = shell.settings
        values: dict[str, Any] = {
            "image_folder": shell.image_folder,
            "model_path": str(shell.model_path) if shell.model_path else None,
            "uncertainty": settings.uncertainty,
            "policy": settings.policy,
            "threshold": settings.threshold,
            "refer_findings": settings.refer_findings,
        }
        if ask:
            chosen = self.ask(shell.model_choices(), values)
            if chosen is None:
                return None
            values = chosen
            settings.uncertainty = values["uncertainty"]
            settings.policy = values["policy"]
            settings.threshold = values["threshold"]
            settings.refer_findings = values["refer_findings"]
            shell.save_settings()
        values.update(overrides)
        if not values.get("model_path"):
            shell.show_error(
                "No model chosen",
                "Choose a model in the toolbar (or a model file) before screening.",
            )
            return None
        model_path = Path(values["model_path"])
        if model_path.resolve() != shell.model_path and not shell.set_model(model_path):
            return None
        folder = values.get("image_folder")
        if folder is None and not values.get("paths"):
            shell.show_error("No image folder", "Choose the folder of images to screen.")
            return None
        if folder is not None and Path(folder) != shell.image_folder:
            shell.set_image_folder(Path(folder))
        request = ScreenRequest(
            workspace=shell.ws_folder,
            model_path=model_path,
            image_folder=shell.image_folder,
            paths=values.get("paths"),
            device=settings.device,
            batch_size=values.get("batch_size", settings.batch_size),
            uncertainty=values["uncertainty"],
            policy=values["policy"],
            threshold=values["threshold"],
            refer_findings=values["refer_findings"],
            engine=settings.engine,
            keep_names=settings.keep_patient_names,
            extra={"actor": settings.reviewer or "desktop"},
        )
        return self.start(request)

    def prepare_spare(self) -> None:
        """Start a spare screening process (with ``keep_spare``), unless one is waiting or a
        run is going on: it loads the screening libraries now, so the next run does not
        wait for them."""
        from engine.screen_task import ScreenProcess

        if not self.keep_spare or self._closing or self.is_running():
            return
        if self.spare is not None and self.spare.running():
            return
        spare = ScreenProcess()
        try:
            spare.start()
        except Exception:  # noqa: BLE001 - no spare: the next run starts its own process
            from .crash import log

            log.warning("could not start a spare screening process", exc_info=True)
            return
        self.spare = spare

    def _take_spare(self) -> Any:
        spare, self.spare = self.spare, None
        return spare if spare is not None and spare.running() else None

    def _end_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:  # it has not touched any workspace: ended at once
            spare.cancel()
            spare.join(5)

    def start(self, request: ScreenRequest) -> ScreenJob:
        """Start a run in the background (the caller checked that none is running)."""
        job = ScreenJob(request, self, spare=self._take_spare())
        job.progress.connect(self._on_progress)
        job.status.connect(self._on_status)
        job.rows.connect(self.rows.emit)
        job.done.connect(self._on_done)
        job.failed.connect(
            lambda msg: self.shell.show_error("Screening stopped because of an error", msg)
        )
        job.finished.connect(self._on_job_finished)
        self.job = job
        self.last_run = None
        self.shell.statusBar().clearMessage()  # a temporary message would cover the progress
        self._show_progress(True)
        self.progress_label.setText("Screening: starting…")
        self.progress_bar.setRange(0, 0)
        job.start()
        self.running_changed.emit(True)
        return job

    def is_running(self) -> bool:
        return self.job is not None and self.job.is_running()

    def cancel(self) -> None:
        """Stop after the current batch (Esc); the run is recorded as cancelled."""
        job = self.job
        if job is not None and job.is_running():
            job.cancel()
            self.progress_label.setText("Cancelling after this batch…")
            self.cancel_button.setEnabled(False)

    def shutdown(self, timeout_s: float) -> None:
        """The window is closing: cancel the run and wait for its worker."""
        self._closing = True
        self._end_spare()
        job = self.job
        if job is not None and job.is_running():
            self.progress_label.setText("Stopping the screening run…")
            job.cancel()
            if not job.wait(timeout_s):
                job.kill()  # no screening process outlives the window

    # ------------------------------------------------------------------ progress

    def _show_progress(self, on: bool) -> None:
        for w in (self.progress_label, self.progress_bar, self.cancel_button):
            w.setVisible(on)
        self.cancel_button.setEnabled(on)
        self.cancel_shortcut.setEnabled(on)

    def _on_status(self, message: str) -> None:
        if self.job is not None and not self.job.state.cancelled():
            self.progress_label.setText(message)

    def _on_progress(self, done: int, total: int, message: str, rate: float) -> None:
        job = self.job
        if job is None or job.state.cancelled():
            return
        if message == "hashing files":
            self.progress_label.setText(f"Reading {group_thousands(total)} files…")
            self.progress_bar.setRange(0, 0)
            return
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(done)
        device = job.device or {"auto": "", "cpu": "CPU", "cuda": "GPU"}.get(job.request.device, "")
        self.progress_label.setText(progress_text(done, total, rate, device))

    def _on_done(self, summary: dict) -> None:
        self.last_run = summary
        self.shell.statusBar().showMessage(summary_text(summary), 15000)

    def _on_job_finished(self) -> None:
        job = self.job
        self._show_progress(False)
        self.running_changed.emit(False)
        if self._closing:
            return
        summary = dict(job.summary or {"status": "failed", "error": job.error}) if job else {}
        self.ended.emit(summary)
        # the spare for the next run starts once the window has shown the run's end: its
        # start (a process launch) would otherwise lengthen that one long pause
        QTimer.singleShot(SPARE_DELAY_MS, self, self.prepare_spare)
