"""Screening speed on this machine: model ceiling, end-to-end pipeline, naive baseline.

All figures come from one run on the same machine with efficientnet_b0 (random weights: speed
does not depend on what the weights are) at 224 px:

- ``model_forward_ips``: the bare forward pass on in-memory batches of 32 (the ceiling);
- ``screen_e2e_ips_1000px``: ``engine.screen`` over ../shared/data/fullres-fundus (1000 px JPEGs);
- ``screen_e2e_ips_3000px``: the same files upscaled to 3000 px (camera-sized; upscaled, so say so);
- ``naive_ips_3000px``: open each file at full size with PIL, resize, one image per model call.
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

REPO = Path(__file__).resolve().parents[1]
FULLRES = REPO / ".." / "shared" / "data" / "fullres-fundus"


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


def screen_ips(lm, paths, quality: bool = True, batch: int = 32) -> float:  # noqa: ANN001
    from engine.screen import ScreenSettings, screen_all

    settings = ScreenSettings(batch_size=batch, quality=quality)
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


def upscaled_copies(paths, out: Path, side: int = 3000) -> list[Path]:  # noqa: ANN001
    out.mkdir(parents=True, exist_ok=True)
    res = []
    for p in paths:
        q = out / p.name
        if not q.exists():
            Image.open(p).convert("RGB").resize((side, side), Image.BICUBIC).save(q, quality=90)
        res.append(q)
    return res


def run() -> dict:
    torch.set_num_threads(os.cpu_count() or 2)
    out: dict = {"threads": torch.get_num_threads(), "cpu_bf16": None}
    from engine.models import cpu_supports_bf16

    out["cpu_bf16"] = cpu_supports_bf16()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lm = make_model(tmp)
        out["model_forward_ips"] = forward_ips(lm)
        if not FULLRES.is_dir():
            print("../shared/data/fullres-fundus not found: end-to-end figures skipped")
            return out
        files = sorted(FULLRES.glob("*.jpg"))
        big = upscaled_copies(files, tmp / "3000px")
        out["screen_e2e_ips_1000px"] = screen_ips(lm, files)
        out["screen_e2e_ips_3000px"] = screen_ips(lm, big)
        out["screen_e2e_ips_3000px_no_quality"] = screen_ips(lm, big, quality=False)
        out["naive_ips_3000px"] = naive_ips(lm, big[:20])
        out["n_files"] = len(files)
    m = out["model_forward_ips"]
    out["ratio_e2e_3000_to_ceiling"] = out["screen_e2e_ips_3000px"] / m
    out["ratio_e2e_3000_to_naive"] = out["screen_e2e_ips_3000px"] / out["naive_ips_3000px"]
    return out


def print_table(r: dict) -> None:
    print(
        f"screening speed (efficientnet_b0, 224 px, {r['threads']} threads, bf16 autocast: {r['cpu_bf16']})"
    )
    print(f"  model forward (ceiling)         {r['model_forward_ips']:7.1f} img/s")
    for k, label in (
        ("screen_e2e_ips_1000px", "screen end-to-end, 1000 px JPEG"),
        ("screen_e2e_ips_3000px", "screen end-to-end, 3000 px JPEG"),
        ("screen_e2e_ips_3000px_no_quality", "  same without quality gate"),
        ("naive_ips_3000px", "naive baseline, 3000 px JPEG"),
    ):
        if k in r:
            print(f"  {label:<32}{r[k]:7.1f} img/s  ({r[k] / r['model_forward_ips']:.2f}× ceiling)")
    if "ratio_e2e_3000_to_naive" in r:
        print(f"  end-to-end vs naive (3000 px)   {r['ratio_e2e_3000_to_naive']:.1f}×")


if __name__ == "__main__":
    print_table(run())
