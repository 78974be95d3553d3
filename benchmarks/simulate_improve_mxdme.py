"""Real-data simulation of "Improve model" on ../shared/data/mx-dme: OCT ``dme`` (the
default) or, with ``--target dr``, fundus diabetic retinopathy graded 0 < NPDR < PDR.

Start from a model trained on the train split (``eyetriage train`` with the options below);
screen the other images into a fresh workspace, review 200 of them (or all, when fewer) with
their true labels, run ``eyetriage improve`` per strategy and print the audit-set
before/after.

    eyetriage train ../shared/data/mx-dme --labels ../shared/data/mx-dme/labels.csv \\
        --image-col file --label-col dme --filter modality=oct --group-col dup_group \\
        --seed 42 --out oct-dme.safetensors
    python benchmarks/simulate_improve_mxdme.py oct-dme.safetensors WORKSPACE head full lora \\
        --select-by score loss

    eyetriage train ../shared/data/mx-dme --labels ../shared/data/mx-dme/labels.csv \\
        --image-col file --label-col dr --filter modality=fundus --group-col dup_group \\
        --task ordinal --label-order 0,NPDR,PDR --seed 3 --out dr.safetensors
    python benchmarks/simulate_improve_mxdme.py dr.safetensors WORKSPACE head full lora \\
        --target dr

Every strategy runs once per ``--select-by`` choice (how the fine-tune's kept epoch is
chosen); each result, with the engine's verdict, is also appended to WORKSPACE/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("EYETRIAGE_DEV_DATA", ROOT / ".." / "shared" / "data")) / "mx-dme"


def main() -> int:
    from engine.cli import _add_data_options, _load_data
    from engine.data import split_indices
    from engine.models import load_model
    from engine.screen import ScreenSettings
    from engine.store import Workspace
    from engine.workspace_screen import screen_into_workspace

    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("workspace")
    p.add_argument("strategies", nargs="*", default=["head", "full"])
    p.add_argument("--reviews", type=int, default=200)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--select-by", nargs="+", default=["score"], choices=["score", "loss"])
    p.add_argument("--target", choices=sorted(TARGETS), default="dme")
    a = p.parse_args()
    # the data options parsed by the CLI's own parser, so this script follows its options
    data_parser = argparse.ArgumentParser()
    data_parser.add_argument("data")
    _add_data_options(data_parser)
    data_args = data_parser.parse_args(
        [str(DATA), "--labels", str(DATA / "labels.csv"), "--image-col", "file"]
        + ["--group-col", "dup_group", *TARGETS[a.target]]
    )
    lm = load_model(a.model)
    ds = _load_data(data_args, label_order=lm.spec.labels)
    split = lm.spec.provenance["split"]
    _, va, te = split_indices(ds, tuple(split["fractions"]), int(split["seed"]))
    rest = [ds.samples[i] for i in va + te]
    ws = Path(a.workspace)
    screen_into_workspace(ws, [s.path for s in rest], [lm], ScreenSettings())
    with Workspace.open(ws) as w:
        for s in random.Random(7).sample(rest, min(a.reviews, len(rest))):
            w.add_review(str(s.path.resolve()), "simulated-reviewer", [lm.spec.labels[s.target]])
    for strategy in a.strategies:
        for select in a.select_by:
            _improve_once(ws, strategy, select, a.epochs)
    return 0


def _improve_once(ws: Path, strategy: str, select: str, epochs: int) -> None:
    cmd = [sys.executable, "-m", "engine", "improve", str(ws), "--epochs", str(epochs)]
    cmd += ["--strategy", strategy, "--select-by", select, "--json", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    name = f"{strategy} (kept epoch by {select})"
    if out.returncode:
        print(f"{name}: failed: {out.stderr.strip().splitlines()[-1:]}")
        row = {"strategy": strategy, "select_by": select, "error": out.stderr.strip()[-400:]}
    else:
        r = json.loads(out.stdout)
        b, f = r["before"], r["after"]
        v = r.get("verdict") or {}
        print(f"{name}: audit n={b['n']}, {r['seconds']:.0f} s, verdict {v.get('decision')}")
        for k in KEYS:
            if isinstance(b.get(k), float):
                print(f"  {k:<18} {b[k]:.3f} -> {f[k]:.3f}")
        row = {
            "strategy": strategy,
            "select_by": select,
            "epochs": epochs,
            "seconds": r["seconds"],
            "epochs_run": r.get("epochs_run"),
            "before": {k: b.get(k) for k in KEYS},
            "after": {k: f.get(k) for k in KEYS},
            "verdict": v.get("decision"),
            "recommend": v.get("recommend"),
            "headline": v.get("headline"),
        }
    with open(ws / "results.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")


# --target -> the data options of that task
TARGETS = {
    "dme": ["--label-col", "dme", "--filter", "modality=oct"],
    "dr": ["--label-col", "dr", "--filter", "modality=fundus", "--task", "ordinal"]
    + ["--label-order", "0,NPDR,PDR"],
}
KEYS = ("accuracy", "balanced_accuracy", "auc", "qwk", "sensitivity", "specificity", "ece")
KEYS += ("review_workload",)


if __name__ == "__main__":
    sys.exit(main())
