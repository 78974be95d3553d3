"""The main window's Improve button, the Improve and Compare dialogs, and Model history.

:class:`ImproveController` owns the toolbar button's state (from the engine's
``review_status``, counted in the background) and opens the dialogs; accepting, rejecting
and rolling back go through the engine's version lifecycle (:mod:`engine.improve.versions`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QDialog

from .compare import CompareDialog
from .dialog import MIN_NEW_REVIEWS, ImproveDialog


def short_hash(h: str | None) -> str:
    return (h or "")[:8]


def model_file(ws_folder: Path | None, model_hash: str) -> str | None:
    """The file of a registered model version (from the engine's version lifecycle)."""
    if ws_folder is None:
        return None
    from engine.improve import model_file as engine_model_file

    return engine_model_file(ws_folder, model_hash)


def fetch_status(ws_folder: Path) -> dict:
    """``engine.improve.review_status`` (run in a worker)."""
    from engine.improve import review_status

    return dict(review_status(ws_folder, min_new_reviews=MIN_NEW_REVIEWS))


def button_state(status: dict | None, has_workspace: bool, busy: bool) -> tuple[bool, str, str]:
    """Enabled, toolbar text and tooltip of the Improve button from ``review_status``."""
    if not has_workspace:
        return (
            False,
            "Improve model",
            "Open a workspace and review images first: the reviewers' corrections teach a "
            "later version of the model (Ctrl+I).",
        )
    if status is None:
        return False, "Improve model", "Counting the reviews…"
    if status.get("error"):
        return False, "Improve model", f"Cannot count the reviews: {status['error']}"
    new = int(status.get("new_reviews") or 0)
    need = int(status.get("min_new_reviews") or MIN_NEW_REVIEWS)
    text = f"Improve model ({new} new)"
    if status.get("active_model") is None:
        return False, "Improve model", "Screen the images first: there is no active model yet."
    if busy:
        return False, text, "Wait until screening has finished, then improve the model."
    if not status.get("enough"):
        word = "review" if new == 1 else "reviews"
        return False, text, f"{new} new {word}; {need} needed to improve the model."
    return (
        True,
        text,
        f"Fine-tune the model on {new} new reviews and compare it with the current one "
        "before switching (Ctrl+I).",
    )


class ImproveController(QObject):
    """The main window's Improve button, Improve/Compare dialogs and Model history.

    It only uses the window's public surface: ``ws_folder``, ``settings``, ``act_improve``,
    ``is_screening()``, ``set_model()``, ``start_screening()``, ``reload_worklist()``,
    ``show_error()`` and ``_run_job()``.
    """

    status_changed = Signal(dict)
    model_switched = Signal(str)  # the path of the model that became active

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.w = window
        self.status: dict | None = None
        self.dialog: ImproveDialog | None = None
        self.compare: CompareDialog | None = None
        self.history: QDialog | None = None
        self.last_result: dict | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(400)
        self._timer.timeout.connect(self.refresh)
        window.act_improve.triggered.connect(self.open_improve)
        self.update_enabled()

    # ---- the button
    def schedule_refresh(self) -> None:
        """Recount soon (many reviews in a row cost one query)."""
        self._timer.start()

    def refresh(self) -> None:
        """Recount the new reviews in the background."""
        folder = self.w.ws_folder
        if folder is None:
            self.status = None
            self.update_enabled()
            return
        from ..workers import FunctionJob

        job = FunctionJob(fetch_status, folder, parent=self.w)
        job.returned.connect(lambda s: self._on_status(folder, s))
        job.failed.connect(lambda msg: self._on_status(folder, {"error": msg}))
        self.w._run_job(job)

    def _on_status(self, folder: Path, status: dict) -> None:
        if folder != self.w.ws_folder:
            return
        self.status = status
        self.update_enabled()
        self.status_changed.emit(status)

    def workspace_changed(self) -> None:
        self.status = None
        self.update_enabled()
        self.refresh()

    def update_enabled(self) -> None:
        enabled, text, tip = button_state(
            self.status, self.w.ws_folder is not None, self.w.is_screening()
        )
        a = self.w.act_improve
        a.setEnabled(enabled and not self.busy())
        a.setIconText(f"{text}  Ctrl+I")
        a.setText("Improve model…")
        a.setToolTip(tip)
        a.setStatusTip(tip)

    def busy(self) -> bool:
        return (self.dialog is not None and self.dialog.isVisible()) or (
            self.compare is not None and self.compare.isVisible()
        )

    # ---- improve → compare → accept
    def open_improve(self) -> ImproveDialog | None:
        """Show the Improve dialog (window-modal, does not block the event loop)."""
        if self.w.ws_folder is None or self.w.is_screening():
            return None
        dlg = ImproveDialog(self.w.ws_folder, self.status, self.w)
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.result_ready.connect(self._on_result)
        dlg.finished.connect(lambda _=0: self._dialog_closed(dlg))
        self.dialog = dlg
        dlg.open()
        self.update_enabled()
        return dlg

    def _dialog_closed(self, dlg: ImproveDialog) -> None:
        if self.dialog is dlg:
            self.dialog = None
        self.update_enabled()

    def _on_result(self, result: dict) -> None:
        self.last_result = result
        QTimer.singleShot(0, lambda: self.open_compare(result))

    def open_compare(self, result: dict) -> CompareDialog:
        """Show old vs new; Accept or Keep goes to the engine."""
        actor = self.w.settings.reviewer or "desktop"
        dlg = CompareDialog(self.w.ws_folder, result, actor, self.w)
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.decided.connect(lambda d: self._on_decided(d, result))
        dlg.error.connect(lambda msg: self.w.show_error("Model not changed", msg))
        dlg.finished.connect(lambda _=0: self._compare_closed(dlg))
        self.compare = dlg
        dlg.open()
        self.update_enabled()
        return dlg

    def _compare_closed(self, dlg: CompareDialog) -> None:
        if self.compare is dlg:
            self.compare = None
        self.update_enabled()

    def _on_decided(self, decision: str, result: dict) -> None:
        if decision == "accepted":
            path = result.get("model_path") or model_file(self.w.ws_folder, result["model"])
            self.switch_to(path, f"New model version {short_hash(result['model'])} is active")
        else:
            self.w.statusBar().showMessage(
                "Kept the current model; the new version was discarded.", 10000
            )
            self.refresh()

    def switch_to(self, path: str | None, message: str) -> None:
        """Use the model now active in the store and re-screen the worklist in the background."""
        if not path or not Path(path).is_file():
            self.w.show_error(
                "Model file missing",
                f"The model became active, but its file is missing ({path}). "
                "Choose it again in the toolbar.",
            )
            self.refresh()
            return
        if self.w.set_model(Path(path)):
            self.w.reload_worklist()
            self.w.start_screening(ask=False)
            self.w.statusBar().showMessage(f"{message}; re-screening in the background…", 15000)
            self.model_switched.emit(str(path))
        self.refresh()

    # ---- history
    def open_history(self) -> QDialog | None:
        """Show every model version (also before any improvement was made)."""
        if self.w.ws_folder is None:
            self.w.show_error("No workspace", "Open a workspace to see its model versions.")
            return None
        from ..history import ModelHistoryDialog

        dlg = ModelHistoryDialog(
            self.w.ws_folder, self.w.settings.reviewer or "desktop", self.w.is_screening, self.w
        )
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.rolled_back.connect(
            lambda h, p: self.switch_to(p, f"Rolled back to model version {short_hash(h)}")
        )
        dlg.error.connect(lambda msg: self.w.show_error("Model not changed", msg))
        self.history = dlg
        dlg.open()
        return dlg

    def shutdown(self) -> None:
        """Kill a running improvement (the window is closing)."""
        self._timer.stop()
        if self.dialog is not None:
            self.dialog.shutdown()
