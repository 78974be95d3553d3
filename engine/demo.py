"""The headless demo and the demo workspace.

Everything here runs on synthetic images made on the spot: nothing real is shipped, and the
demo model says "not for clinical use" wherever it appears.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_RESOURCES = Path(__file__).resolve().parents[1] / "resources"
DEMO_MODEL_NAME = "demo-model.safetensors"
DEMO_SEED = 2026


def demo_model_path() -> Path | None:
    """The bundled demo model (source tree or frozen bundle), or None when absent."""
    import sys

    candidates = [REPO_RESOURCES / DEMO_MODEL_NAME]
    base = getattr(sys, "_MEIPASS", None)
    if base:
        candidates.insert(0, Path(base) / "resources" / DEMO_MODEL_NAME)
    for c in candidates:
        if c.is_file():
            return c
    return None


def create_demo_workspace(
    parent: str | Path, n: int = 60, model: str | Path | None = None
) -> dict[str, Path]:
    """Synthesise demo images and a workspace beside them; returns their locations.

    The images go to ``parent/images`` and the workspace to ``parent/workspace``; the demo
    model is registered and made active. Screening is left to the caller (the desktop runs
    it in the background with progress).
    """
    from .activation import register_model
    from .modelfile import file_sha256, read_spec
    from .store import Workspace
    from .synth import synthesize

    parent = Path(parent)
    model_path = Path(model) if model else demo_model_path()
    if model_path is None or not model_path.is_file():
        raise FileNotFoundError(
            "the demo model is missing (resources/demo-model.safetensors); build it with `make demo-model`"
        )
    images = parent / "images"
    if not images.exists() or not any(images.rglob("*.png")):
        synthesize(images, "fundus", n=n, seed=DEMO_SEED + 1, size=512, difficulty=0.6)
    ws_dir = parent / "workspace"
    spec = read_spec(model_path)
    with Workspace.open(ws_dir) as ws:
        register_model(ws, file_sha256(model_path), model_path, spec)
    return {"workspace": ws_dir, "images": images, "model": model_path}


def build_demo_model(
    out: str | Path, work: str | Path | None = None, quick: bool = False, log: Any = print
) -> Path:
    """Train the bundled demo model on synthetic fundus images (``make demo-model``)."""
    from .data import load_folder_dataset
    from .synth import synthesize
    from .train import TrainConfig, train_model

    tmp = Path(work) if work else Path(tempfile.mkdtemp(prefix="eyetriage-demo-"))
    data = tmp / "train"
    n = 160 if quick else 400
    synthesize(data, "fundus", n=n, seed=DEMO_SEED, size=256, difficulty=0.5)
    ds = load_folder_dataset(data)
    cfg = TrainConfig(
        arch="resnet10t",
        img_size=128 if not quick else 96,
        epochs=12 if not quick else 4,
        half=True,
        batch_size=32,
        lr=2e-3,
        seed=DEMO_SEED,
        patience=4,
        name="EyeTriage demo (synthetic fundus, 4 classes)",
        demo=True,
        negative_label="normal",
    )
    res = train_model(ds, cfg, out, log=log)
    if not work:
        shutil.rmtree(tmp, ignore_errors=True)
    return res.path


def run_demo(out: Path | None = None, quick: bool = False) -> int:
    """Synthesise, train a tiny model, evaluate it, screen a folder; print a short summary."""
    import torch

    from .data import load_folder_dataset
    from .images import discover_images
    from .models import load_model
    from .screen import ScreenSettings
    from .synth import synthesize
    from .tasks import TaskState
    from .train import TrainConfig, train_model
    from .workspace_screen import screen_into_workspace

    torch.set_num_threads(max(1, torch.get_num_threads()))
    own = out is None
    root = Path(tempfile.mkdtemp(prefix="eyetriage-demo-")) if own else Path(out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    print("EyeTriage headless demo — synthetic images only, not for clinical use\n")
    n_train = 96 if quick else 240
    print(f"1. synthesising {n_train} labelled fundus images (4 classes) ...")
    synthesize(root / "train", "fundus", n=n_train, seed=11, size=256, difficulty=0.4)
    ds = load_folder_dataset(root / "train")
    print(f"   {len(ds)} images: " + ", ".join(f"{k} {v}" for k, v in ds.class_counts().items()))
    print("2. training a small network (resnet10t, 96 px) ...")
    cfg = TrainConfig(
        arch="resnet10t",
        img_size=96,
        epochs=3 if quick else 8,
        batch_size=32,
        lr=3e-3,
        seed=11,
        name="headless demo model",
        demo=True,
        negative_label="normal",
    )
    res = train_model(ds, cfg, root / "demo-model.safetensors", log=lambda s: print("   " + s))
    print(f"   trained in {res.seconds:.0f} s")
    print("3. evaluating on a fresh synthetic set ...")
    synthesize(root / "eval", "fundus", n=48 if quick else 120, seed=12, size=256, difficulty=0.4)
    lm = load_model(res.path)
    from .evaluate import evaluate_model_on

    ev = evaluate_model_on(lm, load_folder_dataset(root / "eval", label_order=lm.spec.labels))
    print(
        f"   n={ev['n']}  accuracy {ev['accuracy']:.3f}  balanced accuracy {ev['balanced_accuracy']:.3f}"
        f"  AUC {ev['auc']:.3f}  ECE {ev['ece']:.3f} (uncalibrated {ev['ece_uncalibrated']:.3f})"
    )
    print("4. screening a new folder (with one corrupt file and one OCT scan) into a workspace ...")
    clinic = root / "clinic-folder"
    synthesize(clinic, "fundus", n=24 if quick else 60, seed=13, size=384, difficulty=0.5)
    (clinic / "broken_scan.jpg").write_bytes(b"\xff\xd8\xff\xe0 this file was cut off")
    synthesize(root / "oct", "oct", n=1, seed=14, size=384)
    oct_file = next((root / "oct").rglob("*.png"))
    shutil.copy(oct_file, clinic / "unexpected_oct_scan.png")
    paths = discover_images(clinic)
    state = TaskState()
    settings = ScreenSettings(uncertainty="mc")
    report = screen_into_workspace(root / "workspace", paths, [lm], settings, state)
    counts = report["counts"]
    print(
        f"   {report['screened']} images at {state.rate():.1f} img/s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    from .store import Workspace

    with Workspace.open(root / "workspace", create=False) as ws:
        rows = ws.export_rows()
    print("   examples:")
    shown = set()
    for r in rows:
        if r["triage"] in shown:
            continue
        shown.add(r["triage"])
        print(f"     {Path(r['path']).name:<26} {r['triage']:<20} {r['triage_reason']}")
    print(f"\ndone in {time.monotonic() - t0:.0f} s; workspace: {root / 'workspace'}")
    print("EyeTriage is not a medical device; the demo model knows synthetic images only.")
    if own:
        shutil.rmtree(root, ignore_errors=True)
    return 0
