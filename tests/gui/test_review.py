"""The review page driven with real keys: evidence, decisions, undo, blind mode, overlays."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PySide6.QtCore import QEvent, QObject, Qt

from desktop.review import ReviewPage
from desktop.style import triage_style

WAIT_MS = 60_000  # generous: the first overlay loads torch and the model on 2 shared cores


def db_rows(ws_folder: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    """Read straight from the SQLite file, as any other tool would."""
    conn = sqlite3.connect(ws_folder / "workspace.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def reviews(ws_folder: Path) -> list[dict]:
    rows = db_rows(ws_folder, "SELECT * FROM reviews ORDER BY id")
    return [{**dict(r), "labels": json.loads(r["labels"])} for r in rows]


def prediction(ws_folder: Path, image_id: int) -> dict:
    row = db_rows(
        ws_folder,
        "SELECT * FROM predictions WHERE image_id = ? ORDER BY id DESC LIMIT 1",
        (image_id,),
    )[0]
    return {
        **dict(row),
        "probabilities": json.loads(row["probabilities"]),
        "conformal_set": json.loads(row["conformal_set"] or "null"),
    }


@pytest.fixture
def image_ids(ws_folder) -> list[int]:
    return [int(r[0]) for r in db_rows(ws_folder, "SELECT id FROM images ORDER BY id")]


@pytest.fixture
def page(qtbot, ws_folder, tiny_model, image_ids):
    page = ReviewPage()
    qtbot.addWidget(page)
    page.resize(1100, 740)
    page.set_workspace(ws_folder, tiny_model)
    page.set_reviewer("ana")
    page.set_queue(image_ids)
    page.show()
    qtbot.waitExposed(page)
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    yield page
    page.shutdown()


def key(qtbot, page, k) -> None:
    """Press a key as the reader does: into whatever has the focus in the window."""
    qtbot.keyClick(page.focusWidget() or page, k)


def other_label(labels: list[str], label: str) -> str:
    return next(x for x in labels if x != label)


def test_showing_an_image_fills_the_evidence_panel(qtbot, page, ws_folder, image_ids):
    with qtbot.waitSignal(page.current_changed) as signal:
        page.show_image(image_ids[0])
    assert signal.args == [image_ids[0]]
    pred = prediction(ws_folder, image_ids[0])
    texts = page.evidence.texts()
    shown_label = pred["label"].replace("_", " ")
    assert texts["answer"].startswith(shown_label)
    assert f"{pred['confidence']:.0%}" in texts["answer"]
    rows = page.evidence.bars.rows()
    assert [name for name, _, _ in rows] == ["diabetic retinopathy", "normal"]
    assert [p for _, p, _ in rows] == pytest.approx(
        [pred["probabilities"]["diabetic_retinopathy"], pred["probabilities"]["normal"]]
    )
    assert [top for _, _, top in rows] == [
        pred["label"] == "diabetic_retinopathy",
        pred["label"] == "normal",
    ]
    if pred["conformal_set"]:
        assert "right for 90% of images on average" in texts["set"]
        assert all(x.replace("_", " ") in texts["set"] for x in pred["conformal_set"])
    assert texts["uncertainty"].startswith("The model is ")
    assert texts["triage"] == triage_style(pred["triage"]).text
    assert texts["reason"] == pred["triage_reason"]
    assert "demo" not in texts  # the tiny model is not the demo model
    assert page.panel.current_label.text() == "Not reviewed"
    assert [b.text() for b in page.panel.label_buttons] == ["1  diabetic retinopathy", "2  normal"]
    qtbot.waitUntil(page.viewer.has_image, timeout=WAIT_MS)
    assert page.viewer.message() == ""


def test_an_opened_image_is_painted_a_turn_later_and_never_left_unpainted(qtbot, page, image_ids):
    class Paints(QObject):
        count = 0

        def eventFilter(self, _obj, event):  # noqa: N802 - Qt override
            if event.type() == QEvent.Type.Paint:
                Paints.count += 1
            return False

    paints = Paints()
    page.evidence.installEventFilter(paints)
    page.show_image(image_ids[0])
    # filled now and laid out in the next turn of the event loop; painted in a later one
    assert not page.updatesEnabled()
    for image_id in image_ids[1:4]:  # a held key: images opened in quick succession
        page.show_image(image_id)
    assert not page.updatesEnabled()
    Paints.count = 0
    qtbot.waitUntil(page.updatesEnabled, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: Paints.count > 0, timeout=WAIT_MS)
    assert page.current_image_id() == image_ids[3]
    assert page.evidence.texts()["answer"]


def test_label_key_saves_a_review_and_advances(qtbot, page, ws_folder, image_ids):
    page.show_image(image_ids[0])
    pred = prediction(ws_folder, image_ids[0])
    labels = ["diabetic_retinopathy", "normal"]
    chosen = other_label(labels, pred["label"])
    with qtbot.waitSignal(page.reviewed) as saved, qtbot.waitSignal(page.current_changed) as moved:
        key(qtbot, page, str(labels.index(chosen) + 1))
    assert saved.args == [image_ids[0]]
    assert moved.args == [image_ids[1]]
    assert page.current_image_id() == image_ids[1]
    [row] = reviews(ws_folder)
    assert (row["image_id"], row["reviewer"], row["labels"], row["action"]) == (
        image_ids[0],
        "ana",
        [chosen],
        "correct",
    )
    assert row["prediction_id"] == pred["id"]
    assert row["seconds"] is not None and row["seconds"] >= 0
    # the AI's own label is recorded as a confirmation
    ai = prediction(ws_folder, image_ids[1])["label"]
    key(qtbot, page, str(labels.index(ai) + 1))
    assert reviews(ws_folder)[-1]["action"] == "confirm"
    assert reviews(ws_folder)[-1]["labels"] == [ai]
    assert page.current_image_id() == image_ids[2]


def test_enter_confirms_and_u_marks_ungradable(qtbot, page, ws_folder, image_ids):
    page.show_image(image_ids[3])
    ai = prediction(ws_folder, image_ids[3])["label"]
    key(qtbot, page, Qt.Key.Key_Return)
    key(qtbot, page, Qt.Key.Key_U)
    first, second = reviews(ws_folder)
    assert (first["image_id"], first["action"], first["labels"]) == (image_ids[3], "confirm", [ai])
    assert (second["image_id"], second["action"], second["labels"]) == (
        image_ids[4],
        "ungradable",
        [],
    )
    assert page.current_image_id() == image_ids[5]


def test_undo_appends_a_review_and_goes_back(qtbot, page, ws_folder, image_ids):
    page.show_image(image_ids[0])
    key(qtbot, page, "2")
    assert page.current_image_id() == image_ids[1]
    with qtbot.waitSignal(page.reviewed) as undone:
        key(qtbot, page, Qt.Key.Key_Z)
    assert undone.args == [image_ids[0]]
    assert page.current_image_id() == image_ids[0]
    rows = reviews(ws_folder)
    assert [r["action"] for r in rows] == ["correct", "undo"]  # nothing deleted
    assert rows[1]["undoes"] == rows[0]["id"]
    assert page.panel.current_label.text() == "Not reviewed"
    # with a second decision underneath, undo restores it
    key(qtbot, page, "1")
    page.show_image(image_ids[0])
    key(qtbot, page, "2")
    page.show_image(image_ids[0])
    assert "normal" in page.panel.current_label.text()
    key(qtbot, page, Qt.Key.Key_Z)
    assert page.panel.current_label.text().startswith("Reviewed by ana: diabetic retinopathy")
    key(qtbot, page, Qt.Key.Key_Z)
    key(qtbot, page, Qt.Key.Key_Z)
    assert "Nothing to undo" in page.panel.prompt_label.text()
    assert [r["action"] == "undo" for r in reviews(ws_folder)] == [
        False,
        True,
        False,
        False,
        True,
        True,
    ]


def test_without_a_reviewer_nothing_is_saved(qtbot, page, ws_folder, image_ids):
    page.set_reviewer("")
    page.show_image(image_ids[0])
    key(qtbot, page, "1")
    key(qtbot, page, Qt.Key.Key_Return)
    assert reviews(ws_folder) == []
    assert page.current_image_id() == image_ids[0]
    assert "reviewer name" in page.panel.prompt_label.text()
    assert page.panel.prompt_label.isVisible()


def test_blind_mode_hides_the_answer_until_the_reviewer_commits(qtbot, page, ws_folder, image_ids):
    page.set_blind(True)
    page.show_image(image_ids[2])
    pred = prediction(ws_folder, image_ids[2])
    texts = page.evidence.texts()
    assert "answer" not in texts and "hidden" in texts
    assert not page.evidence.answer_label.isVisible()
    assert not page.evidence.bars.isVisible()
    assert not page.evidence.set_label.isVisible()
    key(qtbot, page, Qt.Key.Key_Return)  # confirming the unseen AI answer is refused
    assert reviews(ws_folder) == []
    key(qtbot, page, "1")
    [row] = reviews(ws_folder)
    assert row["labels"] == ["diabetic_retinopathy"]
    assert page.current_image_id() == image_ids[2]  # stays, to show what the AI said
    assert page.evidence.answer_label.isVisible()
    assert page.evidence.bars.isVisible()
    assert page.evidence.texts()["answer"].startswith(pred["label"].replace("_", " "))
    key(qtbot, page, "j")
    assert page.current_image_id() == image_ids[3]
    assert not page.evidence.answer_label.isVisible()


def test_page_keys_follow_the_focus_to_any_widget_of_its_window(qtbot, page, image_ids):
    # the page watches the focused widget and its window, not every event of the
    # application: a key still reaches it wherever the focus moves in the window
    from PySide6.QtWidgets import QApplication, QPushButton

    page.show_image(image_ids[0])
    held: list[bool] = []
    page.viewer.hold_original = held.append
    elsewhere = QPushButton("elsewhere", page)
    elsewhere.show()
    elsewhere.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is elsewhere)
    clicked: list[bool] = []
    elsewhere.clicked.connect(lambda: clicked.append(True))
    qtbot.keyPress(elsewhere, Qt.Key.Key_Space)
    qtbot.keyRelease(elsewhere, Qt.Key.Key_Space)
    assert held == [True, False]  # the original while Space was down
    assert clicked == []  # the page took the key: the button did not
    # a key sent to a widget without the focus is not the reader's key
    other = QPushButton("not focused", page)
    other.show()
    qtbot.keyPress(other, Qt.Key.Key_Space)
    assert held == [True, False]
    elsewhere.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is elsewhere)
    key(qtbot, page, "j")  # and the page's shortcuts too
    assert page.current_image_id() == image_ids[1]


def test_gradcam_overlay_appears_and_holding_space_shows_the_original(qtbot, page, image_ids):
    page.show_image(image_ids[0])
    key(qtbot, page, Qt.Key.Key_G)
    assert page.overlay_method() == "gradcam"
    assert page.bar.buttons["gradcam"].isChecked()
    qtbot.waitUntil(page.viewer.overlay_shown, timeout=WAIT_MS)
    overlay = page.viewer.overlay_item()
    assert overlay.opacity() == pytest.approx(0.4)
    assert overlay.pixmap().size() == page.viewer.image_item().pixmap().size()
    assert page.bar.status.text().startswith("Grad-CAM of “")
    target = page.focusWidget() or page
    qtbot.keyPress(target, Qt.Key.Key_Space)  # held down: the original
    assert not page.viewer.overlay_shown()
    qtbot.keyRelease(target, Qt.Key.Key_Space)  # let go: the overlay is back
    assert page.viewer.overlay_shown()
    # the next image was prefetched with its overlay, so switching shows it at once
    qtbot.waitUntil(lambda: not page.is_busy(), timeout=WAIT_MS)
    key(qtbot, page, "j")
    assert page.viewer.has_image() and page.viewer.overlay_shown()
    key(qtbot, page, Qt.Key.Key_O)
    assert not page.viewer.has_overlay()


def test_j_k_and_arrows_move_along_the_queue(qtbot, page, image_ids):
    queue = [image_ids[5], image_ids[1], image_ids[7]]
    page.set_queue(queue)
    page.show_image(queue[0])
    with qtbot.waitSignal(page.current_changed) as moved:
        key(qtbot, page, "j")
    assert moved.args == [queue[1]]
    with qtbot.waitSignal(page.current_changed) as moved:
        key(qtbot, page, Qt.Key.Key_Right)
    assert moved.args == [queue[2]]
    key(qtbot, page, Qt.Key.Key_Right)  # end of the queue: stays
    assert page.current_image_id() == queue[2]
    assert "End of list" in page.panel.prompt_label.text()
    with qtbot.waitSignal(page.current_changed) as moved:
        key(qtbot, page, "k")
    assert moved.args == [queue[1]]
    key(qtbot, page, Qt.Key.Key_Left)
    assert page.current_image_id() == queue[0]


def test_missing_file_is_a_message_not_a_crash(qtbot, page, ws_folder, tmp_path):
    from engine.store import Workspace

    gone = tmp_path / "1234_OD_gone.png"
    with Workspace.open(ws_folder) as ws:
        image_id = ws.add_image(gone, "0" * 64, 10)
    page.show_image(image_id)
    qtbot.waitUntil(
        lambda: "Cannot show 1234_OD_gone.png" in page.viewer.message(), timeout=WAIT_MS
    )
    assert "not found" in page.viewer.message()
    assert page.evidence.texts()["answer"] == "Not screened yet"
    key(qtbot, page, "u")  # the reader can still record that it is ungradable
    assert reviews(ws_folder)[-1]["action"] == "ungradable"


def test_shutdown_waits_for_workers(qtbot, page, image_ids):
    page.show_image(image_ids[0])
    page.set_overlay_method("ig")  # the slowest overlay, so work is still under way
    assert page.is_busy()
    page.shutdown()
    assert not page.is_busy()
    page.show_image(image_ids[1])  # after shutdown nothing new starts
    assert not page.is_busy()


def test_note_is_typed_without_triggering_keys_and_saved_with_the_decision(
    qtbot, page, ws_folder, image_ids
):
    page.show_image(image_ids[0])
    key(qtbot, page, Qt.Key.Key_N)
    assert page.panel.note_edit.isVisible() and page.panel.note_edit.hasFocus()
    qtbot.keyClicks(page.panel.note_edit, "judge 2 unsure")  # letters and digits that are keys
    qtbot.keyClick(page.panel.note_edit, Qt.Key.Key_Return)
    assert reviews(ws_folder) == []
    assert page.current_image_id() == image_ids[0]
    assert not page.panel.note_edit.hasFocus()
    key(qtbot, page, "j")  # moving away keeps the unsaved note with its image
    key(qtbot, page, "k")
    assert page.panel.note_edit.text() == "judge 2 unsure"
    key(qtbot, page, Qt.Key.Key_U)
    [row] = reviews(ws_folder)
    assert (row["action"], row["note"]) == ("ungradable", "judge 2 unsure")
    assert page.panel.note_edit.text() == ""


SHOW_WITHOUT_TORCH = """
import sys, time
from pathlib import Path
from PySide6.QtWidgets import QApplication
app = QApplication([])
from desktop.review import ReviewPage
page = ReviewPage()
page.set_workspace(Path(sys.argv[1]), Path(sys.argv[2]))
page.set_reviewer("ana")
page.set_queue([1, 2, 3])
page.show_image(1)
deadline = time.monotonic() + 60
while not page.viewer.has_image() and time.monotonic() < deadline:
    app.processEvents()
    time.sleep(0.01)
shown = page.viewer.has_image()
page.press_label(0)
print(shown, page.current_image_id(), "torch" in sys.modules)
page.shutdown()
"""


def test_showing_and_reviewing_never_import_torch(ws_folder, tiny_model):
    """torch is imported only when an overlay is asked for, and then in a worker."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", SHOW_WITHOUT_TORCH, str(ws_folder), str(tiny_model)],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "2", "False"]
