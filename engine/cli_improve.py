"""``eyetriage improve`` and friends: learn from the reviews, compare, accept, roll back."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from .cli_common import EXIT_INTERRUPTED, CliError, print_json


def add_improve_commands(sub: Any) -> None:
    p = sub.add_parser(
        "improve",
        help="fine-tune the active model on the reviews and offer the result as a new version",
    )
    p.add_argument("workspace")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--strategy", choices=["full", "head", "lora"], default="head")
    p.add_argument(
        "--accept-if-better",
        action="store_true",
        help="make the new version active only if the comparison recommends it (a real rise "
        "in audit balanced accuracy, enough audit images, no more missed disease)",
    )
    p.add_argument(
        "--self-learning",
        action="store_true",
        help="also learn from unreviewed images the model is very sure about (lower weight)",
    )
    p.add_argument("--min-new-reviews", type=int, default=20)
    p.add_argument("--audit-fraction", type=float, default=0.25)
    p.add_argument("--corrected-weight", type=float, default=2.0)
    p.add_argument("--training-data", help="the original training data (folder of class folders)")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--select-by",
        choices=["score", "loss"],
        default="score",
        help="which epoch is kept: the best task score on the validation reviews (default) or "
        "the lowest validation loss",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--actor", default=os.environ.get("USER", "cli"))
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_improve)

    h = sub.add_parser("history", help="model versions with audit-set metrics and status")
    h.add_argument("workspace")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_history)

    for name, helptext in (
        ("accept-model", "make an offered model version active"),
        ("reject-model", "reject an offered model version (it is never offered again)"),
    ):
        d = sub.add_parser(name, help=helptext)
        d.add_argument("workspace")
        d.add_argument("hash", help="the version's hash (a unique prefix is enough)")
        d.add_argument("--actor", default=os.environ.get("USER", "cli"))
        d.set_defaults(func=cmd_decide, decision=name.split("-")[0])


def _num(v: Any) -> float | None:
    return v if isinstance(v, int | float) and not math.isnan(v) else None


def _fmt(v: Any) -> str:
    v = _num(v)
    return "n/a" if v is None else f"{v:.3f}"


def _printer(quiet: bool):  # noqa: ANN202
    def on_event(e: dict) -> None:
        if quiet:
            return
        kind = e.get("event")
        if kind == "log":
            print(e.get("message", ""), file=sys.stderr, flush=True)
        elif kind == "progress" and e.get("epoch") is not None:
            print(
                f"[{e.get('done')}/{e.get('total')}] {e.get('message', '')}",
                file=sys.stderr,
                flush=True,
            )

    return on_event


def decide_acceptance(result: dict) -> tuple[bool, str]:
    """Accept only when the engine's comparison recommends the new version (one rule)."""
    from .improve import judge

    verdict = judge(result)
    word = "accepted" if verdict.recommend else "not accepted"
    return verdict.recommend, f"{word}: {verdict.text()}"


def cmd_improve(args: argparse.Namespace) -> int:
    from .improve import ImproveError

    try:
        return _run_improve(args)
    except ImproveError as e:  # one line on the terminal
        raise CliError(" ".join(str(e).split())) from None


def _run_improve(args: argparse.Namespace) -> int:
    from .improve import ImproveCancelled, ImproveConfig, ImproveProcess, accept, review_status

    cfg = ImproveConfig(
        epochs=args.epochs,
        strategy=args.strategy,
        self_learning=args.self_learning,
        min_new_reviews=args.min_new_reviews,
        audit_fraction=args.audit_fraction,
        corrected_weight=args.corrected_weight,
        include_training_data=bool(args.training_data),
        training_data=args.training_data,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        selection=args.select_by,
    )
    status = review_status(args.workspace, cfg.min_new_reviews, cfg.audit_fraction)
    if status["active_model"] is None:
        raise CliError("the workspace has no active model; screen with a model first")
    if not status["enough"]:
        raise CliError(
            f"only {status['new_reviews']} new reviews since the active model was made; "
            f"{cfg.min_new_reviews} are needed (--min-new-reviews)"
        )
    if not args.quiet:
        print(
            f"improving with {status['new_reviews']} new reviews "
            f"({status['train_n']} for training, {status['audit_n']} in the audit set)",
            file=sys.stderr,
        )
    proc = ImproveProcess(args.workspace, cfg, on_event=_printer(args.quiet))
    proc.start()
    try:
        result = proc.wait()
    except (KeyboardInterrupt, ImproveCancelled):
        proc.cancel()
        proc.join(30)
        print("eyetriage: cancelled; nothing was changed", file=sys.stderr)
        return EXIT_INTERRUPTED
    accepted, reason = False, "not accepted: run with --accept-if-better, or use accept-model"
    if args.accept_if_better:
        accepted, reason = decide_acceptance(result)
        if accepted:
            accept(args.workspace, result["model"], args.actor)
    out = {**result, "accepted": accepted, "reason": reason}
    if args.json:
        print_json(out)
    else:
        _print_result(result, reason)
    return 0


def _print_result(result: dict, reason: str) -> None:
    """The comparison in the order a clinician reads it: missed disease first."""
    from .improve import judge

    verdict = judge(result)
    ev = verdict.evidence
    b, a = result["before"], result["after"]
    print(f"new version {result['model'][:12]} ({result['strategy']}, {result['seconds']:.0f} s)")
    print(f"audit set: {result['n_audit']} images")
    if ev.get("missed_before") is not None:
        print(
            f"  missed disease     {ev['missed_before']} -> {ev['missed_after']} of "
            f"{ev['findings']} images with a finding (called '{ev['negative_label']}')"
        )
    for key in ("balanced_accuracy", "accuracy", "sensitivity", "specificity", "review_workload"):
        if b.get(key) is not None or a.get(key) is not None:
            print(f"  {key:<18} {_fmt(b.get(key))} -> {_fmt(a.get(key))}")
    print(f"  {len(result['changed'])} audit images changed their answer")
    if verdict.workload:
        print(verdict.workload)
    print(reason)


def cmd_history(args: argparse.Namespace) -> int:
    from .improve import model_history

    rows = model_history(args.workspace)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        m = r.get("metrics") or {}
        print(
            f"{'*' if r['active'] else ' '} {r['hash'][:12]}  {r['status']:<9} "
            f"{(r.get('strategy') or '-'):<5} bal.acc {_fmt(m.get('balanced_accuracy'))}  "
            f"parent {str(r.get('parent'))[:12]}  {r.get('name')}"
        )
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    from .improve import ImproveError, accept, reject

    try:
        (accept if args.decision == "accept" else reject)(args.workspace, args.hash, args.actor)
    except ImproveError as e:
        raise CliError(str(e)) from None
    print(json.dumps({"hash": args.hash, "decision": args.decision + "ed"}))
    return 0
