"""Schemes, grades and lesion marks in the workspace: append-only, validated, migrated."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.marks import Mark, MarkError, check_geometry, mark_area, rasterise, render_marks
from engine.schemes import SchemeError, preset
from engine.store import SCHEMA_VERSION, EntryError, StoreError, Workspace
from engine.store.schema import MIGRATIONS

APTOS = ["No_DR", "Mild", "Moderate", "Severe", "Proliferate"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def ws(tmp_path: Path):
    with Workspace.open(tmp_path / "ws") as workspace:
        workspace.set_scheme(preset("icdr", APTOS), "lead")
        yield workspace


def add_photo(ws: Workspace, name: str = "a.png", width: int = 200, height: int = 100) -> int:
    return ws.add_image(Path("/clinic") / name, sha(name), 10, width, height, "fundus")


def add_volume(ws: Workspace, n: int = 4) -> int:
    return ws.add_image(
        Path("/clinic/oct.dcm"), sha("oct"), 10, 64, 32, "oct", kind="volume", n_slices=n
    )


# ----------------------------------------------------------------- scheme


def test_default_scheme_is_the_models_labels_and_a_change_adds_a_row(tmp_path):
    with Workspace.open(tmp_path / "w") as ws:
        assert ws.scheme().name == "model" and ws.scheme().questions == []
        assert ws.scheme_id() is None
        first = ws.set_scheme(preset("dme", ["normal", "dme"]), "lead")
        second = ws.set_scheme(preset("icdr", APTOS), "lead")
        assert ws.scheme().name == "icdr" and ws.scheme_id() == second > first
        assert [s["name"] for s in ws.schemes()] == ["dme", "icdr"]
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            ws.conn.execute("DELETE FROM schemes")
        assert [a["action"] for a in ws.audit_log()].count("set_scheme") == 2


def test_default_scheme_follows_the_active_model(tmp_path):
    with Workspace.open(tmp_path / "w") as ws:
        ws.register_model(
            "h" * 64, None, "m", description={"labels": ["normal", "dr"]}, activate=True
        )
        q = ws.scheme().question("label")
        assert [o.value for o in q.options] == ["normal", "dr"]


def test_an_invalid_scheme_is_refused_and_nothing_is_stored(ws):
    bad = preset("dme")
    bad.questions[0].options.append(bad.questions[0].options[0])
    with pytest.raises(SchemeError, match="twice"):
        ws.set_scheme(bad, "lead")
    assert [s["name"] for s in ws.schemes()] == ["icdr"]


# ----------------------------------------------------------------- grades


def test_record_grade_keeps_every_answer_and_the_newest_counts(ws):
    image = add_photo(ws)
    ws.record_grade(image, "dr", ["R1"], "ana")
    ws.record_grade(image, "maculopathy", ["M0"], "ana")
    ws.record_grade(image, "dr", ["R3"], "ben")
    assert ws.grades(image) == {"dr": ["R3"], "maculopathy": ["M0"]}
    history = ws.grade_history(image)
    assert [(h["question"], h["answer"], h["reviewer"]) for h in history] == [
        ("dr", ["R1"], "ana"),
        ("maculopathy", ["M0"], "ana"),
        ("dr", ["R3"], "ben"),
    ]
    assert all(h["scheme_id"] == ws.scheme_id() for h in history)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("UPDATE grades SET answer = '[]'")


def test_undo_grade_falls_back_to_the_answer_before(ws):
    image = add_photo(ws)
    ws.record_grade(image, "dr", ["R1"], "ana")
    ws.record_grade(image, "dr", ["R4"], "ana")
    assert ws.undo_grade(image, "ana") is not None
    assert ws.grades(image) == {"dr": ["R1"]}
    assert ws.undo_grade(image, "ana") is not None
    assert ws.grades(image) == {}
    assert ws.undo_grade(image, "ana") is None
    assert len(ws.grade_history(image)) == 4  # nothing removed


def test_an_empty_answer_clears_the_question(ws):
    image = add_photo(ws)
    ws.record_grade(image, "dr", ["R2"], "ana")
    ws.record_grade(image, "dr", [], "ana")
    assert ws.grades(image) == {}


@pytest.mark.parametrize(
    ("question", "values", "message"),
    [
        ("grade", ["R1"], "has no question 'grade'"),
        ("dr", ["R9"], "'R9' is not an answer to 'dr'; choose from R0, R1, R2, R3, R4"),
        ("dr", ["R1", "R2"], "'dr' takes one answer, got 2"),
        ("dr", "R1", "must be a list"),
    ],
)
def test_record_grade_refuses_what_the_scheme_does_not_allow(ws, question, values, message):
    image = add_photo(ws)
    with pytest.raises(ValueError, match=message):
        ws.record_grade(image, question, values, "ana")
    assert ws.grade_history(image) == []


def test_multi_choice_questions_take_several_values(tmp_path):
    with Workspace.open(tmp_path / "w") as ws:
        ws.set_scheme(
            preset("model", ["none", "dr", "amd"]).__class__.from_dict(
                {
                    "name": "findings",
                    "questions": [
                        {
                            "key": "findings",
                            "kind": "multi",
                            "options": [
                                {"value": "dr", "disease": True},
                                {"value": "amd", "disease": True},
                            ],
                        }
                    ],
                }
            ),
            "lead",
        )
        image = add_photo(ws)
        ws.record_grade(image, "findings", ["dr", "amd"], "ana")
        assert ws.grades(image) == {"findings": ["dr", "amd"]}


def test_grades_of_a_volume_are_per_b_scan(ws):
    volume = add_volume(ws, n=4)
    ws.record_grade(volume, "dr", ["R2"], "ana", slice_index=0)
    ws.record_grade(volume, "maculopathy", ["M1"], "ana")
    assert ws.grades(volume, slice_index=0) == {"dr": ["R2"]}
    assert ws.grades(volume) == {"maculopathy": ["M1"]}
    with pytest.raises(EntryError, match="outside volume .* B-scans 0-3"):
        ws.record_grade(volume, "dr", ["R2"], "ana", slice_index=4)
    photo = add_photo(ws)
    with pytest.raises(EntryError, match="single image"):
        ws.record_grade(photo, "dr", ["R2"], "ana", slice_index=0)


# ----------------------------------------------------------------- marks


def test_marks_are_stored_in_full_resolution_pixels_and_read_back(ws):
    image = add_photo(ws)
    a = ws.add_mark(image, "microaneurysm", "point", [(10.5, 20)], "ana")
    b = ws.add_mark(image, "haemorrhage", "box", [(30, 40), (10, 20)], "ana")
    c = ws.add_mark(image, "hard_exudate", "polygon", [(0, 0), (50, 0), (50, 50)], "ben")
    marks = ws.marks(image)
    assert [m.uid for m in marks] == [a, b, c]
    assert marks[0].points == [(10.5, 20.0)] and marks[0].kind == "point"
    assert marks[1].bbox == (10.0, 20.0, 20.0, 20.0) and marks[1].area == 400.0
    assert marks[2].reviewer == "ben" and marks[2].area == 1250.0
    assert all(isinstance(m, Mark) and m.slice_index is None for m in marks)


def test_delete_leaves_the_row_and_a_tombstone_and_restore_brings_a_copy(ws):
    image = add_photo(ws)
    uid = ws.add_mark(image, "drusen", "box", [(1, 1), (9, 9)], "ana")
    ws.delete_mark(uid, "ben")
    assert ws.marks(image) == []
    row = ws.mark_rows(uid)
    assert row is not None and row["deleted"]["reviewer"] == "ben"  # the row stays
    assert ws.conn.execute("SELECT count(*) FROM mark_deletions").fetchone()[0] == 1
    with pytest.raises(StoreError, match="already deleted"):
        ws.delete_mark(uid, "ben")
    new_uid = ws.restore_mark(uid, "ben")
    (restored,) = ws.marks(image)
    assert restored.uid == new_uid != uid
    assert (restored.lesion, restored.kind, restored.points, restored.reviewer) == (
        "drusen",
        "box",
        [(1.0, 1.0), (9.0, 9.0)],
        "ana",
    )
    with pytest.raises(StoreError, match="already restored"):
        ws.restore_mark(uid, "ben")
    with pytest.raises(StoreError, match="not deleted"):
        ws.restore_mark(new_uid, "ben")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("DELETE FROM marks")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        ws.conn.execute("DELETE FROM mark_deletions")
    actions = [a["action"] for a in ws.audit_log()]
    assert actions.count("add_mark") == 1 and "delete_mark" in actions and "restore_mark" in actions


@pytest.mark.parametrize(
    ("lesion", "kind", "points", "message"),
    [
        ("tumour", "point", [(1, 1)], "no lesion type 'tumour'"),
        ("drusen", "point", [(1, 1), (2, 2)], "a point needs exactly 1 point, got 2"),
        ("drusen", "box", [(1, 1)], "a box needs exactly 2 corners"),
        ("drusen", "box", [(1, 1), (1, 9)], "no area"),
        ("drusen", "polygon", [(1, 1), (2, 2)], "at least 3 points"),
        ("drusen", "freehand", [(1, 1), (2, 2), (3, 3)], "one line"),
        ("drusen", "point", [(float("nan"), 1)], "not a finite number"),
        ("drusen", "point", [(201, 1)], "outside the 200×100 px image"),
        ("drusen", "point", [(-1, 1)], "left of or above"),
        ("drusen", "circle", [(1, 1)], "mark kind must be one of"),
        ("drusen", "point", [("a", 1)], "not an \\(x, y\\) pair"),
    ],
)
def test_add_mark_refuses_bad_geometry_and_unknown_lesions(ws, lesion, kind, points, message):
    image = add_photo(ws)
    with pytest.raises(ValueError, match=message):
        ws.add_mark(image, lesion, kind, points, "ana")
    assert ws.conn.execute("SELECT count(*) FROM marks").fetchone()[0] == 0


def test_marks_on_b_scans_are_kept_per_slice(ws):
    volume = add_volume(ws, n=3)
    on_2 = ws.add_mark(volume, "subretinal_fluid", "box", [(0, 0), (64, 32)], "ana", slice_index=2)
    ws.add_mark(volume, "drusen", "point", [(5, 5)], "ana", slice_index=0)
    assert [m.uid for m in ws.marks(volume, slice_index=2)] == [on_2]
    assert ws.marks(volume) == []
    assert len(ws.all_marks()) == 2 and ws.mark_counts() == {volume: 2}
    with pytest.raises(EntryError, match="outside volume"):
        ws.add_mark(volume, "drusen", "point", [(5, 5)], "ana", slice_index=3)


def test_blind_and_review_paths_are_untouched_by_grading(ws):
    image = add_photo(ws)
    ws.add_review(image, "ana", ["Mild"], "correct")
    ws.record_grade(image, "dr", ["R1"], "ana")
    ws.add_mark(image, "drusen", "point", [(5, 5)], "ana")
    assert ws.current_review(image)["labels"] == ["Mild"]
    assert len(ws.reviews(image)) == 1


# ----------------------------------------------------------------- migration


def _version_3_workspace(folder: Path) -> Path:
    """A workspace as schema version 3 left it, with an image and a review."""
    folder.mkdir()
    conn = sqlite3.connect(folder / "workspace.sqlite", isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL)"
    )
    for version, migration in enumerate(MIGRATIONS[:3], start=1):
        migration(conn)
        conn.execute(
            "INSERT INTO migrations VALUES (?, ?, '2025-01-01T00:00:00+00:00')",
            (version, migration.__name__),
        )
    stamp = "2025-01-02T03:04:05+00:00"
    conn.execute(
        "INSERT INTO images (path, sha256, width, height, modality, added_at, updated_at)"
        " VALUES ('/clinic/old.png', ?, 300, 200, 'fundus', ?, ?)",
        (sha("old"), stamp, stamp),
    )
    conn.execute(
        "INSERT INTO reviews (image_id, reviewer, labels, action, created_at)"
        " VALUES (1, 'dr_a', '[\"dr\"]', 'correct', ?)",
        (stamp,),
    )
    conn.execute("COMMIT")
    conn.close()
    return folder


def test_migration_4_applies_to_a_version_3_workspace_and_keeps_its_rows(tmp_path):
    folder = _version_3_workspace(tmp_path / "old")
    with Workspace.open(folder, create=False) as ws:
        assert ws.schema_version() == SCHEMA_VERSION == 4
        assert ws.current_review(1)["labels"] == ["dr"]
        ws.set_scheme(preset("icdr"), "lead")
        uid = ws.add_mark(1, "haemorrhage", "point", [(299, 199)], "dr_a")
        ws.record_grade(1, "dr", ["R2"], "dr_a")
        assert ws.marks(1)[0].uid == uid and ws.grades(1) == {"dr": ["R2"]}
    with Workspace.open(folder, create=False) as ws:  # applied once
        versions = [r[0] for r in ws.conn.execute("SELECT version FROM migrations")]
        assert versions == [1, 2, 3, 4]


# ----------------------------------------------------------------- geometry and pictures


def test_check_geometry_without_a_known_size_still_refuses_negative_points():
    assert check_geometry("point", [(1e6, 3)]) == [(1e6, 3.0)]
    with pytest.raises(MarkError):
        check_geometry("point", [(-0.5, 3)])


def test_rasterise_fills_boxes_and_polygons_and_draws_points_as_discs():
    marks = [
        Mark("a", "drusen", "box", [(10, 10), (20, 30)], "x", "t"),
        Mark("b", "haemorrhage", "polygon", [(50, 50), (90, 50), (50, 90)], "x", "t"),
        Mark("c", "microaneurysm", "point", [(150, 150)], "x", "t"),
    ]
    mask = rasterise(marks, 200, 200)
    assert mask.shape == (200, 200) and mask.dtype == bool
    assert mask[20, 15] and not mask[5, 5]
    assert mask[55, 55] and not mask[85, 85]  # inside the triangle, beyond its diagonal
    assert mask[150, 150] and mask[150, 152] and not mask[150, 160]
    only = rasterise(marks, 200, 200, lesion="drusen")
    assert only[20, 15] and not only[55, 55] and not only[150, 150]
    box_pixels = rasterise(marks[:1], 200, 200).sum()
    assert abs(box_pixels - mark_area("box", marks[0].points)) <= 31  # edges inclusive


def test_render_marks_draws_in_the_lesion_colour_and_leaves_the_input_alone():
    from PIL import Image

    image = Image.new("RGB", (200, 200), (40, 40, 40))
    scheme = preset("icdr")
    marks = [Mark("a", "hard_exudate", "box", [(20, 20), (120, 120)], "x", "t")]
    out = render_marks(image, marks, scheme)
    assert image.getpixel((20, 70)) == (40, 40, 40)
    pixels = np.asarray(out).reshape(-1, 3)
    yellow = np.array([0xF0, 0xE4, 0x42])
    assert (np.abs(pixels - yellow).sum(axis=1) < 10).sum() > 200
    assert out.getpixel((70, 70)) == (40, 40, 40)  # the inside is not painted over


def test_image_sizes_bound_marks_and_screening_records_them(tmp_path, synth_fundus, tiny_model):
    from engine.cli import main

    with Workspace.open(tmp_path / "w") as ws:
        image = ws.add_image(Path("/clinic/x.png"), sha("x"), 10)  # size unknown
        ws.set_scheme(preset("icdr"), "lead")
        ws.add_mark(image, "drusen", "point", [(500, 500)], "ana")  # cannot be bounded yet
        ws.set_image_sizes({image: (300, 200)})
        with pytest.raises(EntryError, match="outside the 300×200 px image"):
            ws.add_mark(image, "drusen", "point", [(500, 500)], "ana")
        with pytest.raises(StoreError, match="not a picture's size"):
            ws.set_image_sizes({image: (0, 200)})
    folder = tmp_path / "screened"
    argv = ["screen", str(synth_fundus / "normal"), "--model", str(tiny_model)]
    assert main([*argv, "--workspace", str(folder), "--quiet", "--no-quality"]) == 0
    with Workspace.open(folder) as ws:
        sizes = {(im["width"], im["height"]) for im in ws.images()}
    assert sizes == {(128, 128)}
