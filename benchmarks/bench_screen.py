"""Screening speed on this machine: model ceiling, decode+model limit, end-to-end, gate cost.

All figures come from one run on the same machine with efficientnet_b0 (random weights: speed
does not depend on what the weights are) at 224 px, over ``N_IMAGES`` camera-sized JPEGs
(real photographs upscaled to 3000 px, see ``bench_data``):

- ``model_forward_ips``: the bare forward pass on in-memory batches of 32, on the inference
  engine screening picks with its default ``--engine auto`` (``screen_engine``; torch with
  bf16 autocast where that measures fastest): the ceiling, and what the limit uses;
- ``torch_forward_ips``: the same on torch, for reference;
- ``decode_ips_per_core``: the screener's decoder (draft decode, field-of-view crop,
  resize) on one thread, without the quality gate;
- ``screen_limit_ips`` (gate off) and ``screen_limit_ips_gate`` (gate on): what decoding and
  the model can reach together when they share the
  cores: ``cores / (cores / model + 1 / decode)`` (see the performance notes);
- ``gate_ms``: the quality gate's own cost per image (its analysis copy and measures),
  on one thread;
- ``screen_e2e_ips`` / ``screen_e2e_ips_no_quality``: ``engine.screen`` over the files,
  with and without the quality gate, and their ratio to the limit;
- ``naive_ips_3000px``: open each file at full size with PIL, resize, one image per call.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

N_IMAGES = 400


def make_model(tmp: Path, arch: str = "efficientnet_b0", size: int = 224):  # noqa: ANN201
    from engine.modelfile import ModelSpec, save_model_file
    from engine.models import create_network, load_model

    spec = ModelSpec(arch=arch, task="multiclass", labels=["a", "b", "c", "d"], input_size=size)
    net = create_network(spec)
    path = tmp / f"{arch}.safetensors"
    save_model_file(path, spec, net.state_dict())
    return load_model(path, device="cpu")


def forward_ips(lm, batch: int = 32, reps: int = 6) -> float:  # noqa: ANN001
    from engine.models import autocast_for

    x8 = torch.randint(
        0, 255, (batch, lm.spec.input_size, lm.spec.input_size, 3), dtype=torch.uint8
    )
    times = []
    with torch.inference_mode(), autocast_for(lm.device):
        lm.net(lm.normalise(x8))  # warm-up
        for _ in range(reps):
            t = time.perf_counter()
            lm.net(lm.normalise(x8))
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def decode_costs(lm, paths) -> dict:  # noqa: ANN001
    """One thread: decode without the gate, and the gate's own cost (median of 3 rounds).

    The gate's share of decoding (a larger draft and the analysis copy) is the difference
    of two decodes of about 20 ms each; they are timed back to back for each file, in
    alternating order, so that the machine's drift between rounds does not enter it."""
    from engine.inference import model_decoder
    from engine.screen import _fundus_gate

    plain = model_decoder(lm)
    with_copy = model_decoder(lm, want_analysis=True)
    plain(paths[0])
    with_copy(paths[0])
    rounds_plain, rounds_copy, rounds_gate = [], [], []
    for _ in range(3):
        decoded = []
        spent = {plain: 0.0, with_copy: 0.0}
        for i, p in enumerate(paths):
            for decode in (plain, with_copy) if i % 2 else (with_copy, plain):
                t = time.perf_counter()
                d = decode(p)
                spent[decode] += time.perf_counter() - t
                if decode is with_copy:
                    decoded.append(d)
        rounds_plain.append(spent[plain] / len(paths))
        rounds_copy.append((spent[with_copy] - spent[plain]) / len(paths))
        t = time.perf_counter()
        for d in decoded:
            _fundus_gate(d)
        rounds_gate.append((time.perf_counter() - t) / len(paths))
    per_plain = statistics.median(rounds_plain)
    per_copy = statistics.median(rounds_copy)
    per_gate = statistics.median(rounds_gate)
    return {
        "decode_ips_per_core": 1 / per_plain,
        # the gate's share of the decode thread: its analysis copy plus its measures
        "gate_ms": 1000 * (max(0.0, per_copy) + per_gate),
        "gate_copy_ms": 1000 * per_copy,
        "gate_measures_ms": 1000 * per_gate,
    }


def engine_forward(lm, cache: Path, batch: int = 32) -> tuple[str, float]:  # noqa: ANN001
    """The engine ``--engine auto`` picks for ``lm`` and its model rate as screening runs it."""
    from engine.backends import engine_name, measure, prepare

    chosen = prepare(lm, "auto", cache, batch)
    name = engine_name(chosen)
    return name, measure(lm, {name: chosen}, batch, amp=True, batches=6)[name]


def screen_ips(lm, paths, cache: Path, quality: bool = True, batch: int = 32) -> float:  # noqa: ANN001
    from engine.screen import ScreenSettings, screen_all

    settings = ScreenSettings(batch_size=batch, quality=quality, engine_cache=cache)
    screen_all(paths[:8], [lm], settings)  # warm-up
    t = time.perf_counter()
    res = screen_all(paths, [lm], settings)
    dt = time.perf_counter() - t
    assert not any(r.error for r in res), [r.error for r in res if r.error][:3]
    return len(paths) / dt


def naive_ips(lm, paths) -> float:  # noqa: ANN001
    s = lm.spec.input_size
    t = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            im = Image.open(p).convert("RGB").resize((s, s), Image.BILINEAR)
            x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255.0
            x = (x - torch.tensor(lm.spec.mean).view(1, 3, 1, 1)) / torch.tensor(lm.spec.std).view(
                1, 3, 1, 1
            )
            lm.net(x)
    return len(paths) / (time.perf_counter() - t)


def run() -> dict:
    from benchmarks.bench_data import camera_jpegs
    from engine.models import cpu_supports_bf16

    cores = os.cpu_count() or 2
    torch.set_num_threads(cores)
    out: dict = {"threads": torch.get_num_threads(), "cpu_bf16": cpu_supports_bf16()}
    with tempfile.TemporaryDirectory() as d:
        lm = make_model(Path(d))
        cache = Path(d) / "engines"
        out["torch_forward_ips"] = forward_ips(lm)
        out["screen_engine"], out["model_forward_ips"] = engine_forward(lm, cache)
        files = camera_jpegs(N_IMAGES)
        if not files:
            print("../shared/data not found: end-to-end figures skipped")
            return out
        out["n_files"] = len(files)
        out.update(decode_costs(lm, files[:60]))
        m, dec = out["model_forward_ips"], out["decode_ips_per_core"]
        out["screen_limit_ips"] = cores / (cores / m + 1 / dec)  # gate off
        dec_gate = 1 / (1 / dec + out["gate_ms"] / 1000)
        out["screen_limit_ips_gate"] = cores / (cores / m + 1 / dec_gate)
        # alternate the two settings so load changes on a shared machine hit both alike
        on, off = [], []
        for _ in range(2):
            on.append(screen_ips(lm, files, cache, quality=True))
            off.append(screen_ips(lm, files, cache, quality=False))
        out["screen_e2e_ips"] = max(on)
        out["screen_e2e_ips_no_quality"] = max(off)
        out["naive_ips_3000px"] = naive_ips(lm, files[:20])
    lim = out["screen_limit_ips"]
    out["ratio_e2e_to_limit"] = out["screen_e2e_ips"] / out["screen_limit_ips_gate"]
    out["ratio_e2e_no_quality_to_limit"] = out["screen_e2e_ips_no_quality"] / lim
    out["ratio_e2e_to_naive"] = out["screen_e2e_ips"] / out["naive_ips_3000px"]
    return out


def print_table(r: dict) -> None:
    print(
        f"screening speed (efficientnet_b0, 224 px, {r['threads']} threads, "
        f"bf16 autocast: {r['cpu_bf16']})"
    )
    print(
        f"  model forward on {r.get('screen_engine', 'torch'):<20}{r['model_forward_ips']:7.1f} "
        f"img/s (torch {r.get('torch_forward_ips', float('nan')):.1f})"
    )
    if "screen_limit_ips" not in r:
        return
    n = r["n_files"]
    print(f"  decode, one thread (no gate)         {r['decode_ips_per_core']:7.1f} img/s")
    print(f"  decode+model limit, gate off         {r['screen_limit_ips']:7.1f} img/s")
    print(f"  decode+model limit, gate on          {r['screen_limit_ips_gate']:7.1f} img/s")
    print(
        f"  quality gate cost, one thread        {r['gate_ms']:7.2f} ms/image "
        f"(analysis copy {r['gate_copy_ms']:.2f} ms, measures {r['gate_measures_ms']:.2f} ms)"
    )
    for k, label, lim in (
        ("screen_e2e_ips", f"screen, {n} × 3000 px JPEG, gate on", "screen_limit_ips_gate"),
        ("screen_e2e_ips_no_quality", f"screen, {n} × 3000 px JPEG, gate off", "screen_limit_ips"),
        ("naive_ips_3000px", "naive baseline, 3000 px JPEG", "screen_limit_ips"),
    ):
        print(f"  {label:<37}{r[k]:7.1f} img/s  ({r[k] / r[lim]:.2f}× its limit)")
    print(
        f"  gate on / gate off                   {r['screen_e2e_ips'] / r['screen_e2e_ips_no_quality']:.2f}"
    )
    print(f"  end-to-end vs naive                  {r['ratio_e2e_to_naive']:.1f}×")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print_table(run())
