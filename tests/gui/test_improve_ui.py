"""Improve model from the desktop: the button's count, a real child process run, the compare
dialog, Accept / Keep, Cancel killing the child, a crashing child, and model history with
rollback. The shell runs without its review and dashboard pages (``pages=False``)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.improve import CompareDialog, ImproveDialog, format_metric
from desktop.mainwindow import MainWindow
from desktop.settings import AppSettings

RUN_MS = 600_000  # a real fine-tuning child on 2 shared cores: generous, never asserted on


@pytest.fixture(scope="module")
def screened_template(tmp_path_factory, tiny_model, synth_fundus) -> Path:
    """A workspace in which the tiny model screened the 48 synthetic images (made once)."""
    from engine.images import discover_images
    from engine.models import load_model
    from engine.screen import ScreenSettings
    from engine.workspace_screen import screen_into_workspace

    folder = tmp_path_factory.mktemp("improve_template")
    screen_into_workspace(
        folder,
        discover_images(synth_fundus),
        [load_model(tiny_model, device="cpu")],
        ScreenSettings(device="cpu", uncertainty="none"),
    )
    (folder / "eyetriage-desktop.json").write_text(
        json.dumps({"image_folder": str(synth_fundus)}), encoding="utf-8"
    )
    return folder


@pytest.fixture
def ws_folder(tmp_path, screened_template) -> Path:
    folder = tmp_path / "ws"
    shutil.copytree(screened_template, folder)
    return folder


def add_reviews(ws_folder: Path, n: int, start: int = 0) -> int:
    """Review ``n`` images with their true label (the folder name); returns how many."""
    from engine.store import Workspace

    with Workspace.open(ws_folder, create=False) as ws:
        latest = {p["image_id"]: p for p in ws.latest_predictions()}
        images = sorted(ws.images(), key=lambda r: r["id"])[start : start + n]
        for img in images:
            truth = Path(img["path"]).parent.name
            pred = latest.get(img["id"])
            agrees = pred is not None and pred.get("label") == truth
            ws.add_review(
                img["id"],
                "ana",
                [truth],
                action="confirm" if agrees else "correct",
                prediction_id=pred["id"] if pred else None,
            )
    return len(images)


def store(ws_folder: Path) -> dict:
    """What Improve must not change behind the user's back: model versions and the active one."""
    conn = sqlite3.connect(ws_folder / "workspace.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        models = [dict(r) for r in conn.execute("SELECT * FROM models ORDER BY hash")]
        active = conn.execute("SELECT hash FROM models WHERE active = 1").fetchone()
        audit = [dict(r) for r in conn.execute("SELECT action, details FROM audit ORDER BY id")]
    finally:
        conn.close()
    return {"models": models, "active": active[0] if active else None, "audit": audit}


def make_window(qtbot, tmp_path: Path, ws_folder: Path) -> MainWindow:
    w = MainWindow(
        AppSettings(reviewer="ana"), data_dir=tmp_path / "userdata", preload=False, pages=False
    )
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.worklist_loaded, timeout=60_000):
        assert w.open_workspace(ws_folder)
    qtbot.waitUntil(lambda: w.improver.status is not None, timeout=60_000)
    return w


def recount(qtbot, w: MainWindow) -> dict:
    with qtbot.waitSignal(w.improver.status_changed, timeout=60_000) as sig:
        w.improver.refresh()
    return sig.args[0]


def wait_screening_done(qtbot, w: MainWindow) -> None:
    if w.is_screening():
        with qtbot.waitSignal(w.screening_finished, timeout=RUN_MS):
            pass


def start_improve(qtbot, w: MainWindow, epochs: int = 1) -> ImproveDialog:
    assert w.act_improve.isEnabled(), w.act_improve.toolTip()
    w.act_improve.trigger()
    dlg = w.improver.dialog
    assert isinstance(dlg, ImproveDialog) and dlg.isVisible()
    dlg.set_options(strategy="head", epochs=epochs)
    qtbot.mouseClick(dlg.start_button, Qt.MouseButton.LeftButton)
    assert dlg.is_running()
    return dlg


def run_to_compare(qtbot, w: MainWindow) -> CompareDialog:
    dlg = start_improve(qtbot, w)
    qtbot.waitUntil(
        lambda: w.improver.compare is not None or dlg.outcome == "failed", timeout=RUN_MS
    )
    assert dlg.outcome != "failed", dlg.message
    compare = w.improver.compare
    assert isinstance(compare, CompareDialog)
    return compare


def test_button_counts_new_reviews_and_enables_at_the_minimum(qtbot, tmp_path, ws_folder):
    add_reviews(ws_folder, 12)
    w = make_window(qtbot, tmp_path, ws_folder)
    status = w.improver.status
    assert status["new_reviews"] == 12 and not status["enough"]
    assert not w.act_improve.isEnabled()
    assert "Improve model (12 new)" in w.act_improve.iconText()
    assert "12 new reviews; 20 needed" in w.act_improve.toolTip()

    add_reviews(ws_folder, 10, start=12)
    status = recount(qtbot, w)
    assert status["new_reviews"] == 22 and status["enough"]
    assert w.act_improve.isEnabled()
    assert w.act_improve.iconText().startswith("Improve model (22 new)")
    assert "Ctrl+I" in w.act_improve.iconText()  # the key is printed on the button
    button = w.toolbar.widgetForAction(w.act_improve)
    assert button.isEnabled() and "22 new" in button.text()


def test_improve_runs_a_child_and_compares_then_accept_switches(qtbot, tmp_path, ws_folder):
    add_reviews(ws_folder, 40)
    w = make_window(qtbot, tmp_path, ws_folder)
    before_store = store(ws_folder)
    old_active = before_store["active"]
    compare = run_to_compare(qtbot, w)
    result = compare.result
    dlg_texts = compare.metric_texts()
    # before/after numbers shown are the child's result, every one with its word
    for key in ("accuracy", "balanced_accuracy"):
        assert dlg_texts[key][0] == format_metric(key, result["before"][key])
        assert dlg_texts[key][1] == format_metric(key, result["after"][key])
    for key, (_, _, change) in dlg_texts.items():
        if result["before"].get(key) is not None and result["after"].get(key) is not None:
            assert change[0] in "▲▼=↑↓", change  # a symbol, never only a colour
    assert f"Audit set: {result['after']['n']} reviewed images" in compare.head.text()
    assert compare.changed.rowCount() == len(result["changed"])
    assert store(ws_folder)["active"] == old_active  # nothing switched before the choice

    qtbot.mouseClick(compare.accept_button, Qt.MouseButton.LeftButton)
    assert store(ws_folder)["active"] == result["model"]
    assert (
        w.model_path is not None and w.model_path.resolve() == Path(result["model_path"]).resolve()
    )
    assert w.screen_job is not None  # re-screening started in the background
    wait_screening_done(qtbot, w)
    assert store(ws_folder)["active"] == result["model"]
    assert "improve.accept" in [a["action"] for a in store(ws_folder)["audit"]]


def test_keep_current_model_leaves_the_active_model(qtbot, tmp_path, ws_folder):
    add_reviews(ws_folder, 40)
    w = make_window(qtbot, tmp_path, ws_folder)
    old_active = store(ws_folder)["active"]
    compare = run_to_compare(qtbot, w)
    new_hash = compare.result["model"]
    qtbot.mouseClick(compare.keep_button, Qt.MouseButton.LeftButton)
    assert compare.decision == "rejected"
    after = store(ws_folder)
    assert after["active"] == old_active and new_hash != old_active
    assert w.screen_job is None  # nothing to re-screen
    assert "improve.reject" in [a["action"] for a in after["audit"]]


def test_cancel_kills_the_child_and_changes_nothing(qtbot, tmp_path, ws_folder):
    add_reviews(ws_folder, 40)
    w = make_window(qtbot, tmp_path, ws_folder)
    before = store(ws_folder)
    dlg = start_improve(qtbot, w, epochs=50)
    run = dlg.run
    qtbot.waitUntil(lambda: run.pid > 0, timeout=30_000)
    pid = run.pid
    # wait until the child is really at work (it has said something), then cancel
    lines: list[str] = []
    run.log.connect(lines.append)
    run.progress.connect(lambda e: lines.append(str(e)))
    qtbot.waitUntil(lambda: bool(lines) or not run.is_running(), timeout=RUN_MS)
    assert run.is_running()
    with qtbot.waitSignal(run.ended, timeout=60_000):
        qtbot.mouseClick(dlg.close_button, Qt.MouseButton.LeftButton)  # "Cancel  Esc"
    assert dlg.outcome == "cancelled" and "Nothing was changed" in dlg.message
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone (and reaped)
    if sys.platform != "win32":
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # and so is everything it started (its process group)
    assert w.improver.compare is None
    after = store(ws_folder)
    assert after["active"] == before["active"]
    assert after["models"] == before["models"]
    assert dlg.isVisible() and dlg.start_button.isEnabled()  # can try again
    dlg.reject()


def test_a_crashing_child_is_explained_and_changes_nothing(qtbot, tmp_path, ws_folder, monkeypatch):
    import engine.improve.process

    script = (
        "import json, sys;"
        "print(json.dumps({'event': 'progress', 'done': 1, 'total': 5, 'epoch': 1,"
        " 'loss': 0.7, 'eta_s': 9}), flush=True);"
        "sys.stderr.write('RuntimeError: out of memory while training\\n');"
        "sys.exit(3)"
    )
    monkeypatch.setattr(
        engine.improve.process, "worker_command", lambda args: [sys.executable, "-c", script]
    )
    add_reviews(ws_folder, 25)
    w = make_window(qtbot, tmp_path, ws_folder)
    before = store(ws_folder)
    dlg = start_improve(qtbot, w)
    with qtbot.waitSignal(dlg.run.ended, timeout=60_000):
        pass
    assert dlg.outcome == "failed"
    assert "exit code 3" in dlg.message and "out of memory" in dlg.message
    assert "Nothing was changed" in dlg.message
    assert dlg.progress_label.text().startswith("✕")  # a symbol with the words
    assert w.improver.compare is None
    assert store(ws_folder)["models"] == before["models"]
    dlg.reject()


def test_history_lists_versions_and_rolls_back(qtbot, tmp_path, ws_folder):
    add_reviews(ws_folder, 40)
    w = make_window(qtbot, tmp_path, ws_folder)
    original = store(ws_folder)["active"]

    # reachable before any improvement: one version, already active
    w.act_history.trigger()
    hist = w.improver.history
    assert hist is not None and hist.table.rowCount() == 1
    assert hist.active_hash() == original and not hist.rollback_button.isEnabled()
    assert "✓" in hist.table.item(0, 0).text()
    hist.reject()

    compare = run_to_compare(qtbot, w)
    new_hash = compare.result["model"]
    qtbot.mouseClick(compare.accept_button, Qt.MouseButton.LeftButton)
    wait_screening_done(qtbot, w)
    assert store(ws_folder)["active"] == new_hash

    w.act_history.trigger()
    hist = w.improver.history
    hashes = [e["hash"] for e in hist.entries]
    assert original in hashes and new_hash in hashes
    assert hist.active_hash() == new_hash
    new_row = hashes.index(new_hash)
    assert hist.table.item(new_row, 2).text() == new_hash[:8]
    assert hist.table.item(new_row, 7).text() != "—"  # its audit balanced accuracy
    assert hist.select_hash(original) and hist.rollback_button.isEnabled()
    qtbot.mouseClick(hist.rollback_button, Qt.MouseButton.LeftButton)
    assert store(ws_folder)["active"] == original
    assert hist.active_hash() == original
    assert w.screen_job is not None and w.model_path is not None
    wait_screening_done(qtbot, w)
    assert store(ws_folder)["active"] == original
    hist.reject()
