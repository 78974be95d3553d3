"""The application shell: welcome page, screening into a workspace, filters, cancel, close,
settings and the crash handler. Pages of the other panes are replaced by placeholders here
(``pages=False``) so these tests check the shell alone."""

from __future__ import annotations

import csv
import logging
import sqlite3
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.mainwindow import MainWindow
from desktop.settings import AppSettings, SettingsDialog, open_qsettings
from desktop.worklist_model import COL_UNCERTAINTY, uncertainty_value


def make_window(qtbot, tmp_path: Path, **kw) -> MainWindow:
    w = MainWindow(
        AppSettings(reviewer="ana"),
        data_dir=tmp_path / "userdata",
        preload=False,
        pages=False,
        **kw,
    )
    qtbot.addWidget(w)
    w.show()
    return w


def screen_synth(qtbot, w: MainWindow, synth_fundus: Path, tiny_model: Path, **overrides):
    ws = w.open_image_folder(synth_fundus)
    assert ws is not None
    assert w.set_model(tiny_model)
    with qtbot.waitSignal(w.worklist_loaded, timeout=30_000):
        pass
    job = w.start_screening(ask=False, uncertainty="none", **overrides)
    assert job is not None
    return ws, job


def db(ws: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(ws / "workspace.sqlite")
    conn.row_factory = sqlite3.Row
    return conn


def visible(w: MainWindow) -> list[dict]:
    proxy, model = w.worklist.proxy, w.worklist.model
    return [model.row(proxy.mapToSource(proxy.index(i, 0)).row()) for i in range(proxy.rowCount())]


def test_window_opens_on_welcome_page(qtbot, tmp_path):
    w = make_window(qtbot, tmp_path)
    assert w.windowTitle().startswith("EyeTriage")
    assert w.stack.currentWidget() is w.welcome
    texts = [
        b.text()
        for b in (w.welcome.folder_button, w.welcome.workspace_button, w.welcome.demo_button)
    ]
    for text, key in zip(texts, ("Ctrl+O", "Ctrl+Shift+O", "Ctrl+D"), strict=True):
        assert key in text
    assert "not a medical device" in w.welcome.notice.text()
    assert "reviewer: ana" in w.reviewer_button.text()
    assert not w.act_screen.isEnabled()  # nothing to screen yet
    assert not w.act_improve.isEnabled() and "later version" in w.act_improve.toolTip()


def test_screening_fills_worklist_consistent_with_store(qtbot, tmp_path, synth_fundus, tiny_model):
    w = make_window(qtbot, tmp_path)
    chunks: list[int] = []
    ws, job = screen_synth(qtbot, w, synth_fundus, tiny_model, batch_size=16)
    job.rows.connect(lambda rows: chunks.append(len(rows)))
    # the workspace lives in the user data folder, never in the image folder
    assert ws.is_relative_to(tmp_path / "userdata")
    assert not (synth_fundus / "workspace.sqlite").exists()
    with qtbot.waitSignal(w.screening_finished, timeout=120_000) as done:
        pass
    assert done.args[0]["status"] == "finished", w.last_error
    assert sum(chunks) == 48 and len(chunks) >= 2  # filled chunk by chunk
    qtbot.waitUntil(lambda: w.worklist.model.rowCount() == 48, timeout=30_000)
    assert w.windowTitle().startswith("EyeTriage")

    conn = db(ws)
    runs = conn.execute("SELECT status FROM runs").fetchall()
    assert [r["status"] for r in runs] == ["finished"]
    by_state = dict(
        conn.execute(
            "SELECT triage, count(*) FROM predictions WHERE id IN (SELECT max(id) FROM predictions GROUP BY image_id)"
            " GROUP BY triage"
        ).fetchall()
    )
    counts = w.worklist.model.counts()
    assert counts["all"] == 48
    for state in ("auto-cleared", "needs-review", "ungradable", "out-of-distribution", "error"):
        assert counts[state] == by_state.get(state, 0)
        w.filter_bar.set_current(state)
        shown = visible(w)
        assert len(shown) == by_state.get(state, 0)
        assert all(r["triage"] == state for r in shown)
        assert w.filter_bar.buttons[state].text().endswith(f" {by_state.get(state, 0)}")

    w.filter_bar.set_current("all")
    assert w.worklist.proxy.rowCount() == 48
    # default order: most informative first (uncertainty descending)
    values = [uncertainty_value(r) for r in visible(w)]
    assert all(v is not None for v in values)
    assert values == sorted(values, reverse=True)
    # a header click sorts ascending by the same column, and back
    w.worklist.view.sortByColumn(COL_UNCERTAINTY, Qt.SortOrder.AscendingOrder)
    assert [uncertainty_value(r) for r in visible(w)] == sorted(values)

    # the export writes what the store holds
    out = tmp_path / "results.csv"
    job = w.export_results("csv", out)
    with qtbot.waitSignal(job.finished, timeout=30_000):
        pass
    with out.open(newline="", encoding="utf-8") as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == 48
    assert sorted(r["triage"] for r in exported) == sorted(
        r["triage"] for r in w.worklist.model.rows()
    )

    # screening again skips everything already done and adds a second finished run
    with qtbot.waitSignal(w.screening_finished, timeout=120_000) as again:
        w.start_screening(ask=False, uncertainty="none", batch_size=16)
    assert again.args[0]["skipped"] == 48 and again.args[0]["screened"] == 0
    conn.close()


def test_cancel_stops_run_and_records_it(qtbot, tmp_path, synth_fundus, tiny_model):
    w = make_window(qtbot, tmp_path)
    ws, job = screen_synth(qtbot, w, synth_fundus, tiny_model, batch_size=4)
    assert w.cancel_button.isVisible() and "Esc" in w.cancel_button.text()
    with qtbot.waitSignal(job.rows, timeout=120_000):
        pass
    qtbot.mouseClick(w.cancel_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(w.screening_finished, timeout=120_000) as done:
        pass
    assert done.args[0]["status"] == "cancelled"
    assert not w.is_screening() and not w.cancel_button.isVisible()
    conn = db(ws)
    (status, n_pred) = conn.execute(
        "SELECT status, (SELECT count(*) FROM predictions p WHERE p.run_id = runs.id) FROM runs"
    ).fetchone()
    conn.close()
    assert status == "cancelled"
    assert 0 < n_pred < 48


def test_closing_during_run_cancels_and_waits(qtbot, tmp_path, synth_fundus, tiny_model):
    w = make_window(qtbot, tmp_path)
    ws, job = screen_synth(qtbot, w, synth_fundus, tiny_model, batch_size=4)
    with qtbot.waitSignal(job.rows, timeout=120_000):
        pass
    w.close()
    assert job.wait(0)  # close() waited until the screening process had ended
    assert job.proc.proc.poll() is not None  # no screening process outlives the window
    conn = db(ws)
    statuses = [r[0] for r in conn.execute("SELECT status FROM runs")]
    conn.close()
    assert statuses == ["cancelled"]  # nothing left "running"
    # the autouse no_leaked_threads fixture checks that no worker thread survives


def test_errors_reach_a_readable_message(qtbot, tmp_path, synth_fundus):
    w = make_window(qtbot, tmp_path)
    w.open_image_folder(synth_fundus)
    bad = tmp_path / "not-a-model.safetensors"
    bad.write_bytes(b"this is not a model")
    assert not w.set_model(bad)
    assert w.last_error and "not-a-model.safetensors" in w.last_error
    w.open_image_folder(tmp_path / "missing")
    assert "missing" in w.last_error and "not a folder" in w.last_error


def test_demo_without_demo_model_says_so(qtbot, tmp_path):
    from engine.demo import demo_model_path

    if demo_model_path() is not None:
        pytest.skip("the demo model exists here; the demo path is covered by its own test")
    w = make_window(qtbot, tmp_path)
    w.open_demo()
    qtbot.waitUntil(lambda: w.last_error is not None, timeout=30_000)
    assert "demo" in w.last_error.lower() and "missing" in w.last_error


def test_settings_persist_in_qsettings(qtbot, tmp_path, isolated_settings):
    s = AppSettings(reviewer="dr. ana", blind_mode=True, threshold=0.9, batch_size=8, theme="dark")
    s.remember_workspace("/w/one")
    s.remember_workspace("/w/two")
    s.save()
    assert list(isolated_settings.rglob("*.ini"))  # written where the test put it
    loaded = AppSettings.load()
    assert loaded == s
    assert loaded.recent_workspaces == ["/w/two", "/w/one"]

    dlg = SettingsDialog(loaded)
    qtbot.addWidget(dlg)
    dlg.reviewer.setText("bo")
    dlg.blind.setChecked(False)
    dlg.threshold.setValue(0.8)
    dlg.theme.setCurrentIndex(0)
    edited = dlg.value()
    assert (edited.reviewer, edited.blind_mode, edited.threshold, edited.theme) == (
        "bo",
        False,
        0.8,
        "light",
    )

    w = make_window(qtbot, tmp_path)
    w.apply_settings(edited)
    assert "reviewer: bo" in w.reviewer_button.text()
    w.resize(1000, 700)
    w.close()
    again = AppSettings.load()
    assert again.reviewer == "bo" and again.threshold == 0.8 and not again.blind_mode
    assert open_qsettings().value("window/geometry") is not None


def test_crash_handler_logs_exceptions_and_qt_warnings(qtbot, tmp_path):
    from PySide6.QtCore import qWarning

    from desktop.crash import install_crash_handler, uninstall_crash_handler

    log_file = install_crash_handler(tmp_path / "logs", dialogs=False)
    try:
        try:
            raise ValueError("the fundus exploded")
        except ValueError:
            sys.excepthook(*sys.exc_info())
        qWarning("a Qt warning for the log")
        for h in logging.getLogger("eyetriage").handlers:
            h.flush()
        text = log_file.read_text(encoding="utf-8")
    finally:
        uninstall_crash_handler()
    assert log_file == tmp_path / "logs" / "eyetriage.log"
    assert "ValueError: the fundus exploded" in text and "Traceback" in text
    assert "a Qt warning for the log" in text


def test_patient_report_menu_writes_the_chosen_patients_pdf(
    qtbot, tmp_path, synth_fundus, tiny_model, monkeypatch
):
    from PySide6.QtWidgets import QFileDialog, QInputDialog

    from desktop.report import patients_in_workspace

    w = make_window(qtbot, tmp_path)
    ws, job = screen_synth(qtbot, w, synth_fundus, tiny_model)
    qtbot.waitUntil(lambda: not w.is_screening(), timeout=60_000)
    patient = patients_in_workspace(ws)[0]
    out = tmp_path / "report.pdf"
    monkeypatch.setattr(QInputDialog, "getItem", staticmethod(lambda *a, **k: (patient, True)))
    monkeypatch.setattr(
        QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(out), "PDF"))
    )
    w.patient_report()
    qtbot.waitUntil(lambda: out.exists() and out.stat().st_size > 1000, timeout=60_000)
    qtbot.waitUntil(lambda: not w._jobs, timeout=30_000)
    assert out.read_bytes()[:4] == b"%PDF"


def test_closing_right_after_a_background_job_starts_waits_for_it(qtbot, tmp_path):
    """A job started from a slot is running at once, so closing the window waits for it
    (it used to start a timer tick later and then run while the window was torn down)."""
    import time

    from PySide6.QtCore import QTimer

    from desktop.workers import FunctionJob

    w = make_window(qtbot, tmp_path)
    ran: list[float] = []

    def work() -> int:
        time.sleep(0.3)
        ran.append(time.monotonic())
        return 1

    closed: list[float] = []

    def start_then_close() -> None:
        w.run_job(FunctionJob(work, parent=w))
        w.close()
        closed.append(time.monotonic())

    QTimer.singleShot(0, start_then_close)
    qtbot.waitUntil(lambda: bool(closed), timeout=30_000)
    assert len(ran) == 1 and ran[0] <= closed[0]
