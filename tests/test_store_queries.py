"""The store's read side: the questions the desktop, screening and LoRA ask of a workspace."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.store import (
    DB_NAME,
    StoreError,
    Workspace,
    database_path,
    is_workspace,
    registered_model_path,
)

from .test_store import MODEL, OTHER_MODEL, SETTINGS, add_images, prediction


@pytest.fixture
def ws(tmp_path: Path):
    with Workspace.open(tmp_path / "ws") as workspace:
        yield workspace


def test_the_file_name_is_spelled_once_and_recognised(tmp_path: Path) -> None:
    assert not is_workspace(tmp_path)
    with Workspace.open(tmp_path / "w") as ws:
        assert ws.db_path == database_path(tmp_path / "w") == tmp_path / "w" / DB_NAME
    assert is_workspace(tmp_path / "w")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "workspace.db").write_bytes(b"")
    assert not is_workspace(tmp_path / "plain")


def test_image_record_joins_the_active_models_latest_prediction_and_current_review(
    ws: Workspace, tmp_path: Path
) -> None:
    a, b = add_images(ws, tmp_path, 2, patient="1221", eye="OD")
    assert ws.image_record(999) is None
    assert ws.image_record(a) == {
        "image_id": a,
        "path": str((tmp_path / "img000.png").resolve()),
        "sha256": ws.image(a)["sha256"],
        "patient": "1221",
        "eye": "right",
        "kind": "image",
        "n_slices": None,
        "acquired": None,
        "facts": None,
        "patient_name": None,
        "prediction": None,
        "review": None,
    }
    ws.register_model(MODEL, None, "old", activate=True)
    ws.register_model(OTHER_MODEL, None, "new")
    run = ws.start_run(MODEL, SETTINGS)
    ws.add_predictions(run, [prediction(a, label="dr")])
    (latest,) = ws.add_predictions(run, [prediction(a, label="glaucoma")])
    other = ws.start_run(OTHER_MODEL, SETTINGS)
    ws.add_predictions(other, [prediction(a, "auto-cleared", label="normal")])
    ws.add_review(a, "dr_a", ["glaucoma"], action="confirm", prediction_id=latest)
    ws.add_review(a, "dr_b", ["dr"])
    ws.undo_last_review("dr_b")

    record = ws.image_record(a)
    assert record["prediction"]["id"] == latest  # the active model's, not the newest row
    assert record["prediction"]["probabilities"] == {"glaucoma": 0.7, "normal": 0.3}
    assert "current_sha256" not in record["prediction"]
    assert (record["review"]["reviewer"], record["review"]["labels"]) == ("dr_a", ["glaucoma"])
    assert ws.image_record(b)["prediction"] is None

    ws.set_active_model(OTHER_MODEL)
    assert ws.image_record(a)["prediction"]["label"] == "normal"


def test_prediction_records_are_what_latest_predictions_would_show(
    ws: Workspace, tmp_path: Path
) -> None:
    ids = add_images(ws, tmp_path, 3)
    ws.register_model(MODEL, None, "m", activate=True)
    run = ws.start_run(MODEL, SETTINGS)
    pred_ids = ws.add_predictions(run, [prediction(i) for i in ids])
    ws.add_review(ids[1], "dr_a", ["normal"])
    ws.add_images([{"path": tmp_path / "img002.png", "sha256": "f" * 64}])  # file changed

    records = ws.prediction_records(list(reversed(pred_ids)) + [123456])
    assert [r["id"] for r in records] == list(reversed(pred_ids))  # order kept, unknown left out
    assert sorted(records, key=lambda r: r["id"]) == ws.latest_predictions()
    by_image = {r["image_id"]: r for r in records}
    assert by_image[ids[1]]["review"]["labels"] == ["normal"]
    assert by_image[ids[0]]["review"] is None
    assert by_image[ids[2]]["stale"] and not by_image[ids[0]]["stale"]


def test_current_reviews_of_many_images_match_one_by_one(ws: Workspace, tmp_path: Path) -> None:
    ids = add_images(ws, tmp_path, 1200)  # more than one IN (...) chunk
    ws.register_model(MODEL, None, "m", activate=True)
    run = ws.start_run(MODEL, SETTINGS)
    pred_ids = ws.add_predictions(run, [prediction(i) for i in ids])
    for i in ids[::7]:
        ws.add_review(i, "dr_a", ["dr"])
    for i in ids[::14]:
        ws.add_review(i, "dr_a", [], action="undo")
    records = ws.prediction_records(pred_ids)
    assert len(records) == 1200
    for record in records[::50]:
        assert record["review"] == ws.current_review(record["image_id"])


def test_image_review_and_model_lookups(ws: Workspace, tmp_path: Path) -> None:
    (image,) = add_images(ws, tmp_path, 1)
    assert ws.image(image)["path"].endswith("img000.png") and ws.image(image + 1) is None
    review_id = ws.add_review(image, "dr_a", ["dr"], note="small haemorrhages")
    assert ws.review(review_id)["labels"] == ["dr"]
    assert ws.review(review_id)["note"] == "small haemorrhages"
    assert ws.review(review_id + 1) is None

    model_file = tmp_path / "m.safetensors"
    ws.register_model(MODEL, model_file, "m")
    ws.register_model(OTHER_MODEL, None, "no file")
    assert ws.model_path(MODEL) == model_file.resolve()
    assert ws.model_path(OTHER_MODEL) is None and ws.model_path("0" * 64) is None


def test_registered_model_path_reads_without_changing_the_workspace(tmp_path: Path) -> None:
    folder = tmp_path / "ws"
    with Workspace.open(folder) as ws:
        ws.register_model(MODEL, tmp_path / "base.safetensors", "base")
    (folder / "cache").rmdir()
    before = database_path(folder).read_bytes()
    assert registered_model_path(folder, MODEL) == (tmp_path / "base.safetensors").resolve()
    assert registered_model_path(folder, OTHER_MODEL) is None
    assert registered_model_path(tmp_path / "nowhere", MODEL) is None
    assert database_path(folder).read_bytes() == before  # opened read-only
    assert not (folder / "cache").exists() and not (tmp_path / "nowhere").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DB_NAME).write_bytes(b"not a database" * 50)
    assert registered_model_path(tmp_path / "junk", MODEL) is None  # no exception


def test_unscreened_by_counts_what_a_switch_would_hide(ws: Workspace, tmp_path: Path) -> None:
    ids = add_images(ws, tmp_path, 4)
    ws.register_model(MODEL, None, "old", activate=True)
    ws.register_model(OTHER_MODEL, None, "new")
    old = ws.start_run(MODEL, SETTINGS)
    ws.add_predictions(old, [prediction(i) for i in ids[:3]])
    new = ws.start_run(OTHER_MODEL, SETTINGS)
    ws.add_predictions(new, [prediction(ids[0]), prediction(ids[3])])
    assert ws.unscreened_by(OTHER_MODEL, screened_by=MODEL) == 2  # ids[1], ids[2]
    assert ws.unscreened_by(MODEL, screened_by=OTHER_MODEL) == 1  # ids[3]
    ws.add_predictions(new, [prediction(ids[1], "error", error="truncated"), prediction(ids[2])])
    assert ws.unscreened_by(OTHER_MODEL, screened_by=MODEL) == 0


def test_dashboard_totals_use_the_active_model_and_current_reviews(
    ws: Workspace, tmp_path: Path
) -> None:
    ids = add_images(ws, tmp_path, 6)
    assert ws.dashboard_totals()["n_images"] == 6
    assert ws.dashboard_totals()["model_hash"] is None
    ws.register_model(MODEL, None, "screening model", activate=True)
    ws.register_model(OTHER_MODEL, None, "other")
    run = ws.start_run(MODEL, SETTINGS)
    ws.add_predictions(
        run,
        [
            prediction(ids[0], label="dr", confidence=0.9),
            prediction(ids[1], label="normal", triage="auto-cleared", confidence=0.95),
            prediction(ids[2], label="dr"),
            prediction(ids[3], label=None, triage="error", error="truncated", confidence=None),
            prediction(ids[4], label="dr"),
        ],
    )
    other = ws.start_run(OTHER_MODEL, SETTINGS)
    ws.add_predictions(other, [prediction(ids[5], label="normal")])  # not the active model
    ws.add_review(ids[0], "dr_a", ["dr"])
    ws.add_review(ids[1], "dr_a", ["dr"])  # disagrees with the AI
    ws.add_review(ids[2], "dr_a", ["dr", "glaucoma"])  # several labels: left out
    ws.add_review(ids[3], "dr_a", [], action="ungradable")  # AI error: left out
    ws.add_review(ids[4], "dr_a", ["normal"])
    ws.add_review(ids[4], "dr_a", [], action="undo")  # undone: not reviewed any more
    ws.add_review(ids[5], "dr_a", ["normal"])  # not screened by the active model

    totals = ws.dashboard_totals()
    assert totals["model_hash"] == MODEL and totals["model_name"] == "screening model"
    assert totals["n_screened"] == 5
    assert totals["triage_counts"] == {
        "refer": 0,
        "auto-cleared": 1,
        "needs-review": 3,
        "ungradable": 0,
        "out-of-distribution": 0,
        "error": 1,
    }
    assert totals["n_reviewed"] == 4 and totals["left_out"] == 2
    assert sorted(totals["compared"]) == [("dr", "dr", 0.9), ("dr", "normal", 0.95)]


def test_queries_on_a_closed_workspace_say_so(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    ws.close()
    with pytest.raises(StoreError, match="closed"):
        ws.image_record(1)
    with pytest.raises(StoreError, match="closed"):
        ws.dashboard_totals()


def test_the_database_stays_readable_by_plain_sqlite(ws: Workspace, tmp_path: Path) -> None:
    """The split into modules changed no table: a plain client sees the same schema."""
    conn = sqlite3.connect(ws.db_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"images", "models", "runs", "predictions", "reviews", "audit", "migrations"} <= tables
