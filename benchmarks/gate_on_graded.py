"""The quality gate on photographs that retina specialists graded, through `eyetriage screen`.

The gate's held-out pass rate on mx-dme fundus photographs (about 80 %, see
``quality_heldout.md``) counts every photograph of the set, and the set holds many that no
one could grade. The set's own labels say which photographs a specialist did grade: those
with a DR grade (``dr`` = 0, NPDR or PDR). A photograph a specialist graded is gradable, so
the share of them the gate passes is the honest "real gradable images pass" figure; the
share it rejects of the rest shows where its rejections fall.

Every mx-dme fundus photograph is screened the way a clinic screens (``eyetriage screen
FOLDER --model M --workspace W``, default options) and the triage read back from the
workspace, split by the calibration / held-out halves of ``calibrate_quality.py`` (the gate
was fitted on the calibration half only).

    python benchmarks/gate_on_graded.py MODEL [--workspace W] [--markdown OUT.md]

Any fundus model will do: an ungradable photograph is ungradable whatever the model.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibrate_quality import DATA, part_of  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--workspace", help="workspace to screen into (default: a new temporary one)")
    p.add_argument("--markdown", help="also write the tables to this file")
    a = p.parse_args()

    from engine.metrics import proportion_interval
    from engine.store import Workspace

    labels = DATA / "mx-dme" / "labels.csv"
    if not labels.is_file():
        print(f"no mx-dme labels at {labels}: nothing to measure", file=sys.stderr)
        return 2
    with labels.open(newline="") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f) if r["modality"] == "fundus"}
    ws = Path(a.workspace or tempfile.mkdtemp(prefix="gate_graded_")) / "ws"
    folder = DATA / "mx-dme" / "fundus"
    cmd = [sys.executable, "-m", "engine", "screen", str(folder), "--model", a.model]
    cmd += ["--workspace", str(ws), "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr.strip()[-800:], file=sys.stderr)
        return 1
    summary = next((x for x in done.stdout.splitlines() if x.startswith("screened")), "")
    counts: Counter[tuple[str, str, bool]] = Counter()
    reasons: Counter[tuple[str, str]] = Counter()
    rejected_graded: list[str] = []
    with Workspace.open(ws, create=False) as store:
        for pred in store.latest_predictions():
            path = Path(pred["path"])
            row = rows.get(path.name)
            if row is None:
                continue
            graded = "graded by a specialist" if row["dr"].strip() else "no DR grade"
            part = part_of("mx-dme", path)
            bad = pred["triage"] == "ungradable"
            counts[(part, graded, bad)] += 1
            if bad:
                for reason in (pred["triage_reason"] or "").split(";"):
                    reasons[(graded, reason.strip())] += 1
                if row["dr"].strip():
                    rejected_graded.append(f"{path.name} ({part}): {pred['triage_reason']}")

    lines = [
        "# Quality gate on the photographs specialists graded (mx-dme fundus)",
        "",
        f"Written by `python benchmarks/gate_on_graded.py MODEL --markdown {a.markdown or 'OUT'}`"
        " (every mx-dme fundus photograph screened with `eyetriage screen` and its default"
        " options). A photograph with a DR grade in `labels.csv` was graded by a retina"
        " specialist, so it is gradable; the rest were not graded (most of them belong to the"
        " DME-positive clinic's set, whose DR grade the data leave unknown).",
        "",
        f"Screening: {summary}",
        "",
        "| part | photographs | passed the gate | share | 95 % interval |",
        "|---|---|---|---|---|",
    ]
    for part in ("held-out", "calibration"):
        for graded in ("graded by a specialist", "no DR grade"):
            ok, bad = counts[(part, graded, False)], counts[(part, graded, True)]
            n = ok + bad
            if not n:
                continue
            lo, hi = proportion_interval(ok, n)
            lines.append(f"| {part}, {graded} | {n} | {ok} | {ok / n:.1%} | {lo:.1%}–{hi:.1%} |")
    lines += ["", "Reasons given for the photographs the gate calls ungradable:", ""]
    lines += ["| photographs | reason | count |", "|---|---|---|"]
    for (graded, reason), k in sorted(reasons.items(), key=lambda t: (t[0][0], -t[1])):
        lines.append(f"| {graded} | {reason} | {k} |")
    lines += ["", "Graded photographs the gate rejects:", ""]
    lines += [f"- {x}" for x in sorted(rejected_graded)] or ["- none"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
