"""Behaviour of the workspace store: schema, append-only reviews, undo, crash safety."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.store import (
    REVIEW_ACTIONS,
    SCHEMA_VERSION,
    TRIAGE_STATES,
    StoreError,
    Workspace,
    settings_key,
    sha256_file,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = "m" * 64
OTHER_MODEL = "n" * 64
SETTINGS = {"tta": 4, "threshold": 0.85, "input_size": 384}


def fake_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def ws(tmp_path: Path):
    with Workspace.open(tmp_path / "ws") as workspace:
        yield workspace


def add_images(ws: Workspace, root: Path, n: int, **extra) -> list[int]:
    """Register n images under root (the files need not exist; the store never reads them)."""
    rows = [
        {"path": root / f"img{i:03d}.png", "sha256": fake_sha(f"img{i}"), "size_bytes": 10 + i}
        | extra
        for i in range(n)
    ]
    return ws.add_images(rows)


def prediction(image_id: int, triage: str = "needs-review", label: str = "dr", **extra) -> dict:
    return {
        "image_id": image_id,
        "label": label,
        "probabilities": {label: 0.7, "normal": 0.3},
        "confidence": 0.7,
        "entropy": 0.61,
        "mutual_info": 0.05,
        "conformal_set": [label, "normal"],
        "ood_score": 1.5,
        "ood": False,
        "quality": {"sharpness": 0.9},
        "quality_ok": True,
        "triage": triage,
        "triage_reason": "confidence below 0.85",
    } | extra


def run_child(code: str, *args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        env=env,
        text=True,
        **popen,
    )


# ----------------------------------------------------------------- schema & opening


def test_new_workspace_has_schema_wal_foreign_keys_and_cache(tmp_path: Path) -> None:
    with Workspace.open(tmp_path / "new") as ws:
        tables = {
            r[0] for r in ws.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {
            "images",
            "models",
            "runs",
            "predictions",
            "reviews",
            "audit",
            "migrations",
        } <= tables
        assert ws.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ws.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert ws.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
        assert ws.cache_dir.is_dir() and ws.db_path.name == "workspace.sqlite"
        assert ws.schema_version() == SCHEMA_VERSION
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys really enforced
            ws.conn.execute(
                "INSERT INTO reviews (image_id, reviewer, action, created_at)"
                " VALUES (999, 'x', 'skip', 'now')"
            )
        assert "images" in ws.db.table_names()  # the sqlite-utils view works
    import sqlite_utils

    assert sqlite_utils.Database(tmp_path / "new" / "workspace.sqlite")["reviews"].count == 0


def test_opening_twice_applies_each_migration_once(tmp_path: Path) -> None:
    Workspace.open(tmp_path / "w").close()
    with Workspace.open(tmp_path / "w", create=False) as ws:
        versions = [
            r[0] for r in ws.conn.execute("SELECT version FROM migrations ORDER BY version")
        ]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_database_from_a_newer_program_is_refused(tmp_path: Path) -> None:
    with Workspace.open(tmp_path / "w") as ws:
        ws.conn.execute(
            "INSERT INTO migrations (version, name, applied_at) VALUES (?, 'future', 'now')",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}.*newer"):
        Workspace.open(tmp_path / "w")


def test_open_without_create_refuses_folders_that_are_not_workspaces(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not an EyeTriage workspace"):
        Workspace.open(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "workspace.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        Workspace.open(tmp_path / "junk")


def test_sha256_file_and_settings_key_are_stable(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 7)  # crosses several 1 MiB chunks
    (tmp_path / "f.bin").write_bytes(data)
    assert sha256_file(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    reordered = dict(reversed(list(SETTINGS.items())))
    assert settings_key(SETTINGS) == settings_key(reordered)
    assert settings_key(SETTINGS) != settings_key(SETTINGS | {"tta": 8})
    with pytest.raises(StoreError, match="settings must be a dict"):
        settings_key([1, 2])  # type: ignore[arg-type]


# ----------------------------------------------------------------- images & models


def test_add_image_upserts_by_resolved_path_and_tracks_changed_files(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = ws.add_image("a/../eye.png", fake_sha("v1"), 100, patient="7", eye="OD")
    again = ws.add_image(tmp_path / "eye.png", fake_sha("v2"), 120)
    assert first == again == ws.image_id(tmp_path / "eye.png")
    (row,) = ws.images()
    assert row["path"] == str(tmp_path / "eye.png")
    assert (row["sha256"], row["size_bytes"]) == (fake_sha("v2"), 120)
    assert (row["patient"], row["eye"]) == ("7", "right")  # None arguments keep old values
    changes = [e for e in ws.audit_log() if e["action"] == "image_changed"]
    assert changes[0]["details"]["images"][0]["old_sha256"] == fake_sha("v1")
    assert ws.image_id(tmp_path / "other.png") is None
    with pytest.raises(StoreError, match="eye 'both'"):
        ws.add_image(tmp_path / "x.png", fake_sha("x"), 1, eye="both")
    with pytest.raises(StoreError, match="sha256 must be 64 hex digits"):
        ws.add_image(tmp_path / "x.png", "abc", 1)


def test_at_most_one_model_is_active_and_switches_are_audited(ws: Workspace) -> None:
    ws.register_model(MODEL, "demo.safetensors", "demo", metrics={"acc": 0.9}, activate=True)
    ws.register_model(OTHER_MODEL, "tuned.safetensors", "tuned", parent=MODEL)
    ws.register_model(MODEL, "demo.safetensors", "renamed")  # idempotent, immutable
    assert [m["name"] for m in ws.models()] == ["demo", "tuned"]
    assert ws.active_model()["hash"] == MODEL
    assert ws.active_model()["metrics"] == {"acc": 0.9}
    ws.set_active_model(OTHER_MODEL, actor="dr_a")
    assert [m["hash"] for m in ws.models() if m["active"]] == [OTHER_MODEL]
    switch = [e for e in ws.audit_log() if e["action"] == "set_active_model"][-1]
    assert switch["actor"] == "dr_a"
    assert switch["details"] == {"hash": OTHER_MODEL, "previous": MODEL}
    with pytest.raises(StoreError, match="unknown model"):
        ws.set_active_model("z" * 64)
    with pytest.raises(sqlite3.IntegrityError):  # the database itself refuses two actives
        ws.conn.execute("UPDATE models SET active = 1")


# ----------------------------------------------------------------- runs & predictions


def test_incremental_screening_skips_images_done_with_same_model_and_settings(
    ws: Workspace, tmp_path: Path
) -> None:
    ids = add_images(ws, tmp_path, 4)
    ws.register_model(MODEL, None, "demo", activate=True)
    run = ws.start_run(MODEL, SETTINGS)
    ws.add_predictions(run, [prediction(ids[0]), prediction(ids[1], "auto-cleared")])
    ws.add_predictions(run, [prediction(ids[2], "error", error="cannot decode")])
    ws.finish_run(run, "cancelled", {"done": 3})
    key = settings_key(SETTINGS)
    assert ws.done_image_hashes(MODEL, key) == {fake_sha("img0"), fake_sha("img1")}
    assert ws.done_image_hashes(MODEL, settings_key(SETTINGS | {"tta": 8})) == set()
    # a resumed run only needs the rest; a changed file is no longer "done"
    ws.add_image(tmp_path / "img000.png", fake_sha("edited"), 11)
    current = {r["sha256"] for r in ws.images()}
    assert current - ws.done_image_hashes(MODEL, key) == {
        fake_sha("edited"),
        fake_sha("img2"),
        fake_sha("img3"),
    }
    assert ws.runs()[0]["status"] == "cancelled" and ws.runs()[0]["counts"] == {"done": 3}


def test_a_bad_prediction_row_stores_nothing_from_its_chunk(ws: Workspace, tmp_path: Path) -> None:
    ids = add_images(ws, tmp_path, 2)
    ws.register_model(MODEL, None, "demo")
    run = ws.start_run(MODEL, SETTINGS)
    with pytest.raises(StoreError, match="row 1: triage must be one of"):
        ws.add_predictions(run, [prediction(ids[0]), prediction(ids[1], "maybe")])
    with pytest.raises(StoreError, match="row 0: unknown field"):
        ws.add_predictions(run, [prediction(ids[0], confidance=0.3)])
    with pytest.raises(StoreError, match="unknown run"):
        ws.add_predictions(run + 1, [prediction(ids[0])])
    assert ws.predictions() == []


def test_latest_predictions_follow_the_active_model_with_current_review(
    ws: Workspace, tmp_path: Path
) -> None:
    ids = add_images(ws, tmp_path, 2)
    ws.register_model(MODEL, None, "old", activate=True)
    ws.register_model(OTHER_MODEL, None, "new")
    old_run = ws.start_run(MODEL, SETTINGS)
    ws.add_predictions(old_run, [prediction(ids[0], label="dr"), prediction(ids[1])])
    (latest_id,) = ws.add_predictions(old_run, [prediction(ids[0], label="glaucoma")])
    new_run = ws.start_run(OTHER_MODEL, SETTINGS)
    ws.add_predictions(new_run, [prediction(ids[0], "auto-cleared", label="normal")])
    ws.add_review(ids[0], "dr_a", [], action="confirm", prediction_id=latest_id)

    rows = {r["image_id"]: r for r in ws.latest_predictions()}
    assert rows[ids[0]]["id"] == latest_id and rows[ids[0]]["label"] == "glaucoma"
    assert rows[ids[0]]["review"]["labels"] == ["glaucoma"]  # confirm took the AI label
    assert rows[ids[0]]["conformal_set"] == ["glaucoma", "normal"]
    assert rows[ids[1]]["review"] is None and rows[ids[1]]["path"].endswith("img001.png")
    assert [r["label"] for r in ws.latest_predictions(OTHER_MODEL)] == ["normal"]


# ----------------------------------------------------------------- reviews


def test_reviews_cannot_be_updated_or_deleted_by_any_sqlite_client(
    ws: Workspace, tmp_path: Path
) -> None:
    (image,) = add_images(ws, tmp_path, 1)
    ws.add_review(image, "dr_a", ["dr"])
    other = sqlite3.connect(ws.db_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute("UPDATE reviews SET labels = '[\"normal\"]'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute("DELETE FROM reviews")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute("DELETE FROM audit")
    finally:
        other.close()
    assert [r["labels"] for r in ws.reviews()] == [["dr"]]


def test_current_label_is_the_latest_review_of_any_reviewer(ws: Workspace, tmp_path: Path) -> None:
    (image,) = add_images(ws, tmp_path, 1)
    assert ws.current_review(image) is None
    ws.add_review(image, "dr_a", ["dr"], seconds=4.5)
    ws.add_review(tmp_path / "img000.png", "dr_b", ["glaucoma", "cataract"], note="both")
    current = ws.current_review(image)
    assert (current["reviewer"], current["labels"]) == ("dr_b", ["glaucoma", "cataract"])
    ws.add_review(image, "dr_a", [], action="skip")
    assert ws.current_review(image)["labels"] == ["glaucoma", "cataract"]  # skip sets no label
    ws.add_review(image, "dr_c", [], action="ungradable")
    assert ws.current_review(image)["action"] == "ungradable"
    assert len(ws.reviews(image)) == 4


def test_undo_restores_the_previous_label_without_deleting_anything(
    ws: Workspace, tmp_path: Path
) -> None:
    a, b = add_images(ws, tmp_path, 2)
    ws.add_review(a, "dr_a", ["dr"])
    ws.add_review(a, "dr_a", ["glaucoma"])
    ws.add_review(b, "dr_b", ["normal"])
    ws.add_review(b, "dr_a", [], action="skip")

    first = ws.undo_last_review("dr_a")  # cancels the skip on b
    assert ws.current_review(b)["labels"] == ["normal"]
    second = ws.undo_last_review("dr_a")  # cancels "glaucoma" on a
    assert ws.current_review(a)["labels"] == ["dr"]
    undo_row = ws.reviews(a)[-1]
    assert (undo_row["id"], undo_row["action"], undo_row["labels"]) == (second, "undo", ["dr"])
    assert first != second
    ws.undo_last_review("dr_a")  # cancels "dr": nothing left on a
    assert ws.current_review(a) is None
    assert ws.undo_last_review("dr_a") is None  # nothing left to undo
    assert ws.current_review(b)["reviewer"] == "dr_b"  # other reviewers untouched
    assert len(ws.reviews()) == 7  # 4 reviews + 3 undos, nothing deleted

    ws.add_review(b, "dr_a", ["dr"])
    ws.add_review(b, "dr_a", [], action="undo")  # undo through add_review, per image
    assert ws.current_review(b)["labels"] == ["normal"]
    with pytest.raises(StoreError, match="nothing to undo"):
        ws.add_review(a, "dr_c", [], action="undo")


@pytest.mark.parametrize(
    ("image", "reviewer", "labels", "action", "message"),
    [
        (999, "dr_a", ["dr"], "correct", "unknown image id 999"),
        ("nowhere.png", "dr_a", ["dr"], "correct", "unknown image"),
        (None, "dr_a", ["dr"], "approve", "action must be one of"),
        (None, "  ", ["dr"], "correct", "reviewer must be a non-empty name"),
        (None, "dr_a", [], "correct", "needs at least one label"),
        (None, "dr_a", "dr", "correct", "labels must be a list"),
    ],
)
def test_bad_reviews_are_refused_with_a_clear_message_and_not_stored(
    ws: Workspace, tmp_path: Path, image, reviewer, labels, action, message
) -> None:
    (image_id,) = add_images(ws, tmp_path, 1)
    with pytest.raises(StoreError, match=message):
        ws.add_review(image_id if image is None else image, reviewer, labels, action=action)
    assert ws.reviews() == []
    assert not [e for e in ws.audit_log() if e["action"] == "review"]


def test_a_review_and_its_audit_entry_commit_together(ws: Workspace, tmp_path: Path) -> None:
    (image,) = add_images(ws, tmp_path, 1)
    review_id = ws.add_review(image, "dr_a", ["dr"])
    entry = ws.audit_log()[-1]
    assert (entry["actor"], entry["action"]) == ("dr_a", "review")
    assert entry["details"]["review_id"] == review_id
    ws.conn.execute(
        "CREATE TRIGGER audit_fails BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk'); END"
    )
    with pytest.raises(sqlite3.DatabaseError, match="disk"):
        ws.add_review(image, "dr_a", ["normal"])
    assert [r["labels"] for r in ws.reviews()] == [["dr"]]  # the review rolled back too


# ----------------------------------------------------------------- export / import

REQUIRED_EXPORT = [
    "path",
    "patient",
    "eye",
    "label",
    "confidence",
    "entropy",
    "mutual_info",
    "conformal_set",
    "ood_score",
    "quality",
    "triage",
    "triage_reason",
    "error",
    "reviewed_label",
    "reviewer",
    "reviewed_at",
    "model_hash",
]


def test_export_writes_one_row_per_image_in_csv_and_json(ws: Workspace, tmp_path: Path) -> None:
    ids = add_images(ws, tmp_path, 3, patient="42", eye="left")
    ws.register_model(MODEL, None, "demo", activate=True)
    run = ws.start_run(MODEL, SETTINGS)
    ws.add_predictions(run, [prediction(ids[0]), prediction(ids[1], "auto-cleared", "normal")])
    ws.add_review(ids[0], "dr_a", ["dr", "glaucoma"])
    out = tmp_path / "out"
    out.mkdir()

    assert ws.write_export(out / "triage.csv", "csv") == 3
    with (out / "triage.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert set(REQUIRED_EXPORT) <= set(rows[0])
    assert rows[0]["conformal_set"] == "dr|normal"
    assert json.loads(rows[0]["quality"]) == {"sharpness": 0.9}
    assert (rows[0]["reviewed_label"], rows[0]["reviewer"]) == ("dr;glaucoma", "dr_a")
    assert (rows[1]["triage"], rows[1]["model_hash"]) == ("auto-cleared", MODEL)
    assert rows[2]["triage"] == "" and rows[2]["eye"] == "left"  # not screened yet

    assert ws.write_export(out / "triage.json", "json") == 3
    data = json.loads((out / "triage.json").read_text(encoding="utf-8"))
    assert data[0]["conformal_set"] == ["dr", "normal"] and data[0]["confidence"] == 0.7
    assert sorted(p.name for p in out.iterdir()) == ["triage.csv", "triage.json"]  # no temp left
    with pytest.raises(StoreError, match="format must be"):
        ws.write_export(out / "x.xlsx", "xlsx")


def test_import_reviews_csv_is_all_or_nothing(ws: Workspace, tmp_path: Path) -> None:
    ids = add_images(ws, tmp_path, 3)
    sheet = tmp_path / "labels.csv"
    sheet.write_text(
        "path,label,reviewer,action\n"
        f"{tmp_path / 'img000.png'},dr,dr_a,correct\n"
        "img001.png,normal;cataract,,confirm\n"
        "missing.png,dr,dr_b,\n",
        encoding="utf-8",
    )
    with pytest.raises(StoreError, match=r"labels\.csv row 4: unknown image 'missing\.png'"):
        ws.import_reviews_csv(sheet, default_reviewer="importer")
    assert ws.reviews() == []

    sheet.write_text(sheet.read_text().replace("missing.png", "img002.png"), encoding="utf-8")
    assert ws.import_reviews_csv(sheet, default_reviewer="importer") == 3
    assert ws.current_review(ids[1])["labels"] == ["normal", "cataract"]
    assert ws.current_review(ids[1])["reviewer"] == "importer"
    assert ws.current_review(ids[2])["action"] == "correct"

    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,reviewer\nimg000.png,dr,\n", encoding="utf-8")
    with pytest.raises(StoreError, match="row 2: no reviewer"):
        ws.import_reviews_csv(bad)
    bad.write_text("path,reviewer\nimg000.png,x\n", encoding="utf-8")
    with pytest.raises(StoreError, match=r"missing column\(s\) \['label'\]"):
        ws.import_reviews_csv(bad)
    assert len(ws.reviews()) == 3


# ----------------------------------------------------------------- processes & crashes

_REVIEW_WRITER = """
    import sys, time
    from engine.store import Workspace
    ws = Workspace.open(sys.argv[1], create=False)
    ids = [r["id"] for r in ws.images()]
    print("ready", flush=True)
    sys.stdin.readline()
    for k in range(int(sys.argv[3])):
        ws.add_review(ids[k % len(ids)], sys.argv[2], ["dr" if k % 2 else "normal"])
        time.sleep(0.002)  # a reviewer pauses between saves, letting the other writer in
    ws.close()
"""


def test_two_processes_writing_reviews_at_once_lose_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "ws"
    with Workspace.open(folder) as ws:
        add_images(ws, tmp_path, 10)
    per_process = 200
    children = [
        run_child(
            _REVIEW_WRITER,
            str(folder),
            name,
            str(per_process),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for name in ("dr_a", "dr_b")
    ]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    for child in children:  # release both at once
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        assert child.wait(timeout=60) == 0
    with Workspace.open(folder, create=False) as ws:
        reviews = ws.reviews()
        audited = [e for e in ws.audit_log() if e["action"] == "review"]
        integrity = ws.conn.execute("PRAGMA integrity_check").fetchone()[0]
    assert integrity == "ok"
    assert len(reviews) == len(audited) == 2 * per_process
    assert sum(r["reviewer"] == "dr_a" for r in reviews) == per_process
    switches = sum(
        a["reviewer"] != b["reviewer"] for a, b in zip(reviews, reviews[1:], strict=False)
    )
    assert switches > 10, "the two writers never overlapped; the test proved nothing"


_PREDICTION_WRITER = """
    import sys
    from engine.store import Workspace
    ws = Workspace.open(sys.argv[1], create=False)
    run, chunk = int(sys.argv[2]), int(sys.argv[3])
    ids = [r["id"] for r in ws.images()]
    probs = {f"class_{c}": 1 / 40 for c in range(40)}
    done = 0
    while True:
        rows = [
            {"image_id": ids[(done + j) % len(ids)], "triage": "needs-review", "label": "dr",
             "confidence": 0.5, "probabilities": probs, "conformal_set": list(probs),
             "quality": {"note": "x" * 500}, "triage_reason": "test"}
            for j in range(chunk)
        ]
        ws.add_predictions(run, rows)
        done += chunk
        print(done, flush=True)
"""


def test_kill_9_during_prediction_writes_leaves_a_consistent_store(tmp_path: Path) -> None:
    folder, chunk = tmp_path / "ws", 64
    with Workspace.open(folder) as ws:
        add_images(ws, tmp_path, 50)
        ws.register_model(MODEL, None, "demo", activate=True)
        run = ws.start_run(MODEL, SETTINGS)
    before = 0
    for delay in (0.0, 0.013, 0.029):  # a few kills at different points of a chunk
        child = run_child(
            _PREDICTION_WRITER, str(folder), str(run), str(chunk), stdout=subprocess.PIPE
        )
        acknowledged = 0  # rows this child reported as committed
        while acknowledged < 3 * chunk:
            acknowledged = int(child.stdout.readline())
        time.sleep(delay)
        child.kill()  # SIGKILL on POSIX: no cleanup, no atexit, no rollback
        child.wait(timeout=30)
        acknowledged = max([acknowledged, *(int(x) for x in child.stdout.read().split())])
        child.stdout.close()
        with Workspace.open(folder, create=False) as ws:
            assert ws.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert ws.conn.execute("PRAGMA foreign_key_check").fetchall() == []
            count = ws.conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        assert count % chunk == 0, f"{count} rows: a partial chunk survived the crash"
        # every chunk reported as written is there (one more may have committed unreported)
        assert acknowledged <= count - before <= acknowledged + chunk
        before = count


# ----------------------------------------------------------------- summaries


def test_agreement_matches_sklearn_cohen_kappa(ws: Workspace, tmp_path: Path) -> None:
    from sklearn.metrics import cohen_kappa_score

    classes = ["0", "1", "2", "3", "4"]
    rng = random.Random(7)
    ids = add_images(ws, tmp_path, 40)
    truth = {i: rng.choice(classes) for i in ids}

    def noisy(p: float) -> dict[int, str]:
        return {i: truth[i] if rng.random() < p else rng.choice(classes) for i in ids}

    expected = {"dr_a": noisy(0.8), "dr_b": noisy(0.7), "dr_c": noisy(0.6)}
    del expected["dr_b"][ids[0]], expected["dr_c"][ids[1]]  # not everyone rates everything
    ai = noisy(0.75)
    for reviewer, labels in expected.items():
        for image, label in labels.items():
            ws.add_review(image, reviewer, [label])
    ws.add_review(ids[2], "dr_a", ["4" if expected["dr_a"][ids[2]] != "4" else "0"])
    ws.undo_last_review("dr_a")  # an undone review must not count
    ws.add_review(ids[3], "dr_c", ["1", "2"])  # multi-label: dr_c drops out on this image
    del expected["dr_c"][ids[3]]
    ws.register_model(MODEL, None, "demo", activate=True)
    run = ws.start_run(MODEL, SETTINGS)
    ws.add_predictions(run, [prediction(i, label=ai[i]) for i in ids])

    def sk(x: dict[int, str], y: dict[int, str], weights: str | None = None) -> tuple[int, float]:
        common = sorted(x.keys() & y.keys())
        a = [int(x[i]) for i in common]
        b = [int(y[i]) for i in common]
        return len(common), cohen_kappa_score(a, b, labels=list(range(5)), weights=weights)

    result = ws.agreement()
    assert result["reviewers"] == ["dr_a", "dr_b", "dr_c"]
    for pair in result["pairs"]:
        n, kappa = sk(expected[pair["a"]], expected[pair["b"]])
        assert pair["n"] == n and pair["kappa"] == pytest.approx(kappa, abs=1e-9)
    for row in result["with_ai"]:
        n, kappa = sk(expected[row["reviewer"]], ai)
        assert row["n"] == n and row["kappa"] == pytest.approx(kappa, abs=1e-9)
    qwk = ws.agreement(weights="quadratic", labels=classes)["pairs"][0]
    assert qwk["kappa"] == pytest.approx(sk(expected["dr_a"], expected["dr_b"], "quadratic")[1])


def test_patient_rollup_refers_a_patient_when_any_image_needs_review(
    ws: Workspace, tmp_path: Path
) -> None:
    spec = [  # (patient, eye, triage or None if unscreened)
        ("1", "right", "auto-cleared"),
        ("1", "right", "needs-review"),
        ("1", "left", "auto-cleared"),
        ("2", "right", "auto-cleared"),
        ("2", "left", "auto-cleared"),
        ("3", "left", "ungradable"),
        ("4", None, None),
        (None, "left", "needs-review"),
    ]
    ids = ws.add_images(
        [
            {"path": tmp_path / f"{k}.png", "sha256": fake_sha(str(k)), "size_bytes": 1}
            | {"patient": patient, "eye": eye}
            for k, (patient, eye, _) in enumerate(spec)
        ]
    )
    ws.register_model(MODEL, None, "demo", activate=True)
    run = ws.start_run(MODEL, SETTINGS)
    ws.add_predictions(run, [prediction(i, t) for i, (_, _, t) in zip(ids, spec, strict=True) if t])
    rollup = {p["patient"]: p for p in ws.patient_rollup()}
    assert sorted(rollup) == ["1", "2", "3", "4"]  # images without a patient are left out
    assert rollup["1"]["eyes"] == {"right": "needs-review", "left": "auto-cleared"}
    assert (rollup["1"]["images"], rollup["1"]["referred"]) == (3, True)
    assert rollup["2"]["referred"] is False
    assert rollup["3"]["referred"] is True
    assert (rollup["4"]["unscreened"], rollup["4"]["referred"]) == (1, False)


def test_constants_match_the_database_checks(ws: Workspace) -> None:
    sql = ws.conn.execute("SELECT group_concat(sql, ' ') FROM sqlite_master").fetchone()[0]
    assert all(f"'{state}'" in sql for state in TRIAGE_STATES)
    assert all(f"'{action}'" in sql for action in REVIEW_ACTIONS)


# ----------------------------------------------------------------- import cost


def test_importing_the_store_loads_no_torch_numpy_or_qt() -> None:
    code = """
        import json, sys
        import engine.store, engine.naming
        heavy = {"torch", "numpy", "timm", "captum", "PySide6", "sqlite_utils"}
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
    """
    child = run_child(code, stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert json.loads(out) == []


def test_a_workspace_can_be_used_from_a_worker_thread(ws: Workspace, tmp_path: Path) -> None:
    import threading

    (image,) = add_images(ws, tmp_path, 1)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            ws.add_review(image, "dr_a", ["dr"])
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread below
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=10)
    assert errors == [] and ws.current_review(image)["labels"] == ["dr"]
