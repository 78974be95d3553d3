"""Reviewing an OCT volume: it opens on its most suspicious slice, scrolls, and the review
records the slice it was read at."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent

from desktop.review import ReviewPage
from desktop.worklist_model import row_from_prediction
from engine import dicom_synth as W
from engine.volumes import release_open_files

WAIT_MS = 60_000
N = 12


def bscans(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.arange(96)[None, :, None]
    band = np.exp(-(((y - 40 - np.arange(n)[:, None, None] % 6) / 5.0) ** 2))
    return np.clip((band + rng.random((n, 96, 128)) * 0.2) * 200, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def volume_template(tmp_path_factory, tiny_model, synth_fundus) -> Path:
    """A workspace holding a DICOM OCT volume and a photograph, screened (made once)."""
    from engine.models import load_model
    from engine.screen import ScreenSettings
    from engine.volumes import discover_items
    from engine.workspace_screen import screen_into_workspace

    clinic = tmp_path_factory.mktemp("clinic")
    W.write_volume(clinic / "oct.dcm", bscans(N), patient_id="1221", laterality="L")
    photo = sorted((synth_fundus / "normal").glob("*.png"))[0]
    Image.open(photo).save(clinic / "photo.png")
    folder = tmp_path_factory.mktemp("ws_volume")
    screen_into_workspace(
        folder,
        discover_items(clinic),
        [load_model(tiny_model, device="cpu")],
        ScreenSettings(device="cpu"),
    )
    release_open_files()
    return folder


@pytest.fixture
def ws_folder(tmp_path, volume_template) -> Path:
    folder = tmp_path / "ws"
    shutil.copytree(volume_template, folder)
    return folder


def rows(ws_folder: Path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(ws_folder / "workspace.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def ids(ws_folder) -> dict[str, int]:
    return {
        Path(r["path"]).name: int(r["id"]) for r in rows(ws_folder, "SELECT id, path FROM images")
    }


@pytest.fixture
def page(qtbot, ws_folder, tiny_model, ids):
    page = ReviewPage()
    qtbot.addWidget(page)
    page.resize(1100, 740)
    page.set_workspace(ws_folder, tiny_model)
    page.set_reviewer("ana")
    page.set_auto_advance(False)
    page.set_queue([ids["oct.dcm"], ids["photo.png"]])
    page.show()
    qtbot.waitExposed(page)
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    yield page
    page.shutdown()
    release_open_files()


def key(qtbot, page, k) -> None:
    qtbot.keyClick(page.focusWidget() or page, k)


def shows_slice(page, image_id: int, index: int) -> bool:
    return page.current_slice() == index and page.loader.image(image_id, index) is not None


def test_a_volume_opens_on_its_most_suspicious_slice_with_the_strip(qtbot, page, ws_folder, ids):
    vol = ids["oct.dcm"]
    (pred,) = rows(ws_folder, f"SELECT * FROM predictions WHERE image_id = {vol}")
    findings = [
        r["finding"]
        for r in rows(
            ws_folder,
            f"SELECT finding FROM slice_predictions WHERE prediction_id = {pred['id']} ORDER BY slice",
        )
    ]
    page.show_image(vol)
    bar = page.slice_bar
    assert bar.isVisible() and bar.n_slices == N
    assert page.current_slice() == bar.key_slice == pred["key_slice"] - 1
    assert bar.label.text() == f"Slice {pred['key_slice']} / {N}"
    assert bar.strip._probs == pytest.approx(findings)
    assert "patient 1221" in page.evidence.file_label.text()
    assert f"OCT volume, {N} slices" in page.evidence.file_label.text()
    qtbot.waitUntil(lambda: shows_slice(page, vol, pred["key_slice"] - 1), timeout=WAIT_MS)
    assert page.viewer.has_image() and page.viewer.message() == ""


def test_page_keys_ctrl_wheel_and_m_move_through_slices(qtbot, page, ids):
    vol = ids["oct.dcm"]
    page.show_image(vol)
    key_slice = page.slice_bar.key_slice
    page.slice_bar.set_current(5)
    qtbot.waitUntil(lambda: shows_slice(page, vol, 5), timeout=WAIT_MS)
    key(qtbot, page, Qt.Key.Key_PageDown)
    qtbot.waitUntil(lambda: shows_slice(page, vol, 6), timeout=WAIT_MS)
    assert page.slice_bar.label.text() == f"Slice 7 / {N}"
    key(qtbot, page, Qt.Key.Key_PageUp)
    key(qtbot, page, Qt.Key.Key_PageUp)
    assert page.current_slice() == 4
    zoom = page.viewer.transform().m11()
    wheel = QWheelEvent(
        QPointF(50, 50),
        QPointF(50, 50),
        QPoint(0, 0),
        QPoint(0, -120),  # towards the reader: the next slice
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.ControlModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    page.viewer.wheelEvent(wheel)
    assert page.current_slice() == 5
    assert page.viewer.transform().m11() == zoom  # Ctrl + wheel scrolls, it does not zoom
    key(qtbot, page, Qt.Key.Key_M)
    assert page.current_slice() == key_slice
    qtbot.waitUntil(lambda: shows_slice(page, vol, key_slice), timeout=WAIT_MS)


def test_the_review_of_a_volume_records_the_slice_it_was_read_at(qtbot, page, ws_folder, ids):
    vol, photo = ids["oct.dcm"], ids["photo.png"]
    page.show_image(vol)
    page.slice_bar.set_current(2)
    key(qtbot, page, Qt.Key.Key_1)
    page.show_image(photo)
    assert not page.slice_bar.isVisible() and page.current_slice() is None
    key(qtbot, page, Qt.Key.Key_2)
    saved = rows(ws_folder, "SELECT image_id, slice, labels FROM reviews ORDER BY id")
    assert [(r["image_id"], r["slice"]) for r in saved] == [(vol, 3), (photo, None)]
    page.show_image(vol)
    assert "noted slice 3" in page.panel.current_label.text()


def test_blind_mode_opens_a_volume_in_its_middle_without_the_strip(qtbot, page, ids):
    page.set_blind(True)
    page.show_image(ids["oct.dcm"])
    assert page.current_slice() == N // 2
    assert not page.slice_bar.strip.isVisible()
    assert not page.slice_bar.key_button.isVisible()
    key(qtbot, page, Qt.Key.Key_M)  # no jump to the AI's slice while blind
    assert page.current_slice() == N // 2


def test_worklist_rows_say_a_volume_and_its_slice_count(ws_folder):
    from engine.store import Workspace

    with Workspace.open(ws_folder, create=False) as ws:
        records = {Path(r["path"]).name: r for r in ws.latest_predictions()}
    vol = row_from_prediction(records["oct.dcm"])
    assert (vol["kind"], vol["n_slices"]) == ("volume", N)
    assert 1 <= vol["key_slice"] <= N
    assert (vol["patient"], vol["eye"]) == ("1221", "left")  # from the DICOM header
    assert row_from_prediction(records["photo.png"])["kind"] == "image"


def test_the_patient_report_draws_a_volumes_most_suspicious_b_scan_and_its_overlay(
    qapp, ws_folder, tiny_model, tmp_path
):
    import re

    from desktop.report import picture_source, write_patient_report
    from engine.images import FrameRef
    from engine.modelfile import read_spec
    from engine.store import Workspace

    with Workspace.open(ws_folder, create=False) as ws:
        (record,) = [r for r in ws.latest_predictions() if r["kind"] == "volume"]
    source, caption = picture_source(record)
    assert source == FrameRef(Path(record["path"]), record["key_slice"] - 1)
    assert caption == f"B-scan {record['key_slice']} of {N} (most suspicious)"
    out = write_patient_report(
        ws_folder, "1221", tmp_path / "r.pdf", spec=read_spec(tiny_model), model_path=tiny_model
    )
    images = re.findall(rb"/Subtype\s*/Image", out.read_bytes())
    assert len(images) >= 2  # the B-scan and its Grad-CAM overlay, not placeholders


def test_file_export_de_identified_leaves_out_the_patient_and_file_names(ws_folder, tmp_path):
    import csv

    from desktop.export_control import write_export

    out = tmp_path / "shared.csv"
    assert write_export(ws_folder, out, "csv", deidentify=True) == 2
    text = out.read_text(encoding="utf-8")
    assert "oct.dcm" not in text and "photo.png" not in text
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    assert all(r["path"].startswith("item-") and "sha256" not in r for r in rows)
    assert sorted(r["kind"] for r in rows) == ["image", "volume"]
    assert {r["patient"] for r in rows} == {"patient-001", ""}
