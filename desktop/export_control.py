"""File > Export and File > Patient report: ask where, then write in the background.

The rows come from the store (:meth:`engine.store.Workspace.write_export`) and the PDFs from
:mod:`desktop.report`; this module only asks the user and reports the outcome.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog, QInputDialog

from .shell import Shell
from .workers import FunctionJob

__all__ = ["ExportController", "write_export"]


def write_export(ws_folder: Path, out: Path, fmt: str, deidentify: bool = False) -> int:
    """Write the workspace's results and reviews as ``fmt`` (worker side); returns rows.
    ``deidentify``: pseudonymised patients, visit numbers for dates, no paths or hashes."""
    from engine.store import Workspace

    with Workspace.open(ws_folder, create=False) as ws:
        return ws.write_export(out, fmt, deidentify=deidentify)


class ExportController(QObject):
    """Results export (CSV/JSON) and per-patient PDF reports for the open workspace."""

    def __init__(self, shell: Shell, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.shell = shell

    def export_results(
        self, fmt: str, out: Path | None = None, deidentify: bool = False
    ) -> FunctionJob | None:
        """Write the results and reviews as CSV or JSON (asks for a file if ``out`` is None);
        ``deidentify`` leaves out who the patients are (shareable results)."""
        folder = self.shell.ws_folder
        if folder is None:
            return None
        if out is None:
            name, _ = QFileDialog.getSaveFileName(
                self.shell.window_widget(),
                f"Export {'de-identified ' if deidentify else ''}results as {fmt.upper()}",
                f"{folder.name}-results{'-deidentified' if deidentify else ''}.{fmt}",
                f"{fmt.upper()} (*.{fmt})",
            )
            if not name:
                return None
            out = Path(name)
            if out.suffix.lower() != f".{fmt}":
                out = out.with_name(f"{out.name}.{fmt}")  # "results" -> "results.csv"
        target = Path(out)
        job = FunctionJob(write_export, folder, target, fmt, deidentify, parent=self)
        what = "de-identified rows" if deidentify else "rows"
        job.returned.connect(
            lambda n: self.shell.statusBar().showMessage(f"Exported {n} {what} to {target}", 10000)
        )
        job.failed.connect(lambda msg: self.shell.show_error("Export failed", msg))
        self.shell.run_job(job)
        return job

    def patient_report(self) -> FunctionJob | None:
        """Ask for a patient (or all) and a destination, then write the PDF(s)."""
        folder = self.shell.ws_folder
        if folder is None:
            return None
        from .report import patients_in_workspace, write_all_patient_reports, write_patient_report

        parent = self.shell.window_widget()
        patients = patients_in_workspace(folder)
        if not patients:
            self.shell.show_error(
                "No patients to report",
                "No screened image has a patient id (parsed from names like 1221_OD_f_1.jpg).",
            )
            return None
        everyone = f"All {len(patients)} patients (one PDF each)"
        on_screen = self.shell.current_patient()
        start = patients.index(on_screen) if on_screen in patients else 0
        choice, ok = QInputDialog.getItem(
            parent, "Patient report", "Patient:", [*patients, everyone], start, False
        )
        if not ok:
            return None
        kw = {"spec": self.shell.spec, "model_path": self.shell.model_path, "with_overlays": True}
        if choice == everyone:
            out = QFileDialog.getExistingDirectory(parent, "Folder for the patient reports")
            if not out:
                return None
            job = FunctionJob(write_all_patient_reports, folder, Path(out), parent=self, **kw)
        else:
            out, _ = QFileDialog.getSaveFileName(
                parent, "Save patient report", f"eyetriage-patient-{choice}.pdf", "PDF (*.pdf)"
            )
            if not out:
                return None
            job = FunctionJob(write_patient_report, folder, choice, Path(out), parent=self, **kw)
        bar = self.shell.statusBar()
        bar.showMessage("Writing the patient report (overlays are computed)…")
        job.returned.connect(
            lambda result: bar.showMessage(
                f"Report written: {result if isinstance(result, Path) else f'{len(result)} files'}",
                10000,
            )
        )
        job.failed.connect(
            lambda msg: self.shell.show_error("The report could not be written", msg)
        )
        self.shell.run_job(job)
        return job
