"""The command line end to end: train, evaluate, calibrate, screen, explain, review, export."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.cli import main
from engine.triage import TRIAGE_STATES

from .conftest import TINY_ARCH


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def clinic_folder(tmp_path, synth_fundus) -> Path:
    """A folder to screen: synthetic images plus the usual bad files."""
    folder = tmp_path / "clinic"
    shutil.copytree(synth_fundus / "normal", folder / "normal")
    shutil.copytree(synth_fundus / "diabetic_retinopathy", folder / "dr")
    good = next(folder.rglob("*.png")).read_bytes()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.tif").write_bytes(b"hello, not an image")
    return folder


def test_screen_csv_has_a_row_per_file_and_names_bad_files(
    capsys, tmp_path, clinic_folder, tiny_model
):
    out = tmp_path / "results.csv"
    code, stdout, _ = run(capsys, "screen", clinic_folder, "--model", tiny_model, "--out", out)
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    n_images = len(list(clinic_folder.rglob("*.png"))) + 2  # + empty.jpg + notes.tif
    assert len(rows) == n_images
    for col in (
        "path",
        "label",
        "confidence",
        "error",
        "p_diabetic_retinopathy",
        "p_normal",
        "triage",
        "triage_reason",
    ):
        assert col in rows[0]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "empty" in by_name["empty.jpg"]["error"]
    assert "truncated" in by_name["truncated.png"]["error"]
    assert "not an image" in by_name["notes.tif"]["error"]
    good = [r for r in rows if not r["error"]]
    assert good and all(r["label"] in ("diabetic_retinopathy", "normal") for r in good)
    for r in good:
        p = float(r["p_diabetic_retinopathy"]) + float(r["p_normal"])
        assert abs(p - 1) < 1e-3
        assert (
            abs(
                float(r["confidence"])
                - max(float(r["p_diabetic_retinopathy"]), float(r["p_normal"]))
            )
            < 1e-3
        )
    assert {r["triage"] for r in rows} <= set(TRIAGE_STATES)
    assert "screened" in stdout


def test_screen_with_an_unusable_model_fails_with_one_line(capsys, tmp_path, clinic_folder):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run(capsys, "screen", clinic_folder, "--model", bad, "--out", tmp_path / "r.csv")
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "model.safetensors" in err


def test_evaluate_json_reports_metrics_and_referral_curve(capsys, synth_fundus, tiny_model):
    code, out, _ = run(capsys, "evaluate", tiny_model, synth_fundus, "--json")
    assert code == 0
    res = json.loads(out)
    assert res["n"] == 48
    for key in (
        "accuracy",
        "balanced_accuracy",
        "auc",
        "ece",
        "ece_uncalibrated",
        "confusion_matrix",
    ):
        assert key in res
    assert sum(map(sum, res["confusion_matrix"])) == 48
    referred = [p["referred"] for p in res["referral_curve"]]
    for f in (0.0, 0.1, 0.2, 0.3, 0.5):
        assert any(abs(r - f) < 0.03 for r in referred)
    for p in res["referral_curve"]:
        for k in ("accuracy", "balanced_accuracy", "sensitivity", "specificity"):
            assert k in p
    # the lift at 30 % referred is the curve's own, with how far it could move on 48 images
    at30 = min(res["referral_curve"], key=lambda p: abs(p["referred"] - 0.3))
    gain = res["referral_gain"]
    assert gain["referred"] == at30["referred"]
    lift = at30["accuracy"] - res["referral_curve"][0]["accuracy"]
    assert gain["gain"]["accuracy"] == pytest.approx(lift)
    lo, hi = gain["interval"]["accuracy"]
    assert lo <= lift <= hi and hi - lo > 0


def test_evaluate_writes_each_images_answer_for_pooling(capsys, tmp_path, synth_fundus, tiny_model):
    preds = tmp_path / "predictions.csv"
    code, out, _ = run(
        capsys, "evaluate", tiny_model, synth_fundus, "--json", "--predictions", preds
    )
    assert code == 0
    res = json.loads(out)
    rows = list(csv.DictReader(preds.open(encoding="utf-8")))
    assert len(rows) == res["n"] == 48
    labels = json.loads(run(capsys, "info", tiny_model, "--json")[1])["labels"]
    assert set(rows[0]) == {"item", "group", "true", "predicted", *(f"p:{x}" for x in labels)}
    for r in rows:
        assert Path(r["item"]).is_file() and r["group"]
        p = [float(r[f"p:{x}"]) for x in labels]
        assert abs(sum(p) - 1.0) < 1e-4
        assert r["predicted"] == labels[p.index(max(p))] and r["true"] in labels
    # the rows are the figures' own answers: accuracy and confusion counts agree
    right = sum(r["true"] == r["predicted"] for r in rows)
    assert right == sum(res["confusion_matrix"][i][i] for i in range(len(labels)))


def test_evaluate_part_test_reuses_the_models_own_split(capsys, synth_fundus, tiny_model):
    spec = json.loads(run(capsys, "info", tiny_model, "--json")[1])
    code, out, _ = run(capsys, "evaluate", tiny_model, synth_fundus, "--json", "--part", "test")
    assert code == 0
    res = json.loads(out)
    assert res["part"] == "test" and res["n"] == spec["provenance"]["split"]["counts"]["test"]
    # how uncertain the figures are: by patient (the synthetic set has two images per patient)
    ci = res["intervals"]
    assert ci["resampled"] == "patients" and ci["level"] == 0.95
    lo, hi = ci["metrics"]["accuracy"]
    assert lo <= res["accuracy"] <= hi and hi - lo > 0
    floor = res["ece_if_calibrated"]
    assert floor["n"] == res["n"] and floor["low"] <= floor["mean"] <= floor["high"]
    # the training run measured the same test part and keeps the intervals in the model file
    assert spec["metrics"]["test"]["intervals"]["resampled"] == "patients"
    code, text, _ = run(capsys, "evaluate", tiny_model, synth_fundus, "--part", "test")
    assert "95% CI" in text and "bootstrap over the patients" in text
    assert "a perfectly calibrated model would show an ECE of" in text


def test_training_from_a_csv_ordinal_task_counts_empty_labels(capsys, tmp_path, synth_fundus):
    rows = list(csv.DictReader((synth_fundus / "labels.csv").open()))
    grades = {"normal": "0", "diabetic_retinopathy": "2"}
    with open(tmp_path / "grades.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "grade", "patient"])
        for i, r in enumerate(rows):
            g = "" if i % 8 == 0 else (grades[r["label"]] if i % 5 else "1")
            w.writerow([r["file"], g, r["patient"]])
    model = tmp_path / "ordinal.safetensors"
    code, out, _ = run(
        capsys,
        "train",
        synth_fundus,
        "--labels",
        tmp_path / "grades.csv",
        "--image-col",
        "image",
        "--label-col",
        "grade",
        "--group-col",
        "patient",
        "--task",
        "ordinal",
        "--label-order",
        "0,1,2",
        "--arch",
        TINY_ARCH,
        "--img-size",
        "48",
        "--epochs",
        "1",
        "--seed",
        "5",
        "--allow-collapsed",
        "--out",
        model,
        "--quiet",
    )
    assert code == 0
    assert "left out 6 rows with an empty label" in out
    code, out, _ = run(
        capsys,
        "evaluate",
        model,
        synth_fundus,
        "--labels",
        tmp_path / "grades.csv",
        "--image-col",
        "image",
        "--label-col",
        "grade",
        "--json",
    )
    res = json.loads(out)
    assert code == 0 and "qwk" in res and res["n"] == 42


def test_training_multilabel_from_several_columns(capsys, tmp_path, synth_fundus):
    rows = list(csv.DictReader((synth_fundus / "labels.csv").open()))
    with open(tmp_path / "ml.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "dr", "exudates"])
        for i, r in enumerate(rows):
            dr = int(r["label"] == "diabetic_retinopathy")
            w.writerow([r["file"], dr, dr * (i % 2)])
    model = tmp_path / "ml.safetensors"
    code, _, _ = run(
        capsys,
        "train",
        synth_fundus,
        "--labels",
        tmp_path / "ml.csv",
        "--label-col",
        "dr",
        "--label-col",
        "exudates",
        "--arch",
        TINY_ARCH,
        "--img-size",
        "48",
        "--epochs",
        "1",
        "--allow-collapsed",
        "--out",
        model,
        "--quiet",
    )
    assert code == 0
    code, out, _ = run(capsys, "info", model, "--json")
    spec = json.loads(out)
    assert spec["task"] == "multilabel" and spec["labels"] == ["dr", "exudates"]
    code, out, _ = run(
        capsys,
        "evaluate",
        model,
        synth_fundus,
        "--labels",
        tmp_path / "ml.csv",
        "--label-col",
        "dr",
        "--label-col",
        "exudates",
        "--json",
    )
    assert code == 0 and "f1_macro" in json.loads(out)


def test_model_file_records_provenance_split_and_metrics(capsys, tiny_model):
    code, out, _ = run(capsys, "info", tiny_model, "--json")
    spec = json.loads(out)
    prov = spec["provenance"]
    assert prov["training_data"]["counts"] == {"diabetic_retinopathy": 24, "normal": 24}
    assert prov["split"]["seed"] == 1 and sum(prov["split"]["counts"].values()) == 48
    assert prov["engine_version"] and prov["created_at"]
    assert "test" in spec["metrics"] and spec["temperature"] > 0
    assert spec["ood"]["threshold"] > 0


def test_calibrate_writes_a_new_file_with_its_parent(capsys, tmp_path, synth_fundus, tiny_model):
    out = tmp_path / "cal.safetensors"
    code, stdout, _ = run(capsys, "calibrate", tiny_model, synth_fundus, "--out", out)
    assert code == 0 and "ECE before" in stdout and "ECE after" in stdout
    spec = json.loads(run(capsys, "info", out, "--json")[1])
    parent = json.loads(run(capsys, "info", tiny_model, "--json")[1])
    assert spec["provenance"]["parent"] == parent["sha256"]
    assert spec["conformal"] and spec["conformal"]["alpha"] == 0.1
    assert spec["sha256"] != parent["sha256"]


def test_explain_writes_overlays_and_raw_maps_at_image_resolution(
    capsys, tmp_path, synth_fundus, tiny_model
):
    img = next((synth_fundus / "diabetic_retinopathy").glob("*.png"))
    out = tmp_path / "ov"
    code, _, _ = run(
        capsys, "explain", img, "--model", tiny_model, "--method", "gradcam", "--out", out, "--raw"
    )
    assert code == 0
    png, npy = out / f"{img.stem}_gradcam.png", out / f"{img.stem}_gradcam.npy"
    w, h = Image.open(img).size
    assert Image.open(png).size == (w, h)
    amap = np.load(npy)
    assert amap.shape == (h, w) and np.isfinite(amap).all() and np.abs(amap).max() > 0


def test_explain_eval_reports_faithfulness(capsys, synth_fundus, tiny_model):
    code, out, _ = run(
        capsys,
        "explain-eval",
        tiny_model,
        synth_fundus,
        "--method",
        "gradcam",
        "--json",
        "--limit",
        "6",
    )
    assert code == 0
    res = json.loads(out)
    assert res["n"] > 0
    assert (
        0 <= res["pointing_game"] <= 1
        and 0 <= res["mass_in_mask"] <= 1
        and 0 <= res["deletion_auc"] <= 1
    )


def test_workspace_screen_review_export_agreement(capsys, tmp_path, clinic_folder, tiny_model):
    ws = tmp_path / "ws"
    code, _, _ = run(
        capsys,
        "screen",
        clinic_folder,
        "--model",
        tiny_model,
        "--workspace",
        ws,
        "--uncertainty",
        "mc",
        "--k",
        "8",
    )
    assert code == 0
    img = sorted((clinic_folder / "normal").glob("*.png"))[0]
    assert run(capsys, "review", ws, img, "--label", "normal", "--reviewer", "ana")[0] == 0
    assert (
        run(capsys, "review", ws, img, "--label", "diabetic_retinopathy", "--reviewer", "ben")[0]
        == 0
    )
    out = tmp_path / "export.csv"
    assert run(capsys, "export", ws, "--format", "csv", "--out", out)[0] == 0
    rows = list(csv.DictReader(out.open()))
    for col in (
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
    ):
        assert col in rows[0]
    assert {r["triage"] for r in rows} <= set(TRIAGE_STATES)
    reviewed = [r for r in rows if r["reviewed_label"]]
    assert len(reviewed) == 1 and reviewed[0]["reviewed_label"] == "diabetic_retinopathy"
    assert any(float(r["mutual_info"] or 0) > 0 for r in rows)
    code, out_json, _ = run(capsys, "agreement", ws, "--json")
    agreement = json.loads(out_json)
    assert code == 0 and agreement["pairs"][0]["n"] == 1
    con = sqlite3.connect(ws / "workspace.sqlite")
    assert con.execute("select count(*) from reviews").fetchone()[0] == 2


def test_rescreening_is_incremental(capsys, tmp_path, clinic_folder, tiny_model):
    ws = tmp_path / "ws"
    run(capsys, "screen", clinic_folder, "--model", tiny_model, "--workspace", ws)
    code, out, _ = run(capsys, "screen", clinic_folder, "--model", tiny_model, "--workspace", ws)
    assert code == 0 and "skipped" in out
    shutil.copy(next(clinic_folder.rglob("*.png")), clinic_folder / "new_copy.png")
    con = sqlite3.connect(ws / "workspace.sqlite")
    before = con.execute("select count(*) from predictions").fetchone()[0]
    run(capsys, "screen", clinic_folder, "--model", tiny_model, "--workspace", ws)
    after = con.execute("select count(*) from predictions").fetchone()[0]
    # the copy has the same bytes as a screened image: only the three bad files are retried
    assert after - before <= 4


def test_training_is_deterministic_for_a_seed(tmp_path, synth_fundus):
    from engine.data import load_folder_dataset
    from engine.modelfile import load_model_file
    from engine.train import TrainConfig, train_model

    ds = load_folder_dataset(synth_fundus)
    weights = []
    for run_ in ("a", "b"):
        cfg = TrainConfig(
            arch=TINY_ARCH,
            img_size=48,
            epochs=1,
            batch_size=16,
            seed=7,
            workers=2,
            allow_collapsed=True,
        )
        res = train_model(ds, cfg, tmp_path / f"{run_}.safetensors", log=lambda s: None)
        weights.append(load_model_file(res.path)[1])
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
