"""Improve model: learn from reviews, offer a new version, accept / reject / roll back safely."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
import signal
import sys
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import TINY_ARCH

DR, NORMAL = "diabetic_retinopathy", "normal"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*/*.png") if p.parent.name != "_masks")


def _truth(folder: Path) -> dict[str, str]:
    with open(folder / "labels.csv", newline="") as f:
        return {str((folder / r["file"]).resolve()): r["label"] for r in csv.DictReader(f)}


def _store_snapshot(ws_folder: Path) -> dict:
    from engine.store import Workspace

    with Workspace.open(ws_folder, create=False) as ws:
        return {
            "models": [(m["hash"], m["active"]) for m in ws.models()],
            "audit": len(ws.audit_log()),
            "reviews": len(ws.reviews()),
            "files": sorted(p.name for p in (ws_folder / "models").glob("*"))
            if (ws_folder / "models").exists()
            else [],
        }


@pytest.fixture(scope="module")
def wrong_ws(tmp_path_factory) -> SimpleNamespace:
    """A screened, reviewed workspace whose active model misses diabetic retinopathy.

    The starting model was trained on data where 4 in 5 DR images were labelled normal, so
    it calls (nearly) every image normal; reviewers then give the true labels of 60 images.
    """
    from engine.data import load_folder_dataset
    from engine.models import load_model
    from engine.screen import ScreenSettings
    from engine.store import Workspace
    from engine.synth import synthesize
    from engine.train import TrainConfig, train_model
    from engine.workspace_screen import screen_into_workspace

    root = tmp_path_factory.mktemp("improve")
    src = root / "src"
    synthesize(src, "fundus", n=64, seed=11, size=96, classes=(DR, NORMAL), difficulty=0.2)
    bad = root / "mislabelled"
    for i, p in enumerate(sorted((src / DR).glob("*.png"))):
        dest = bad / (DR if i % 5 == 0 else NORMAL)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest / p.name)
    for p in (src / NORMAL).glob("*.png"):
        shutil.copy(p, bad / NORMAL / p.name)
    start = root / "start.safetensors"
    cfg = TrainConfig(
        arch=TINY_ARCH, img_size=64, epochs=3, batch_size=16, seed=1, workers=2,
        fractions=(0.8, 0.2, 0.0), allow_collapsed=True,  # the point: a biased start
    )  # fmt: skip
    train_model(load_folder_dataset(bad), cfg, start, log=lambda s: None)

    pool = root / "pool"
    synthesize(pool, "fundus", n=72, seed=12, size=96, classes=(DR, NORMAL), difficulty=0.2)
    ws_folder = root / "ws"
    lm = load_model(start, device="cpu")
    screen_into_workspace(ws_folder, _images(pool), [lm], ScreenSettings(workers=2))
    truth = _truth(pool)
    with Workspace.open(ws_folder) as ws:
        preds = ws.latest_predictions()
        for p in preds[:60]:
            ws.add_review(
                p["image_id"], "grader", [truth[p["path"]]], "correct", prediction_id=p["id"]
            )
        start_labels = {p["image_id"]: p["label"] for p in preds}
    return SimpleNamespace(
        folder=ws_folder, start=start, start_hash=lm.sha256, truth=truth, pool=pool,
        start_labels=start_labels,
    )  # fmt: skip


@pytest.fixture(scope="module")
def improved(wrong_ws) -> dict:
    """One in-process improvement (full fine-tuning) of the wrong model."""
    import torch

    from engine.improve import ImproveConfig, improve

    torch.set_num_threads(2)
    return improve(wrong_ws.folder, ImproveConfig(strategy="full", epochs=5), log=lambda s: None)


# --------------------------------------------------------------------------- audit split


def test_audit_split_is_deterministic_disjoint_and_keeps_patients_together():
    from engine.improve import audit_split

    rows = [
        {"image_id": i, "patient": f"p{i // 2}" if i < 300 else None, "sha256": f"{i:064x}"}
        for i in range(400)
    ]
    train, audit = audit_split(rows, 0.25)
    again_train, again_audit = audit_split(list(reversed(rows)), 0.25)
    assert {r["image_id"] for r in audit} == {r["image_id"] for r in again_audit}
    assert {r["image_id"] for r in train}.isdisjoint({r["image_id"] for r in audit})
    assert len(train) + len(audit) == len(rows)
    assert 0.15 < len(audit) / len(rows) < 0.35
    audit_patients = {r["patient"] for r in audit if r["patient"]}
    assert not audit_patients & {r["patient"] for r in train if r["patient"]}
    # adding reviews never moves an image already in the audit set
    more_train, more_audit = audit_split(rows + [{"patient": "new", "sha256": "f" * 64}], 0.25)
    assert {r["image_id"] for r in audit} <= {r.get("image_id") for r in more_audit}


# --------------------------------------------------------------------------- improve


def test_improve_fixes_the_missed_class_and_offers_an_inactive_version(wrong_ws, improved):
    from engine.improve import audit_split, model_history
    from engine.modelfile import read_spec
    from engine.store import Workspace

    before, after = improved["before"], improved["after"]
    assert before["per_class"][DR]["sensitivity"] < 0.3  # the starting model misses DR
    assert after["per_class"][DR]["sensitivity"] > before["per_class"][DR]["sensitivity"] + 0.4
    assert after["balanced_accuracy"] > before["balanced_accuracy"]
    assert {"accuracy", "ece", "sensitivity", "specificity", "review_workload"} <= after.keys()
    assert improved["n_audit"] == before["n"] == after["n"] > 0
    assert improved["changed"] and all(c["truth"] in (DR, NORMAL) for c in improved["changed"])

    path = Path(improved["model_path"])
    assert path.parent == wrong_ws.folder.resolve() / "models" and path.is_file()
    assert improved["model"][:12] in path.name
    assert not list(path.parent.glob(".*.tmp"))
    with Workspace.open(wrong_ws.folder, create=False) as ws:
        active = ws.active_model()
        rows = {m["hash"]: m for m in ws.models()}
        actions = [e["action"] for e in ws.audit_log()]
        reviews = {r["id"]: r["image_id"] for r in ws.reviews()}
        images = {r["id"]: r for r in ws.images()}
    assert active["hash"] == wrong_ws.start_hash  # offered, not switched
    assert rows[improved["model"]]["parent"] == wrong_ws.start_hash
    assert "improve.candidate" in actions

    prov = read_spec(path).provenance
    assert prov["parent"] == wrong_ws.start_hash and prov["strategy"] == "full"
    assert prov["epochs"] == 5 and prov["reviews"]
    assert prov["selection"] == "mean of AUC and balanced accuracy"  # as train chooses
    # the audit images (the split of the reviewed images) were never trained on
    reviewed = [images[i] for i in sorted(set(reviews.values()))]
    audit_images = {r["id"] for r in audit_split(reviewed, 0.25)[1]}
    learnt_images = {reviews[i] for i in prov["reviews"] + prov["validation_reviews"]}
    assert len(audit_images) == improved["n_audit"]
    assert len(learnt_images) == 60 - len(audit_images)
    assert not learnt_images & audit_images
    assert {c["image_id"] for c in improved["changed"]} <= audit_images
    history = {h["hash"]: h for h in model_history(wrong_ws.folder)}
    assert history[improved["model"]]["status"] == "candidate"
    assert history[wrong_ws.start_hash]["status"] == "original"


def test_review_status_counts_usable_new_reviews(wrong_ws, improved):
    from engine.improve import review_status
    from engine.store import Workspace

    status = review_status(wrong_ws.folder)
    assert status["active_model"] == wrong_ws.start_hash
    assert status["new_reviews"] == status["reviewed_total"] == 60
    assert status["audit_n"] + status["train_n"] == 60 and status["enough"]
    with Workspace.open(wrong_ws.folder, create=False) as ws:
        unreviewed = [p for p in ws.latest_predictions() if p["review"] is None]
        ws.add_review(unreviewed[0]["image_id"], "grader", [], "ungradable")
        ws.add_review(unreviewed[1]["image_id"], "grader", [], "skip")
    assert review_status(wrong_ws.folder)["new_reviews"] == 60  # neither counts
    assert not review_status(wrong_ws.folder, min_new_reviews=61)["enough"]


def test_improve_refuses_without_enough_new_reviews(wrong_ws):
    from engine.improve import ImproveConfig, ImproveError, improve

    before = _store_snapshot(wrong_ws.folder)
    with pytest.raises(ImproveError, match="new reviews"):
        improve(wrong_ws.folder, ImproveConfig(min_new_reviews=500), log=lambda s: None)
    assert _store_snapshot(wrong_ws.folder) == before


def test_a_fine_tune_on_few_reviews_keeps_the_parents_calibration_and_ood_statistics(
    wrong_ws, improved
):
    from engine.improve.measure import MIN_CALIBRATION_IMAGES, MIN_OOD_FIT_IMAGES
    from engine.modelfile import load_model_file, read_spec

    parent_spec, _, parent_extra = load_model_file(wrong_ws.start)
    new_spec, _, new_extra = load_model_file(improved["model_path"])
    counts = read_spec(improved["model_path"]).provenance["counts"]
    assert counts["validation"] < MIN_CALIBRATION_IMAGES  # 60 reviews: a handful to calibrate on
    assert improved["n_train"] < MIN_OOD_FIT_IMAGES
    assert improved["calibration"]["calibration"]["source"] == "parent"
    assert improved["calibration"]["ood"]["source"] == "parent"
    assert new_spec.temperature == parent_spec.temperature
    assert new_spec.conformal == parent_spec.conformal
    assert new_spec.referral_curve == parent_spec.referral_curve
    assert new_spec.ood == parent_spec.ood
    for key in ("ood.mean", "ood.components", "ood.variances"):
        assert (new_extra[key] == parent_extra[key]).all()
    words = " ".join(improved["warnings"])
    assert "kept from the current model" in words and "alpha=" not in words


def test_the_workspace_ood_check_and_the_verdict_travel_with_the_result(wrong_ws, improved):
    from engine.improve import judge
    from engine.store import Workspace

    with Workspace.open(wrong_ws.folder, create=False) as ws:
        screened = len(ws.latest_predictions(wrong_ws.start_hash))
    check = improved["ood_check"]
    assert check["n"] == screened and 0 <= check["before"] <= screened
    assert improved["verdict"] == judge(improved).to_dict()  # JSON and dialog: one verdict
    flood = (check["after"] - check["before"]) / check["n"] >= 0.05
    flagged = any("unfamiliar" in r for r in improved["verdict"]["reasons"])
    assert flagged == (flood and check["after"] - check["before"] >= 3)
    answers = improved["audit_answers"]
    assert len(answers["truth"]) == len(answers["before"]) == improved["n_audit"]


def test_a_head_only_fine_tune_keeps_the_features_and_is_judged_on_paired_answers(wrong_ws):
    from engine.improve import ImproveConfig, improve, judge

    cfg = ImproveConfig(strategy="head", epochs=2, audit_fraction=0.45, min_new_reviews=1)
    res = improve(wrong_ws.folder, cfg, log=lambda s: None)
    assert res["n_audit"] >= 20  # enough audit images: the verdict is a real comparison
    assert res["verdict"]["decision"] in ("better", "worse", "no-difference")
    assert res["verdict"] == judge(res).to_dict()
    answers = res["audit_answers"]
    changed = sum(b != a for b, a in zip(answers["before"], answers["after"], strict=True))
    assert res["verdict"]["evidence"]["fixed"] + res["verdict"]["evidence"]["broken"] == changed
    # the backbone did not move, so the parent's OOD statistics flag exactly the same images
    assert res["calibration"]["ood"]["source"] == "parent"
    assert res["ood_check"]["after"] == res["ood_check"]["before"]


def test_a_collapsed_fine_tune_is_not_offered_and_nothing_is_written(wrong_ws, monkeypatch):
    import torch

    from engine.improve import ImproveCollapsed, ImproveConfig, improve
    from engine.improve import run as improve_run

    real = improve_run._finetune

    def ends_collapsed(net, spec, *args, **kwargs):  # noqa: ANN001, ANN202
        fitted = real(net, spec, *args, **kwargs)
        head = net.get_classifier()
        with torch.no_grad():  # the fine-tune ends calling every image diabetic retinopathy
            head.weight.zero_()
            head.bias.fill_(-5.0)
            head.bias[spec.labels.index(DR)] = 5.0
        return fitted

    monkeypatch.setattr(improve_run, "_finetune", ends_collapsed)
    before = _store_snapshot(wrong_ws.folder)
    with pytest.raises(ImproveCollapsed, match="predicts 'diabetic_retinopathy' for 100%"):
        improve(wrong_ws.folder, ImproveConfig(strategy="head", epochs=1), log=lambda s: None)
    assert _store_snapshot(wrong_ws.folder) == before  # no file, no version, no audit entry


def test_accept_then_rollback_restores_the_old_predictions(wrong_ws, improved):
    from engine.improve import accept, model_history, review_status, rollback
    from engine.models import load_model
    from engine.screen import ScreenSettings
    from engine.store import Workspace
    from engine.workspace_screen import screen_into_workspace

    accept(wrong_ws.folder, improved["model"], actor="lead")
    with Workspace.open(wrong_ws.folder, create=False) as ws:
        assert ws.active_model()["hash"] == improved["model"]
    assert review_status(wrong_ws.folder)["new_reviews"] == 0  # it learnt from all of them

    new = load_model(improved["model_path"], device="cpu")
    screen_into_workspace(wrong_ws.folder, _images(wrong_ws.pool), [new], ScreenSettings(workers=2))
    with Workspace.open(wrong_ws.folder, create=False) as ws:
        new_labels = {p["image_id"]: p["label"] for p in ws.latest_predictions()}
    assert new_labels != wrong_ws.start_labels
    assert sum(v == DR for v in new_labels.values()) > sum(
        v == DR for v in wrong_ws.start_labels.values()
    )

    rollback(wrong_ws.folder, wrong_ws.start_hash, actor="lead")
    with Workspace.open(wrong_ws.folder, create=False) as ws:
        assert ws.active_model()["hash"] == wrong_ws.start_hash
        shown = {p["image_id"]: p["label"] for p in ws.latest_predictions()}
        actions = [(e["actor"], e["action"]) for e in ws.audit_log()]
    assert shown == wrong_ws.start_labels
    assert ("lead", "improve.accept") in actions and ("lead", "improve.rollback") in actions
    status = {h["hash"]: h["status"] for h in model_history(wrong_ws.folder)}
    assert status[improved["model"]] == "accepted"


def test_improve_in_a_child_process_then_reject(wrong_ws):
    from engine.improve import (
        ImproveConfig,
        ImproveError,
        ImproveProcess,
        accept,
        candidates,
        model_history,
        reject,
    )
    from engine.store import Workspace

    events: list[dict] = []
    proc = ImproveProcess(wrong_ws.folder, ImproveConfig(epochs=1), events.append)
    proc.start()
    result = proc.wait(timeout=300)
    kinds = {e["event"] for e in events}
    assert {"progress", "log", "done"} <= kinds
    training = [e for e in events if e["event"] == "progress" and e["epoch"]]
    assert training and {"done", "total", "loss", "eta_s", "message"} <= training[-1].keys()
    assert result["parent"] == wrong_ws.start_hash and Path(result["model_path"]).is_file()
    assert result["model"] in {c["hash"] for c in candidates(wrong_ws.folder)}

    reject(wrong_ws.folder, result["model"], actor="lead")
    with Workspace.open(wrong_ws.folder, create=False) as ws:
        assert ws.active_model()["hash"] == wrong_ws.start_hash
        assert ("lead", "improve.reject") in [(e["actor"], e["action"]) for e in ws.audit_log()]
    assert Path(result["model_path"]).is_file()  # versions are immutable, never deleted
    assert result["model"] not in {c["hash"] for c in candidates(wrong_ws.folder)}
    history = {h["hash"]: h for h in model_history(wrong_ws.folder)}
    assert history[result["model"]]["status"] == "rejected"
    with pytest.raises(ImproveError, match="rejected"):
        accept(wrong_ws.folder, result["model"], actor="lead")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_killed_child_leaves_the_store_unchanged(wrong_ws):
    from engine.improve import ImproveConfig, ImproveError, ImproveProcess

    before = _store_snapshot(wrong_ws.folder)
    proc = ImproveProcess(wrong_ws.folder, ImproveConfig(strategy="full", epochs=50))
    proc.start()
    for event in proc.events():
        if event["event"] == "progress" and event.get("epoch"):
            os.kill(proc.proc.pid, signal.SIGKILL)  # a crash in the middle of training
            break
    with pytest.raises(ImproveError, match=r"stopped unexpectedly \(exit code -9\)"):
        proc.wait(timeout=60)
    assert _store_snapshot(wrong_ws.folder) == before


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
def test_cancel_kills_the_child_and_reports_it(wrong_ws):
    from engine.improve import ImproveCancelled, ImproveConfig, ImproveProcess

    before = _store_snapshot(wrong_ws.folder)
    proc = ImproveProcess(wrong_ws.folder, ImproveConfig(strategy="full", epochs=50))
    proc.start()
    proc.cancel()
    with pytest.raises(ImproveCancelled):
        proc.wait(timeout=30)
    assert not proc.running()
    assert _store_snapshot(wrong_ws.folder) == before


# --------------------------------------------------------------------------- LoRA


def test_lora_version_stores_only_the_adapter_and_joins_its_base(tmp_path):
    import torch

    from engine.improve import ImproveConfig, improve
    from engine.modelfile import ModelFileError, ModelSpec, read_spec, save_model_file
    from engine.models import create_network, load_model
    from engine.screen import ScreenSettings
    from engine.store import Workspace
    from engine.synth import synthesize
    from engine.workspace_screen import screen_into_workspace

    torch.manual_seed(0)
    spec = ModelSpec(
        "vit_tiny_patch16_224", "binary", [DR, NORMAL], input_size=32, name="vit-base",
        negative_label=NORMAL,
    )  # fmt: skip
    base = tmp_path / "base.safetensors"
    save_model_file(base, spec, create_network(spec).state_dict())
    pool = tmp_path / "pool"
    synthesize(pool, "fundus", n=24, seed=5, size=64, classes=(DR, NORMAL), difficulty=0.2)
    ws_folder = tmp_path / "ws"
    lm = load_model(base, device="cpu")
    screen_into_workspace(ws_folder, _images(pool), [lm], ScreenSettings(workers=2))
    truth = _truth(pool)
    with Workspace.open(ws_folder) as ws:
        for p in ws.latest_predictions():
            ws.add_review(p["image_id"], "grader", [truth[p["path"]]], "correct")
    cfg = ImproveConfig(strategy="lora", epochs=1, min_new_reviews=10)
    result = improve(ws_folder, cfg, log=lambda s: None)

    adapter = Path(result["model_path"])
    assert adapter.stat().st_size < base.stat().st_size / 5
    prov = read_spec(adapter).provenance
    assert prov["lora"]["base"] == lm.sha256 and prov["strategy"] == "lora"
    joined = load_model(adapter, device="cpu")  # base found through the workspace
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(joined.net(x), lm.net(x))  # the adapters changed something

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(adapter, alone / adapter.name)
    with pytest.raises(ModelFileError, match="base model"):
        load_model(alone / adapter.name, device="cpu")
    shutil.copy(base, alone / "base.safetensors")  # beside the adapter is enough
    beside = load_model(alone / adapter.name, device="cpu")
    with torch.no_grad():
        assert torch.allclose(beside.net(x), joined.net(x), atol=1e-5)


def test_lora_on_a_network_without_suitable_layers_says_so(tiny_model):
    import torch

    from engine.lora import LoraError, lora_settings
    from engine.models import load_model

    net = load_model(tiny_model, device="cpu").net
    assert lora_settings(net, TINY_ARCH)["targets"]  # resnet: its 1x1 downsample convs
    linear_only = copy.deepcopy(net)
    for name, _module in list(linear_only.named_modules()):
        if name.endswith("downsample"):
            parent, _, child = name.rpartition(".")
            setattr(linear_only.get_submodule(parent), child, torch.nn.Identity())
    with pytest.raises(LoraError, match="head.*full"):
        lora_settings(linear_only, TINY_ARCH)


# --------------------------------------------------------------------------- CLI and worker


def test_worker_reports_errors_as_one_json_line(tmp_path):
    from engine.worker import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["improve", str(tmp_path / "nowhere"), "--config", "{}"])
    lines = [json.loads(s) for s in out.getvalue().splitlines()]
    assert code == 1
    assert lines[-1]["event"] == "error" and "workspace" in lines[-1]["message"]


def test_worker_command_uses_the_frozen_executable(monkeypatch):
    from engine.improve import worker_command

    assert worker_command(["improve", "W"])[1:] == ["-m", "engine", "--worker", "improve", "W"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert worker_command(["improve", "W"]) == [sys.executable, "--worker", "improve", "W"]


def test_models_command_lists_improved_versions_with_their_parent(wrong_ws, improved, capsys):
    from engine.cli import main

    assert main(["models", str(wrong_ws.folder), "--json"]) == 0
    rows = {r["hash"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[improved["model"]]["parent"] == wrong_ws.start_hash
    assert rows[wrong_ws.start_hash]["parent"] is None
