"""Workspace commands of ``eyetriage``: export, visits, review, agreement, models, rollback.

They read and write the store only and never import torch, so they start in a fraction of
a second.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .cli_common import EXIT_OK, CliError, print_json


def add_workspace_commands(sub: Any) -> None:
    x = sub.add_parser("export", help="write a workspace's results and reviews")
    x.add_argument("workspace")
    x.add_argument("--format", choices=["csv", "json"], default="csv")
    x.add_argument("--out", required=True)
    x.add_argument(
        "--deidentify",
        action="store_true",
        help="pseudonymise patients, turn dates into visit numbers, replace paths",
    )
    x.set_defaults(func=cmd_export)

    vi = sub.add_parser("visits", help="one referral decision per patient, eye and visit")
    vi.add_argument("workspace")
    vi.add_argument("--json", action="store_true")
    vi.set_defaults(func=cmd_visits)

    r = sub.add_parser("review", help="record a review (or many, --from-csv)")
    r.add_argument("workspace")
    r.add_argument("image", nargs="?")
    r.add_argument("--label", help="label (several separated by ';' for multi-label)")
    r.add_argument("--reviewer")
    r.add_argument("--action", choices=["confirm", "correct", "ungradable", "skip"])
    r.add_argument("--note")
    r.add_argument("--slice", type=int, help="for an OCT volume: the B-scan read (1-based)")
    r.add_argument("--from-csv", help="CSV with columns path,label,reviewer[,action,note,slice]")
    r.set_defaults(func=cmd_review)

    a = sub.add_parser("agreement", help="Cohen's kappa between reviewers and with the AI")
    a.add_argument("workspace")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_agreement)

    m = sub.add_parser("models", help="list a workspace's model versions")
    m.add_argument("workspace")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    rb = sub.add_parser("rollback", help="make an earlier model version active")
    rb.add_argument("workspace")
    rb.add_argument("hash")
    rb.add_argument("--actor", default=os.environ.get("USER", "cli"))
    rb.set_defaults(func=cmd_rollback)


def cmd_export(args: argparse.Namespace) -> int:
    from .store import Workspace

    with Workspace.open(args.workspace, create=False) as ws:
        n = ws.write_export(args.out, args.format, deidentify=args.deidentify)
    print(f"exported {n} rows to {args.out}" + (" (de-identified)" if args.deidentify else ""))
    return EXIT_OK


def cmd_visits(args: argparse.Namespace) -> int:
    """The roll-up by patient, eye and acquisition date (:func:`engine.visits.visit_rollup`)."""
    from .store import Workspace
    from .visits import visit_rollup

    with Workspace.open(args.workspace, create=False) as ws:
        rows = [{**r, "date": r["acquired"]} for r in ws.export_rows()]
    visits = visit_rollup(rows)
    if args.json:
        keep = ("path", "kind", "n_slices", "key_slice", "label", "confidence", "triage")
        print_json(
            [{**v, "parts": [{k: p.get(k) for k in keep} for p in v["parts"]]} for v in visits]
        )
        return EXIT_OK
    if not visits:
        print("no screened items with a patient")
    for v in visits:
        print(
            f"patient {v['patient']}  {v['eye']} eye  {v['date'] or 'date unknown'}: "
            f"{v['decision']} ({v['triage'] or 'not screened'})"
        )
        for p in v["parts"]:
            what = f"volume, {p['n_slices']} B-scans" if p.get("kind") == "volume" else "image"
            key = f", key slice {p['key_slice']}" if p.get("key_slice") else ""
            print(f"    {Path(p['path']).name} ({what}{key}): {p.get('triage') or 'not screened'}")
    return EXIT_OK


def cmd_review(args: argparse.Namespace) -> int:
    from .store import Workspace
    from .store.common import normalise_path

    with Workspace.open(args.workspace, create=False) as ws:
        if args.from_csv:
            report: dict = {}
            n = ws.import_reviews_csv(args.from_csv, default_reviewer=args.reviewer, report=report)
            repeated = report.get("duplicates") or 0
            rows = (
                "1 row already recorded was"
                if repeated == 1
                else f"{repeated} rows already recorded were"
            )
            print(
                f"recorded {n} review{'' if n == 1 else 's'} from {args.from_csv}"
                + (f"; {rows} not added again" if repeated else "")
            )
            return EXIT_OK
        if not args.image or not args.reviewer:
            raise CliError("give IMAGE_PATH, --label and --reviewer (or --from-csv FILE)")
        if args.action != "ungradable" and not args.label and args.action != "skip":
            raise CliError("--label is required unless --action is ungradable or skip")
        labels = [x for x in (args.label or "").split(";") if x]
        action = args.action or "correct"
        rid = ws.add_review(
            normalise_path(args.image),
            args.reviewer,
            labels,
            action=action,
            note=args.note,
            slice=args.slice,
        )
        print(
            f"review {rid} recorded: {args.image} -> {', '.join(labels) or action} by {args.reviewer}"
        )
    return EXIT_OK


def cmd_agreement(args: argparse.Namespace) -> int:
    from .store import Workspace

    with Workspace.open(args.workspace, create=False) as ws:
        out = ws.agreement()
    if args.json:
        print_json(out)
        return EXIT_OK
    if not out.get("pairs") and not out.get("with_ai"):
        print("no image has been reviewed by two readers (or by a reader and the AI) yet")
    for p in out.get("pairs", []):
        k = "n/a" if p["kappa"] is None else f"{p['kappa']:.3f}"
        print(f"{p['a']} vs {p['b']}: Cohen's kappa {k} on {p['n']} images")
    for p in out.get("with_ai", []):
        k = "n/a" if p["kappa"] is None else f"{p['kappa']:.3f}"
        print(f"{p['reviewer']} vs AI: Cohen's kappa {k} on {p['n']} images")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from .store import Workspace

    with Workspace.open(args.workspace, create=False) as ws:
        rows = ws.models()
    rows = [
        {
            "hash": r["hash"],
            "name": r.get("name"),
            "path": r.get("path"),
            "parent": r.get("parent"),
            "active": bool(r.get("active")),
            "created_at": r.get("created_at"),
            "metrics": r.get("metrics"),
        }
        for r in rows
    ]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            mark = "*" if r["active"] else " "
            print(
                f"{mark} {r['hash'][:12]}  {r['created_at'] or '':<25} {r['name']}  (parent {str(r['parent'])[:12]})"
            )
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from .improve import ImproveError, rollback

    try:
        row = rollback(args.workspace, args.hash, args.actor)
    except ImproveError as e:
        raise CliError(str(e)) from None
    print(f"active model is now {row['hash'][:12]} ({row.get('name')})")
    return EXIT_OK
