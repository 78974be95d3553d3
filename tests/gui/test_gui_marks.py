"""Lesion marks drawn with the mouse on the review page, read back from the SQLite file."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt

from desktop.marks_layer import _PointItem, full_scale
from desktop.review import ReviewPage

WAIT_MS = 30_000
FULL_W, FULL_H = 3000, 2000  # reduced to 2048 x 1365 for display


def _rows(folder: Path, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(folder / "workspace.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def live_marks(folder: Path) -> list[dict]:
    rows = _rows(
        folder,
        "SELECT * FROM marks m WHERE NOT EXISTS"
        " (SELECT 1 FROM mark_deletions d WHERE d.mark_uid = m.uid) ORDER BY m.id",
    )
    return [{**dict(r), "points": json.loads(r["points"])} for r in rows]


@pytest.fixture
def photo_ws(tmp_path) -> tuple[Path, int, Path]:
    """A workspace with one large photograph (no model: marks need none)."""
    from engine.store import Workspace

    rng = np.random.default_rng(0)
    pixels = rng.integers(40, 90, (FULL_H, FULL_W, 3), dtype=np.uint8)
    photo = tmp_path / "clinic" / "large.jpg"
    photo.parent.mkdir()
    Image.fromarray(pixels).save(photo, quality=80)
    data = photo.read_bytes()
    folder = tmp_path / "ws"
    with Workspace.open(folder) as ws:
        image_id = ws.add_image(
            photo,
            hashlib.sha256(data).hexdigest(),
            len(data),
            width=FULL_W,
            height=FULL_H,
            modality="fundus",
        )
    return folder, image_id, photo


@pytest.fixture
def page(qtbot, photo_ws):
    folder, image_id, _ = photo_ws
    page = ReviewPage()
    qtbot.addWidget(page)
    page.resize(1100, 740)
    page.set_workspace(folder, None)
    page.set_reviewer("ana")
    page.set_queue([image_id])
    page.show()
    qtbot.waitExposed(page)
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow)
    page.show_image(image_id)
    qtbot.waitUntil(page.viewer.has_image, timeout=WAIT_MS)
    page.viewer.setFocus()
    yield page
    page.shutdown()


def key(qtbot, page, k, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    qtbot.keyClick(page.focusWidget() or page, k, modifier)


def at(page: ReviewPage, x_full: float, y_full: float) -> QPoint:
    """The viewport pixel over full-resolution image pixel (x, y)."""
    scale = page.marks.scale()
    return page.viewer.mapFromScene(QPointF(x_full / scale, y_full / scale))


def full_at(page: ReviewPage, pos: QPoint) -> tuple[float, float]:
    """Where a viewport pixel lands in full-resolution pixels (independent arithmetic)."""
    scene = page.viewer.mapToScene(pos)
    scale = FULL_W / page.viewer.source_image().width()
    return scene.x() * scale, scene.y() * scale


def drag(qtbot, page, points: list[QPoint], modifier=Qt.KeyboardModifier.NoModifier) -> None:
    viewport = page.viewer.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, modifier, points[0])
    for p in points[1:]:
        qtbot.mouseMove(viewport, p)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, modifier, points[-1])


def test_display_copy_is_reduced_and_the_layer_scale_converts_to_full_resolution(page):
    shown = page.viewer.source_image()
    assert (shown.width(), shown.height()) == (2048, 1365)
    assert page.marks.scale() == pytest.approx(FULL_W / 2048)
    assert full_scale(None, 2048) == 1.0  # unknown full size: the display copy counts
    mapped = page.marks.to_full(QPointF(1024.0, 500.0))
    assert (mapped.x(), mapped.y()) == pytest.approx((1500.0, 500.0 * FULL_W / 2048))
    outside = page.marks.to_full(QPointF(5000.0, -20.0))
    assert (outside.x(), outside.y()) == (FULL_W, 0.0)  # held inside the image


def test_each_mark_kind_reaches_sqlite_in_full_resolution_pixels(qtbot, page, photo_ws):
    folder, image_id, _ = photo_ws
    key(qtbot, page, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    assert page.marks.is_marking()
    viewport = page.viewer.viewport()
    tolerance = 1.5 * FULL_W / 2048 / page.viewer.scale_factor()  # about one screen pixel

    # point: a click
    click = at(page, 600, 400)
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=click)
    # box: a drag, drawn as a haemorrhage chosen by its key
    key(qtbot, page, Qt.Key.Key_H)
    assert page.marks.lesion() == "haemorrhage"
    box = [at(page, 1000, 700), at(page, 1300, 800), at(page, 1600, 1000)]
    drag(qtbot, page, box)
    # polygon: Ctrl+clicks, Enter closes (and saves no review)
    corners = [at(page, 2000, 300), at(page, 2400, 350), at(page, 2300, 700)]
    for c in corners:
        qtbot.mouseClick(
            viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, c
        )
    assert page.marks.drawing() == "polygon"
    key(qtbot, page, Qt.Key.Key_Return)
    # freehand: Shift+drag through several points
    trail = [at(page, 500 + 40 * i, 1500 + 25 * (i % 3)) for i in range(8)]
    drag(qtbot, page, trail, Qt.KeyboardModifier.ShiftModifier)

    marks = live_marks(folder)
    assert [m["kind"] for m in marks] == ["point", "box", "polygon", "freehand"]
    assert [m["lesion"] for m in marks] == [
        "microaneurysm",
        "haemorrhage",
        "haemorrhage",
        "haemorrhage",
    ]
    assert {m["reviewer"] for m in marks} == {"ana"}
    assert {m["image_id"] for m in marks} == {image_id}
    assert all(m["slice_index"] is None for m in marks)
    assert marks[0]["points"][0] == pytest.approx(full_at(page, click), abs=0.1)
    assert marks[0]["points"][0] == pytest.approx([600, 400], abs=tolerance)
    assert np.allclose(marks[1]["points"], [[1000, 700], [1600, 1000]], atol=tolerance)
    assert np.allclose(marks[2]["points"], [[2000, 300], [2400, 350], [2300, 700]], atol=tolerance)
    free = marks[3]["points"]
    assert len(free) >= 4
    assert free[0] == pytest.approx([500, 1500], abs=tolerance)
    assert free[-1] == pytest.approx([780, 1525], abs=tolerance)
    assert max(x for x, _ in marks[1]["points"]) > 1500  # full-resolution, not display px
    assert not _rows(folder, "SELECT * FROM reviews")  # Enter closed the polygon only
    assert len(page.marks.marks()) == 4
    assert "4 marks" in page.marks_panel.count_label.text()


def test_undo_takes_back_an_add_and_a_delete(qtbot, page, photo_ws):
    folder, _, _ = photo_ws
    key(qtbot, page, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    viewport = page.viewer.viewport()
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=at(page, 700, 700))
    drag(qtbot, page, [at(page, 1500, 500), at(page, 1900, 900)])
    assert [m["kind"] for m in live_marks(folder)] == ["point", "box"]

    key(qtbot, page, Qt.Key.Key_Z)  # undo the box
    assert [m["kind"] for m in live_marks(folder)] == ["point"]
    box_uid = _rows(folder, "SELECT uid FROM marks WHERE kind = 'box'")[0]["uid"]
    assert _rows(folder, "SELECT * FROM mark_deletions WHERE mark_uid = ?", (box_uid,))

    # select the point with a right-click near it, delete it, then undo the delete
    qtbot.mouseClick(viewport, Qt.MouseButton.RightButton, pos=at(page, 700, 700) + QPoint(2, 1))
    point_uid = live_marks(folder)[0]["uid"]
    assert page.marks.selected() == point_uid
    key(qtbot, page, Qt.Key.Key_Delete)
    assert live_marks(folder) == []
    key(qtbot, page, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    restored = live_marks(folder)
    assert len(restored) == 1 and restored[0]["restores"] == point_uid
    original = _rows(folder, "SELECT points FROM marks WHERE uid = ?", (point_uid,))[0]
    assert restored[0]["points"] == json.loads(original["points"])
    # every row is still in the file: nothing was ever deleted from it
    assert len(_rows(folder, "SELECT * FROM marks")) == 3


def test_escape_cancels_the_shape_in_progress_then_leaves_marking_mode(qtbot, page, photo_ws):
    folder, _, _ = photo_ws
    key(qtbot, page, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    viewport = page.viewer.viewport()
    for x in (300, 900):
        qtbot.mouseClick(
            viewport,
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.ControlModifier,
            at(page, x, 300),
        )
    key(qtbot, page, Qt.Key.Key_Return)  # two corners: not a polygon yet
    assert page.marks.drawing() == "polygon"
    key(qtbot, page, Qt.Key.Key_Escape)
    assert page.marks.drawing() is None and page.marks.is_marking()
    key(qtbot, page, Qt.Key.Key_Escape)
    assert not page.marks.is_marking()
    assert live_marks(folder) == []
    # outside marking mode a click does not mark (it pans)
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=at(page, 800, 800))
    assert live_marks(folder) == []


def test_the_marks_layer_hides_and_shows_apart_from_the_overlay(qtbot, page, photo_ws):
    folder, _, _ = photo_ws
    key(qtbot, page, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    qtbot.mouseClick(page.viewer.viewport(), Qt.MouseButton.LeftButton, pos=at(page, 900, 900))
    key(qtbot, page, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    overlay_on = page.viewer.overlay_visible()
    item = next(iter(page.marks._items.values()))
    assert item.isVisible()
    key(qtbot, page, Qt.Key.Key_H, Qt.KeyboardModifier.ShiftModifier)
    assert not page.marks.is_visible() and not item.isVisible()
    assert page.viewer.overlay_visible() == overlay_on
    assert page.marks_panel.visible_button.text().endswith("Marks hidden")
    assert len(live_marks(folder)) == 1  # hiding deletes nothing
    page.marks_panel.visible_button.click()
    assert page.marks.is_visible() and item.isVisible()


def test_marks_keep_their_size_on_screen_when_zooming(qtbot, page):
    key(qtbot, page, Qt.Key.Key_M, Qt.KeyboardModifier.ShiftModifier)
    viewport = page.viewer.viewport()
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=at(page, 1200, 900))
    drag(qtbot, page, [at(page, 300, 300), at(page, 700, 600)])
    items = list(page.marks._items.values())
    point = next(i for i in items if isinstance(i, _PointItem))
    box = next(i for i in items if not isinstance(i, _PointItem))
    assert box.pen().isCosmetic()

    def on_screen(item) -> float:
        device = item.deviceTransform(page.viewer.viewportTransform())
        return device.mapRect(item.boundingRect()).width()

    before_point, before_box = on_screen(point), on_screen(box)
    for _ in range(4):
        page.viewer.zoom_in()
    assert on_screen(point) == pytest.approx(before_point, abs=0.5)  # same size on screen
    assert on_screen(box) > 2 * before_box  # the box grows with the image


def test_marks_on_an_oct_volume_belong_to_their_slice(qtbot, tmp_path):
    from engine import dicom_synth
    from engine.store import Workspace, sha256_file

    rng = np.random.default_rng(1)
    frames = (rng.random((6, 96, 128)) * 200).astype(np.uint8)
    volume = tmp_path / "oct.dcm"
    dicom_synth.write_volume(volume, frames, patient_id="7", laterality="R")
    folder = tmp_path / "ws"
    with Workspace.open(folder) as ws:
        (vid,) = ws.add_images(
            [
                {
                    "path": volume,
                    "sha256": sha256_file(volume),
                    "kind": "volume",
                    "n_slices": 6,
                    "width": 128,
                    "height": 96,
                }
            ]
        )
    page = ReviewPage()
    qtbot.addWidget(page)
    page.resize(1000, 700)
    page.set_workspace(folder, None)
    page.set_reviewer("ana")
    page.set_queue([vid])
    page.show()
    qtbot.waitExposed(page)
    try:
        page.show_image(vid)
        qtbot.waitUntil(page.viewer.has_image, timeout=WAIT_MS)
        qtbot.waitUntil(lambda: page.current_slice() is not None, timeout=WAIT_MS)
        start = page.current_slice()
        page.viewer.setFocus()
        # OCT lesion types only: intraretinal fluid and friends, not microaneurysms
        offered = [t.key for t in page.marks.lesions()]
        assert "intraretinal_fluid" in offered and "microaneurysm" not in offered
        page.marks.set_marking(True)
        qtbot.mouseClick(page.viewer.viewport(), Qt.MouseButton.LeftButton, pos=at(page, 64, 40))
        rows = live_marks(folder)
        assert len(rows) == 1 and rows[0]["slice_index"] == start
        assert rows[0]["points"][0] == pytest.approx([64, 40], abs=2)
        page.slice_bar.step(1)
        qtbot.waitUntil(lambda: page.current_slice() == start + 1, timeout=WAIT_MS)
        qtbot.waitUntil(page.viewer.has_image, timeout=WAIT_MS)
        assert page.marks.marks() == []  # another B-scan: its own (no) marks
        page.slice_bar.step(-1)
        qtbot.waitUntil(lambda: len(page.marks.marks()) == 1, timeout=WAIT_MS)
    finally:
        page.shutdown()


def test_an_image_stored_without_its_size_gets_it_from_the_file(qtbot, tmp_path):
    """An older workspace has no full-resolution sizes: the header gives it (the display
    copy is reduced), it is recorded, and the marks still land in full-resolution pixels."""
    from engine.store import Workspace

    photo = tmp_path / "big.jpg"
    Image.fromarray(np.full((FULL_H, FULL_W, 3), 60, np.uint8)).save(photo)
    data = photo.read_bytes()
    folder = tmp_path / "ws"
    with Workspace.open(folder) as ws:
        image_id = ws.add_image(photo, hashlib.sha256(data).hexdigest(), len(data))
    assert _rows(folder, "SELECT width FROM images")[0]["width"] is None
    page = ReviewPage()
    qtbot.addWidget(page)
    page.resize(1000, 700)
    page.set_workspace(folder, None)
    page.set_reviewer("ana")
    page.set_queue([image_id])
    page.show()
    qtbot.waitExposed(page)
    try:
        page.show_image(image_id)
        qtbot.waitUntil(page.viewer.has_image, timeout=WAIT_MS)
        stored = _rows(folder, "SELECT width, height FROM images")[0]
        assert (stored["width"], stored["height"]) == (FULL_W, FULL_H)
        assert page.marks.scale() == pytest.approx(FULL_W / 2048)
        page.marks.set_marking(True)
        qtbot.mouseClick(
            page.viewer.viewport(), Qt.MouseButton.LeftButton, pos=at(page, 2500, 1500)
        )
        (mark,) = live_marks(folder)
        tolerance = 1.5 * FULL_W / 2048 / page.viewer.scale_factor()
        assert np.allclose(mark["points"][0], [2500, 1500], atol=tolerance)
    finally:
        page.shutdown()


def test_lesion_buttons_follow_the_types_offered_and_are_made_once(qtbot, page):
    # a workspace offers every type until its first image, then that modality's types
    from desktop.marks_layer import Lesion

    panel = page.marks_panel

    def offer(lesions: list[Lesion]) -> None:  # as the page does for each image's modality
        page.marks.set_lesions(lesions)
        panel.set_lesions(lesions)

    fundus = [Lesion("ma", "Microaneurysm", "#d81b60", "A"), Lesion("he", "Haemorrhage", "#1e88e5")]
    oct_only = [Lesion("fluid", "Fluid", "#43a047", "F")]
    offer(fundus + oct_only)
    made = dict(panel.type_buttons)
    assert [b.text() for b in made.values()] == ["A  Microaneurysm", "Haemorrhage", "F  Fluid"]
    offer(oct_only)
    assert list(panel.type_buttons) == ["fluid"]
    assert [b.isHidden() for b in made.values()] == [True, True, False]
    offer(fundus)
    assert list(panel.type_buttons) == ["ma", "he"]
    assert panel.type_buttons["ma"] is made["ma"]  # shown again, not made anew
    assert [b.isHidden() for b in made.values()] == [False, False, True]
    panel.type_buttons["he"].click()  # a button shown again still chooses its type
    assert page.marks.lesion() == "he" and page.marks.is_marking()
    assert panel.type_buttons["he"].isChecked() and not panel.type_buttons["ma"].isChecked()
    # each button shows the colour its type's marks are drawn in, on its left edge
    qtbot.waitUntil(lambda: panel.type_buttons["ma"].isVisible())
    for key, colour in (("ma", "#d81b60"), ("he", "#1e88e5")):
        button = panel.type_buttons[key]
        edge = button.grab().toImage().pixelColor(3, button.height() // 2)
        assert edge.name() == colour, (key, edge.name())
