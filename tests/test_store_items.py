"""The store's items: images and OCT volumes, what the file says, per-slice results."""

from __future__ import annotations

import csv
import hashlib
import sqlite3
from pathlib import Path

import pytest

from engine.store import SCHEMA_VERSION, StoreError, Workspace
from engine.store.schema import MIGRATIONS

MODEL = "m" * 64


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def ws(tmp_path: Path):
    with Workspace.open(tmp_path / "ws") as workspace:
        yield workspace


def volume_row(root: Path, name: str = "oct.dcm", n: int = 5, **extra) -> dict:
    return {
        "path": root / name,
        "sha256": sha(name),
        "size_bytes": 1000,
        "kind": "volume",
        "n_slices": n,
        "patient": "P7",
        "eye": "OS",
        "acquired": "20240502",
        "facts": {"facts_from": {"patient": "dicom", "eye": "dicom"}, "manufacturer": "Acme"},
    } | extra


def slice_row(number: int, triage: str = "auto-cleared", **extra) -> dict:
    return {
        "slice": number,
        "label": "normal",
        "confidence": 0.9,
        "finding": 0.1,
        "probabilities": {"normal": 0.9, "dme": 0.1},
        "ood_score": 1.0,
        "quality_ok": True,
        "triage": triage,
        "triage_reason": "confident",
    } | extra


def volume_prediction(image_id: int, n: int = 5, key: int = 3, **extra) -> dict:
    slices = [slice_row(i) for i in range(1, n + 1)]
    slices[key - 1] = slice_row(key, "needs-review", label="dme", finding=0.8)
    return {
        "image_id": image_id,
        "label": "dme",
        "confidence": 0.8,
        "probabilities": {"normal": 0.2, "dme": 0.8},
        "triage": "needs-review",
        "triage_reason": f"slice {key} of {n}: finding",
        "key_slice": key,
        "slices": slices,
    } | extra


# ----------------------------------------------------------------- migration


def _version_1_workspace(folder: Path) -> Path:
    """A workspace as the first schema left it, with a row in every table."""
    folder.mkdir()
    db = folder / "workspace.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL)"
    )
    MIGRATIONS[0](conn)
    conn.execute("INSERT INTO migrations VALUES (1, 'initial', '2025-01-01T00:00:00+00:00')")
    stamp = "2025-01-02T03:04:05+00:00"
    for i, (patient, eye) in enumerate([("1", "right"), ("2", "left"), (None, None)]):
        conn.execute(
            "INSERT INTO images (path, sha256, size_bytes, width, height, modality, patient,"
            " eye, added_at, updated_at) VALUES (?, ?, ?, 64, 48, 'fundus', ?, ?, ?, ?)",
            (f"/clinic/img{i}.png", sha(f"img{i}"), 100 + i, patient, eye, stamp, stamp),
        )
    conn.execute(
        "INSERT INTO models (hash, path, name, active, registered_at) VALUES (?, NULL, 'v1', 1, ?)",
        (MODEL, stamp),
    )
    conn.execute(
        "INSERT INTO runs (model_hash, settings, settings_key, started_at, status)"
        " VALUES (?, '{}', 'k', ?, 'finished')",
        (MODEL, stamp),
    )
    for image_id, triage in ((1, "needs-review"), (2, "auto-cleared")):
        conn.execute(
            "INSERT INTO predictions (run_id, image_id, model_hash, settings_key, image_sha256,"
            " probabilities, label, confidence, triage, created_at)"
            " VALUES (1, ?, ?, 'k', ?, '{\"dr\": 0.7}', 'dr', 0.7, ?, ?)",
            (image_id, MODEL, sha(f"img{image_id - 1}"), triage, stamp),
        )
    conn.execute(
        "INSERT INTO reviews (image_id, reviewer, labels, action, prediction_id, created_at)"
        " VALUES (1, 'dr_a', '[\"dr\"]', 'correct', 1, ?)",
        (stamp,),
    )
    conn.execute(
        "INSERT INTO audit (at, actor, action, details) VALUES (?, 'dr_a', 'review', '{}')",
        (stamp,),
    )
    conn.execute("COMMIT")
    conn.close()
    return folder


def _dump(db: Path, tables: list[str]) -> dict[str, list[tuple]]:
    """Every row of ``tables``, limited to the first schema's columns."""
    conn = sqlite3.connect(db)
    try:
        out = {}
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            out[table] = (columns, conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall())
        return out
    finally:
        conn.close()


def test_opening_a_version_1_workspace_migrates_it_and_keeps_every_row(tmp_path: Path) -> None:
    folder = _version_1_workspace(tmp_path / "old")
    tables = ["images", "models", "runs", "predictions", "reviews", "audit"]
    before = _dump(folder / "workspace.sqlite", tables)

    with Workspace.open(folder, create=False) as ws:
        assert ws.schema_version() == SCHEMA_VERSION >= 2
        names = [r[0] for r in ws.conn.execute("SELECT name FROM migrations ORDER BY version")]
        assert names[:2] == ["initial", "2_items"]
        latest = ws.latest_predictions()
        assert [(r["path"], r["triage"], r["kind"]) for r in latest] == [
            ("/clinic/img0.png", "needs-review", "image"),
            ("/clinic/img1.png", "auto-cleared", "image"),
        ]
        assert ws.current_review(1)["labels"] == ["dr"]
        assert ws.image(3)["kind"] == "image" and ws.image(3)["n_slices"] is None
        # the append-only rule survives the migration
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            ws.conn.execute("UPDATE reviews SET labels = '[]'")

    after = _dump(folder / "workspace.sqlite", tables)
    for table in tables:
        old_columns, old_rows = before[table]
        new_columns, new_rows = after[table]
        assert new_columns[: len(old_columns)] == old_columns, table
        assert [row[: len(old_columns)] for row in new_rows] == old_rows, table


def test_a_migration_that_fails_half_way_leaves_version_1_and_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.store.base as base

    folder = _version_1_workspace(tmp_path / "old")

    def half_then_crash(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE images ADD COLUMN kind TEXT")
        raise RuntimeError("power cut")

    half_then_crash.__name__ = "_migration_2_items"
    monkeypatch.setattr(base, "MIGRATIONS", (MIGRATIONS[0], half_then_crash))
    with pytest.raises(RuntimeError, match="power cut"):
        Workspace.open(folder, create=False)
    conn = sqlite3.connect(folder / "workspace.sqlite")
    try:
        assert [r[0] for r in conn.execute("SELECT version FROM migrations")] == [1]
        assert "kind" not in [r[1] for r in conn.execute("PRAGMA table_info(images)")]
    finally:
        conn.close()

    monkeypatch.undo()
    with Workspace.open(folder, create=False) as ws:
        assert ws.schema_version() == SCHEMA_VERSION
        assert [i["kind"] for i in ws.images()] == ["image"] * 3


# ----------------------------------------------------------------- round trips


def test_a_volume_its_file_facts_and_its_slices_round_trip(ws: Workspace, tmp_path: Path) -> None:
    (vol,) = ws.add_images([volume_row(tmp_path, patient_name="DOE^JANE")])
    ws.register_model(MODEL, None, "demo", activate=True)
    run = ws.start_run(MODEL, {"a": 1})
    (pid,) = ws.add_predictions(run, [volume_prediction(vol)])

    image = ws.image(vol)
    assert (image["kind"], image["n_slices"], image["acquired"]) == ("volume", 5, "2024-05-02")
    assert (image["patient"], image["eye"], image["patient_name"]) == ("P7", "left", "DOE^JANE")
    assert image["facts"]["facts_from"] == {"patient": "dicom", "eye": "dicom"}

    (record,) = ws.latest_predictions()
    assert (record["kind"], record["n_slices"], record["key_slice"]) == ("volume", 5, 3)
    assert record["acquired"] == "2024-05-02"
    slices = ws.slice_predictions(pid)
    assert [s["slice"] for s in slices] == [1, 2, 3, 4, 5]
    assert slices[2]["triage"] == "needs-review" and slices[2]["finding"] == 0.8
    assert slices[0]["probabilities"] == {"normal": 0.9, "dme": 0.1}
    assert slices[0]["quality_ok"] is True

    review = ws.add_review(vol, "dr_a", ["dme"], prediction_id=pid, slice=3)
    assert ws.review(review)["slice"] == 3
    assert ws.current_review(vol)["slice"] == 3
    assert ws.audit_log()[-1]["details"]["slice"] == 3

    out = tmp_path / "export.csv"
    ws.write_export(out, "csv")
    with out.open(newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["kind"], row["n_slices"], row["key_slice"], row["acquired"]) == (
        "volume",
        "5",
        "3",
        "2024-05-02",
    )


def test_an_image_keeps_its_stored_facts_when_seen_again_without_them(
    ws: Workspace, tmp_path: Path
) -> None:
    row = volume_row(tmp_path, "photo.dcm", kind="image", n_slices=None)
    (image_id,) = ws.add_images([row])
    ws.add_images([{"path": row["path"], "sha256": row["sha256"], "size_bytes": 1000}])
    image = ws.image(image_id)
    assert (image["kind"], image["n_slices"]) == ("image", None)
    assert (image["patient"], image["eye"], image["acquired"]) == ("P7", "left", "2024-05-02")
    assert image["facts"]["manufacturer"] == "Acme"
    assert image["patient_name"] is None  # never given: names are kept only when asked


def test_images_that_are_not_volumes_have_no_slice_results(ws: Workspace, tmp_path: Path) -> None:
    (image_id,) = ws.add_images([{"path": tmp_path / "a.png", "sha256": sha("a")}])
    ws.register_model(MODEL, None, "demo")
    run = ws.start_run(MODEL, {})
    (pid,) = ws.add_predictions(run, [{"image_id": image_id, "triage": "auto-cleared"}])
    assert ws.slice_predictions(pid) == []
    assert ws.predictions(image_id)[0]["key_slice"] is None


# ----------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "stack"}, r"image row 1 \(.*b.dcm\): kind must be one of"),
        ({"n_slices": None}, r"image row 1 \(.*b.dcm\): a volume needs its number of slices"),
        ({"n_slices": 0}, r"image row 1 \(.*b.dcm\): a volume needs its number of slices"),
        ({"n_slices": "many"}, r"image row 1 \(.*b.dcm\): n_slices must be an integer"),
        ({"acquired": "last May"}, r"image row 1 \(.*b.dcm\): acquired 'last May' is not a date"),
        ({"facts": ["dicom"]}, r"image row 1 \(.*b.dcm\): facts must be a dict"),
    ],
)
def test_bad_item_rows_are_refused_naming_the_row_and_nothing_is_stored(
    ws: Workspace, tmp_path: Path, change: dict, message: str
) -> None:
    rows = [volume_row(tmp_path, "a.dcm"), volume_row(tmp_path, "b.dcm") | change]
    with pytest.raises(StoreError, match=message):
        ws.add_images(rows)
    assert ws.images() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key_slice": 6}, r"prediction row 1: key_slice: 6 is outside the volume's slices 1-5"),
        ({"key_slice": 0}, r"prediction row 1: key_slice: 0 is outside"),
        ({"slices": [slice_row(1), slice_row(9)]}, r"prediction row 1 slice row 1: slice: 9 is"),
        ({"slices": [slice_row(1, "maybe")]}, r"prediction row 1 slice row 0: triage must be"),
        ({"slices": [{"triage": "error"}]}, r"prediction row 1 slice row 0: needs its 1-based"),
        ({"slices": [slice_row(2), slice_row(2)]}, r"prediction row 1: slice\(s\) \[2\] given"),
        ({"slices": [slice_row(1, colour="red")]}, r"slice row 0: unknown field\(s\) \['colour'\]"),
        (
            {"slices": [slice_row(1, confidence="high")]},
            r"prediction row 1 slice row 0: confidence must be a number",
        ),
    ],
)
def test_bad_slice_results_are_refused_naming_the_row_and_nothing_is_stored(
    ws: Workspace, tmp_path: Path, change: dict, message: str
) -> None:
    (vol,) = ws.add_images([volume_row(tmp_path)])
    ws.register_model(MODEL, None, "demo")
    run = ws.start_run(MODEL, {})
    with pytest.raises(StoreError, match=message):
        ws.add_predictions(run, [volume_prediction(vol), volume_prediction(vol) | change])
    assert ws.predictions() == []
    assert ws.conn.execute("SELECT count(*) FROM slice_predictions").fetchone()[0] == 0


def test_slices_of_a_single_image_are_refused(ws: Workspace, tmp_path: Path) -> None:
    (image_id,) = ws.add_images([{"path": tmp_path / "a.png", "sha256": sha("a")}])
    ws.register_model(MODEL, None, "demo")
    run = ws.start_run(MODEL, {})
    with pytest.raises(StoreError, match="prediction row 0: key_slice: 1 given, but the item is a"):
        ws.add_predictions(run, [{"image_id": image_id, "triage": "error", "key_slice": 1}])
    with pytest.raises(StoreError, match=f"review of image {image_id}: slice: 2 given, but"):
        ws.add_review(image_id, "dr_a", ["dr"], slice=2)
    assert ws.reviews() == []


def test_a_review_slice_must_lie_within_the_volume(ws: Workspace, tmp_path: Path) -> None:
    (vol,) = ws.add_images([volume_row(tmp_path)])
    with pytest.raises(StoreError, match="slice: 6 is outside the volume's slices 1-5"):
        ws.add_review(vol, "dr_a", ["dme"], slice=6)
    with pytest.raises(StoreError, match="review slice must be an integer"):
        ws.add_review(vol, "dr_a", ["dme"], slice="third")
    ws.add_review(vol, "dr_a", ["dme"], slice=5)
    with pytest.raises(StoreError, match="an undo cannot note a slice"):
        ws.add_review(vol, "dr_a", [], action="undo", slice=5)
    assert [r["slice"] for r in ws.reviews()] == [5]


def test_other_sqlite_clients_cannot_store_a_bad_kind_or_slice(ws: Workspace) -> None:
    insert = (
        "INSERT INTO images (path, sha256, kind, n_slices, added_at, updated_at)"
        " VALUES (?, 'x', ?, ?, 't', 't')"
    )
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        ws.conn.execute(insert, ("/a", "stack", None))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        ws.conn.execute(insert, ("/b", "volume", 0))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        ws.conn.execute(
            "INSERT INTO slice_predictions (prediction_id, slice, triage) VALUES (1, 0, 'error')"
        )


# ----------------------------------------------------------------- exports and visits


def _visit_workspace(ws: Workspace, root: Path) -> tuple[int, int, int]:
    """Patient P7's left eye on 2024-05-02: an OCT volume (referred) and a photograph
    (cleared); the same eye on another day: a photograph (cleared)."""
    vol, photo, later = ws.add_images(
        [
            volume_row(root, "oct.dcm", patient_name="DOE^JANE"),
            volume_row(root, "photo.dcm", kind="image", n_slices=None),
            volume_row(root, "later.dcm", kind="image", n_slices=None, acquired="2024-09-01"),
        ]
    )
    ws.register_model(MODEL, None, "demo", activate=True)
    run = ws.start_run(MODEL, {})
    cleared = {"triage": "auto-cleared", "label": "normal", "confidence": 0.95}
    ws.add_predictions(
        run,
        [
            volume_prediction(vol),
            {"image_id": photo, **cleared},
            {"image_id": later, **cleared},
        ],
    )
    ws.add_review(vol, "dr_a", ["dme"], slice=3, note="cysts near the fovea, Mrs Doe")
    return vol, photo, later


def test_a_deidentified_export_leaves_out_who_and_when_but_keeps_the_visit(
    ws: Workspace, tmp_path: Path
) -> None:
    _visit_workspace(ws, tmp_path)
    out = tmp_path / "shared.csv"
    assert ws.write_export(out, "csv", deidentify=True) == 3
    text = out.read_text(encoding="utf-8")
    for secret in ("P7", "DOE", "2024-", "oct.dcm", "photo.dcm", sha("oct.dcm")):
        assert secret not in text
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["patient"] for r in rows} == {"patient-001"}
    assert [r["visit"] for r in rows] == ["1", "1", "2"]
    assert [r["kind"] for r in rows] == ["volume", "image", "image"]
    assert rows[0]["key_slice"] == "3" and rows[0]["reviewed_label"] == "dme"
    assert ws.audit_log()[-1]["details"]["deidentified"] is True


def test_visits_command_makes_one_decision_per_patient_eye_and_date(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from engine.cli import main

    _visit_workspace(ws, tmp_path)
    assert main(["visits", str(ws.path), "--json"]) == 0
    visits = json.loads(capsys.readouterr().out)
    assert [(v["patient"], v["eye"], v["date"], v["decision"]) for v in visits] == [
        ("P7", "left", "2024-05-02", "refer"),
        ("P7", "left", "2024-09-01", "no referral needed"),
    ]
    assert [Path(p["path"]).name for p in visits[0]["parts"]] == ["oct.dcm", "photo.dcm"]
    assert visits[0]["parts"][0]["key_slice"] == 3
    assert main(["visits", str(ws.path)]) == 0
    text = capsys.readouterr().out
    assert "patient P7  left eye  2024-05-02: refer (needs-review)" in text
    assert "oct.dcm (volume, 5 B-scans, key slice 3): needs-review" in text


def test_imported_reviews_may_note_a_slice_and_a_bad_one_names_its_row(
    ws: Workspace, tmp_path: Path
) -> None:
    vol, photo, _ = _visit_workspace(ws, tmp_path)
    before = len(ws.reviews())
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "path,label,reviewer,slice\noct.dcm,dme,dr_b,2\nphoto.dcm,normal,dr_b,1\n",
        encoding="utf-8",
    )
    with pytest.raises(StoreError, match=r"bad.csv row 3: slice: 1 given, but the item is a"):
        ws.import_reviews_csv(bad)
    bad.write_text("path,label,reviewer,slice\noct.dcm,dme,dr_b,9\n", encoding="utf-8")
    with pytest.raises(StoreError, match=r"bad.csv row 2: slice: 9 is outside the volume's"):
        ws.import_reviews_csv(bad)
    assert len(ws.reviews()) == before  # all or nothing
    good = tmp_path / "good.csv"
    good.write_text(
        "path,label,reviewer,slice\noct.dcm,dme,dr_b,2\nphoto.dcm,normal,dr_b,\n", encoding="utf-8"
    )
    assert ws.import_reviews_csv(good) == 2
    assert [(r["image_id"], r["slice"]) for r in ws.reviews()[before:]] == [(vol, 2), (photo, None)]


def test_the_review_command_records_a_slice(
    ws: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.cli import main

    vol, _, _ = _visit_workspace(ws, tmp_path)
    args = ["review", str(ws.path), str(tmp_path / "oct.dcm"), "--label", "dme"]
    assert main([*args, "--reviewer", "dr_c", "--slice", "4"]) == 0
    assert ws.reviews(vol)[-1]["slice"] == 4
    assert main([*args, "--reviewer", "dr_c", "--slice", "40"]) != 0
    assert "outside the volume's slices 1-5" in capsys.readouterr().err


def test_a_volume_with_a_confident_finding_on_a_slice_is_stored_as_refer(
    ws: Workspace, tmp_path: Path
) -> None:
    """Both the volume's row and its B-scan's row may say 'refer' (the refer-state migration
    widens the triage list of every table that has one)."""
    (vol,) = ws.add_images([volume_row(tmp_path)])
    ws.register_model(MODEL, None, "demo", activate=True)
    run = ws.start_run(MODEL, {"a": 1})
    prediction = volume_prediction(vol, triage="refer", triage_reason="slice 3 of 5: finding")
    prediction["slices"][2] = slice_row(3, "refer", label="dme", finding=0.97)
    (pid,) = ws.add_predictions(run, [prediction])
    assert ws.prediction_records([pid])[0]["triage"] == "refer"
    assert ws.slice_predictions(pid)[2]["triage"] == "refer"
