"""Grading commands of ``eyetriage``: scheme, grade and marks.

They read and write the store only (and PIL for mask PNGs), never torch, so they start
fast. The rules they apply live in :mod:`engine.schemes`, :mod:`engine.marks` and
:mod:`engine.coco`, which the desktop calls too.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .cli_common import EXIT_OK, CliError, print_json


def add_grading_commands(sub: Any) -> None:
    from .schemes import PRESETS

    s = sub.add_parser("scheme", help="show or set a workspace's grading scheme")
    s.add_argument("workspace")
    how = s.add_mutually_exclusive_group()
    how.add_argument("--preset", choices=list(PRESETS), help="a built-in scheme")
    how.add_argument("--file", help="a scheme JSON file (as --show --json prints one)")
    s.add_argument("--show", action="store_true", help="print the scheme (the default)")
    s.add_argument("--json", action="store_true", help="print the scheme as JSON")
    s.add_argument("--actor", default=os.environ.get("USER", "cli"), help="who changes it")
    s.set_defaults(func=cmd_scheme)

    g = sub.add_parser("grade", help="record a grader's answer to a scheme question")
    g.add_argument("workspace")
    g.add_argument("image", help="the image's path (or its workspace id)")
    g.add_argument("--question", required=True)
    g.add_argument(
        "--answer", action="append", default=[], help="an option value (repeat for multi-choice)"
    )
    g.add_argument("--clear", action="store_true", help="clear the answer instead")
    g.add_argument("--reviewer", required=True)
    g.add_argument("--slice", type=int, help="for an OCT volume: the B-scan graded (1-based)")
    g.set_defaults(func=cmd_grade)

    m = sub.add_parser("marks", help="list, export or import lesion marks")
    m.add_argument("workspace")
    what = m.add_mutually_exclusive_group(required=True)
    what.add_argument("--export-coco", metavar="OUT.json", help="write the marks as COCO JSON")
    what.add_argument("--export-masks", metavar="DIR", help="write mask PNGs per image")
    what.add_argument("--import-coco", metavar="IN.json", help="add the marks of a COCO file")
    what.add_argument("--list", action="store_true", help="print every live mark")
    m.add_argument("--reviewer", help="who imports (needed with --import-coco)")
    m.add_argument("--json", action="store_true", help="with --list: JSON")
    m.set_defaults(func=cmd_marks)


def _active_spec(ws: Any) -> Any:
    """The active model's description as a ModelSpec (``None`` when there is none)."""
    import json

    from .modelfile import ModelFileError, ModelSpec

    model = ws.active_model()
    if not model or not model.get("description"):
        return None
    try:
        return ModelSpec.from_json(json.dumps(model["description"]))
    except ModelFileError:
        return None


def cmd_scheme(args: argparse.Namespace) -> int:
    from .safefiles import UnreadableFile, read_text
    from .schemes import Scheme, SchemeError, preset
    from .store import Workspace

    with Workspace.open(args.workspace, create=False) as ws:
        if args.preset or args.file:
            if args.preset:
                scheme = preset(args.preset, spec=_active_spec(ws))
            else:
                path = Path(args.file).expanduser()
                try:
                    scheme = Scheme.from_json(read_text(path))
                    scheme.validate()
                except (UnreadableFile, OSError) as exc:
                    raise CliError(f"cannot read {path}: {exc}") from None
                except SchemeError as exc:
                    raise CliError(f"{path.name}: {exc}") from None
            scheme_id = ws.set_scheme(scheme, args.actor)
            print(f"scheme {scheme.name!r} is now the workspace's scheme (row {scheme_id})")
        scheme = ws.scheme()
    if args.json:
        print_json(scheme.to_dict())
        return EXIT_OK
    if args.preset or args.file:
        if not args.show:
            return EXIT_OK
    for line in describe_scheme(scheme):
        print(line)
    return EXIT_OK


def describe_scheme(scheme: Any) -> list[str]:
    """The scheme as lines for a terminal: questions with options, keys and AI mapping,
    then lesion types."""
    lines = [f"scheme {scheme.name} (version {scheme.version})"]
    if not scheme.questions:
        lines.append("  no questions (no active model; choose a preset or a file)")
    for q in scheme.questions:
        lines.append(f"  {q.key}: {q.title} [{q.kind} choice]")
        for o in q.options:
            key = f"[{o.hotkey}]" if o.hotkey else "   "
            mapped = sorted(lab for lab, v in q.model_map.items() if v == o.value)
            ai = f"  <- model: {', '.join(mapped)}" if mapped else ""
            flag = "  (disease)" if o.disease else ""
            lines.append(f"    {key:<9} {o.value:<14} {o.label}{flag}{ai}")
    lines.append("  lesion types:")
    for t in scheme.lesion_types:
        key = f"[{t.hotkey}]" if t.hotkey else "   "
        lines.append(f"    {key:<9} {t.key:<20} {t.label} ({t.modality}, {t.colour})")
    return lines


def _image_id(ws: Any, image: str) -> int:
    found = ws.image_id(image)
    if found is not None:
        return found
    if image.isdigit() and ws.image(int(image)) is not None:
        return int(image)
    raise CliError(f"unknown image {image!r} (not in this workspace)")


def cmd_grade(args: argparse.Namespace) -> int:
    from .store import Workspace

    if not args.answer and not args.clear:
        raise CliError("give --answer (repeat it for a multi-choice question) or --clear")
    if args.answer and args.clear:
        raise CliError("--answer and --clear exclude each other")
    with Workspace.open(args.workspace, create=False) as ws:
        image_id = _image_id(ws, args.image)
        slice_index = None if args.slice is None else args.slice - 1
        if slice_index is not None and slice_index < 0:
            raise CliError(f"--slice counts from 1, got {args.slice}")
        ws.record_grade(image_id, args.question, args.answer, args.reviewer, slice_index)
        answers = ws.grades(image_id, slice_index)
    where = "" if args.slice is None else f" slice {args.slice}"
    now = ", ".join(f"{q}={'+'.join(v)}" for q, v in answers.items()) or "no answers"
    print(f"recorded {args.question} for {args.image}{where}; now: {now}")
    return EXIT_OK


def cmd_marks(args: argparse.Namespace) -> int:
    from .coco import export_coco, export_masks, import_coco
    from .store import Workspace

    if args.import_coco and not args.reviewer:
        raise CliError("--import-coco needs --reviewer (who brings the marks in)")
    with Workspace.open(args.workspace, create=False) as ws:
        if args.export_coco:
            counts = export_coco(ws, args.export_coco)
            print(
                f"wrote {counts['annotations']} marks on {counts['images']} images "
                f"({counts['categories']} lesion types) to {args.export_coco}"
            )
        elif args.export_masks:
            n = export_masks(ws, args.export_masks)
            print(f"wrote {n} mask PNGs to {args.export_masks}")
        elif args.import_coco:
            report = import_coco(ws, args.import_coco, args.reviewer)
            for line in report.lines():
                print(line)
        else:
            marks = ws.all_marks()
            paths = {im["id"]: im["path"] for im in ws.images()}
            if args.json:
                print_json(
                    [
                        {
                            "path": paths.get(m.image_id),
                            "slice": None if m.slice_index is None else m.slice_index + 1,
                            "lesion": m.lesion,
                            "kind": m.kind,
                            "points": m.points,
                            "reviewer": m.reviewer,
                            "created_at": m.created_at,
                            "uid": m.uid,
                        }
                        for m in marks
                    ]
                )
            else:
                for m in marks:
                    where = "" if m.slice_index is None else f" slice {m.slice_index + 1}"
                    pts = " ".join(f"({x:g},{y:g})" for x, y in m.points)
                    print(
                        f"{Path(paths.get(m.image_id, '?')).name}{where}: {m.lesion} {m.kind} "
                        f"{pts} by {m.reviewer} {m.created_at[:16]}"
                    )
                print(f"{len(marks)} marks")
    return EXIT_OK
