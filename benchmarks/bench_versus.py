"""End-to-end screening against an earlier release, through the command line, in one run.

A clinic upgrading EyeTriage asks one question: does the same folder screen faster than
before? This script answers it the way a user would see it: ``eyetriage screen FOLDER
--model M --out results.csv`` with every default, run by this checkout and by an earlier
commit (extracted with ``git archive`` into a temporary folder, so nothing in this
checkout changes), on the same 400 camera-sized JPEGs (``bench_data.camera_jpegs``), one
after the other and interleaved ``--repeats`` times so a burst of other load hits both.

The model file is written by the *earlier* code (efficientnet_b0, 224 px, 4 classes, random
weights: speed does not depend on them), so both versions read the same file. Each version
also screens 8 of the files; the rate is ``(400 - 8) / (t_400 - t_8)``, which removes what
both pay once (starting Python, importing torch, loading the model, a one-time engine
export or choice) and leaves the per-image pace. The wall time for 400 files, start-up
included, is reported as well.

``REF`` defaults to ``574d9cb``: main before the CPU-engine and quality-gate work (its
``screen`` ran torch with bf16 autocast where the CPU has it).

Run alone: ``PYTHONPATH=. python benchmarks/bench_versus.py [--ref REF] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REF = "574d9cb"
N_SMALL = 8

_MAKE_MODEL = """
import sys, torch
from engine.modelfile import ModelSpec, save_model_file
from engine.models import create_network
spec = ModelSpec(arch="efficientnet_b0", task="multiclass", labels=["a", "b", "c", "d"],
                 input_size=224)
torch.manual_seed(0)
net = create_network(spec).eval()
with torch.no_grad():
    net.get_classifier().weight.mul_(40.0)
save_model_file(sys.argv[1], spec, net.state_dict())
"""


def extract(ref: str, dest: Path) -> str:
    """The tree of ``ref`` under ``dest``; returns the full commit id."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    archive = dest.parent / "ref.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", sha], cwd=REPO, check=True, stdout=f)
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")
    archive.unlink()
    return sha


def timed_screen(tree: Path, folder: Path, model: Path, out: Path, env: dict) -> float:
    """Wall seconds of ``python -m engine screen`` with defaults, run from ``tree``."""
    cmd = [sys.executable, "-m", "engine", "screen", str(folder), "--model", str(model)]
    cmd += ["--out", str(out), "--quiet"]
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=tree, env={**env, "PYTHONPATH": str(tree)}, capture_output=True)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{tree.name}: screen failed: {res.stderr.decode()[-800:]}")
    return dt


def rows(csv_path: Path) -> int:
    with csv_path.open(encoding="utf-8") as f:
        return sum(1 for _ in f) - 1


def run(ref: str = DEFAULT_REF, repeats: int = 2) -> dict:
    from benchmarks.bench_data import camera_jpegs

    paths = camera_jpegs(400)
    if len(paths) < 400:
        print(f"only {len(paths)} real fundus files found: skipped")
        return {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        old = tmp / "earlier"
        old.mkdir()
        sha = extract(ref, old)
        big, small = tmp / "400", tmp / "8"
        big.mkdir()
        small.mkdir()
        for i, p in enumerate(paths):
            os.symlink(p, big / p.name)
            if i < N_SMALL:
                os.symlink(p, small / p.name)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["EYETRIAGE_CACHE_DIR"] = str(tmp / "cache")  # engine choice, exports start afresh
        model = tmp / "model.safetensors"
        subprocess.run(
            [sys.executable, "-c", _MAKE_MODEL, str(model)],
            cwd=old, env={**env, "PYTHONPATH": str(old)}, check=True,
        )  # fmt: skip
        trees = {"earlier": old, "this": REPO}
        # one untimed pass each: file cache warm, one-time engine choice/export done
        for name, tree in trees.items():
            timed_screen(tree, small, model, tmp / f"{name}-warm.csv", env)
        best: dict[str, dict[str, float]] = {}
        for _ in range(repeats):
            for name, tree in trees.items():
                t_small = timed_screen(tree, small, model, tmp / f"{name}-8.csv", env)
                t_big = timed_screen(tree, big, model, tmp / f"{name}-400.csv", env)
                n = rows(tmp / f"{name}-400.csv")
                if n != len(paths):
                    raise RuntimeError(f"{name}: {n} result rows for {len(paths)} files")
                ips = (len(paths) - N_SMALL) / max(t_big - t_small, 1e-9)
                print(
                    f"  [bench_versus] {name}: 400 files in {t_big:.1f} s, 8 in {t_small:.1f} s"
                    f" -> {ips:.1f} img/s",
                    file=sys.stderr,
                    flush=True,
                )
                if ips > best.get(name, {}).get("ips", 0.0):
                    best[name] = {"ips": ips, "wall_400": t_big, "wall_8": t_small}
        shutil.rmtree(old, ignore_errors=True)
    return {
        "versus_ref": sha[:10],
        "versus_n_files": len(paths),
        "versus_ips": {k: round(v["ips"], 1) for k, v in best.items()},
        "versus_wall_400_s": {k: round(v["wall_400"], 1) for k, v in best.items()},
        "versus_speedup": round(best["this"]["ips"] / best["earlier"]["ips"], 2),
        "versus_wall_speedup": round(best["earlier"]["wall_400"] / best["this"]["wall_400"], 2),
    }


def print_table(r: dict) -> None:
    if not r:
        return
    print(
        f"`eyetriage screen` with defaults, {r['versus_n_files']} camera-sized JPEGs, this "
        f"checkout vs {r['versus_ref']}"
    )
    print(f"| version | images/s (per-image pace) | wall for {r['versus_n_files']} files |")
    print("|---|---|---|")
    for k, v in r["versus_ips"].items():
        print(f"| {k} | {v} | {r['versus_wall_400_s'][k]} s |")
    print(
        f"speed-up: {r['versus_speedup']}x per image, {r['versus_wall_speedup']}x in wall time "
        "(start-up included)"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default=DEFAULT_REF)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    print_table(run(a.ref, a.repeats))
