"""Grading on the review page: schemes, answer keys, the AI's answer in the grader's terms."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from desktop.review import ReviewPage

WAIT_MS = 60_000


@pytest.fixture(scope="module")
def screened(tmp_path_factory, tiny_model, synth_fundus) -> Path:
    """A workspace in which the tiny model screened six synthetic images (made once)."""
    from engine.images import discover_images
    from engine.models import load_model
    from engine.screen import ScreenSettings
    from engine.workspace_screen import screen_into_workspace

    images = sorted(discover_images(synth_fundus), key=str)
    picked = images[:3] + images[-3:]  # both classes
    folder = tmp_path_factory.mktemp("ws_grading")
    screen_into_workspace(
        folder, picked, [load_model(tiny_model, device="cpu")], ScreenSettings(device="cpu")
    )
    return folder


@pytest.fixture
def ws_folder(tmp_path, screened) -> Path:
    folder = tmp_path / "ws"
    shutil.copytree(screened, folder)
    return folder


def rows(folder: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(folder / "workspace.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def image_ids(ws_folder) -> list[int]:
    return [int(r[0]) for r in rows(ws_folder, "SELECT id FROM images ORDER BY id")]


@pytest.fixture
def page(qtbot, ws_folder, tiny_model, image_ids):
    page = ReviewPage()
    qtbot.addWidget(page)
    page.resize(1100, 760)
    page.set_workspace(ws_folder, tiny_model)
    page.set_reviewer("ana")
    page.set_auto_advance(False)
    page.set_queue(image_ids)
    page.show()
    qtbot.waitExposed(page)
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    page.show_image(image_ids[0])
    page.viewer.setFocus()
    yield page
    page.shutdown()


def key(qtbot, page, k, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    qtbot.keyClick(page.focusWidget() or page, k, modifier)


def grades(folder: Path) -> list[dict]:
    found = rows(folder, "SELECT * FROM grades ORDER BY id")
    return [{**dict(r), "answer": json.loads(r["answer"])} for r in found]


def test_a_scheme_change_then_two_questions_answered_with_keys(qtbot, page, ws_folder, image_ids):
    assert page.scheme().name == "model"  # the default: the review buttons answer it
    assert page.grading.body.isHidden()
    page.grading.chooser.setCurrentIndex(page.grading.chooser.findData("icdr"))
    page.grading.chooser.activated.emit(page.grading.chooser.currentIndex())
    stored = rows(ws_folder, "SELECT name, created_by FROM schemes ORDER BY id")
    assert [(r["name"], r["created_by"]) for r in stored] == [("icdr", "ana")]
    assert [q.key for q in page.scheme().questions] == ["dr", "maculopathy", "quality"]
    assert page.grading.buttons[("dr", "R2")].full_text().startswith("3  R2")
    assert not page.panel.label_buttons[0].text()[0].isdigit()  # digits now grade

    key(qtbot, page, Qt.Key.Key_3)  # DR: R2 moderate NPDR
    key(qtbot, page, Qt.Key.Key_7)  # maculopathy: M1
    saved = grades(ws_folder)
    assert [(g["question"], g["answer"], g["reviewer"]) for g in saved] == [
        ("dr", ["R2"], "ana"),
        ("maculopathy", ["M1"], "ana"),
    ]
    assert {g["image_id"] for g in saved} == {image_ids[0]}
    assert not rows(ws_folder, "SELECT * FROM reviews")  # a grade is not a review
    assert page.grading.buttons[("dr", "R2")].isChecked()
    assert page.grading.buttons[("maculopathy", "M1")].full_text().startswith("✓")

    key(qtbot, page, Qt.Key.Key_4)  # a new answer replaces the old one (a new row)
    assert page._ws.grades(image_ids[0]) == {"dr": ["R3"], "maculopathy": ["M1"]}
    assert len(grades(ws_folder)) == 3


def test_a_scheme_from_a_file_with_a_multi_choice_question_that_toggles(
    qtbot, page, ws_folder, image_ids, tmp_path, monkeypatch
):
    scheme = {
        "name": "lesions_seen",
        "questions": [
            {
                "key": "seen",
                "title": "Lesions seen",
                "kind": "multi",
                "options": [
                    {"value": "ma", "label": "Microaneurysms", "hotkey": "Q", "disease": True},
                    {"value": "ex", "label": "Exudates", "hotkey": "T", "disease": True},
                    {"value": "none", "label": "None", "hotkey": "B"},
                ],
            }
        ],
        "lesion_types": [
            {"key": "ma", "label": "Microaneurysm", "hotkey": "A", "colour": "#ff0000"}
        ],
    }
    path = tmp_path / "scheme.json"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    # X is the view's "original" key: a scheme that takes it is refused, saying so
    scheme["questions"][0]["options"][2]["hotkey"] = "X"
    path.write_text(json.dumps(scheme))
    page.choose_scheme("file")
    assert page.scheme().name == "model"
    prompt = page.panel.prompt_label.text()
    assert "scheme.json" in prompt and "X" in prompt and "original view" in prompt
    scheme["questions"][0]["options"][2]["hotkey"] = "B"
    path.write_text(json.dumps(scheme))
    page.choose_scheme("file")
    assert page.scheme().name == "lesions_seen"
    assert page.grading.buttons[("seen", "none")].full_text() == "B  None"

    key(qtbot, page, Qt.Key.Key_Q)
    key(qtbot, page, Qt.Key.Key_T)
    assert page._ws.grades(image_ids[0]) == {"seen": ["ma", "ex"]}
    key(qtbot, page, Qt.Key.Key_Q)  # toggles off
    assert page._ws.grades(image_ids[0]) == {"seen": ["ex"]}
    assert [g["answer"] for g in grades(ws_folder)] == [["ma"], ["ma", "ex"], ["ex"]]


def test_a_broken_scheme_file_is_refused_with_its_name_and_reason(
    qtbot, page, ws_folder, tmp_path, monkeypatch
):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x", "questions": [{"key": "q", "options": []}]}')
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    page.choose_scheme("file")
    prompt = page.panel.prompt_label.text()
    assert "broken.json" in prompt and "no options" in prompt
    assert page.scheme().name == "model"
    assert not rows(ws_folder, "SELECT * FROM schemes")


def expected_referable(ws_folder: Path, image_id: int) -> str:
    row = rows(
        ws_folder,
        "SELECT probabilities FROM predictions WHERE image_id = ? ORDER BY id DESC LIMIT 1",
        (image_id,),
    )[0]
    probs = json.loads(row["probabilities"])
    dr, normal = probs["diabetic_retinopathy"], probs["normal"]
    return "Referable (refer to an eye specialist)" if dr > normal else "Non-referable"


def test_the_ai_answer_is_said_in_the_graders_terms_and_hidden_in_blind_mode(
    qtbot, page, ws_folder, image_ids
):
    page.choose_scheme("referable")
    words = page.grading.ai_labels["referable"].text()
    assert words == f"AI: {expected_referable(ws_folder, image_ids[0])}"

    page.set_blind(True)
    page.show_image(image_ids[1])
    hidden = page.grading.ai_labels["referable"].text()
    assert "hidden" in hidden and "eferable" not in hidden  # neither answer leaks
    key(qtbot, page, Qt.Key.Key_2)  # a grade alone does not reveal the AI
    assert "hidden" in page.grading.ai_labels["referable"].text()
    key(qtbot, page, Qt.Key.Key_U)  # committing a review does
    assert page.grading.ai_labels["referable"].text() == (
        f"AI: {expected_referable(ws_folder, image_ids[1])}"
    )


def test_no_answer_is_saved_without_a_reviewer_name(qtbot, page, ws_folder):
    page.choose_scheme("dme")
    page.set_reviewer("")
    key(qtbot, page, Qt.Key.Key_2)
    assert not grades(ws_folder)
    assert "reviewer name" in page.panel.prompt_label.text()
