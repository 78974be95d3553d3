"""Disease-aware triage: a confident finding is referred, only a confident "no finding" is
auto-cleared, and every figure that counts states or "disease found" agrees."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from engine.findings import (
    disease_words,
    finding_labels,
    guess_negative_labels,
    is_negative_name,
    negative_labels,
)
from engine.modelfile import ModelFileError, ModelSpec
from engine.referral import referral_curve
from engine.store import Workspace
from engine.store.schema import MIGRATIONS
from engine.triage import (
    HUMAN_STATES,
    TRIAGE_STATES,
    TriagePolicy,
    decide,
    needs_human,
    read_answer,
    review_workload,
    triage_answer,
    triage_states,
)

from .test_store import MODEL, SETTINGS, add_images, prediction

LABELS = ["cataract", "diabetic_retinopathy", "glaucoma", "normal"]


def spec(labels=LABELS, task="multiclass", **kw) -> ModelSpec:
    return ModelSpec("resnet10t", task, list(labels), **kw)


# ---------------------------------------------------------------- negative labels


@pytest.mark.parametrize(
    "name", ["normal", "NORMAL", "No_DR", "no finding", "none", "0", "healthy", "no-glaucoma"]
)
def test_default_rule_reads_no_finding_names_as_negative(name):
    assert is_negative_name(name)


@pytest.mark.parametrize("name", ["glaucoma", "nonproliferative_dr", "1", "CNV", "normalish"])
def test_default_rule_does_not_read_diseases_as_negative(name):
    assert not is_negative_name(name)


def test_a_model_names_its_negatives_or_gets_the_default_rule():
    assert negative_labels(spec()) == ["normal"]
    assert finding_labels(spec()) == ["cataract", "diabetic_retinopathy", "glaucoma"]
    named = spec(negative_labels=["normal", "cataract"])
    assert negative_labels(named) == ["normal", "cataract"]
    assert named.negative_label == "normal"  # older readers still find the first one
    old_file = spec(labels=["a", "b", "c"], negative_label="c")
    assert negative_labels(old_file) == ["c"] and old_file.negative_labels == ["c"]
    # the description survives a round trip through the file's JSON
    assert ModelSpec.from_json(named.to_json()).negative_labels == ["normal", "cataract"]
    assert disease_words(spec()) == "cataract, diabetic retinopathy, glaucoma"


def test_binary_without_a_named_negative_uses_its_first_label_and_others_have_none():
    assert guess_negative_labels(["absent", "present"], "binary") == ["absent"]
    assert guess_negative_labels(["CNV", "DME", "DRUSEN"], "multiclass") == []
    assert guess_negative_labels(["CNV", "DME", "DRUSEN", "NORMAL"], "multiclass") == ["NORMAL"]


def test_a_negative_label_that_is_not_a_label_is_refused():
    with pytest.raises(ModelFileError, match="'healthy' is not a label"):
        spec(negative_labels=["healthy"])


# ---------------------------------------------------------------- the rule


def _decide(label, confidence=0.97, policy=None, **kw):
    s = kw.pop("model", spec())
    findings = [x for x in label.split(";") if x in finding_labels(s)]
    args = dict(
        error=None,
        label=label,
        display=s.display(label),
        confidence=confidence,
        conformal_set=None,
        set_display=None,
        quality_ok=True,
        quality_reasons=None,
        ood=False,
        ood_score=None,
        ood_threshold=None,
        findings=findings,
        finding_display=[s.display(x) for x in findings],
        multilabel_uncertain=None,
        policy=policy or TriagePolicy(),
    )
    args.update(kw)
    return decide(**args)


def test_a_confident_finding_is_referred_never_cleared():
    state, reason = _decide("glaucoma", 0.97)
    assert state == "refer"
    assert reason.startswith("confident finding: glaucoma")
    state, _ = _decide("diabetic_retinopathy", 0.95)
    assert state == "refer"


def test_only_a_confident_no_finding_is_auto_cleared():
    assert _decide("normal", 0.97)[0] == "auto-cleared"
    assert _decide("normal", 0.50)[0] == "needs-review"
    assert _decide("glaucoma", 0.50)[0] == "needs-review"


def test_per_finding_rule_sends_that_finding_to_review_and_refers_the_others():
    policy = TriagePolicy(review_findings=["glaucoma"])
    state, reason = _decide("glaucoma", 0.99, policy)
    assert state == "needs-review" and "glaucoma is always reviewed" in reason
    assert _decide("cataract", 0.99, policy)[0] == "refer"
    every = TriagePolicy(refer_findings=True)
    assert _decide("cataract", 0.99, every)[0] == "needs-review"
    assert _decide("normal", 0.99, every)[0] == "auto-cleared"
    assert TriagePolicy.from_dict(policy.to_dict()).review_findings == ["glaucoma"]


def test_error_ood_and_ungradable_come_before_the_finding():
    assert _decide("glaucoma", error="cannot read")[0] == "error"
    assert (
        _decide("glaucoma", ood=True, ood_score=9.0, ood_threshold=3.0)[0] == "out-of-distribution"
    )
    assert _decide("glaucoma", quality_ok=False, quality_reasons=["blurred"])[0] == "ungradable"


def test_a_model_without_a_no_finding_label_refers_every_confident_answer():
    oct_model = spec(labels=["CNV", "DME", "DRUSEN"])
    answer = read_answer(oct_model, np.array([0.98, 0.01, 0.01]), 0.85)
    _, state, _ = triage_answer(
        oct_model, answer, conformal_set=None, ood_score=None, quality=None, policy=TriagePolicy()
    )
    assert state == "refer"


def test_multilabel_refers_present_findings_and_clears_an_empty_answer():
    ml = spec(labels=["glaucoma", "cataract", "normal"], task="multilabel")
    probs = np.array([[0.99, 0.01, 0.01], [0.01, 0.02, 0.98], [0.01, 0.01, 0.01]])
    assert triage_states(ml, probs, None, None, TriagePolicy()) == [
        "refer",
        "auto-cleared",
        "auto-cleared",
    ]


def test_workload_and_needs_a_human_count_referrals():
    assert set(HUMAN_STATES) == set(TRIAGE_STATES) - {"auto-cleared"}
    assert needs_human("refer") and not needs_human("auto-cleared")
    assert review_workload(["refer", "auto-cleared", "needs-review", "auto-cleared"]) == 0.5
    assert TRIAGE_STATES[0] == "refer"  # most urgent first


# ---------------------------------------------------------------- referral curve


def test_referral_curve_says_how_much_disease_reaches_a_person():
    # classes: 0 glaucoma, 1 normal; one diseased image is confidently called normal
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.6, 0.4]])
    u = np.array([0.1, 0.2, 0.3, 0.9])
    curve = referral_curve(y, probs, u, "multiclass", negative_index=[1], fractions=(0.0, 0.5))
    none_referred, half = curve
    assert none_referred["n_missed"] == 1 and none_referred["disease_found"] == 0.5
    assert none_referred["n_refer"] == 2 and none_referred["n_auto_cleared"] == 2
    # referring the two most uncertain images does not rescue the confidently missed one
    assert half["n_missed"] == 1 and half["disease_found"] == 0.5


# ---------------------------------------------------------------- store


def test_store_accepts_refer_and_counts_it_as_needing_a_person(tmp_path: Path):
    with Workspace.open(tmp_path / "ws") as ws:
        ids = add_images(ws, tmp_path, 2, patient="7", eye="left")
        ws.register_model(MODEL, None, "m", activate=True)
        run = ws.start_run(MODEL, SETTINGS)
        ws.add_predictions(
            run,
            [prediction(ids[0], "refer", "glaucoma"), prediction(ids[1], "auto-cleared")],
        )
        totals = ws.dashboard_totals()
        assert totals["triage_counts"]["refer"] == 1
        assert totals["triage_counts"]["auto-cleared"] == 1
        exported = {r["path"]: r["triage"] for r in ws.export_rows()}
        assert sorted(exported.values()) == ["auto-cleared", "refer"]
        (patient,) = ws.patient_rollup()
        assert patient["referred"] and patient["eyes"] == {"left": "refer"}


def _version_1_workspace(folder: Path) -> Path:
    """A workspace as the first release wrote it, with data, plus a column that a later
    migration might have added (the rebuild must keep whatever columns it finds)."""
    folder.mkdir()
    db = folder / "workspace.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN")
    MIGRATIONS[0](conn)
    conn.execute(
        "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL)"
    )
    now = datetime.now(UTC).isoformat()
    conn.execute("INSERT INTO migrations VALUES (1, 'initial', ?)", (now,))
    conn.execute("ALTER TABLE predictions ADD COLUMN later_column TEXT")
    conn.execute(
        "INSERT INTO images (path, sha256, added_at, updated_at) VALUES ('/a.png', 's', ?, ?)",
        (now, now),
    )
    conn.execute("INSERT INTO models (hash, registered_at) VALUES ('h', ?)", (now,))
    conn.execute(
        "INSERT INTO runs (model_hash, settings, settings_key, started_at) VALUES ('h','{}','k',?)",
        (now,),
    )
    for i in range(3):
        conn.execute(
            "INSERT INTO predictions (run_id, image_id, model_hash, settings_key, image_sha256,"
            " label, triage, created_at, later_column) VALUES (1, 1, 'h', 'k', 's', 'glaucoma',"
            " 'auto-cleared', ?, ?)",
            (now, f"kept {i}"),
        )
    conn.execute("DELETE FROM predictions WHERE id = 3")  # the id counter is at 3
    conn.execute(
        "INSERT INTO reviews (image_id, reviewer, labels, action, prediction_id, created_at)"
        " VALUES (1, 'dr', '[\"glaucoma\"]', 'confirm', 2, ?)",
        (now,),
    )
    conn.execute("COMMIT")
    conn.close()
    return folder


def test_migration_widens_the_triage_check_and_keeps_every_column_row_and_link(tmp_path):
    folder = _version_1_workspace(tmp_path / "old")
    with Workspace.open(folder, create=False) as ws:
        conn = ws.conn
        rows = conn.execute("SELECT id, later_column FROM predictions ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [(1, "kept 0"), (2, "kept 1")]
        assert conn.execute("SELECT prediction_id FROM reviews").fetchone()[0] == 2
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='predictions'"
            )
        }
        assert {"predictions_image_model", "predictions_done", "predictions_run"} <= indexes
        conn.execute(
            "INSERT INTO predictions (run_id, image_id, model_hash, settings_key, image_sha256,"
            " triage, created_at) VALUES (1, 1, 'h', 'k', 's', 'refer', 'now')"
        )
        # the id of the deleted row is never reused
        assert conn.execute("SELECT max(id) FROM predictions").fetchone()[0] == 4
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO predictions (run_id, image_id, model_hash, settings_key,"
                " image_sha256, triage, created_at) VALUES (1, 1, 'h', 'k', 's', 'maybe', 'now')"
            )
        with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced again
            conn.execute(
                "INSERT INTO predictions (run_id, image_id, model_hash, settings_key,"
                " image_sha256, triage, created_at) VALUES (1, 99, 'h', 'k', 's', 'refer', 'now')"
            )
        assert ws.schema_version() == len(MIGRATIONS)


# ---------------------------------------------------------------- command line


def test_cli_screen_refers_confident_findings_and_checks_per_finding_rules(
    capsys, tmp_path, synth_fundus, tiny_model
):
    import csv

    from engine.cli import main

    out = tmp_path / "results.csv"
    argv = ["screen", str(synth_fundus), "--model", str(tiny_model), "--out", str(out)]
    code = main([*argv, "--threshold", "0", "--no-quality", "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    graded = [r for r in rows if r["triage"] in ("refer", "auto-cleared")]
    assert graded
    for r in graded:  # confident everywhere: the finding decides the state
        assert r["triage"] == ("auto-cleared" if r["label"] == "normal" else "refer"), r
    human = sum(r["triage"] != "auto-cleared" for r in rows)
    assert f"{human} need a person" in stdout

    code = main([*argv, "--review-finding", "glaucoma"])
    assert code != 0
    assert "glaucoma: not a finding of this model" in capsys.readouterr().err
    code = main([*argv, "--threshold", "0", "--quiet", "--review-finding", "diabetic_retinopathy"])
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert not any(r["triage"] == "refer" for r in rows)


def test_cli_train_records_the_named_no_finding_labels(capsys, tmp_path, synth_fundus):
    from engine.cli import main
    from engine.modelfile import read_spec

    from .conftest import TINY_ARCH

    out = tmp_path / "m.safetensors"
    base = ["train", str(synth_fundus), "--arch", TINY_ARCH, "--img-size", "64"]
    base += [
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--quiet",
        "--allow-collapsed",
    ]
    assert main([*base, "--negative-label", "diabetic_retinopathy"]) == 0
    assert read_spec(out).negative_labels == ["diabetic_retinopathy"]
    capsys.readouterr()
    assert main([*base, "--negative-label", "healthy"]) != 0
    assert "'healthy' is not a label" in capsys.readouterr().err


def test_model_comparison_counts_every_no_finding_label_as_negative():
    from engine.improve.verdict import judge

    labels = ["cataract", "glaucoma", "normal", "no_dr"]
    # 8 images with a finding, 8 without (4 'normal', 4 'no_dr'); the new model calls two
    # findings 'no_dr' that the current model found
    truth = [0, 1] * 4 + [2, 3] * 4
    before = list(truth)
    after = [3, 3] + truth[2:]
    result = {
        "audit_answers": {
            "truth": truth,
            "before": before,
            "after": after,
            "labels": labels,
            "negative": 2,
            "negatives": [2, 3],
        },
        "before": {"balanced_accuracy": 1.0},
        "after": {"balanced_accuracy": 0.9},
    }
    verdict = judge(result)
    assert verdict.evidence["findings"] == 8
    assert verdict.evidence["negative_labels"] == ["normal", "no_dr"]
    assert (verdict.evidence["missed_before"], verdict.evidence["missed_after"]) == (0, 2)
    assert not verdict.recommend


def test_the_model_card_says_which_labels_mean_no_finding():
    from engine.modelcard import model_card_text

    assert "no finding    normal\n" in model_card_text(spec(negative_labels=["normal"])) + "\n"
    assert "no finding    normal (default rule)" in model_card_text(spec())
    card = model_card_text(spec(labels=["CNV", "DME"]))
    assert "no finding    none named or found by the default rule: nothing is auto-cleared" in card


def test_cli_train_names_labels_for_the_screen(capsys, tmp_path, synth_fundus):
    from engine.cli import main
    from engine.modelfile import read_spec

    from .conftest import TINY_ARCH

    out = tmp_path / "m.safetensors"
    base = ["train", str(synth_fundus), "--arch", TINY_ARCH, "--img-size", "64", "--epochs", "1"]
    base += ["--batch-size", "16", "--out", str(out), "--quiet", "--allow-collapsed"]
    named = ["--display-name", "diabetic_retinopathy=Diabetic retinopathy (any grade)"]
    assert main([*base, *named]) == 0
    spec = read_spec(out)
    assert spec.display("diabetic_retinopathy") == "Diabetic retinopathy (any grade)"
    assert spec.display("normal") == "normal"
    capsys.readouterr()
    assert main([*base, "--display-name", "healthy=Healthy eye"]) != 0
    assert "'healthy': not a label" in capsys.readouterr().err
    assert main([*base, "--display-name", "normal"]) != 0
    assert "LABEL=WORDS" in capsys.readouterr().err
