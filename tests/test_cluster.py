"""Screening on Ray gives the same rows as this workstation, survives a dead worker, resumes.

One local Ray (2 CPUs) serves the whole session; the tests skip when the cluster extra is
not installed (``make test`` installs it). Both backends compute in float32 here, so the
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
    from engine.cluster import RayBackend, RayOptions
    from engine.store import Workspace
    from engine.triage import TriagePolicy
    from engine.workspace_screen import screen_into_workspace

    lm = load_model(_with_conformal_sets(tiny_model, tmp_path / "cal.safetensors"), device="cpu")
    assert lm.spec.ood and lm.spec.conformal  # OOD score and prediction sets both compared
    policy = TriagePolicy(kind="conformal")
    settings = ScreenSettings(batch_size=16, amp=False, uncertainty="tta", k=2, policy=policy)
    paths = discover_images(archive)
    local = {str(Path(r.path).resolve()): r for r in screen_all(paths, [lm], settings)}
    assert local[str((archive / "empty.jpg").resolve())].error == "file is empty (0 bytes)"
    assert "truncated" in local[str((archive / "corrupt.png").resolve())].error
    ws = tmp_path / "ws"
    backend = RayBackend(RayOptions())

    def ctrl_c(chunk: list) -> None:  # the user presses Ctrl+C once rows are stored
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        screen_into_workspace(ws, paths, [lm], settings, on_chunk=ctrl_c, backend=backend)
    with Workspace.open(ws, create=False) as w:
        first = w.predictions()
        assert [r["status"] for r in w.runs()] == ["cancelled"]
    first_ok = [p for p in first if p["error"] is None]
    assert 0 < len(first) < len(paths)

    report = screen_into_workspace(ws, paths, [lm], settings, backend=backend)
    assert report["status"] == "finished"
    assert report["skipped"] == len(first_ok)  # failed files are tried again, as locally
    assert report["screened"] == len(paths) - len(first_ok)
    with Workspace.open(ws, create=False) as w:
        path_of = {img["id"]: img["path"] for img in w.images()}
        preds = w.predictions()
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
