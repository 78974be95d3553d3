"""CPU inference engines compared: model rate, end-to-end screening, decode+model limit.

efficientnet_b0 at 224 px (random weights: speed does not depend on them), batch 32, on
the CPU, every figure from one run on the same machine:

- ``engine_model_ips``: the bare backbone+head on in-memory batches, per engine. ``torch``
  is today's path (bf16 autocast where the CPU has it); ``torch fp32`` is the reference the
  exported engines must match; ONNX Runtime and OpenVINO run fp32.
- ``engine_e2e_ips``: ``engine.screen`` over ``bench_data.camera_jpegs(400)`` (real fundus
  photographs upscaled to 3000 px: camera-sized in bytes and pixels, no added detail), with
  the quality gate on, as a user runs it, per engine; also the CPU milliseconds the
  process spent per image (``engine_e2e_cpu_ms_per_image``), which other work on a shared
  machine disturbs less than the wall-clock rate.
- ``engine_threads``: ONNX Runtime end-to-end with 1 or 2 intra-op threads and with or
  without spin-waiting (decoding shares the cores).
- ``decode_ips_per_core``: one thread decoding the same files as screening does (draft
  decode, field-of-view crop, quality gate); ``limit_ips`` is the decode+model limit
  ``cores / (cores / model + 1 / decode)`` for each engine.
- ``engine_max_prob_diff``: largest probability difference between each engine (as
  screening runs it) and torch fp32 on the first 64 of the files; the test model's head is
  sharpened so its probabilities are far from uniform.

Run alone: ``PYTHONPATH=. python benchmarks/bench_engines.py`` (``BENCH_ENGINES_REPEATS=2``
runs every end-to-end figure twice, interleaved, and keeps the faster).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ARCH, SIZE, BATCH = "efficientnet_b0", 224, 32


def _model(tmp: Path):  # noqa: ANN202
    from engine.modelfile import ModelSpec, save_model_file
    from engine.models import create_network, load_model

    spec = ModelSpec(arch=ARCH, task="multiclass", labels=["a", "b", "c", "d"], input_size=SIZE)
    torch.manual_seed(0)
    net = create_network(spec).eval()
    with torch.no_grad():  # a sharper head, so probabilities are far from uniform and a
        net.get_classifier().weight.mul_(40.0)  # drifting backbone shows in them
    path = tmp / f"{ARCH}.safetensors"
    save_model_file(path, spec, net.state_dict())
    return load_model(path, device="cpu")


def model_rates(lm, cache: Path, engines: list[str]) -> dict[str, float]:  # noqa: ANN001
    """Images/s of the backbone+head per engine (the engine's own precision)."""
    from engine.backends import measure, prepare

    candidates = {}
    for name in engines:
        candidates[name] = prepare(lm, name, cache, BATCH, amp=True)
    rates = measure(lm, candidates, BATCH, amp=True, batches=6)
    rates["torch fp32"] = measure(lm, {"torch": lm}, BATCH, amp=False, batches=6)["torch"]
    return rates


def e2e(lm, paths, engine: str, cache: Path, env: dict | None = None) -> tuple[float, float]:  # noqa: ANN001
    """End-to-end screening with ``engine`` after an 8-image warm-up: images/s, and the
    process's CPU milliseconds per image (all threads; steadier than wall time when other
    work shares the machine). The timed run includes loading the cached engine."""
    from engine.screen import ScreenSettings, screen_all

    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        settings = ScreenSettings(batch_size=BATCH, engine=engine, engine_cache=cache)
        screen_all(paths[:8], [lm], settings)  # warm-up: export / load outside the timing
        t, c = time.perf_counter(), time.process_time()
        res = screen_all(paths, [lm], settings)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    bad = [r.error for r in res if r.error]
    assert not bad, bad[:3]
    return len(paths) / dt, 1000 * cpu / len(paths)


def decode_rate_one_core(lm, paths) -> float:  # noqa: ANN001
    """Images/s of one thread decoding as screening does (draft decode, crop, quality gate)."""
    from engine.inference import model_decoder
    from engine.screen import _fundus_gate

    decode = model_decoder(lm, want_analysis=True, post=_fundus_gate)
    decode(paths[0])
    t = time.perf_counter()
    for p in paths:
        decode(p)
    return len(paths) / (time.perf_counter() - t)


def answer_diffs(lm, paths, engines: list[str], cache: Path) -> dict[str, float]:  # noqa: ANN001
    """Largest probability difference of each engine from torch fp32 on ``paths``."""
    from engine.screen import ScreenSettings, screen_all

    def probs(engine: str, amp: bool) -> list[dict]:
        s = ScreenSettings(batch_size=BATCH, engine=engine, engine_cache=cache, amp=amp)
        return [r.probabilities for r in screen_all(paths, [lm], s)]

    ref = probs("torch", amp=False)
    out = {}
    for name in engines:  # each as screening runs it: torch with its autocast, others fp32
        got = probs(name, amp=True)
        out[name] = max(abs(a[k] - b[k]) for a, b in zip(ref, got, strict=True) for k in a)
    return out


def limit(model_ips: float, decode_ips: float, cores: int) -> float:
    """Decode and model share ``cores``: the end-to-end ceiling."""
    return cores / (cores / model_ips + 1 / decode_ips)


def _say(msg: str) -> None:
    print(f"  [bench_engines] {msg}", file=sys.stderr, flush=True)


def run() -> dict:
    from benchmarks.bench_data import camera_jpegs
    from engine.backends import prepare
    from engine.engines import installed_engines
    from engine.models import cpu_supports_bf16

    cores = os.cpu_count() or 2
    torch.set_num_threads(cores)
    engines = installed_engines()[1:]  # torch and the installed exported engines
    out: dict = {"engine_threads_cores": cores, "cpu_bf16": cpu_supports_bf16()}
    repeats = int(os.environ.get("BENCH_ENGINES_REPEATS", "1"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cache = tmp / "engines"
        lm = _model(tmp)
        t = time.perf_counter()
        prepare(lm, "onnxruntime", cache, BATCH)
        out["engine_export_seconds"] = round(time.perf_counter() - t, 1)
        out["engine_model_ips"] = model_rates(lm, cache, engines)
        _say(f"model rates {out['engine_model_ips']}")
        paths = camera_jpegs(400)
        if len(paths) < 400:
            print(f"only {len(paths)} real fundus files found: end-to-end figures skipped")
            return out
        out["engine_n_files"] = len(paths)
        e2e_rate: dict[str, float] = {}
        e2e_cpu: dict[str, float] = {}
        for _ in range(repeats):  # interleaved, so a burst of load hits every engine alike
            for name in engines:
                ips, cpu_ms = e2e(lm, paths, name, cache)
                _say(f"end-to-end {name}: {ips:.1f} img/s, {cpu_ms:.0f} CPU ms/img")
                if ips > e2e_rate.get(name, 0.0):
                    e2e_rate[name], e2e_cpu[name] = ips, cpu_ms
        out["engine_e2e_ips"] = e2e_rate
        out["engine_e2e_cpu_ms_per_image"] = e2e_cpu
        variants = {
            "1 thread, no spin": {"EYETRIAGE_ENGINE_THREADS": "1", "EYETRIAGE_ENGINE_SPIN": "0"},
            f"{cores} threads, no spin": {
                "EYETRIAGE_ENGINE_THREADS": str(cores),
                "EYETRIAGE_ENGINE_SPIN": "0",
            },
            f"{cores} threads, spin": {
                "EYETRIAGE_ENGINE_THREADS": str(cores),
                "EYETRIAGE_ENGINE_SPIN": "1",
            },
        }
        if "onnxruntime" in engines:
            out["engine_threads"] = {
                k: e2e(lm, paths, "onnxruntime", cache, env)[0] for k, env in variants.items()
            }
        dec = decode_rate_one_core(lm, paths[:80])
        out["decode_ips_per_core"] = dec
        out["limit_ips"] = {
            k: limit(v, dec, cores) for k, v in out["engine_model_ips"].items() if k != "torch fp32"
        }
        out["engine_max_prob_diff"] = answer_diffs(lm, paths[:64], engines, cache)
    fastest = max(e2e_rate, key=lambda k: e2e_rate[k])
    out["engine_fastest_e2e"] = fastest
    out["engine_e2e_speedup_vs_torch"] = e2e_rate[fastest] / e2e_rate["torch"]
    out["engine_e2e_cpu_saving_vs_torch"] = e2e_cpu["torch"] / e2e_cpu[fastest]
    return out


def print_table(r: dict) -> None:
    print(
        f"CPU inference engines ({ARCH}, {SIZE} px, batch {BATCH}, {r['engine_threads_cores']} "
        f"cores, bf16 autocast for torch: {r['cpu_bf16']}); one-time export "
        f"{r['engine_export_seconds']} s"
    )
    models = r["engine_model_ips"]
    e2e = r.get("engine_e2e_ips", {})
    cpu = r.get("engine_e2e_cpu_ms_per_image", {})
    lim = r.get("limit_ips", {})
    diff = r.get("engine_max_prob_diff", {})
    print(
        f"  {'engine':<14}{'model img/s':>12}{'e2e img/s':>11}{'limit':>8}{'e2e/limit':>10}"
        f"{'CPU ms/img':>11}{'max |dp| vs fp32':>18}"
    )
    for name in [*e2e, *(k for k in models if k not in e2e)]:
        m = models.get(name)
        e = e2e.get(name)
        li = lim.get(name)
        cells = [
            f"{m:12.1f}" if m else f"{'':>12}",
            f"{e:11.1f}" if e else f"{'':>11}",
            f"{li:8.1f}" if li else f"{'':>8}",
            f"{e / li:10.2f}" if e and li else f"{'':>10}",
            f"{cpu[name]:11.0f}" if name in cpu else f"{'':>11}",
            f"{diff[name]:18.1e}" if name in diff else f"{'':>18}",
        ]
        print(f"  {name:<14}{''.join(cells)}")
    if "decode_ips_per_core" in r:
        print(
            f"  one core's decode (draft, crop, quality gate): {r['decode_ips_per_core']:.1f} img/s"
        )
    for k, v in r.get("engine_threads", {}).items():
        print(f"  onnxruntime end-to-end, {k:<22}{v:7.1f} img/s")
    if "engine_e2e_speedup_vs_torch" in r:
        print(
            f"  fastest end-to-end: {r['engine_fastest_e2e']}, "
            f"{r['engine_e2e_speedup_vs_torch']:.2f}x today's torch path on "
            f"{r['engine_n_files']} files of 3000 px, "
            f"{r['engine_e2e_cpu_saving_vs_torch']:.2f}x less CPU time per image"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print_table(run())
