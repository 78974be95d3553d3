"""``eyetriage explain`` and ``eyetriage explain-eval``: attribution overlays from the shell."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def add_explain_commands(sub: Any) -> None:
    e = sub.add_parser("explain", help="write attribution overlays (Grad-CAM, IG, occlusion)")
    e.add_argument("images", help="an image file or a folder")
    e.add_argument("--model", required=True)
    e.add_argument("--method", choices=["gradcam", "ig", "occlusion"], default="gradcam")
    e.add_argument("--out", required=True, help="folder for <stem>_<method>.png overlays")
    e.add_argument("--target", help="label to explain (default: the predicted one)")
    e.add_argument(
        "--slice",
        default="key",
        help="for volumes: key (the most suspicious B-scan, default), all, or a 1-based number",
    )
    e.add_argument("--raw", action="store_true", help="also write <stem>_<method>.npy maps")
    e.add_argument("--layer", help="Grad-CAM layer name (default: found automatically)")
    e.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps")
    e.add_argument("--internal-batch-size", type=int, default=16, help="IG batch (memory bound)")
    e.add_argument("--alpha", type=float, default=0.45, help="overlay opacity")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_explain)

    v = sub.add_parser(
        "explain-eval", help="faithfulness of attribution on images with finding masks"
    )
    v.add_argument("model")
    v.add_argument("data", help="synthetic set (class folders + _masks/ + labels.csv)")
    v.add_argument("--method", choices=["gradcam", "ig", "occlusion"], default="gradcam")
    v.add_argument("--limit", type=int, default=200, help="at most this many images")
    v.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps")
    v.add_argument("--json", action="store_true")
    v.add_argument("--device", default="auto")
    v.set_defaults(func=cmd_explain_eval)


def _method_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.method == "ig":
        return {
            "n_steps": args.steps,
            "internal_batch_size": getattr(args, "internal_batch_size", 8),
        }
    if args.method == "gradcam" and getattr(args, "layer", None):
        return {"layer": args.layer}
    return {}


def _chosen_slices(lm, item, choice: str) -> list[int]:  # noqa: ANN001
    """0-based slices of a volume to explain: the key slice, all, or one by number."""
    from .images import ImageError
    from .volumes import most_suspicious_slice

    if choice == "all":
        return list(range(item.n_slices))
    if choice == "key":
        return [most_suspicious_slice(lm, item)]
    try:
        k = int(choice)
    except ValueError:
        raise ImageError(item.path, f"--slice {choice!r} must be key, all or a number") from None
    if not 1 <= k <= item.n_slices:
        raise ImageError(item.path, f"has {item.n_slices} slices; slice {k} does not exist")
    return [k - 1]


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_file, load_display_image, render_explanation
    from .images import ImageError
    from .models import load_model
    from .overlay import save_png
    from .volumes import discover_items

    lm = load_model(args.model, device=args.device)
    src = Path(args.images)
    try:
        items = discover_items(src)
    except FileNotFoundError as e:
        print(f"eyetriage: {e}")
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    done = 0
    t0 = time.monotonic()
    kw = _method_kwargs(args)
    for item in items:
        try:
            if item.error:
                raise ImageError(item.path, item.error)
            if item.is_volume:
                jobs = [
                    (item.slices[k], f"{item.path.stem}_slice{k + 1:03d}", f" slice {k + 1}")
                    for k in _chosen_slices(lm, item, args.slice)
                ]
            else:
                jobs = [(item.path, item.path.stem, "")]
        except ImageError as e:
            print(f"skipped {e}")
            failures += 1
            continue
        for source, stem, where in jobs:
            try:
                exp = explain_file(lm, source, args.method, target=args.target, **kw)
                original = load_display_image(source)
            except ImageError as e:
                print(f"skipped {e}")
                failures += 1
                continue
            save_png(
                render_explanation(original, exp, alpha=args.alpha),
                out / f"{stem}_{args.method}.png",
            )
            if args.raw:
                np.save(out / f"{stem}_{args.method}.npy", exp.map_on_original().astype(np.float32))
            done += 1
            print(
                f"{item.path.name}{where}: {args.method} for '{exp.target_label}' "
                f"(p={exp.probability:.2f})"
            )
    dt = time.monotonic() - t0
    print(
        f"wrote {done} overlays to {out} in {dt:.1f} s ({dt / max(1, done):.2f} s per image); {failures} files skipped"
    )
    return 0


def _mask_in_model_frame(mask_path: Path, box: tuple[float, ...], size: int) -> np.ndarray:
    """The finding mask cut and scaled exactly like the model's input square."""
    from PIL import Image

    with Image.open(mask_path) as m:
        mask = m.convert("L")
        left, top, right, bottom = (round(v) for v in box)
        canvas = Image.new("L", (right - left, bottom - top))
        canvas.paste(mask, (-left, -top))
        return np.asarray(canvas.resize((size, size), Image.NEAREST)) > 127


def cmd_explain_eval(args: argparse.Namespace) -> int:
    import csv

    import torch

    from .explain import explain_file
    from .faithfulness import deletion_auc, mass_in_mask, pointing_game
    from .images import decode_for_model
    from .models import load_model

    lm = load_model(args.model, device=args.device)
    spec = lm.spec
    root = Path(args.data)
    labels_csv = root / "labels.csv"
    if not labels_csv.is_file():
        print(f"eyetriage: {labels_csv}: missing (explain-eval needs a synthetic set with masks)")
        return 1
    with open(labels_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mask") and r["label"] in spec.labels]
    rows = rows[: args.limit]
    if not rows:
        print("eyetriage: no image with a finding mask and a label this model knows")
        return 1
    kw = _method_kwargs(args)
    hits, masses, dels, areas = [], [], [], []
    per_label: dict[str, list[tuple[bool, float, float]]] = {}
    t0 = time.monotonic()
    for r in rows:
        path = root / r["file"]
        target = spec.labels.index(r["label"])
        exp = explain_file(lm, path, args.method, target=target, **kw)
        mask = _mask_in_model_frame(root / r["mask"], exp.crop_box, spec.input_size)
        if not mask.any():
            continue
        dec = decode_for_model(path, spec.input_size, spec.modality, spec.preprocessing)
        x = lm.normalise(torch.from_numpy(np.array(dec.array[None]))).float().contiguous()
        areas.append(float(mask.mean()))
        hits.append(bool(pointing_game(exp.amap, mask)))
        masses.append(float(mass_in_mask(exp.amap, mask)))
        per_label.setdefault(r["label"], []).append((hits[-1], masses[-1], areas[-1]))
        dels.append(
            float(
                deletion_auc(
                    lm.net, x, exp.amap, target, task=spec.task, mean=spec.mean, std=spec.std
                )
            )
        )
    out = {
        "method": args.method,
        "n": len(hits),
        "pointing_game": float(np.mean(hits)) if hits else None,
        "mass_in_mask": float(np.mean(masses)) if masses else None,
        "deletion_auc": float(np.mean(dels)) if dels else None,
        # the share of the image the masks cover: what mass_in_mask would be by chance
        "mean_mask_area": float(np.mean(areas)) if areas else None,
        "per_label": {
            lab: {
                "n": len(v),
                "pointing_game": float(np.mean([h for h, _, _ in v])),
                "mass_in_mask": float(np.mean([m for _, m, _ in v])),
                "mean_mask_area": float(np.mean([a for _, _, a in v])),
            }
            for lab, v in sorted(per_label.items())
        },
        "seconds_per_image": (time.monotonic() - t0) / max(1, len(hits)),
        "model": {"name": spec.name, "arch": spec.arch, "sha256": lm.sha256},
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{args.method}: n={out['n']}  pointing game {out['pointing_game']:.3f}  "
            f"mass in mask {out['mass_in_mask']:.3f}  deletion AUC {out['deletion_auc']:.3f}"
        )
    return 0
