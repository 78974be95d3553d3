"""Train-and-test runs on the real development sets, for choosing the training defaults.

Each named run is one ``eyetriage train`` command (default options plus the data options and
``--seed``, plus the run's own options) followed by ``eyetriage evaluate --part test`` on the
model's own held-out patients. Results are appended as JSON lines to ``OUT/results.jsonl``
and each run's log is kept beside it. Run one at a time on a shared machine; every run
prints its exact command.

    python benchmarks/compare_recipes.py OUT oct-default dr-default ed4-default
    python benchmarks/compare_recipes.py --screen OUT oct-default
    python benchmarks/compare_recipes.py --list
    python benchmarks/compare_recipes.py --summary OUT

``--summary`` prints a markdown table of OUT/results.jsonl: per run, the test figures of each
seed (each seed is another split of the patients; bootstrap 95 % intervals in brackets where
the evaluation gave them) and their mean and spread, because one
test part of a small set moves a QWK by more than the differences between recipes.

``--screen`` also screens the test part into a fresh workspace through the default path
(``eyetriage screen FOLDER --model M --workspace W``, the way a clinic measures) and records
the triage counts, per true class. ``OUT/NAME-sSEED.eval.json`` keeps the full evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EYETRIAGE_DEV_DATA", ROOT / ".." / "shared" / "data"))
MXDME = DATA / "mx-dme"
ED4 = DATA / "eye-diseases-4"

OCT = [
    str(MXDME),
    "--labels", str(MXDME / "labels.csv"), "--image-col", "file", "--label-col", "dme",
    "--filter", "modality=oct", "--group-col", "dup_group",
]  # fmt: skip
DR = [
    str(MXDME),
    "--labels", str(MXDME / "labels.csv"), "--image-col", "file", "--label-col", "dr",
    "--filter", "modality=fundus", "--group-col", "dup_group",
    "--task", "ordinal", "--label-order", "0,NPDR,PDR",
]  # fmt: skip
ED = [str(ED4)]  # the seed protocol is the default split: stratified 70/15/15

# name -> (data options, run options); the seed is added to every run
RUNS: dict[str, tuple[list[str], list[str]]] = {
    "oct-default": (OCT, []),
    "oct-scratch": (OCT, ["--init", "none"]),
    "oct-noema": (OCT, ["--no-ema"]),
    "oct-old-b0": (OCT, ["--arch", "efficientnet_b0", "--lr", "1e-3"]),
    "dr-default": (DR, []),
    "dr-scratch": (DR, ["--init", "none"]),
    "dr-384": (DR, ["--img-size", "384"]),
    "dr-bengraham": (DR, ["--ben-graham"]),
    "dr-green": (DR, ["--green"]),
    "dr-lr1e-3": (DR, ["--lr", "1e-3"]),
    "dr-sampling": (DR, ["--balance", "sampling"]),
    "oct-sampling": (OCT, ["--balance", "sampling"]),
    # a shorter budget for a shared machine: the same recipe over 6 epochs
    "oct-e6": (OCT, ["--epochs", "6"]),
    "oct-e6-scratch": (OCT, ["--epochs", "6", "--init", "none"]),
    "dr-e6": (DR, ["--epochs", "6"]),
    "dr-e6-scratch": (DR, ["--epochs", "6", "--init", "none"]),
    "ed4-default": (ED, []),
    "ed4-scratch": (ED, ["--init", "none"]),
    "oct-resnet18": (OCT, ["--arch", "resnet18"]),
    "dr-resnet18": (DR, ["--arch", "resnet18"]),
    "ed4-resnet18": (ED, ["--arch", "resnet18"]),
}


def screen_test_part(name: str, model: Path, data: list[str], out: Path, python: str) -> dict:
    """Screen the model's own test part into a fresh workspace; triage counts per true class."""
    sys.path.insert(0, str(ROOT))
    from engine.cli import _load_data, _split_part, build_parser
    from engine.modelfile import read_spec

    spec = read_spec(model)
    args = build_parser().parse_args(["evaluate", str(model), *data])
    ds = _split_part(_load_data(args, label_order=spec.labels), spec, "test")
    return screen_samples(
        ds, model, out / f"{model.stem}-testpart", out / f"{model.stem}-ws", python
    )


def screen_samples(ds, model: Path, folder: Path, ws: Path, python: str) -> dict:  # noqa: ANN001
    """Screen the images of ``ds`` (a labelled set) with ``model`` into a fresh workspace the
    way a clinic does (``eyetriage screen FOLDER --model M --workspace W``); triage counts,
    overall and per true class."""
    import shutil

    sys.path.insert(0, str(ROOT))
    from engine.store import Workspace

    for d in (folder, ws):
        shutil.rmtree(d, ignore_errors=True)
    folder.mkdir(parents=True)
    truth: dict[str, str] = {}
    for i, smp in enumerate(ds.samples):  # links, not copies: the source images stay put
        link = folder / f"{i:05d}_{smp.path.name}"
        link.symlink_to(smp.path.resolve())
        # the workspace records the file a link leads to, so the truth is keyed by that
        truth[str(smp.path.resolve())] = ds.labels[smp.target]
    cmd = [python, "-m", "engine", "screen", str(folder), "--model", str(model)]
    cmd += ["--workspace", str(ws), "--quiet"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        return {"error": p.stderr.strip()[-400:]}
    counts: dict[str, int] = {}
    by_class: dict[str, dict[str, int]] = {}
    with Workspace.open(ws, create=False) as w:
        for r in w.latest_predictions():
            t = truth.get(str(Path(r["path"]).resolve()), "?")
            counts[r["triage"]] = counts.get(r["triage"], 0) + 1
            cls = by_class.setdefault(t, {})
            cls[r["triage"]] = cls.get(r["triage"], 0) + 1
    line = next((x for x in p.stdout.splitlines() if x.startswith("screened")), "")
    return {"n": len(ds.samples), "triage": counts, "by_true_class": by_class, "summary": line}


def run_logged(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run ``cmd`` with its output (after the command line itself) in ``log``; returns the
    exit status and the seconds it took."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        p = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True, env=env)
    return p.returncode, time.monotonic() - t0


def run(name: str, out: Path, seed: int, python: str, screen: bool = False) -> dict:
    data, opts = RUNS[name]
    model = out / f"{name}-s{seed}.safetensors"
    train = [python, "-m", "engine", "train", *data, *opts, "--seed", str(seed)]
    train += ["--out", str(model), "--json", "--quiet"]
    log = out / f"{name}-s{seed}.log"
    rc, seconds = run_logged(train, log)
    text = log.read_text()
    row: dict = {"run": name, "seed": seed, "rc": rc, "train_seconds": round(seconds)}
    row["command"] = "eyetriage train " + " ".join(
        a.replace(str(DATA), "../shared/data") for a in [*data, *opts, "--seed", str(seed)]
    )
    if rc == 0:
        summary = json.loads(text[text.index("\n{") :])
        row.update(
            {k: summary.get(k) for k in ("epochs_run", "best_epoch", "kept_weights", "start")}
        )
        ev = [python, "-m", "engine", "evaluate", str(model), *data, "--part", "test", "--json"]
        ev += ["--quiet"]
        e = subprocess.run(ev, cwd=ROOT, capture_output=True, text=True)
        if e.returncode == 0:
            (out / f"{model.stem}.eval.json").write_text(e.stdout)
            m = json.loads(e.stdout)
            row["test"] = {
                k: m.get(k)
                for k in ("n", "accuracy", "balanced_accuracy", "auc", "qwk", "ece")
                if m.get(k) is not None
            }
            row["test"]["ece_uncalibrated"] = m.get("ece_uncalibrated")
            row["test"]["intervals"] = (m.get("intervals") or {}).get("metrics")
            row["test"]["ece_if_calibrated"] = m.get("ece_if_calibrated")
            curve = {round(pt["referred"], 2): pt for pt in m.get("referral_curve") or []}
            if 0.0 in curve and 0.3 in curve:
                row["test"]["bal_acc_kept_at_0pct_referred"] = curve[0.0]["balanced_accuracy"]
                row["test"]["bal_acc_kept_at_30pct_referred"] = curve[0.3]["balanced_accuracy"]
        else:
            row["evaluate_error"] = e.stderr.strip()[-400:]
        if screen:
            row["screen"] = screen_test_part(name, model, data, out, python)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "auc", "qwk", "ece")


def summary(out: Path) -> str:
    """Markdown table of every run in OUT/results.jsonl: each seed, then mean ± SD over seeds."""
    import statistics

    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    by_run: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("rc") == 0 and r.get("test"):
            by_run.setdefault(r["run"], []).append(r)
    head = "| run | seed | n test | " + " | ".join(SUMMARY_KEYS) + " | kept epoch | train s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, runs in by_run.items():
        for r in sorted(runs, key=lambda r: r["seed"]):
            t = r["test"]
            ci = t.get("intervals") or {}
            cells = [
                (f"{t[k]:.3f}" if isinstance(t.get(k), float) else "–")
                + (f" ({ci[k][0]:.2f}–{ci[k][1]:.2f})" if k in ci and k != "ece" else "")
                for k in SUMMARY_KEYS
            ]
            lines.append(
                f"| {name} | {r['seed']} | {t.get('n')} | "
                + " | ".join(cells)
                + f" | {r.get('best_epoch')} of {r.get('epochs_run')} | {r['train_seconds']} |"
            )
        if len(runs) > 1:
            cells = []
            for k in SUMMARY_KEYS:
                v = [r["test"][k] for r in runs if isinstance(r["test"].get(k), float)]
                cells.append(
                    f"**{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}**"
                    if len(v) > 1
                    else "–"
                )
            lines.append(
                f"| {name} | mean ± SD ({len(runs)} splits) | | " + " | ".join(cells) + " | | |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", nargs="?")
    p.add_argument("runs", nargs="*")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--list", action="store_true")
    p.add_argument("--screen", action="store_true", help="also screen the test part")
    p.add_argument("--summary", action="store_true", help="print OUT/results.jsonl as a table")
    a = p.parse_args()
    if a.summary and a.out:
        print(summary(Path(a.out)))
        return 0
    if a.list or not a.out:
        for k, (_, opts) in RUNS.items():
            print(f"{k:<14} {' '.join(opts)}")
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.runs:
        run(name, out, a.seed, sys.executable, a.screen)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
