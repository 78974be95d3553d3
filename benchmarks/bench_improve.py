"""Time to improve a model from 200 reviewed images, per fine-tuning strategy (CPU).

A synthetic fundus workspace: a start model is screened over ``n`` reviewed images (plus a
few unreviewed ones), reviewers' labels are the true ones, and :func:`engine.improve.improve`
runs once per strategy from the same active model. Reported per strategy: wall time of the
whole improvement (decoding, fine-tuning, recalibration, audit evaluation, writing the file),
epochs run, the new file's size, and audit-set balanced accuracy before and after.

The start model has random weights by default (speed does not depend on the weights; the
audit figures then only show that the run learns something). ``--start MODEL`` uses a real
model instead. Run: ``python -m benchmarks.bench_improve [--size 224] [--strategies head,full]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

CLASSES = ("diabetic_retinopathy", "glaucoma", "cataract", "normal")


def _workspace(tmp: Path, n: int, arch: str, size: int, start: str | None) -> tuple[Path, float]:
    """Synthesise, screen and review; returns the workspace and the screening time."""
    import torch

    from engine.modelfile import ModelSpec, save_model_file
    from engine.models import create_network, load_model
    from engine.screen import ScreenSettings
    from engine.store import Workspace
    from engine.synth import synthesize
    from engine.workspace_screen import screen_into_workspace

    pool = tmp / "pool"
    extra = max(8, n // 10)
    synthesize(pool, "fundus", n=n + extra, seed=7, size=max(256, size), classes=CLASSES)
    if start is None:
        torch.manual_seed(0)
        spec = ModelSpec(
            arch, "multiclass", list(CLASSES), input_size=size, name=f"{arch}-bench",
            negative_label="normal",
        )  # fmt: skip
        start = str(tmp / "start.safetensors")
        save_model_file(start, spec, create_network(spec).state_dict())
    lm = load_model(start)
    with open(pool / "labels.csv", newline="") as f:
        truth = {str((pool / r["file"]).resolve()): r["label"] for r in csv.DictReader(f)}
    paths = sorted(Path(p) for p in truth)
    ws = tmp / "ws"
    t = time.monotonic()
    screen_into_workspace(ws, paths, [lm], ScreenSettings())
    screen_s = time.monotonic() - t
    with Workspace.open(ws) as w:
        preds = w.latest_predictions()
        for p in preds[:n]:
            w.add_review(p["image_id"], "bench", [truth[p["path"]]], "correct")
    return ws, screen_s


def run(
    n: int = 200,
    arch: str = "efficientnet_b0",
    size: int = 224,
    strategies: tuple[str, ...] = ("head", "full"),
    epochs: int = 5,
    start: str | None = None,
) -> dict[str, Any]:
    """Improve once per strategy; returns flat figures (``improve_<strategy>_seconds`` ...)."""
    import torch

    from engine.improve import ImproveConfig, improve

    out: dict[str, Any] = {
        "improve_arch": arch,
        "improve_img_size": size,
        "improve_reviewed": n,
        "improve_epochs": epochs,
        "improve_torch_threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="bench_improve_") as d:
        ws, screen_s = _workspace(Path(d), n, arch, size, start)
        out["improve_screen_seconds"] = round(screen_s, 1)
        for s in strategies:
            cfg = ImproveConfig(strategy=s, epochs=epochs, min_new_reviews=0)
            r = improve(ws, cfg, log=lambda m: None)
            b, a = r["before"], r["after"]
            out.update(
                {
                    f"improve_{s}_seconds": r["seconds"],
                    f"improve_{s}_epochs_run": r["epochs_run"],
                    f"improve_{s}_file_mb": round(r["file_bytes"] / 1e6, 2),
                    f"improve_{s}_n_train": r["n_train"],
                    f"improve_{s}_n_audit": r["n_audit"],
                    f"improve_{s}_bal_acc_before": b.get("balanced_accuracy"),
                    f"improve_{s}_bal_acc_after": a.get("balanced_accuracy"),
                    f"improve_{s}_acc_before": b.get("accuracy"),
                    f"improve_{s}_acc_after": a.get("accuracy"),
                }
            )
    out["improve_strategies"] = list(strategies)
    return out


def print_table(r: dict[str, Any]) -> None:
    print(
        f"improve: {r['improve_arch']} at {r['improve_img_size']} px, {r['improve_reviewed']} "
        f"reviewed images, {r['improve_epochs']} epochs max, "
        f"{r['improve_torch_threads']} torch threads"
    )
    print(f"{'strategy':<9}{'seconds':>9}{'epochs':>8}{'file MB':>9}{'train':>7}{'audit':>7}"
          f"{'bal.acc before':>16}{'after':>8}")  # fmt: skip

    def cell(s: str, key: str) -> str:
        v = r.get(f"improve_{s}_{key}")
        return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    for s in r["improve_strategies"]:
        f = lambda key, s=s: cell(s, key)  # noqa: E731
        print(
            f"{s:<9}{r[f'improve_{s}_seconds']:>9.1f}{f('epochs_run'):>8}"
            f"{r[f'improve_{s}_file_mb']:>9.2f}{f('n_train'):>7}{f('n_audit'):>7}"
            f"{f('bal_acc_before'):>16}{f('bal_acc_after'):>8}"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--arch", default="efficientnet_b0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--strategies", default="head,full")
    p.add_argument("--start", help="a real start model (.safetensors) instead of random weights")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    r = run(a.n, a.arch, a.size, tuple(a.strategies.split(",")), a.epochs, a.start)
    print(json.dumps(r, indent=2)) if a.json else print_table(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
