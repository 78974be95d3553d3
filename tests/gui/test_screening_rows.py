"""The window and the engine share rules: screening streams the rows the engine stored
(no look at the database from the window, one row builder), the activation rule is the
engine's, and the pages are reached through their typed interfaces."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from desktop.mainwindow import MainWindow
from desktop.pages import DashboardPlaceholder, DashboardView, ReviewPlaceholder, ReviewView
from desktop.settings import AppSettings
from desktop.worklist_model import ImageIdRole
from engine.store import Workspace


def make_window(qtbot, tmp_path: Path, pages: bool = False) -> MainWindow:
    w = MainWindow(
        AppSettings(reviewer="ana"), data_dir=tmp_path / "userdata", preload=False, pages=pages
    )
    qtbot.addWidget(w)
    w.show()
    return w


def open_folder(qtbot, w: MainWindow, folder: Path, model: Path) -> Path:
    with qtbot.waitSignal(w.worklist_loaded, timeout=60_000):
        ws = w.open_image_folder(folder)
    assert ws is not None and w.set_model(model)
    return ws


@pytest.fixture
def opens(monkeypatch) -> list[str]:
    """The module that called ``Workspace.open``, for every call (any thread)."""
    calls: list[str] = []
    original = Workspace.open.__func__

    def counting(cls, *args, **kwargs):
        calls.append(sys._getframe(1).f_globals.get("__name__", ""))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Workspace, "open", classmethod(counting))
    return calls


def test_screening_fills_the_worklist_without_reading_the_database_again(
    qtbot, tmp_path, synth_fundus, tiny_model, opens
):
    w = make_window(qtbot, tmp_path)
    open_folder(qtbot, w, synth_fundus, tiny_model)
    chunks: list[int] = []
    seen: dict = {}
    job = w.start_screening(ask=False, uncertainty="none", batch_size=16)
    assert job is not None
    opened_before = list(opens)
    job.rows.connect(lambda rows: chunks.append(len(rows)))

    def at_done(_summary: dict) -> None:  # before the window reloads anything
        seen["opens"] = opens[len(opened_before) :]
        seen["rows"] = {r["image_id"]: dict(r) for r in w.worklist.model.rows()}

    job.done.connect(at_done)
    with qtbot.waitSignal(w.screening_finished, timeout=180_000) as done:
        pass
    assert done.args[0]["status"] == "finished", w.last_error
    # every row came with the stream (chunks that arrive within one poll come as one update)
    assert sum(chunks) == 48
    assert len(seen["rows"]) == 48  # the worklist was filled by the stream alone
    # the engine stored the rows in the screening process; the window opened no
    # workspace connection while it ran
    assert job.proc is not None and job.proc.pid != os.getpid()
    assert seen["opens"] == []

    # one row builder: a streamed row is exactly the row loaded from the store later
    with qtbot.waitSignal(w.worklist_loaded, timeout=60_000):
        w.reload_worklist()
    loaded = {r["image_id"]: r for r in w.worklist.model.rows()}
    assert loaded == seen["rows"]
    assert all(r["prediction_id"] is not None and r["sha256"] for r in loaded.values())


def test_the_desktop_keeps_the_engines_activation_rule(
    qtbot, tmp_path, synth_fundus, tiny_model, second_model
):
    from engine.images import discover_images
    from engine.modelfile import file_sha256

    w = make_window(qtbot, tmp_path)
    ws = open_folder(qtbot, w, synth_fundus, tiny_model)
    with qtbot.waitSignal(w.screening_finished, timeout=180_000):
        w.start_screening(ask=False, uncertainty="none")
    first, second = file_sha256(tiny_model), file_sha256(second_model)

    # the second version screens two images only: switching would hide 46 rows
    assert w.set_model(second_model)
    some = discover_images(synth_fundus)[:2]
    with qtbot.waitSignal(w.screening_finished, timeout=180_000) as done:
        w.start_screening(ask=False, uncertainty="none", paths=some)
    assert done.args[0]["status"] == "finished"
    assert w.last_activation is not None and not w.last_activation["activated"]
    assert "46 image(s)" in w.last_activation["message"]
    assert w.model_path == tiny_model.resolve()  # the toolbar follows the active model
    assert "Active model unchanged" in w.statusBar().currentMessage()
    qtbot.waitUntil(lambda: w.worklist.model.rowCount() == 48, timeout=60_000)
    with Workspace.open(ws, create=False) as store:
        assert store.active_model()["hash"] == first

    # screening every image with it makes it the active model
    assert w.set_model(second_model)
    with qtbot.waitSignal(w.screening_finished, timeout=180_000):
        w.start_screening(ask=False, uncertainty="none")
    assert w.last_activation["activated"] and w.last_activation["changed"]
    assert w.model_path == second_model.resolve()
    with Workspace.open(ws, create=False) as store:
        assert store.active_model()["hash"] == second
        assert store.audit_log()[-1]["actor"] == "ana"


def test_placeholders_and_pages_implement_the_page_interfaces(qtbot):
    from desktop.dashboard import DashboardPage
    from desktop.review import ReviewPage

    for page, interface in (
        (ReviewPlaceholder(), ReviewView),
        (ReviewPage(), ReviewView),
        (DashboardPlaceholder(), DashboardView),
        (DashboardPage(), DashboardView),
    ):
        qtbot.addWidget(page)
        assert isinstance(page, interface), type(page).__name__
    ReviewPage().shutdown()


def test_a_review_saved_on_the_page_updates_its_worklist_row(
    qtbot, tmp_path, synth_fundus, tiny_model, second_model
):
    w = make_window(qtbot, tmp_path, pages=True)
    open_folder(qtbot, w, synth_fundus, tiny_model)
    with qtbot.waitSignal(w.screening_finished, timeout=180_000):
        w.start_screening(ask=False, uncertainty="none")
    qtbot.waitUntil(lambda: w.worklist.model.rowCount() == 48, timeout=60_000)
    row = w.worklist.model.rows()[0]
    w.worklist.select_image(row["image_id"])
    qtbot.waitUntil(lambda: w.review_page.current_image_id() == row["image_id"], timeout=30_000)
    with qtbot.waitSignal(w.review_page.reviewed, timeout=30_000):
        w.review_page.mark_ungradable()
    updated = next(r for r in w.worklist.model.rows() if r["image_id"] == row["image_id"])
    assert (updated["reviewed_label"], updated["reviewer"]) == ("ungradable", "ana")

    # another model in the toolbar: the page starts afresh and shows the selected image again
    shown = w.worklist.current_image()
    assert w.set_model(second_model)
    assert w.review_page.current_image_id() == shown is not None
    assert w.review_page.evidence.texts()["answer"] != "Not screened yet"


def test_the_image_a_reader_has_open_stays_open_when_a_run_ends(
    qtbot, tmp_path, synth_fundus, tiny_model
):
    """The worklist re-reads the store when a run ends; the image the reader is looking at
    stays the current one (the view does not jump back to the top of the list)."""
    w = make_window(qtbot, tmp_path)
    open_folder(qtbot, w, synth_fundus, tiny_model)
    w.filter_bar.set_current("all")
    with qtbot.waitSignal(w.screening_finished, timeout=180_000):
        w.start_screening(ask=False, uncertainty="none")
    qtbot.waitUntil(lambda: w.worklist.proxy.rowCount() == 48, timeout=60_000)
    chosen = w.worklist.proxy.index(5, 0).data(ImageIdRole)
    assert w.worklist.select_image(chosen)
    with qtbot.waitSignal(w.worklist_loaded, timeout=180_000):
        w.start_screening(ask=False, uncertainty="none")  # screens the same images again
    assert w.worklist.current_image() == chosen
    assert w.worklist.model.rowCount() == 48
