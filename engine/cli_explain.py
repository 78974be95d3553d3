"""``eyetriage explain`` and ``eyetriage explain-eval``: attribution overlays from the shell."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    e.add_argument(
        "--layer", help="Grad-CAM layer(s): a name, 'last', or 'a+b' (default: chosen per model)"
    )
    e.add_argument(
        "--steps", type=int, default=32, help="Integrated Gradients passes (noise-averaged)"
    )
    e.add_argument("--noise-samples", type=int, help="IG noisy copies (0 = plain IG)")
    e.add_argument("--smooth", type=float, help="display smoothing (share of the image side)")
    e.add_argument("--no-mask", action="store_true", help="keep colour outside the retina")
    e.add_argument("--internal-batch-size", type=int, default=16, help="IG batch (memory bound)")
    e.add_argument("--alpha", type=float, default=0.45, help="overlay opacity")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_explain)

    v = sub.add_parser(
        "explain-eval", help="faithfulness of attribution on images with finding masks"
    )
    v.add_argument("model")
    v.add_argument("data", nargs="?", help="synthetic set (class folders + _masks/ + labels.csv)")
    v.add_argument(
        "--marks",
        metavar="WORKSPACE_OR_COCO",
        help="measure against graders' lesion marks (a workspace folder or a COCO file) "
        "instead of a synthetic set's masks",
    )
    v.add_argument("--lesion", help="with --marks: only marks of this lesion type")
    v.add_argument(
        "--target", help="with --marks: label to explain (default: the likeliest finding)"
    )
    v.add_argument(
        "--method",
        choices=["gradcam", "ig", "occlusion"],
        help="default gradcam; with --marks, Grad-CAM and Integrated Gradients both",
    )
    v.add_argument("--limit", type=int, default=200, help="at most this many images")
    v.add_argument("--steps", type=int, default=32, help="Integrated Gradients passes")
    v.add_argument("--noise-samples", type=int, help="IG noisy copies (0 = plain IG)")
    v.add_argument("--layer", help="Grad-CAM layer(s): a name, 'last', or 'a+b' for a blend")
    v.add_argument("--smooth", type=float, help="display smoothing (share of the image side)")
    v.add_argument("--no-mask", action="store_true", help="keep colour outside the retina")
    v.add_argument(
        "--compare",
        action="store_true",
        help="measure the raw method against each display choice (layers, smoothing, mask)",
    )
    v.add_argument(
        "--curve-steps", type=int, default=20, help="points of the deletion/insertion curves"
    )
    v.add_argument("--json", action="store_true")
    v.add_argument("--device", default="auto")
    v.set_defaults(func=cmd_explain_eval)


def _method_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.method == "ig":
        kw: dict[str, Any] = {
            "n_steps": args.steps,
            "internal_batch_size": getattr(args, "internal_batch_size", 16),
        }
        if getattr(args, "noise_samples", None) is not None:
            kw["noise_samples"] = args.noise_samples
        return kw
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


def _display(args: argparse.Namespace) -> Any:
    """The :class:`engine.explain.Display` the options ask for (``None``: the default)."""
    from .explain import DEFAULT_DISPLAY, Display

    if args.smooth is None and not args.no_mask:
        return None
    base = DEFAULT_DISPLAY.get(args.method, Display())
    return Display(
        smooth=base.smooth if args.smooth is None else args.smooth,
        mask=base.mask and not args.no_mask,
    )


def cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from .explain import explain_file, render_explanation
    from .images import ImageError, load_display_image
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
                exp = explain_file(
                    lm, source, args.method, target=args.target, display=_display(args), **kw
                )
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
            note = ", no colour outside the retina" if exp.masked else ""
            print(
                f"{item.path.name}{where}: {args.method} for '{exp.target_label}' "
                f"(p={exp.probability:.2f}{note})"
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
        return _frame_mask(m.convert("L"), box, size)


def _frame_mask(mask: Any, box: tuple[float, ...], size: int) -> np.ndarray:
    """An "L" mask of the original image, cut to the model's crop box and scaled to its
    input square (nearest neighbour): the one rule for synthetic masks and graders' marks."""
    import numpy as np
    from PIL import Image

    left, top, right, bottom = (round(v) for v in box)
    canvas = Image.new("L", (right - left, bottom - top))
    canvas.paste(mask, (-left, -top))
    return np.asarray(canvas.resize((size, size), Image.NEAREST)) > 127


def _marks_in_model_frame(
    marked: Any, original_size: tuple[int, int], box: tuple[float, ...], size: int, lesion: Any
) -> np.ndarray:
    """Graders' marks rasterised at their image's full resolution (:func:`engine.marks.rasterise`),
    brought to the decoded original's size if the two differ, then cut and scaled like the
    model's input (:func:`_frame_mask`)."""
    from PIL import Image

    from .marks import rasterise

    full = rasterise(marked.marks, marked.width, marked.height, lesion=lesion)
    mask = Image.fromarray(full.astype("uint8") * 255, mode="L")
    if mask.size != tuple(original_size):
        mask = mask.resize(tuple(original_size), Image.NEAREST)
    return _frame_mask(mask, box, size)


def _eval_variants(
    args: argparse.Namespace, lm: Any
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, Any]]]:
    """What ``explain-eval`` measures: raw maps to compute (name -> method options) and the
    displayed variants (name, raw map used, :class:`engine.explain.Display`)."""
    from .attribution import default_gradcam_layers, feature_stages
    from .explain import DEFAULT_DISPLAY, RAW, Display

    kw = _method_kwargs(args)
    chosen = DEFAULT_DISPLAY.get(args.method, Display())
    if args.smooth is not None or args.no_mask:
        chosen = Display(
            smooth=chosen.smooth if args.smooth is None else args.smooth,
            mask=chosen.mask and not args.no_mask,
        )
    if not args.compare:
        return {"map": kw}, [("display", "map", chosen)]
    size = (lm.spec.input_size, lm.spec.input_size)
    if args.method == "gradcam":
        stages = [name for name, _ in feature_stages(lm.net, size)]
        computes: dict[str, dict[str, Any]] = {"last": {"layer": "last"}}
        if len(stages) >= 2:
            computes[stages[-2]] = {"layer": stages[-2]}
            computes["blend"] = {"layer": f"{stages[-2]}+{stages[-1]}"}
        default = "+".join(default_gradcam_layers(lm.net, size))
        variants = [(f"raw {name}", name, RAW) for name in computes]
        variants += [(f"masked {name}", name, Display(0.0, True)) for name in computes]
        variants.append(("last, smooth 0.03", "last", Display(0.03, False)))
        variants.append((f"display (default layers {default})", "default", chosen))
        computes["default"] = {"layer": None}
        return computes, variants
    if args.method == "ig":
        steps = args.steps
        computes = {
            f"plain {steps} steps": {"n_steps": steps, "noise_samples": 0},
            f"noise-averaged {steps} passes": {"n_steps": steps, "noise_samples": 4},
        }
        plain, noisy = list(computes)
        variants = [("raw " + name, name, RAW) for name in computes]
        variants.append((f"{plain}, smooth 0.02", plain, Display(0.02, False)))
        for sm in (0.01, 0.02, 0.04):
            variants.append((f"{noisy}, smooth {sm:g}", noisy, Display(sm, False)))
        variants.append((f"{plain}, masked", plain, Display(0.0, True)))
        variants.append((f"display ({plain}, {chosen.key()})", plain, chosen))
        return computes, variants
    return {"map": kw}, [("raw", "map", RAW), ("display", "map", chosen)]


def cmd_explain_eval(args: argparse.Namespace) -> int:
    import csv
    import io

    import numpy as np
    import torch

    from .explain import RAW, display_map, explain_file, retina_mask
    from .faithfulness import faithfulness_scores
    from .images import decode_for_model
    from .models import load_model

    if args.marks:
        if args.compare:
            print("eyetriage: --compare works on a synthetic set, not with --marks")
            return 1
        return _eval_on_marks(args)
    if not args.data:
        print("eyetriage: explain-eval needs a synthetic set (DATA) or --marks")
        return 1
    if args.method is None:
        args.method = "gradcam"
    lm = load_model(args.model, device=args.device)
    spec = lm.spec
    root = Path(args.data)
    labels_csv = root / "labels.csv"
    if not labels_csv.is_file():
        print(f"eyetriage: {labels_csv}: missing (explain-eval needs a synthetic set with masks)")
        return 1
    from .safefiles import read_text

    with io.StringIO(read_text(labels_csv), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("mask") and r["label"] in spec.labels]
    rows = rows[: args.limit]
    if not rows:
        print("eyetriage: no image with a finding mask and a label this model knows")
        return 1
    computes, variants = _eval_variants(args, lm)
    scores: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    labels_of: list[str] = []
    areas: list[float] = []
    seconds: dict[str, float] = dict.fromkeys(computes, 0.0)
    for i, r in enumerate(rows):
        if not args.json or args.compare:
            print(f"  {i + 1}/{len(rows)} {r['file']}", file=sys.stderr, flush=True)
        path = root / r["file"]
        target = spec.labels.index(r["label"])
        dec = decode_for_model(path, spec.input_size, spec.modality, spec.preprocessing)
        raws: dict[str, Any] = {}
        for cname, ckw in computes.items():
            t0 = time.monotonic()
            raws[cname] = explain_file(lm, path, args.method, target=target, display=RAW, **ckw)
            seconds[cname] += time.monotonic() - t0
        box = next(iter(raws.values())).crop_box
        finding = _mask_in_model_frame(root / r["mask"], box, spec.input_size)
        if not finding.any():
            continue
        retina = retina_mask(dec.array, spec.modality)
        x = lm.normalise(torch.from_numpy(np.array(dec.array[None]))).float().contiguous()
        areas.append(float(finding.mean()))
        labels_of.append(r["label"])
        for name, cname, display in variants:
            amap = display_map(raws[cname].amap, display, retina)
            scores[name].append(
                faithfulness_scores(
                    lm.net,
                    x,
                    amap,
                    finding,
                    target,
                    spec.task,
                    spec.mean,
                    spec.std,
                    steps=args.curve_steps,
                )
            )
    n = len(areas)
    keys = ("pointing_game", "mass_in_mask", "deletion_auc", "insertion_auc")

    def summary(items: list[dict[str, float]]) -> dict[str, float | None]:
        return {k: float(np.mean([it[k] for it in items])) if items else None for k in keys}

    main_name = variants[-1][0]
    main = scores[main_name]
    per_label: dict[str, Any] = {}
    for lab in sorted(set(labels_of)):
        idx = [i for i, v in enumerate(labels_of) if v == lab]
        per_label[lab] = {
            "n": len(idx),
            **{k: v for k, v in summary([main[i] for i in idx]).items() if k != "insertion_auc"},
            "mean_mask_area": float(np.mean([areas[i] for i in idx])),
        }
    out: dict[str, Any] = {
        "method": args.method,
        "n": n,
        **summary(main),
        # the share of the image the masks cover: what mass_in_mask would be by chance
        "mean_mask_area": float(np.mean(areas)) if areas else None,
        "per_label": per_label,
        "seconds_per_image": sum(seconds.values()) / max(1, n),
        "model": {"name": spec.name, "arch": spec.arch, "sha256": lm.sha256},
    }
    if args.compare:
        out["compare"] = {name: summary(scores[name]) for name, _, _ in variants}
        out["seconds_per_image_by_map"] = {k: v / max(1, n) for k, v in seconds.items()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if args.compare:
        print(f"{args.method} on {n} images (mean finding area {out['mean_mask_area']:.3f})")
        print(f"  {'variant':<52} {'pointing':>8} {'mass':>6} {'delet.':>6} {'insert.':>7}")
        for name, res in out["compare"].items():
            print(
                f"  {name:<52} {res['pointing_game']:8.3f} {res['mass_in_mask']:6.3f} "
                f"{res['deletion_auc']:6.3f} {res['insertion_auc']:7.3f}"
            )
        return 0
    print(
        f"{args.method}: n={n}  pointing game {out['pointing_game']:.3f}  "
        f"mass in mask {out['mass_in_mask']:.3f}  deletion AUC {out['deletion_auc']:.3f}  "
        f"insertion AUC {out['insertion_auc']:.3f}"
    )
    return 0


def _likeliest_finding(lm: Any, x: Any) -> int:
    """The class to explain on a marked image: the finding the model finds likeliest (its
    predicted class when the model names no finding). Marks show lesions, so the map of
    the lesion's class is the one that should point at them."""
    import torch

    from .findings import finding_labels

    with torch.no_grad():
        logits = lm.net(x).float()[0]
    findings = [lm.spec.labels.index(lab) for lab in finding_labels(lm.spec)]
    pool = findings or list(range(len(lm.spec.labels)))
    return max(pool, key=lambda i: float(logits[i]))


def _interval_of_mean(values: list[float], seed: int = 0, rounds: int = 2000) -> list[float]:
    """A 95 % bootstrap percentile interval of a mean (seeded, so a rerun agrees)."""
    import numpy as np

    if not values:
        return [0.0, 1.0]
    arr = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(rounds, len(arr)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _eval_on_marks(args: argparse.Namespace) -> int:
    """``explain-eval --marks``: pointing game and mass-in-mask of each method against
    graders' marks on the images that have them, with n and 95 % intervals (Wilson for the
    pointing game's hit rate, bootstrap for the mean mass)."""
    import numpy as np
    import torch

    from .coco import CocoError, marked_images
    from .explain import DEFAULT_DISPLAY, RAW, Display, display_map, explain_file, retina_mask
    from .faithfulness import mass_in_mask, pointing_game
    from .images import ImageError, decode_for_model
    from .metrics import proportion_interval
    from .models import load_model
    from .store import StoreError
    from .volumes import slice_source

    try:
        marked, problems = marked_images(args.marks)
    except (CocoError, StoreError) as exc:
        print(f"eyetriage: {exc}")
        return 1
    if args.lesion:
        marked = [m for m in marked if any(x.lesion == args.lesion for x in m.marks)]
    marked = marked[: args.limit]
    for p in problems:
        print(f"skipped {p}", file=sys.stderr)
    if not marked:
        what = f" of lesion type {args.lesion!r}" if args.lesion else ""
        print(f"eyetriage: {args.marks}: no image with a mark{what}")
        return 1
    lm = load_model(args.model, device=args.device)
    spec = lm.spec
    methods = [args.method] if args.method else ["gradcam", "ig"]
    target_given = None
    if args.target is not None:
        if args.target not in spec.labels:
            print(f"eyetriage: --target {args.target!r} is not one of {', '.join(spec.labels)}")
            return 1
        target_given = spec.labels.index(args.target)
    per: dict[str, dict[str, list[float]]] = {m: {"pg": [], "mass": []} for m in methods}
    areas: list[float] = []
    targets: dict[str, int] = {}
    images: list[str] = []
    seconds = dict.fromkeys(methods, 0.0)
    for i, item in enumerate(marked):
        if not args.json:
            print(f"  {i + 1}/{len(marked)} {item.name}", file=sys.stderr, flush=True)
        try:
            source = (
                item.path if item.slice_index is None else slice_source(item.path, item.slice_index)
            )
            dec = decode_for_model(source, spec.input_size, spec.modality, spec.preprocessing)
        except ImageError as exc:
            print(f"skipped {exc}", file=sys.stderr)
            continue
        x = lm.normalise(torch.from_numpy(np.array(dec.array[None]))).float().contiguous()
        target = target_given if target_given is not None else _likeliest_finding(lm, x)
        retina = retina_mask(dec.array, spec.modality)
        finding = None
        for method in methods:
            t0 = time.monotonic()
            kw = _method_kwargs(argparse.Namespace(**{**vars(args), "method": method}))
            raw = explain_file(lm, source, method, target=target, display=RAW, **kw)
            seconds[method] += time.monotonic() - t0
            if finding is None:
                finding = _marks_in_model_frame(
                    item, raw.original_size, raw.crop_box, spec.input_size, args.lesion
                )
                if not finding.any():
                    break  # the marks fall outside the model's crop
            amap = display_map(raw.amap, DEFAULT_DISPLAY.get(method, Display()), retina)
            per[method]["pg"].append(float(pointing_game(amap, finding)))
            per[method]["mass"].append(mass_in_mask(amap, finding))
        if finding is None or not finding.any():
            print(f"skipped {item.name}: its marks lie outside the model's view", file=sys.stderr)
            continue
        areas.append(float(finding.mean()))
        images.append(item.name)
        label = spec.labels[target]
        targets[label] = targets.get(label, 0) + 1
    n = len(areas)
    results: dict[str, Any] = {}
    for method in methods:
        pg, mass = per[method]["pg"], per[method]["mass"]
        hits = int(round(sum(pg)))
        results[method] = {
            "n": len(pg),
            "pointing_game": hits / len(pg) if pg else None,
            "pointing_game_ci95": list(proportion_interval(hits, len(pg))),
            "mass_in_mask": float(np.mean(mass)) if mass else None,
            "mass_in_mask_ci95": _interval_of_mean(mass),
            "seconds_per_image": seconds[method] / max(1, n),
        }
    out: dict[str, Any] = {
        "source": str(args.marks),
        "lesion": args.lesion,
        "n": n,
        "methods": results,
        # the share of the model's view the marks cover: what mass_in_mask is by chance
        "mean_mask_area": float(np.mean(areas)) if areas else None,
        "explained_labels": targets,
        "images": images,
        "model": {"name": spec.name, "arch": spec.arch, "sha256": lm.sha256},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0 if n else 1
    if not n:
        print("eyetriage: no marked image could be measured")
        return 1
    print(
        f"against graders' marks: n={n} images (mean marked area {out['mean_mask_area']:.3f} "
        "of the model's view = mass by chance)"
    )
    for method, r in results.items():
        lo, hi = r["pointing_game_ci95"]
        mlo, mhi = r["mass_in_mask_ci95"]
        print(
            f"  {method:<8} pointing game {r['pointing_game']:.3f} (95% CI {lo:.3f}-{hi:.3f})  "
            f"mass in mask {r['mass_in_mask']:.3f} (95% CI {mlo:.3f}-{mhi:.3f})"
        )
    return 0
