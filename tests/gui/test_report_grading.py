"""The patient report carries the grader's scheme answers and a picture of the marks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from desktop import report
from engine.images import discover_images
from engine.models import load_model
from engine.schemes import preset
from engine.screen import ScreenSettings
from engine.store import Workspace
from engine.workspace_screen import screen_into_workspace


@pytest.fixture(scope="module")
def graded(tmp_path_factory, synth_fundus, tiny_model) -> tuple[Path, Path]:
    """Two images of patient 0077, screened; one graded in ICDR terms with two marks."""
    root = tmp_path_factory.mktemp("report_grading")
    images = root / "images"
    images.mkdir()
    sources = discover_images(synth_fundus)
    for source, name in zip(sources[:2], ("0077_OD_f_1.png", "0077_OI_f_1.png"), strict=True):
        shutil.copy(source, images / name)
    ws_folder = root / "ws"
    screen_into_workspace(
        ws_folder, discover_images(images), [load_model(tiny_model)], ScreenSettings()
    )
    with Workspace.open(ws_folder) as ws:
        ws.set_scheme(preset("icdr"), "dr_ana")
        image_id = next(r["image_id"] for r in ws.latest_predictions() if "OD" in r["path"])
        ws.record_grade(image_id, "dr", ["R2"], "dr_ana")
        ws.record_grade(image_id, "maculopathy", ["M1"], "dr_ana")
        ws.add_mark(image_id, "haemorrhage", "box", [(20, 20), (60, 50)], "dr_ana")
        ws.add_mark(image_id, "microaneurysm", "point", [(90, 90)], "dr_ana")
    return ws_folder, images / "0077_OD_f_1.png"


def test_the_report_rows_carry_the_answers_and_the_marks(graded):
    ws_folder, photo = graded
    with Workspace.open(ws_folder) as ws:
        rows = report._patient_rows(ws, "0077")
        report._attach_grading(ws, rows)
    row = next(r for r in rows if r["path"] == str(photo.resolve()) or "OD" in r["path"])
    lines = dict(report._review_lines(row, None))
    assert lines["Grading"] == (
        "Diabetic retinopathy: R2 moderate NPDR (referable) · Maculopathy: M1 maculopathy "
        "(referable)"
    )
    assert sorted(m.lesion for m in row["marks"]) == ["haemorrhage", "microaneurysm"]
    other = next(r for r in rows if r is not row)
    assert "Grading" not in dict(report._review_lines(other, None))
    assert other["marks"] == []


def test_the_marks_picture_draws_each_mark_in_its_lesion_colour(graded):
    ws_folder, photo = graded
    with Workspace.open(ws_folder) as ws:
        scheme = ws.scheme()
        image_id = next(r["image_id"] for r in ws.latest_predictions() if "OD" in r["path"])
        marks = ws.marks(image_id)
    drawn = np.asarray(report._with_marks(str(photo), marks, scheme).convert("RGB")).astype(int)
    plain = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    assert drawn.shape == plain.shape
    pink = np.array([0xCC, 0x79, 0xA7])  # haemorrhage colour of the preset
    edge = drawn[20, 25:55]  # the box's top edge
    assert (np.abs(edge - pink).sum(axis=1) < 30).mean() > 0.5
    assert np.array_equal(drawn[120:, :10], plain[120:, :10])  # far from the marks: unchanged


def test_a_graded_report_is_written(qapp, graded, tmp_path):
    ws_folder, _ = graded
    out = report.write_patient_report(ws_folder, "0077", tmp_path / "r.pdf", with_overlays=False)
    assert out.read_bytes().startswith(b"%PDF")
