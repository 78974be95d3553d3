"""Screening on Ray against this workstation, on the same images, on this one machine.

- ``local_ips``: ``engine.screen`` over the camera-sized JPEGs of ``bench_data.camera_jpegs``
  (real fundus photographs upscaled to 3000 px; upscaled, so camera-sized in bytes and
  pixels only), efficientnet_b0 at 224 px (random weights: speed does not depend on them),
  quality gate on, default precision (bf16 autocast where the CPU has it).
- ``ray_w{1,2}_ips``: the same images with ``--backend ray`` on a local Ray on this machine,
  1 and 2 model workers; the clock runs from the call to the last result, so it includes
  each run's model-worker start (a fresh process loads torch and the model) but not Ray's
  own start-up, which is ``ray_startup_s``. ``ray_w*_first_result_s`` is the wait for the
  first result and ``ray_w*_steady_ips`` the rate after it. ``ray_w*_ratio`` = ray / local
  (the goal: overhead under 30 %, ratio >= 0.7). ``local_t1_ips`` is local screening with
  one thread (torch and engine), as each Ray model worker runs: on a busy machine
  multi-threaded torch loses far more than single-threaded, so read the ratios against it
  too.
- Per-image costs for the sizing in docs/scale.md, measured on one core:
  ``decode_core_s`` (decode, crop and quality gate of one camera JPEG), ``hash_core_s``
  (SHA-256 of the file), and the model's ``model_ips_t1``/``model_ips_t2`` (forward pass,
  batch 32, 1 and 2 threads); ``driver_write_rows_s``: images registered and predictions
  stored per second by the driver in a workspace (chunks of 256 as the Ray backend hands
  them over, one transaction each; SQLite has one writer).

Both backends run the backbone in torch (``BENCH_RAY_ENGINE=onnxruntime`` or ``auto``
compares another inference engine; on Ray each model worker attaches it on its node), so
the figures compare the backends, not the engines (``bench_engines.py`` does that).

Skipped when Ray (the ``cluster`` extra) or the real photographs are missing.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

N_IMAGES = 400
ENGINE = os.environ.get("BENCH_RAY_ENGINE", "torch")


def _rate_of_run(chunks, n: int) -> tuple[float, float, float]:  # noqa: ANN001
    """(end-to-end images/s, images/s from the first result on, seconds to it) of one run."""
    t0 = time.perf_counter()
    first_at, first_n, got = None, 0, 0
    for chunk in chunks:
        got += len(chunk)
        if first_at is None:
            first_at, first_n = time.perf_counter(), got
    end = time.perf_counter()
    assert got == n, (got, n)
    steady = (n - first_n) / (end - first_at) if first_at and end > first_at else float("nan")
    return n / (end - t0), steady, (first_at or end) - t0


def _per_image_costs(lm, paths: list[Path], out: dict) -> None:  # noqa: ANN001
    import torch

    from benchmarks.bench_screen import forward_ips
    from engine.screen import ScreenSettings, screen_decoder
    from engine.store import sha256_file

    sample = paths[:60]
    t = time.process_time()
    for p in sample:
        sha256_file(p)
    out["hash_core_s"] = (time.process_time() - t) / len(sample)
    decode = screen_decoder(lm.spec, ScreenSettings())
    torch.set_num_threads(1)  # one core: what a decode task on a cluster node costs
    t = time.process_time()
    for p in sample:
        decode(p)
    out["decode_core_s"] = (time.process_time() - t) / len(sample)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out[f"model_ips_t{threads}"] = forward_ips(lm)
    torch.set_num_threads(os.cpu_count() or 2)


def _driver_write_rate(folder: Path, n: int = 4000, chunk: int = 256) -> float:
    """Rows per second the workspace takes: images registered, then predictions in chunks."""
    from engine.store import Workspace

    probs = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    with Workspace.open(folder / "ws") as ws:
        ws.register_model("0" * 64, None, "bench", activate=True)
        t = time.perf_counter()
        ids = ws.add_images(
            [{"path": f"/archive/{i:07d}.jpg", "sha256": f"{i:064x}"} for i in range(n)]
        )
        run_id = ws.start_run("0" * 64, {"bench": True})
        for k in range(0, n, chunk):
            rows = [
                {
                    "image_id": i,
                    "probabilities": probs,
                    "label": "d",
                    "confidence": 0.4,
                    "entropy": 1.28,
                    "quality": {"ok": True, "reasons": []},
                    "quality_ok": True,
                    "triage": "needs-review",
                    "triage_reason": "confidence 0.40 below 0.85",
                }
                for i in ids[k : k + chunk]
            ]
            ws.add_predictions(run_id, rows)
        return n / (time.perf_counter() - t)


def run() -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray is not installed (pip install 'eyetriage[cluster]'): Ray figures skipped")
        return {}
    import torch

    from benchmarks.bench_data import camera_jpegs
    from benchmarks.bench_screen import make_model
    from engine.cluster import RayBackend, RayOptions
    from engine.screen import ScreenSettings, screen

    paths = camera_jpegs(N_IMAGES)
    if not paths:
        print("../shared/data not found: Ray figures skipped")
        return {}
    torch.set_num_threads(os.cpu_count() or 2)
    out: dict = {"ray_n_images": len(paths), "ray_cpus": os.cpu_count(), "ray_engine": ENGINE}
    with tempfile.TemporaryDirectory() as d:
        lm = make_model(Path(d))
        _per_image_costs(lm, paths, out)  # also reads every file once (page cache)
        out["driver_write_rows_s"] = _driver_write_rate(Path(d))
        settings = ScreenSettings(batch_size=32, engine=ENGINE)
        list(screen(paths[:8], [lm], settings))  # warm-up
        out["local_ips"], _, _ = _rate_of_run(screen(paths, [lm], settings), len(paths))
        # the same with one torch thread: each Ray model worker runs one, and a busy machine
        # penalises multi-threaded torch far more than single-threaded (cores contended)
        torch.set_num_threads(1)
        os.environ["EYETRIAGE_ENGINE_THREADS"] = "1"  # ONNX Runtime / OpenVINO, if chosen
        try:
            out["local_t1_ips"], _, _ = _rate_of_run(screen(paths, [lm], settings), len(paths))
        finally:
            del os.environ["EYETRIAGE_ENGINE_THREADS"]
        torch.set_num_threads(os.cpu_count() or 2)
        backend = RayBackend(RayOptions())
        try:
            backend.start()
            out["ray_startup_s"] = backend.startup_seconds
            for workers in (1, 2):
                backend.options.model_workers = workers
                chunks = backend.screen(paths, [lm], settings)
                total, steady, first = _rate_of_run(chunks, len(paths))
                out[f"ray_w{workers}_ips"] = total
                out[f"ray_w{workers}_steady_ips"] = steady
                out[f"ray_w{workers}_first_result_s"] = first
                out[f"ray_w{workers}_ratio"] = total / out["local_ips"]
                out[f"ray_w{workers}_engines"] = "/".join(sorted(backend.engines))
        finally:
            backend.close()
    return out


def print_table(r: dict) -> None:
    if "local_ips" not in r:
        return
    print(
        f"Ray vs local on this machine ({r['ray_n_images']} camera JPEGs, 3000 px, "
        f"efficientnet_b0 224 px, {r['ray_cpus']} CPUs, engine {r['ray_engine']})"
    )
    print(f"  local                            {r['local_ips']:7.1f} img/s")
    print(f"  local, one thread (torch, engine){r['local_t1_ips']:7.1f} img/s")
    for w in (1, 2):
        print(
            f"  ray, {w} model worker{'s' if w > 1 else ' '}           {r[f'ray_w{w}_ips']:7.1f} img/s"
            f"  ({r[f'ray_w{w}_ratio']:.2f}× local; first result after "
            f"{r[f'ray_w{w}_first_result_s']:.1f} s, then {r[f'ray_w{w}_steady_ips']:.1f} img/s; "
            f"workers ran {r[f'ray_w{w}_engines']})"
        )
    print(f"  Ray start-up (local, excluded)   {r['ray_startup_s']:7.1f} s")
    print("  per image, one core:")
    print(f"    decode + crop + quality gate   {1000 * r['decode_core_s']:7.1f} ms")
    print(f"    SHA-256 of the file            {1000 * r['hash_core_s']:7.1f} ms")
    print(
        f"    model, 1 / 2 threads           {r['model_ips_t1']:.1f} / {r['model_ips_t2']:.1f} img/s"
    )
    print(
        f"  driver writes to the workspace   {r['driver_write_rows_s']:7.0f} rows/s "
        "(chunks of 256, one transaction each)"
    )


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print_table(run())
