"""Screening on Ray gives the same rows as this workstation, survives a dead worker, resumes.

One local Ray (2 CPUs) serves the whole session; the tests skip when the cluster extra is
not installed (``make test`` installs it). Both backends compute in float32 here (torch on
one side, ONNX Runtime in the Ray workers on the other in the workspace test), so the
probabilities must agree to 1e-4 and every label, triage state and reason exactly.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
from pathlib import Path

import pytest

from engine.cli import main
from engine.images import discover_images
from engine.models import load_model
from engine.screen import ScreenSettings, screen_all
from engine.synth import synthesize

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """120 synthetic fundus photographs plus a corrupt and an empty file."""
    folder = tmp_path_factory.mktemp("archive")
    synthesize(
        folder, "fundus", n=120, seed=14, size=96, classes=("diabetic_retinopathy", "normal")
    )
    good = next(folder.rglob("*.png")).read_bytes()
    (folder / "corrupt.png").write_bytes(good[: len(good) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def _with_conformal_sets(model: Path, out: Path) -> Path:
    """A copy of ``model`` with a conformal threshold, so prediction sets are compared too."""
    from engine.conformal import ConformalCalibrator
    from engine.modelfile import load_model_file, save_model_file

    spec, weights, extra = load_model_file(model)
    spec.conformal = ConformalCalibrator("aps", 0.1, 0.8, 50).to_dict()
    save_model_file(out, spec, weights, extra=extra)
    return out


def _assert_same_answers(ray_rows: dict[str, dict], local: dict[str, object]) -> None:
    assert set(ray_rows) == set(local)
    for path, row in ray_rows.items():
        ref = local[path]
        assert (row["label"], row["triage"], row["triage_reason"], row["error"]) == (
            ref.label,
            ref.triage,
            ref.triage_reason,
            ref.error,
        ), path
        assert row["conformal_set"] == ref.conformal_set, path
        assert bool(row["ood"]) == ref.ood, path
        if ref.ood_score is not None:
            assert abs(row["ood_score"] - ref.ood_score) <= 1e-3, path
        probs = row["probabilities"] or {}
        assert set(probs) == set(ref.probabilities), path
        for lab, p in ref.probabilities.items():
            assert abs(probs[lab] - p) <= 1e-4, (path, lab, probs[lab], p)


def test_ray_workspace_run_equals_local_row_by_row_and_resumes_after_interrupt(
    ray_local, tmp_path, archive, tiny_model
):
    """Local screening in torch fp32 against Ray workers in ONNX Runtime fp32: the same
    answers, the stored rows handed back per chunk, and the same activation rule."""
    from dataclasses import replace

    from engine.cluster import RayBackend, RayOptions
    from engine.store import Workspace
    from engine.triage import TriagePolicy
    from engine.workspace_screen import iter_screen_into_workspace, screen_into_workspace

    first = load_model(tiny_model, device="cpu")
    lm = load_model(_with_conformal_sets(tiny_model, tmp_path / "cal.safetensors"), device="cpu")
    assert lm.spec.ood and lm.spec.conformal  # OOD score and prediction sets both compared
    policy = TriagePolicy(kind="conformal")
    settings = ScreenSettings(
        batch_size=16, amp=False, uncertainty="tta", k=2, policy=policy, engine="torch"
    )
    paths = discover_images(archive)
    local = {str(Path(r.path).resolve()): r for r in screen_all(paths, [lm], settings)}
    assert local[str((archive / "empty.jpg").resolve())].error == "file is empty (0 bytes)"
    assert "truncated" in local[str((archive / "corrupt.png").resolve())].error
    ws = tmp_path / "ws"
    # another model version screened a few images first and is the active one
    screen_into_workspace(ws, paths[:6], [first], settings)
    ray_settings = replace(settings, engine="onnxruntime")
    backend = RayBackend(RayOptions())

    def ctrl_c(chunk: list) -> None:  # the user presses Ctrl+C once rows are stored
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        screen_into_workspace(ws, paths, [lm], ray_settings, on_chunk=ctrl_c, backend=backend)
    assert backend.engines == {"onnxruntime"}  # the workers attached the settings' engine
    with Workspace.open(ws, create=False) as w:
        before = [p for p in w.predictions() if p["model_hash"] == lm.sha256]
        assert [r["status"] for r in w.runs()] == ["finished", "cancelled"]
        assert w.active_model()["hash"] == first.sha256  # a cancelled run changes nothing
    before_ok = [p for p in before if p["error"] is None]
    assert 0 < len(before) < len(paths)

    events = list(iter_screen_into_workspace(ws, paths, [lm], ray_settings, backend=backend))
    done = events[-1]
    assert done["status"] == "finished"
    assert done["skipped"] == len(before_ok)  # failed files are tried again, as locally
    assert done["screened"] == len(paths) - len(before_ok)
    # every image the active model screened now has a result of this one: it becomes active
    assert done["activation"]["changed"] and done["activation"]["active_hash"] == lm.sha256
    handed_back = {}
    for event in events[:-1]:
        ids = [r.prediction_id for r in event["results"]]
        assert [rec["id"] for rec in event["records"]] == ids  # exactly the rows stored
        handed_back.update((rec["id"], rec) for rec in event["records"])
    with Workspace.open(ws, create=False) as w:
        assert w.active_model()["hash"] == lm.sha256
        path_of = {img["id"]: img["path"] for img in w.images()}
        preds = [p for p in w.predictions() if p["model_hash"] == lm.sha256]
    stored = {p["id"]: p for p in preds if p["run_id"] == done["run_id"]}
    assert set(handed_back) == set(stored)  # every row of the run was handed back once
    for pid, rec in handed_back.items():
        keys = ("image_id", "label", "triage", "triage_reason", "probabilities")
        assert {k: rec[k] for k in keys} == {k: stored[pid][k] for k in keys}
    per_run = collections.Counter((p["run_id"], p["image_id"]) for p in preds)
    assert set(per_run.values()) == {1}  # no image twice in a run
    latest = {path_of[p["image_id"]]: p for p in preds}  # oldest first: the last one wins
    assert len(latest) == len(paths)  # and none left out
    ok_per_image = collections.Counter(p["image_id"] for p in preds if p["error"] is None)
    assert set(ok_per_image.values()) == {1}
    _assert_same_answers(latest, local)


def test_ray_cli_screens_a_parquet_manifest_into_parquet_like_local(
    ray_local, tmp_path, archive, tiny_model, capsys
):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    files = sorted(archive.rglob("*.png"))[:30] + [archive / "empty.jpg"]
    rows = [{"path": str(p.relative_to(archive))} for p in files]
    rows.append({"path": "missing/never-there.png"})
    manifest = archive / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    out = {}
    for backend in ("local", "ray"):
        dest = tmp_path / f"{backend}.parquet"
        argv = ["screen", manifest, "--model", tiny_model, "--out", dest, "--fp32", "--quiet"]
        argv += ["--batch-size", "8", "--backend", backend]
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
        out[backend] = {r["path"]: r for r in pq.read_table(dest).to_pylist()}
    assert len(out["ray"]) == len(rows)
    missing = str(archive / "missing" / "never-there.png")
    assert out["ray"][missing]["error"] == "file not found"
    assert out["ray"][str(archive / "empty.jpg")]["triage"] == "error"
    for path, ref in out["local"].items():
        row = out["ray"][path]
        for col, v in ref.items():
            if isinstance(v, float):
                assert abs(row[col] - v) <= 1e-4, (path, col)
            else:
                assert row[col] == v, (path, col)


def _model_worker_pids() -> set[int]:
    import psutil

    pids = set()
    for p in psutil.process_iter(["cmdline"]):
        if "_ModelWorker" in " ".join(p.info["cmdline"] or []):
            pids.add(p.pid)
    return pids


def test_a_model_worker_killed_mid_run_is_restarted_and_no_image_is_lost(
    ray_local, archive, tiny_model
):
    from engine.cluster import RayBackend, RayOptions

    lm = load_model(tiny_model, device="cpu")
    # small batches and heavy test-time augmentation keep the model worker busy
    settings = ScreenSettings(batch_size=2, amp=False, uncertainty="tta", k=16)
    paths = discover_images(archive)[:60]
    after_kill: set[int] = set()
    killed_event, done = threading.Event(), threading.Event()

    def watch() -> None:  # every model-worker process alive after the kill
        while not done.wait(0.1):
            if killed_event.is_set():
                after_kill.update(_model_worker_pids())

    watcher = threading.Thread(target=watch)
    watcher.start()
    killed: set[int] = set()
    results = []
    try:
        for chunk in RayBackend(RayOptions()).screen(paths, [lm], settings):
            results += chunk
            if not killed:
                killed = _model_worker_pids()
                assert killed
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
                killed_event.set()
    finally:
        done.set()
        watcher.join()
    assert sorted(r.index for r in results) == list(range(len(paths)))
    assert after_kill - killed  # Ray started a new model worker in place of the dead one
