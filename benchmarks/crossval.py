"""Cross-validation over patient folds: one out-of-fold answer for every labelled image.

A test part of 55 photographs cannot show an ECE of 0.03 or a referral gain of 5 points: a
perfectly calibrated model shows an ECE of 0.06-0.20 on so few, and one photograph moves a
balanced accuracy by several points. Here the patients of a recipe's data are dealt into K
folds (stratified, whole patients, the same rule as the train/validation/test split); for
each fold the recipe trains a model on the other folds with the ordinary command

    eyetriage train DATA --labels OUT/foldK-train.csv <data options> <run options>
        --split 0.82,0.18,0 --seed SEED --out OUT/foldK.safetensors

(the validation share of the remaining patients is the default split's, 0.15 / 0.85) and
answers for the fold's patients with

    eyetriage evaluate OUT/foldK.safetensors DATA --labels OUT/foldK-test.csv <data options>
        --predictions OUT/foldK-predictions.csv

The answers of the K models are then pooled and measured once, on every image, with the
engine's own metrics, patient-bootstrap intervals, calibrated-model ECE range and referral
curve. With ``--screen`` each fold's images are also screened with its model into a fresh
workspace (``eyetriage screen``, default options) and the triage counts are summed.

    python benchmarks/crossval.py OUT dr-default [--folds 5] [--seed 42] [--screen]

Folds whose predictions exist are not trained again (delete them to rerun).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compare_recipes import DATA, RUNS, run_logged, screen_samples  # noqa: E402

VALIDATION_SPLIT = "0.82,0.18,0"  # the default 0.7/0.15/0.15 split without its test part


def _option(opts: list[str], name: str) -> str | None:
    return opts[opts.index(name) + 1] if name in opts else None


def _with_labels(data: list[str], labels: Path) -> list[str]:
    """The run's data options with ``--labels`` pointing at ``labels``."""
    out = list(data)
    out[out.index("--labels") + 1] = str(labels)
    return out


def write_folds(data: list[str], k: int, seed: int, out: Path) -> list[int]:
    """Deal the patients into ``k`` folds; write each fold's training and test CSVs (the
    original rows, so every data option applies as before). Returns the images per fold."""
    from engine.cli import _load_data, build_parser
    from engine.data import split_indices

    args = build_parser().parse_args(["evaluate", "unused.safetensors", *data])
    ds = _load_data(args)
    folds = split_indices(ds, (1.0 / k,) * k, seed)
    labels = Path(_option(data, "--labels") or "")
    image_col = _option(data, "--image-col") or "image"
    with open(labels, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    root = Path(data[0]).resolve()
    by_path = {str((root / r[image_col]).resolve()): r for r in rows}
    fold_of: dict[str, int] = {}
    for f, idx in enumerate(folds):
        for i in idx:
            fold_of[str(Path(ds.samples[i].path).resolve())] = f
    for f in range(k):
        for part, keep in (("train", lambda x, f=f: x != f), ("test", lambda x, f=f: x == f)):
            with open(out / f"fold{f}-{part}.csv", "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=fields)
                w.writeheader()
                w.writerows(r for p, r in by_path.items() if p in fold_of and keep(fold_of[p]))
    return [len(idx) for idx in folds]


def run_fold(name: str, f: int, seed: int, out: Path, python: str, screen: bool) -> dict:
    data, opts = RUNS[name]
    model = out / f"fold{f}.safetensors"
    preds = out / f"fold{f}-predictions.csv"
    row: dict = {"fold": f}
    if preds.exists() and model.exists():
        row["reused"] = True  # trained and answered by an earlier run
        done = out / f"fold{f}.eval.json"
        if done.exists():
            m = json.loads(done.read_text())
            row["fold_test"] = {
                k: m.get(k) for k in ("n", "balanced_accuracy", "auc", "qwk", "ece")
            }
        return row
    train = [python, "-m", "engine", "train", *_with_labels(data, out / f"fold{f}-train.csv")]
    train += [*opts, "--split", VALIDATION_SPLIT, "--seed", str(seed), "--out", str(model)]
    train += ["--json", "--quiet"]
    log = out / f"fold{f}.log"
    rc, seconds = run_logged(train, log)
    row["train_seconds"] = round(seconds)
    row["rc"] = rc
    if rc:
        row["error"] = log.read_text()[-600:]
        return row
    text = log.read_text()
    summary = json.loads(text[text.index("\n{") :])
    row.update({k: summary.get(k) for k in ("epochs_run", "best_epoch", "kept_weights")})
    test_data = _with_labels(data, out / f"fold{f}-test.csv")
    ev = [python, "-m", "engine", "evaluate", str(model), *test_data, "--json", "--quiet"]
    ev += ["--predictions", str(preds)]
    e = subprocess.run(ev, cwd=ROOT, capture_output=True, text=True)
    if e.returncode:
        row["evaluate_error"] = e.stderr.strip()[-400:]
        return row
    (out / f"fold{f}.eval.json").write_text(e.stdout)
    m = json.loads(e.stdout)
    row["fold_test"] = {k: m.get(k) for k in ("n", "balanced_accuracy", "auc", "qwk", "ece")}
    if screen:
        from engine.cli import _load_data, build_parser

        args = build_parser().parse_args(["evaluate", str(model), *test_data])
        ds = _load_data(args)
        row["screen"] = screen_samples(
            ds, model, out / f"fold{f}-images", out / f"fold{f}-ws", python
        )
    return row


def pooled(out: Path, k: int) -> dict:
    """Every fold's answers measured together, with the engine's own figures."""
    import numpy as np

    from engine.findings import finding_labels, negative_indices, positive_label
    from engine.intervals import ece_if_calibrated, metric_intervals, referral_gain_interval
    from engine.metrics import evaluate_predictions, predicted_labels
    from engine.modelfile import read_spec
    from engine.referral import referral_curve
    from engine.uncertainty_stats import entropy

    spec = read_spec(out / "fold0.safetensors")
    labels = list(spec.labels)
    y, probs, groups, fold = [], [], [], []
    for f in range(k):
        with open(out / f"fold{f}-predictions.csv", newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                y.append(labels.index(r["true"]))
                probs.append([float(r[f"p:{lab}"]) for lab in labels])
                groups.append(r["group"])
                fold.append(f)
    y_arr, p_arr = np.array(y), np.array(probs)
    pos = positive_label(spec)
    res = evaluate_predictions(y_arr, p_arr, spec.task, labels, positive=pos)
    res["intervals"] = metric_intervals(y_arr, p_arr, spec.task, labels, pos, groups)
    yp = predicted_labels(p_arr, spec.task)
    res["ece_if_calibrated"] = ece_if_calibrated(p_arr[np.arange(len(yp)), yp])
    ranking = entropy(p_arr)
    res["referral_curve"] = referral_curve(
        y_arr, p_arr, ranking, spec.task, negative_index=negative_indices(spec)
    )
    res["referral_gain"] = referral_gain_interval(
        y_arr, p_arr, ranking, spec.task, negative_indices(spec), groups
    )
    res["disease_classes"] = finding_labels(spec)
    res["n_patients"] = len(set(groups))
    return res


def report(name: str, seed: int, k: int, res: dict, rows: list[dict]) -> str:
    from engine.intervals import referral_gain_words

    ci = (res.get("intervals") or {}).get("metrics") or {}
    lines = [
        f"# Cross-validation: {name}, {k} patient folds (seed {seed})",
        "",
        f"`python benchmarks/crossval.py OUT {name} --folds {k} --seed {seed}`: "
        f"{res['n']} images of {res['n_patients']} patients, each answered by the model "
        "that did not see its patient.",
        "",
        "| figure | pooled | 95 % interval (patients resampled) |",
        "|---|---|---|",
    ]
    for key in ("accuracy", "balanced_accuracy", "auc", "qwk", "ece"):
        if isinstance(res.get(key), float):
            lo_hi = ci.get(key)
            span = f"{lo_hi[0]:.3f}–{lo_hi[1]:.3f}" if lo_hi else "–"
            lines.append(f"| {key} | {res[key]:.3f} | {span} |")
    cal = res.get("ece_if_calibrated") or {}
    if cal.get("n"):
        lines += [
            "",
            "A perfectly calibrated model would show an ECE of "
            f"{cal['low']:.3f}–{cal['high']:.3f} on these images (95 % of draws).",
        ]
    curve = {round(pt["referred"], 2): pt for pt in res.get("referral_curve") or []}
    if 0.0 in curve and 0.3 in curve:
        a0, a3 = curve[0.0], curve[0.3]
        lines += [
            "",
            "Referring the 30 % least certain: accuracy of the kept images "
            f"{a0['accuracy']:.3f} → {a3['accuracy']:.3f}, balanced accuracy "
            f"{a0['balanced_accuracy']:.3f} → {a3['balanced_accuracy']:.3f}.",
        ]
    if res.get("referral_gain"):
        lines += ["", referral_gain_words(res["referral_gain"])]
    lines += ["", "| fold | images | kept epoch | train s | fold QWK / AUC | screened triage |"]
    lines += ["|---|---|---|---|---|---|"]
    for r in rows:
        t = r.get("fold_test") or {}
        tri = (r.get("screen") or {}).get("triage") or {}
        fig = "/".join(f"{t[x]:.3f}" for x in ("qwk", "auc") if isinstance(t.get(x), float))
        lines.append(
            f"| {r['fold']} | {t.get('n', '–')} | {r.get('best_epoch', '–')} of "
            f"{r.get('epochs_run', '–')} | {r.get('train_seconds', '–')} | {fig or '–'} | "
            + (", ".join(f"{k_} {v}" for k_, v in sorted(tri.items())) or "–")
            + " |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("run", choices=sorted(RUNS))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--screen", action="store_true")
    a = p.parse_args()
    data, _ = RUNS[a.run]
    if "--labels" not in data:
        raise SystemExit("cross-validation needs a CSV run (its rows are dealt into folds)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = write_folds(data, a.folds, a.seed, out)
    print(f"{a.folds} folds of {sizes} images (data under {DATA.name})", flush=True)
    rows = []
    for f in range(a.folds):
        row = run_fold(a.run, f, a.seed, out, sys.executable, a.screen)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if row.get("rc") or row.get("evaluate_error"):
            raise SystemExit(f"fold {f} failed; see {out}/fold{f}.log")
    res = pooled(out, a.folds)
    (out / "pooled.json").write_text(json.dumps({"rows": rows, "pooled": res}, indent=1))
    text = report(a.run, a.seed, a.folds, res, rows)
    (out / "pooled.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
