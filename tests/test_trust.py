"""Trust layer end to end: OOD flags, quality gate, uncertainty, triage, crash safety."""

from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from engine.clearing import clearing_block
from engine.demo import demo_model_path
from engine.images import discover_images
from engine.models import load_model
from engine.screen import ScreenSettings, screen_all
from engine.synth import synthesize
from engine.triage import TriagePolicy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_model():
    p = demo_model_path()
    if p is None:
        pytest.skip("demo model not built (make demo-model)")
    return load_model(p, device="cpu")


def test_oct_scans_and_other_photos_are_flagged_out_of_distribution(tmp_path, demo_model):
    synthesize(tmp_path / "oct", "oct", n=8, seed=5, size=256)
    synthesize(tmp_path / "fundus", "fundus", n=40, seed=99, size=256)
    other = tmp_path / "other"
    other.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # smooth colourful shapes: a photograph of something else
        a = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        Image.fromarray(a).resize((256, 256), Image.BICUBIC).save(other / f"photo{i}.png")
    settings = ScreenSettings()

    def share_ood(folder: Path) -> float:
        res = screen_all(discover_images(folder), [demo_model], settings)
        return sum(r.triage == "out-of-distribution" for r in res) / len(res)

    assert share_ood(tmp_path / "oct") >= 0.9
    assert share_ood(other) >= 0.9
    assert share_ood(tmp_path / "fundus") <= 0.1  # real-looking fundus images pass


def test_quality_gate_sends_blurred_and_black_images_to_ungradable(tmp_path, demo_model):
    synthesize(tmp_path / "src", "fundus", n=4, seed=7, size=384, classes=("normal",))
    src = sorted((tmp_path / "src").rglob("*.png"))
    folder = tmp_path / "in"
    folder.mkdir()
    for i, p in enumerate(src):
        Image.open(p).save(folder / f"sharp{i}.png")
        Image.open(p).filter(ImageFilter.GaussianBlur(8)).save(folder / f"blurred{i}.png")
    Image.new("RGB", (384, 384)).save(folder / "black.png")
    res = {
        Path(r.path).name: r
        for r in screen_all(discover_images(folder), [demo_model], ScreenSettings())
    }
    assert res["black.png"].triage in ("ungradable", "out-of-distribution")
    blurred = [r for n, r in res.items() if n.startswith("blurred")]
    assert sum(r.triage == "ungradable" for r in blurred) >= 3
    assert all(
        "blur" in r.triage_reason or "focus" in r.triage_reason
        for r in blurred
        if r.triage == "ungradable"
    )
    sharp = [r for n, r in res.items() if n.startswith("sharp")]
    assert all(r.quality_ok for r in sharp)


def test_mc_dropout_gives_spread_and_never_touches_batchnorm(synth_fundus, tiny_model):
    lm = load_model(tiny_model, device="cpu")
    bn_before = [
        m.running_mean.clone() for m in lm.net.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]
    paths = discover_images(synth_fundus)[:12]
    for method in ("mc", "mc-full", "tta"):
        res = screen_all(paths, [lm], ScreenSettings(uncertainty=method, k=6))
        assert all(r.uncertainty_method == method for r in res)
        assert any(r.mutual_info > 0 for r in res), method
        assert all(r.entropy >= r.mutual_info - 1e-6 for r in res)
    bn_after = [m.running_mean for m in lm.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(bn_before, bn_after, strict=True))
    assert not any(m.training for m in lm.net.modules())


def test_mc_dropout_refuses_a_model_trained_without_dropout(tmp_path, synth_fundus):
    from engine.modelfile import ModelSpec, save_model_file
    from engine.models import create_network
    from engine.uncertainty import UncertaintyError

    spec = ModelSpec("resnet10t", "binary", ["diabetic_retinopathy", "normal"], input_size=64)
    spec.head_dropout = 0.0
    spec.name = "no-dropout"
    path = tmp_path / "nodrop.safetensors"
    save_model_file(path, spec, create_network(spec).state_dict())
    lm = load_model(path, device="cpu")
    paths = discover_images(synth_fundus)[:2]
    for method in ("mc", "mc-full"):
        with pytest.raises(UncertaintyError, match="'no-dropout' was trained without head dropout"):
            screen_all(paths, [lm], ScreenSettings(uncertainty=method, k=4))
    res = screen_all(paths, [lm], ScreenSettings(uncertainty="tta", k=4))  # TTA still works
    assert [r.uncertainty_method for r in res] == ["tta", "tta"]


def test_plain_pass_has_no_model_disagreement(synth_fundus, tiny_model):
    lm = load_model(tiny_model, device="cpu")
    res = screen_all(discover_images(synth_fundus)[:6], [lm], ScreenSettings(uncertainty="none"))
    assert all(r.mutual_info == 0 for r in res)


def test_ensemble_averages_models_with_the_same_labels(synth_fundus, tiny_model, demo_model):
    lm = load_model(tiny_model, device="cpu")
    paths = discover_images(synth_fundus)[:4]
    res = screen_all(paths, [lm, lm], ScreenSettings(uncertainty="ensemble"))
    single = screen_all(paths, [lm], ScreenSettings())
    for a, b in zip(res, single, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
    with pytest.raises(ValueError, match="different task or labels"):
        screen_all(paths, [lm, demo_model], ScreenSettings(uncertainty="ensemble"))


def test_policies_give_reasons_in_words(synth_fundus, tiny_model):
    lm = load_model(tiny_model, device="cpu")
    paths = discover_images(synth_fundus)[:8]
    strict = screen_all(paths, [lm], ScreenSettings(policy=TriagePolicy(threshold=1.0)))
    assert all(r.triage == "needs-review" and "below 1.00" in r.triage_reason for r in strict)
    lax_policy = TriagePolicy(threshold=0.0, use_ood=False)
    lax = screen_all(paths, [lm], ScreenSettings(policy=lax_policy))
    # every answer is confident: a finding is referred, never cleared; "no finding" is
    # cleared only where the model's held-out check allows clearing (a tiny model's few
    # validation images do not), otherwise it is reviewed and the reason says why
    block = clearing_block([lm.spec], lax_policy)
    assert any(r.triage != "ungradable" for r in lax)
    for r in lax:
        if r.triage == "ungradable":
            continue
        if r.label != "normal":
            assert r.triage == "refer", r
            assert r.triage_reason.startswith("confident finding: ")
        elif block is None:
            assert r.triage == "auto-cleared", r
        else:
            assert r.triage == "needs-review", r
            assert "auto-clear is off for this model" in r.triage_reason
    findings = screen_all(
        paths,
        [lm],
        ScreenSettings(policy=TriagePolicy(threshold=0.0, refer_findings=True, use_ood=False)),
    )
    assert not any(r.triage == "refer" for r in findings)
    flagged = [r for r in findings if r.label != "normal" and r.triage == "needs-review"]
    assert flagged and all("always reviewed" in r.triage_reason for r in flagged)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *map(str, args)]


def test_kill_9_during_workspace_screening_leaves_a_consistent_store_that_resumes(
    tmp_path, tiny_model
):
    folder = tmp_path / "many"
    synthesize(
        folder, "fundus", n=160, seed=21, size=96, classes=("normal", "diabetic_retinopathy")
    )
    ws = tmp_path / "ws"
    db = ws / "workspace.sqlite"
    proc = subprocess.Popen(
        _cli(
            "screen",
            folder,
            "--model",
            tiny_model,
            "--workspace",
            ws,
            "--batch-size",
            "8",
            "--quiet",
        ),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=1)
                done = con.execute("select count(*) from predictions").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                done = 0
            if done >= 16:
                break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast)")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    stored = con.execute("select count(*) from predictions").fetchone()[0]
    assert stored % 8 == 0 and 0 < stored < 160  # whole chunks only
    con.close()
    out = subprocess.run(
        _cli(
            "screen",
            folder,
            "--model",
            tiny_model,
            "--workspace",
            ws,
            "--batch-size",
            "8",
            "--quiet",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"{stored} images already screened" in out.stdout
    con = sqlite3.connect(db)
    per_image = collections.Counter(r[0] for r in con.execute("select image_id from predictions"))
    assert len(per_image) == 160 and set(per_image.values()) == {1}


def test_ctrl_c_stops_screening_and_keeps_the_finished_rows(tmp_path, tiny_model):
    folder = tmp_path / "many"
    synthesize(folder, "fundus", n=200, seed=22, size=96, classes=("normal",))
    out = tmp_path / "results.csv"
    proc = subprocess.Popen(
        _cli(
            "screen",
            folder,
            "--model",
            tiny_model,
            "--out",
            out,
            "--batch-size",
            "4",
            "--quiet",
            "--uncertainty",
            "tta",
        ),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a CI shell may start us with SIGINT ignored, which children inherit: restore the
        # default so the child behaves as under a user's Ctrl+C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        partial = next(out.parent.glob(f".{out.name}.*.tmp"), None)  # the file being written
        try:
            rows = partial.read_text().count("\n") if partial is not None else 0
        except FileNotFoundError:  # renamed in between: the run ended
            rows = 0
        if rows > 8:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be interrupted")
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err
    lines = out.read_text().strip().splitlines()
    assert lines[0].startswith("path,label,confidence,error")
    assert 8 <= len(lines) - 1 < 200


def test_fundus_photographs_given_to_an_oct_model_are_flagged(tmp_path):
    from engine.modelfile import ModelSpec, Preprocessing, save_model_file
    from engine.models import create_network

    spec = ModelSpec(
        arch="resnet10t",
        task="binary",
        labels=["normal", "dme"],
        modality="oct",
        input_size=64,
        preprocessing=Preprocessing.for_modality("oct"),
    )
    path = tmp_path / "oct.safetensors"
    save_model_file(path, spec, create_network(spec).state_dict())
    lm = load_model(path, device="cpu")
    synthesize(tmp_path / "fundus", "fundus", n=6, seed=3, size=256)
    synthesize(tmp_path / "oct", "oct", n=6, seed=3, size=256)
    fundus = screen_all(discover_images(tmp_path / "fundus"), [lm], ScreenSettings())
    octs = screen_all(discover_images(tmp_path / "oct"), [lm], ScreenSettings())
    assert all(
        r.triage == "out-of-distribution" and "fundus photograph" in r.triage_reason for r in fundus
    )
    assert not any(r.triage == "out-of-distribution" for r in octs)
