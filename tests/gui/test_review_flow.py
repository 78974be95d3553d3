"""The reading flow in the whole window: blind mode in every view, progress that moves,
the end of the list, the shortcut sheet and the small things a reader trips over."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.mainwindow import MainWindow
from desktop.settings import AppSettings
from desktop.worklist_model import COL_CONFIDENCE, COL_LABEL, COL_TRIAGE, COL_UNCERTAINTY
from engine.triage import HUMAN_STATES

WAIT_MS = 60_000


def rows(ws_folder: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(ws_folder / "workspace.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def reviews(ws_folder: Path) -> list[dict]:
    out = rows(ws_folder, "SELECT * FROM reviews ORDER BY id")
    return [{**dict(r), "labels": json.loads(r["labels"])} for r in out]


def open_window(qtbot, tmp_path, ws_folder, tiny_model, **settings) -> MainWindow:
    w = MainWindow(
        AppSettings(reviewer="ana", **settings), data_dir=tmp_path / "userdata", preload=False
    )
    qtbot.addWidget(w)
    w.resize(1280, 720)
    w.show()
    qtbot.waitExposed(w)
    with qtbot.waitSignal(w.worklist_loaded, timeout=WAIT_MS):
        assert w.open_workspace(ws_folder)
    assert w.set_model(tiny_model)
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow)
    return w


def press(qtbot, w: MainWindow, k) -> None:
    qtbot.keyClick(w.focusWidget() or w, k)


def row_of(w: MainWindow, image_id: int) -> int:
    row = w.worklist.model.row_of(image_id)
    assert row is not None
    return row


def cell(w: MainWindow, image_id: int, col: int) -> str:
    model = w.worklist.model
    return model.index(row_of(w, image_id), col).data()


def wait_queue(qtbot, w: MainWindow) -> None:
    """The worklist hands its visible order to the review page on a short timer."""
    qtbot.wait(250)


# --------------------------------------------------------------------------- blind mode


def test_blind_mode_hides_the_ai_in_worklist_filters_and_dashboard(
    qtbot, tmp_path, ws_folder, tiny_model
):
    w = open_window(qtbot, tmp_path, ws_folder, tiny_model, blind_mode=True)
    model = w.worklist.model
    first = model.row(0)
    assert first["label"] is not None
    for col in (COL_LABEL, COL_CONFIDENCE, COL_UNCERTAINTY):
        assert cell(w, first["image_id"], col) == "hidden"
    if first["triage"] in ("needs-review", "auto-cleared"):
        assert cell(w, first["image_id"], COL_TRIAGE) == "hidden"
    # filters and orders that would reveal the AI's answer are not offered
    bar = w.filter_bar
    assert bar.current() == "all"
    for key in ("needs-review", "auto-cleared", "disagrees"):
        assert not bar.buttons[key].isEnabled()
        assert not any(ch.isdigit() for ch in bar.buttons[key].text())  # no count either
    qtbot.keyClick(w, Qt.Key.Key_2, Qt.KeyboardModifier.AltModifier)  # Alt+2 = Cleared
    assert bar.current() == "all"
    w.worklist.search.setText(first["display_label"])  # a search by the AI label finds nothing
    assert w.worklist.proxy.rowCount() == 0
    w.worklist.search.clear()
    w.worklist.view.sortByColumn(COL_CONFIDENCE, Qt.SortOrder.AscendingOrder)
    names = [model.row(i)["name"].lower() for i in range(model.rowCount())]
    assert names == sorted(names)  # confidence order refused: file-name order instead
    # the dashboard is covered until the reader has labelled every image
    w.tabs.setCurrentIndex(1)
    assert w.dashboard_page.is_covered()
    assert "Blind mode" in w.dashboard_page.blind_cover.text()
    w.tabs.setCurrentIndex(0)

    # a blind read is the reader's own label, with the prediction it was blind to
    target = first["image_id"]
    w.worklist.select_image(target)
    qtbot.waitUntil(lambda: w.review_page.current_image_id() == target)
    labels = ["diabetic_retinopathy", "normal"]
    with qtbot.waitSignal(w.review_page.reviewed):
        press(qtbot, w, str(labels.index(first["label"]) + 1))  # the AI's own answer
    [saved] = reviews(ws_folder)
    assert saved["labels"] == [first["label"]]
    assert saved["action"] == "correct"  # not "confirm": the reader did not see the AI
    assert saved["prediction_id"] == first["prediction_id"]
    assert "confirmed the AI" not in w.review_page.panel.current_label.text()
    # once committed, that row shows the AI answer again; the others stay hidden
    assert cell(w, target, COL_LABEL) == first["display_label"]
    other = next(
        model.row(i) for i in range(model.rowCount()) if model.row(i)["image_id"] != target
    )
    assert cell(w, other["image_id"], COL_LABEL) == "hidden"


# --------------------------------------------------------------------------- progress


def test_counts_fall_and_reviewed_rows_are_marked(qtbot, tmp_path, ws_folder, tiny_model):
    w = open_window(qtbot, tmp_path, ws_folder, tiny_model)
    bar, model = w.filter_bar, w.worklist.model
    counts = model.counts()
    person = sum(counts[s] for s in HUMAN_STATES)
    assert counts["person"] == person == counts["person:left"]
    assert bar.progress_text() == f"Need a clinician: {person} left of {person}"
    w.filter_bar.set_current("all")
    wait_queue(qtbot, w)
    page = w.review_page
    queue = w.worklist.proxy.visible_ids()
    assert page.progress() == (0, len(queue))
    assert f"{len(queue)} left" in page.panel.progress_label.text()

    needy = next(
        model.row(i) for i in range(model.rowCount()) if model.row(i)["triage"] != "auto-cleared"
    )
    state = needy["triage"]
    before = counts[f"{state}:left"]
    assert bar.buttons[state].text().endswith(f" {before}")
    w.worklist.select_image(needy["image_id"])
    qtbot.waitUntil(lambda: page.current_image_id() == needy["image_id"])
    with qtbot.waitSignal(page.reviewed):
        press(qtbot, w, Qt.Key.Key_U)
    # the state's count, the "need a person" line and the page's progress all move
    assert bar.buttons[state].text().endswith(f" {before - 1}")
    assert bar.progress_text() == f"Need a clinician: {person - 1} left of {person}"
    assert page.progress() == (1, len(queue))
    assert f"{len(queue) - 1} left" in page.panel.progress_label.text()
    assert cell(w, needy["image_id"], COL_TRIAGE) == "✔ Reviewed"
    # the dashboard counts what is left, ungradable and OOD images included
    w.tabs.setCurrentIndex(1)
    text = w.dashboard_page.reviewed_label.text()
    assert f"{person - 1} of the {person} images that need a clinician" in text
    w.tabs.setCurrentIndex(0)


def test_shift_j_goes_to_the_next_unreviewed_image(qtbot, tmp_path, ws_folder, tiny_model):
    w = open_window(qtbot, tmp_path, ws_folder, tiny_model, auto_advance=False)
    w.filter_bar.set_current("all")
    wait_queue(qtbot, w)
    page = w.review_page
    queue = w.worklist.proxy.visible_ids()
    page.show_image(queue[0])
    press(qtbot, w, Qt.Key.Key_U)  # reviewed; auto-advance off: stays
    page.show_image(queue[1])
    press(qtbot, w, Qt.Key.Key_U)
    page.show_image(queue[0])
    with qtbot.waitSignal(page.current_changed) as moved:
        qtbot.keyClick(w.focusWidget() or w, Qt.Key.Key_J, Qt.KeyboardModifier.ShiftModifier)
    assert moved.args == [queue[2]]  # skips queue[1], already reviewed
    assert page.panel.next_unreviewed_button.text().startswith("⇧J")


# --------------------------------------------------------------------------- end of list


def test_keys_past_the_end_of_the_list_do_not_relabel_the_last_image(
    qtbot, tmp_path, ws_folder, tiny_model
):
    w = open_window(qtbot, tmp_path, ws_folder, tiny_model)
    w.filter_bar.set_current("all")
    wait_queue(qtbot, w)
    page = w.review_page
    queue = w.worklist.proxy.visible_ids()
    last = queue[-1]
    page.show_image(last)
    press(qtbot, w, "1")
    press(qtbot, w, "2")  # the reader keeps going: nothing may change
    press(qtbot, w, Qt.Key.Key_Return)
    press(qtbot, w, Qt.Key.Key_U)
    saved = reviews(ws_folder)
    assert [(r["image_id"], r["labels"]) for r in saved] == [(last, ["diabetic_retinopathy"])]
    assert page.current_image_id() == last
    assert "End of list" in page.panel.prompt_label.text()
    # going back and forth releases it: a deliberate change is still possible
    press(qtbot, w, "k")
    press(qtbot, w, "j")
    press(qtbot, w, "2")
    assert reviews(ws_folder)[-1]["labels"] == ["normal"]


# --------------------------------------------------------------------------- shortcut sheet


def test_f1_and_question_mark_open_the_shortcut_sheet(qtbot, tmp_path, ws_folder, tiny_model):
    w = open_window(qtbot, tmp_path, ws_folder, tiny_model)
    qtbot.keyClick(w, Qt.Key.Key_F1)
    sheet = w.shortcut_sheet
    assert sheet is not None and sheet.isVisible()
    text = sheet.texts()
    for keys in ("Enter", "Shift+J", "Space (hold)", "Alt+1 … Alt+8", "F1  or  ?"):
        assert keys in text
    sheet.close()
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow)
    w.worklist.search.setFocus()
    qtbot.keyClick(w.worklist.search, "?")  # typing in a text field types a "?"
    assert w.worklist.search.text() == "?" and not sheet.isVisible()
    w.worklist.search.clear()
    w.worklist.view.setFocus()
    qtbot.keyClick(w.worklist.view, "?")
    assert sheet.isVisible()


# --------------------------------------------------------------------------- smaller items


def test_switching_filters_never_leaves_a_hidden_image_for_enter(
    qtbot, tmp_path, ws_folder, tiny_model
):
    w = open_window(qtbot, tmp_path, ws_folder, tiny_model)
    model, page = w.worklist.model, w.review_page
    states = {model.row(i)["triage"] for i in range(model.rowCount())}
    w.filter_bar.set_current("all")
    wait_queue(qtbot, w)
    shown = next(model.row(i) for i in range(model.rowCount()))
    w.worklist.select_image(shown["image_id"])
    qtbot.waitUntil(lambda: page.current_image_id() == shown["image_id"])
    other = next(
        s
        for s in ("needs-review", "auto-cleared", "ungradable", "out-of-distribution", "error")
        if s != shown["triage"]
    )
    w.filter_bar.set_current(other)
    wait_queue(qtbot, w)
    visible = w.worklist.proxy.visible_ids()
    if visible:  # the first image of the new list is shown instead
        assert page.current_image_id() == visible[0]
    else:
        assert page.current_image_id() is None
        press(qtbot, w, Qt.Key.Key_Return)
        assert reviews(ws_folder) == []
    assert page.current_image_id() != shown["image_id"]
    assert other in states or not visible


def test_ungradable_image_shows_no_grade(qtbot, tmp_path, ws_folder, tiny_model):
    from engine.store import Workspace

    w = open_window(qtbot, tmp_path, ws_folder, tiny_model)
    model, page = w.worklist.model, w.review_page
    row = model.row(0)
    # the store as screening wrote it, with this image's triage made "ungradable"
    with Workspace.open(ws_folder) as ws:
        record = ws.image_record(row["image_id"])
    pred = dict(record["prediction"], triage="ungradable", triage_reason="too dark")
    model.update_row(row["image_id"], triage="ungradable")
    assert cell(w, row["image_id"], COL_LABEL) == "—"
    assert cell(w, row["image_id"], COL_CONFIDENCE) == "—"
    page.evidence.show_prediction(pred)
    texts = page.evidence.texts()
    assert texts["answer"] == "No grade: the image is ungradable"
    assert "uncertainty" not in texts and not page.evidence.bars.isVisible()
    assert page._ai_labels(pred) == []  # Enter has nothing to confirm
    # the gate's reason is said once, on the quality line (which blind mode keeps)
    gated = dict(
        pred,
        triage_reason="out of focus (blurred); too dark",
        quality_ok=False,
        quality={"reasons": ["out of focus (blurred)", "too dark"]},
    )
    page.evidence.show_prediction(gated)
    texts = page.evidence.texts()
    assert texts["quality"] == "⚠ Poor image quality: out of focus (blurred); too dark"
    assert texts["triage"] == "⊘ Ungradable" and "reason" not in texts
    assert sum(text.count("out of focus") for text in texts.values()) == 1
    # what the quality line does not say still shows: here, that the model finds it unfamiliar
    page.evidence.show_prediction(
        dict(gated, triage_reason="out of focus (blurred); too dark; also unlike the training data")
    )
    assert page.evidence.texts()["reason"] == "also unlike the training data"


def test_a_note_on_an_already_reviewed_image_is_saved(qtbot, tmp_path, ws_folder, tiny_model):
    w = open_window(qtbot, tmp_path, ws_folder, tiny_model, auto_advance=False)
    w.filter_bar.set_current("all")
    wait_queue(qtbot, w)
    page = w.review_page
    image_id = w.worklist.proxy.visible_ids()[0]
    page.show_image(image_id)
    press(qtbot, w, "2")
    press(qtbot, w, Qt.Key.Key_N)
    qtbot.keyClicks(page.panel.note_edit, "drusen near the fovea")
    qtbot.keyClick(page.panel.note_edit, Qt.Key.Key_Return)
    first, second = reviews(ws_folder)
    assert (second["image_id"], second["labels"], second["action"]) == (
        first["image_id"],
        first["labels"],
        first["action"],
    )
    assert second["note"] == "drusen near the fovea"
    assert "Note saved" in page.panel.prompt_label.text()


def test_screen_dialog_enter_starts_and_the_folder_label_reads_cleanly(qtbot, tmp_path):
    from desktop.screening_control import ScreeningDialog

    dlg = ScreeningDialog(None, AppSettings(), [("tiny", "x.safetensors")], None, tmp_path)
    qtbot.addWidget(dlg)
    opened: list[bool] = []
    dlg._browse = lambda: opened.append(True)  # noqa: SLF001 - a file dialog would block
    dlg.browse.clicked.disconnect()
    dlg.browse.clicked.connect(dlg._browse)
    dlg.show()
    qtbot.waitExposed(dlg)
    assert dlg.folder_label.buddy() is dlg.folder  # the "&" is a mnemonic, not shown
    dlg.folder.setFocus()
    with qtbot.waitSignal(dlg.accepted, timeout=2000):
        qtbot.keyClick(dlg.folder, Qt.Key.Key_Return)  # Enter in the folder field starts
    assert opened == []


def test_patient_report_starts_at_the_patient_on_screen(
    qtbot, tmp_path, ws_folder, tiny_model, monkeypatch
):
    from PySide6.QtWidgets import QInputDialog

    from desktop.report import patients_in_workspace

    w = open_window(qtbot, tmp_path, ws_folder, tiny_model)
    patients = patients_in_workspace(ws_folder)
    assert len(patients) > 1
    w.filter_bar.set_current("all")
    wait_queue(qtbot, w)
    model = w.worklist.model
    target = next(
        model.row(i) for i in range(model.rowCount()) if model.row(i)["patient"] == patients[-1]
    )
    w.worklist.select_image(target["image_id"])
    qtbot.waitUntil(lambda: w.review_page.current_image_id() == target["image_id"])
    asked: list[int] = []

    def get_item(parent, title, label, items, current, editable):
        asked.append(current)
        return items[current], False  # cancelled: only the first choice matters here

    monkeypatch.setattr(QInputDialog, "getItem", staticmethod(get_item))
    w.patient_report()
    assert asked == [patients.index(patients[-1])]


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize(("size", "share"), [((1280, 720), 0.38), ((1920, 1080), 0.45)])
def test_the_image_gets_the_free_width_and_nothing_is_cut(
    qtbot, tmp_path, ws_folder, tiny_model, size, share
):
    from PySide6.QtWidgets import QScrollArea

    w = open_window(qtbot, tmp_path, ws_folder, tiny_model)
    w.resize(*size)
    qtbot.waitUntil(lambda: w.width() == size[0])
    w.filter_bar.set_current("all")
    wait_queue(qtbot, w)
    page = w.review_page
    page.show_image(w.worklist.proxy.visible_ids()[0])
    qtbot.wait(100)
    viewer = page.viewer.width()
    # the viewer is the widest pane, wider than the worklist and the evidence together
    assert viewer > w.worklist.width() and viewer > share * size[0]
    assert not w.worklist.view.horizontalHeader().stretchLastSection()  # no empty column
    # file, AI label and confidence are readable without scrolling the list sideways
    header = w.worklist.view.horizontalHeader()
    first_three = sum(header.sectionSize(c) for c in range(3))
    assert first_three <= w.worklist.view.viewport().width()
    # the evidence and the decision keys fit without scrolling
    scroll = page.findChild(QScrollArea, "evidenceScroll")
    assert scroll.verticalScrollBar().maximum() == 0
    # the overlay bar's status and key hints are whole
    bar = page.bar
    assert bar.hints.width() >= bar.hints.sizeHint().width()
    for button in (
        page.panel.prev_button,
        page.panel.next_button,
        page.panel.next_unreviewed_button,
    ):
        assert button.width() >= button.sizeHint().width() - 2
