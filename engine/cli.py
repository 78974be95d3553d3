"""The ``eyetriage`` command line: everything the desktop does, headless.

Heavy libraries (torch, timm) are imported inside the commands that need them, so the
store-only commands (review, export, agreement, models, rollback) start in a fraction of a
second.

Why one module of about 710 lines: it is the parser (every command's options in one
place, as ``eyetriage --help`` lists them) and the thin commands that call the engine;
workspace, grading, improve, explain and cluster commands already live in ``cli_*`` modules.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli_common import (
    EXIT_COLLAPSED,
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Progress,
    err,
    known_error,
    print_json,
)
from .cli_explain import add_explain_commands
from .cli_grading import add_grading_commands
from .cli_improve import add_improve_commands
from .cli_workspace import add_workspace_commands
from .safefiles import path_text
from .triage import DEFAULT_THRESHOLD


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("labelled data (a folder of class folders, or a CSV)")
    g.add_argument("--labels", help="CSV with one row per image (paths relative to DATA)")
    g.add_argument("--image-col", default="file", help="CSV column with the image path")
    g.add_argument("--label-col", action="append", help="label column (repeat for multi-label)")
    g.add_argument("--filter", action="append", default=[], help="keep rows where col=value")
    g.add_argument("--group-col", help="keep each value's images in one split (e.g. patient)")
    g.add_argument("--task", choices=["multiclass", "binary", "multilabel", "ordinal"])
    g.add_argument(
        "--label-order", help="comma-separated label order (ordinal grades: low to high)"
    )
    g.add_argument(
        "--slice-col",
        default="slice",
        help="CSV column with a volume's 1-based B-scan number (rows without one label the volume)",
    )
    g.add_argument(
        "--volume-labels",
        choices=["slice", "volume"],
        default="slice",
        help="slice (default): volumes need slice labels; volume: every B-scan takes its "
        "volume's label (evaluate then scores volumes)",
    )
    g.add_argument(
        "--allow-outside-data",
        action="store_true",
        help="let --labels name images outside DATA (refused by default)",
    )


def _load_data(args: argparse.Namespace, label_order: list[str] | None = None):  # noqa: ANN202
    from .data import load_csv_dataset, load_folder_dataset

    order = label_order or (args.label_order.split(",") if args.label_order else None)
    if args.labels:
        return load_csv_dataset(
            args.data,
            args.labels,
            image_col=args.image_col,
            label_cols=args.label_col or ["label"],
            filters=args.filter,
            group_col=args.group_col,
            label_order=order,
            task=args.task,
            slice_col=args.slice_col,
            volume_labels=args.volume_labels,
            allow_outside=args.allow_outside_data,
        )
    return load_folder_dataset(
        args.data, label_order=order, task=args.task, volume_labels=args.volume_labels
    )


def _load_models(paths: Sequence[str], device: str):  # noqa: ANN202
    from .models import load_model

    return [load_model(p, device=device) for p in paths]


# --------------------------------------------------------------------------- commands


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import synthesize

    classes = args.classes.split(",") if args.classes else None
    t0 = time.monotonic()
    items = synthesize(
        args.out,
        args.modality,
        args.n,
        args.seed,
        args.size,
        classes=classes,
        difficulty=args.difficulty,
    )
    dt = time.monotonic() - t0
    counts: dict[str, int] = {}
    for it in items:
        counts[it.label] = counts.get(it.label, 0) + 1
    print(
        f"wrote {len(items)} synthetic {args.modality} images to {args.out} in {dt:.1f} s "
        f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); masks in _masks/, labels.csv"
    )
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .modality import resolve_modality
    from .recipe import CollapsedModelError
    from .tasks import TaskState
    from .train import DEFAULT_ARCH, DEFAULT_INIT, TrainConfig, train_model

    ds = _load_data(args)
    if ds.skipped_empty:
        print(f"left out {ds.skipped_empty} rows with an empty label")
    if ds.missing:
        print(f"left out {len(ds.missing)} rows whose image file is missing (e.g. {ds.missing[0]})")
    for name in ds.empty_classes:
        print(f"left out the class folder {name!r}: it holds no images (not made a label)")
    for name, n in ds.small_classes().items():
        print(
            f"warning: class {name!r} has only {n} image{'s' * (n != 1)}: too few to learn it "
            "or to measure how well it is recognised"
        )
    modality_warnings: list[str] = []
    modality, how = resolve_modality(args.modality, ds, modality_warnings)
    print(f"modality: {modality} (from {how})")
    for w in modality_warnings:
        print(f"WARNING: {w}")
    init = args.init
    if init is None:  # no architecture named: the measured default, a pretrained start
        use_default = not args.arch and not args.init_weights and not args.pretrained
        init = DEFAULT_INIT if use_default else "none"
    defaults = TrainConfig()
    cfg = TrainConfig(
        arch=args.arch or DEFAULT_ARCH,
        img_size=args.img_size,
        epochs=args.epochs if args.epochs is not None else defaults.epochs,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else defaults.lr,
        seed=args.seed,
        patience=args.patience,
        device=args.device,
        pretrained=args.pretrained,
        init=init,
        init_weights=args.init_weights,
        ema=not args.no_ema,
        balance=args.balance,
        allow_collapsed=args.allow_collapsed,
        modality=modality,
        ben_graham=args.ben_graham,
        green=args.green,
        fov_crop=not args.no_fov_crop,
        workers=args.workers,
        name=args.name or "",
        strategy=args.strategy,
        negative_labels=list(args.negative_label or []),
        display_names=_display_names(args.display_name),
        demo=args.demo,
        max_steps_per_epoch=args.max_steps_per_epoch,
        half=args.half,
    )
    if args.split:
        parts = [float(x) for x in args.split.split(",")]
        if len(parts) != 3:
            raise CliError("--split takes three fractions, e.g. 0.7,0.15,0.15")
        cfg.fractions = (parts[0], parts[1], parts[2])
    counts = ", ".join(f"{k} {v}" for k, v in ds.class_counts().items())
    print(f"training {cfg.arch} ({ds.task}) on {len(ds)} images: {counts}")
    state = TaskState(Progress("training", quiet=args.quiet), min_interval=0.5)
    try:
        res = train_model(ds, cfg, args.out, state=state, log=print)
    except CollapsedModelError as e:
        err(str(e))
        return EXIT_COLLAPSED
    summary = {
        "model": str(res.path),
        "sha256": res.sha256,
        "seconds": round(res.seconds, 1),
        "epochs_run": len(res.history),
        "best_epoch": res.spec.provenance.get("best_epoch"),
        "kept_weights": res.spec.provenance.get("kept_weights"),
        "arch": res.spec.arch,
        "start": (res.spec.provenance.get("start") or {}).get("kind"),
        "modality": res.spec.modality,
        "temperature": res.spec.temperature,
        "test": res.test_metrics,
        "warnings": res.warnings,
        "skipped_unlabelled": ds.skipped_empty,
    }
    if args.json:
        print_json(summary)
    return EXIT_OK


def cmd_import_weights(args: argparse.Namespace) -> int:
    from .weights_import import import_weights

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CliError(f"{out.name}: the output must be a .safetensors file")
    _, report = import_weights(args.src, args.arch, out)
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.summary())
        print(f"wrote {out}; start training from it with --arch {args.arch} --init-weights {out}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .modelfile import read_spec

    spec = read_spec(args.model)
    ds = _load_data(args, label_order=None if spec.task == "multilabel" else list(spec.labels))
    if spec.task != "multilabel" and ds.labels != spec.labels:
        raise CliError(f"the data's labels {ds.labels} do not match the model's {spec.labels}")
    if args.part:
        ds = _split_part(ds, spec, args.part)
    from .evaluate import evaluate_model_on
    from .tasks import TaskState

    (lm,) = _load_models([args.model], args.device)
    seen = _modality_warning(spec.modality, [s.path for s in ds.samples])
    state = TaskState(Progress("evaluating", quiet=args.quiet or args.json))
    out = evaluate_model_on(
        lm, ds, args.batch_size, args.workers, state, args.plot, args.predictions
    )
    if seen:
        out["warnings"] = [seen]
    if args.part:
        out["part"] = args.part
    if args.json:
        print_json(out)
    else:
        _print_evaluation(out, spec)
    return EXIT_OK


def _modality_warning(model_modality: str, paths: Sequence[Path]) -> str | None:
    """Say so (on stderr) when the images are clearly of the other kind than the model's."""
    from .modality import mismatch_warning

    text = mismatch_warning(model_modality, paths)
    if text:
        err(f"WARNING: {text}")
    return text


def _display_names(items: list[str] | None) -> dict[str, str]:
    """``LABEL=WORDS`` pairs from ``--display-name``."""
    names: dict[str, str] = {}
    for item in items or []:
        label, sep, words = item.partition("=")
        if not sep or not label.strip() or not words.strip():
            raise CliError(
                f"--display-name {item!r}: write it as LABEL=WORDS, e.g. 1='DME present'"
            )
        names[label.strip()] = words.strip()
    return names


def _split_part(ds, spec, part: str):  # noqa: ANN001, ANN202
    """The model's own train/validation/test split of ``ds``, recomputed from its provenance."""
    from .data import split_indices

    split = (spec.provenance or {}).get("split") or {}
    if "seed" not in split:
        raise CliError(
            "the model file does not record its split; evaluate on a separate folder instead"
        )
    parts = split_indices(ds, tuple(split["fractions"]), int(split["seed"]))
    idx = parts[("train", "validation", "test").index(part)]
    return ds.subset(idx)


def _print_evaluation(out: dict, spec) -> None:  # noqa: ANN001
    what = (
        "items (volumes scored by their most suspicious B-scan)"
        if out.get("n_volumes")
        else "images"
    )
    print(
        f"model {spec.name} ({spec.arch}, {spec.task}); {out['n']} {what}, {out['n_errors']} unusable"
    )
    ci = (out.get("intervals") or {}).get("metrics") or {}
    for k in ("accuracy", "balanced_accuracy", "auc", "f1_macro", "qwk", "ece", "ece_uncalibrated"):
        if out.get(k) is not None:
            band = f"   95% CI {ci[k][0]:.3f}-{ci[k][1]:.3f}" if k in ci else ""
            print(f"  {k:<18} {out[k]:.4f}{band}")
    if ci:
        by = (out.get("intervals") or {}).get("resampled", "images")
        print(f"  (95% intervals: bootstrap over the {by}, {out['intervals']['n_boot']} resamples)")
    floor = out.get("ece_if_calibrated")
    if floor and floor.get("n"):
        print(
            f"  a perfectly calibrated model would show an ECE of {floor['mean']:.3f} "
            f"(95% range {floor['low']:.3f}-{floor['high']:.3f}) on {floor['n']} items: "
            + (
                "the measured ECE is within it, no evidence of miscalibration at this size"
                if out["ece"] <= floor["high"]
                else "the measured ECE is above it"
            )
        )
    if out.get("per_class"):
        print("  per class: sensitivity / specificity / support")
        for lab, m in out["per_class"].items():
            sens, spec_ = m.get("sensitivity"), m.get("specificity")
            fmt = lambda v: "  n/a " if v is None else f"{v:.3f}"  # noqa: E731
            print(f"    {lab:<22} {fmt(sens)} / {fmt(spec_)} / {m.get('support')}")
    if out.get("confusion_matrix") and spec.task != "multilabel":
        print("  confusion matrix (rows = true, columns = predicted):")
        for lab, row in zip(spec.labels, out["confusion_matrix"], strict=False):
            print(f"    {lab:<22} " + " ".join(f"{v:5d}" for v in row))
    if out.get("referral_curve"):
        print("  referral curve (most uncertain referred first; metrics of the kept images):")
        if out.get("disease_classes") is not None:
            print(
                "    disease found = images with a finding that reach a person (uncertain, or a"
                " confident finding); findings: "
                + (", ".join(spec.display(x) for x in out["disease_classes"]) or "none")
            )
        print("    referred  kept   accuracy  bal.acc  sensitivity  specificity  disease found")
        for pt in out["referral_curve"]:
            f = lambda v: "   n/a" if v is None else f"{v:6.3f}"  # noqa: E731
            print(
                f"    {pt['referred']:7.0%}  {pt['n_kept']:5d}  {f(pt['accuracy'])}    {f(pt['balanced_accuracy'])}"
                f"   {f(pt.get('sensitivity'))}       {f(pt.get('specificity'))}"
                f"       {f(pt.get('disease_found'))}"
            )
        gain = out.get("referral_gain")
        if gain:
            from .intervals import referral_gain_words

            print("  " + referral_gain_words(gain))


def cmd_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from .calibration import fit_temperature, softmax
    from .inference import predict_logits
    from .metrics import expected_calibration_error
    from .modelfile import file_sha256, load_model_file, save_model_file
    from .tasks import TaskState
    from .train import calibrate_spec_on

    (lm,) = _load_models([args.model], args.device)
    spec = lm.spec
    ds = _load_data(args, label_order=None if spec.task == "multilabel" else list(spec.labels))
    if args.part:
        ds = _split_part(ds, spec, args.part)
    paths = [s.path for s in ds.samples]
    logits, errors, _ = predict_logits(
        lm, paths, args.batch_size, args.workers, TaskState(Progress("calibrating"))
    )
    ok = ~np.isnan(logits).any(1)
    y, z = ds.targets()[ok], logits[ok]
    before = spec.temperature
    spec.temperature = float(fit_temperature(z, y, spec.task))
    warnings: list[str] = []
    source = f"{args.part} images" if args.part else "calibration images"
    calibrate_spec_on(spec, z, y, args.alpha, print, warnings, source=source)
    if spec.task != "multilabel":
        for name, t in (("before", before), ("after", spec.temperature)):
            p = softmax(z, t)
            ece = expected_calibration_error(p.max(1), p.argmax(1) == y)
            print(f"ECE {name}: {ece:.4f} (temperature {t:.3f})")
    _, weights, extra = load_model_file(args.model)
    spec.provenance = dict(spec.provenance)
    spec.provenance["calibrated"] = {
        "data": ds.summary(),
        "n_used": int(ok.sum()),
        "parent": file_sha256(args.model),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    spec.provenance["parent"] = file_sha256(args.model)
    for w in warnings:
        print(f"WARNING: {w}")
    sha = save_model_file(args.out, spec, weights, extra=extra)
    print(f"wrote {args.out} (sha256 {sha[:12]}); {len(errors)} unusable images skipped")
    return EXIT_OK


SCREEN_FIXED_COLUMNS = [
    "path",
    "label",
    "confidence",
    "error",
    "entropy",
    "mutual_info",
    "top_std",
    "conformal_set",
    "ood_score",
    "quality_ok",
    "quality",
    "triage",
    "triage_reason",
    # items: an image, a volume (its B-scan count and most suspicious slice) or a slice
    "kind",
    "slice",
    "slices",
    "key_slice",
    "patient",
    "eye",
    "date",
]
N_LEADING = 4  # columns before the per-label probabilities


def cmd_screen(args: argparse.Namespace) -> int:
    from .clearing import clearing_block
    from .cli_cluster import make_backend, start_backend
    from .engines import engine_cache_dir
    from .findings import finding_labels, negative_labels
    from .manifest import is_manifest, load_source
    from .screen import ScreenSettings, attach_engine
    from .triage import TriagePolicy
    from .volumes import discover_items, item_for_path

    if not args.out and not args.workspace:
        raise CliError("say where results go: --out results.csv|.parquet and/or --workspace W")
    if args.workspace and args.out and Path(args.out).suffix.lower() == ".parquet":
        raise CliError("with --workspace, --out exports the workspace as CSV; give a .csv name")
    backend = make_backend(args)
    try:
        source = load_source(args.folder) if is_manifest(args.folder) else None
        if source is None:
            items = discover_items(args.folder)
        else:  # a manifest: each listed file is an item (a multi-frame file is a volume)
            items = [it for p in source.paths if (it := item_for_path(p)) is not None]
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    if not items:
        raise CliError(f"{args.folder}: no images found (jpg, jpeg, png, tif, tiff, bmp, DICOM)")
    if source is not None and source.duplicates and not args.quiet:
        print(f"{source.duplicates} manifest rows name a file listed before: screened once")
    volumes = [it for it in items if it.is_volume]
    if backend is not None and volumes:
        raise CliError(
            f"{len(volumes)} OCT volume(s) (e.g. {volumes[0].path}) are screened on this "
            "computer only: leave out --backend ray, or list only image files"
        )
    # on Ray the models run in the workers; the driver only reads their descriptions
    models = _load_models(args.model, "cpu" if backend else args.device)
    _modality_warning(
        models[0].spec.modality,
        [it.slices[it.n_slices // 2] if it.is_volume else it.path for it in items if it.slices],
    )
    uncertainty = args.uncertainty or ("ensemble" if len(models) > 1 else "none")
    spec0 = models[0].spec
    unknown = [x for x in args.review_finding or [] if x not in finding_labels(spec0)]
    if unknown:
        raise CliError(
            f"--review-finding {', '.join(unknown)}: not a finding of this model "
            f"(findings: {', '.join(finding_labels(spec0)) or 'none'})"
        )
    if not negative_labels(spec0):
        err(
            f"note: model {spec0.name or '?'} names no 'no finding' label, so no image can be "
            "auto-cleared: every confident answer is referred"
        )
    policy = TriagePolicy(
        kind=args.policy,
        threshold=args.threshold,
        refer_findings=args.refer_findings,
        use_quality=not args.no_quality,
        review_findings=list(args.review_finding or []),
    )
    blocked = clearing_block([m.spec for m in models], policy) if negative_labels(spec0) else None
    if blocked:
        err(f"note: {blocked}; confident 'no finding' answers go to review")
    settings = ScreenSettings(
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        uncertainty=uncertainty,
        k=args.k,
        quality=not args.no_quality,
        policy=policy,
        amp=not args.fp32,
        engine=args.engine,
        engine_cache=engine_cache_dir(args.workspace),
    )
    if backend is None:  # on Ray each model worker attaches the engine on its own node
        models = attach_engine(models, settings)
    try:
        if backend is not None:
            start_backend(backend, args.quiet)
        if args.workspace:
            known = source.known_facts if source is not None else None
            return _screen_workspace(args, items, models, settings, backend, known)
        if backend is not None:
            return _screen_file(args, [it.path for it in items], models, settings, backend)
        return _screen_file(args, items, models, settings)
    finally:
        if backend is not None:
            backend.close()


def _where(models, backend) -> str:  # noqa: ANN001
    """Where the models ran: the Ray backend's description, or this machine's device and
    engine (``cpu, onnxruntime``)."""
    from .backends import engine_name

    if backend is not None:
        return backend.describe()
    lm = models[0]
    return f"{lm.device.type}, {engine_name(lm)}"


def _screen_file(args, items, models, settings, backend=None) -> int:  # noqa: ANN001
    """Screen items into a CSV or Parquet file: one row per image or volume (and, with
    ``--slices``, one per B-scan); on a Ray backend ``items`` are image paths."""
    from .results_file import ResultsFile
    from .tasks import TaskState
    from .volumes import Item, count_slices, screen_items

    spec = models[0].spec
    columns = (
        SCREEN_FIXED_COLUMNS[:N_LEADING]
        + [f"p_{lab}" for lab in spec.labels]
        + SCREEN_FIXED_COLUMNS[N_LEADING:]
        + (["patient_name"] if args.patient_names else [])
    )
    is_items = all(isinstance(it, Item) for it in items)
    n_slices = count_slices(items) if is_items else len(items)
    state = TaskState(Progress("screening", quiet=args.quiet))
    out = ResultsFile(
        args.out, columns, spec.labels, lambda r, labels: _csv_row(r, labels, args.patient_names)
    )
    counts: dict[str, int] = {}
    written = 0
    interrupted = False
    t0 = time.monotonic()
    chunks = (
        backend.screen(items, models, settings, state)
        if backend is not None
        else screen_items(items, models, settings, state, args.patient_names)
    )
    try:
        for chunk in chunks:
            rows = []
            for r in chunk:
                rows.append(r)
                if args.slices and r.slices:
                    for s in r.slices:
                        s.facts = s.facts or r.facts  # a B-scan says what its volume says
                        rows.append(s)
                counts[r.triage] = counts.get(r.triage, 0) + 1
            out.write(rows)
            written += len(chunk)
    except KeyboardInterrupt:  # the rows screened so far are still written
        interrupted = True
        state.cancel()
        chunks.close()
    except BaseException:
        out.close(publish=False)  # a failed run removes its temporary file; the target is untouched
        raise
    out.close()
    dt = time.monotonic() - t0
    n_volumes = sum(1 for it in items if isinstance(it, Item) and it.is_volume)
    where = _where(models, backend)
    _summary(counts, written, len(items), dt, where, out.out, n_volumes, n_slices)
    if interrupted:
        err(f"interrupted: {written} of {len(items)} rows written to {out.out}")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _csv_row(r, labels: Sequence[str], names: bool = False, volume=None) -> dict[str, Any]:  # noqa: ANN001
    """One CSV row: an image, a volume, or (with ``volume``) one of that volume's slices."""
    facts = (volume.facts if volume is not None else r.facts) or {}
    row = {
        "path": path_text(r.path),
        "kind": r.kind,
        "slice": "" if r.slice_index is None else r.slice_index + 1,
        "label": r.label or "",
        "confidence": "" if r.confidence is None else f"{r.confidence:.4f}",
        "error": r.error or "",
        "entropy": "" if r.entropy is None else f"{r.entropy:.4f}",
        "mutual_info": "" if r.mutual_info is None else f"{r.mutual_info:.5f}",
        "top_std": "" if r.top_std is None else f"{r.top_std:.4f}",
        "conformal_set": "|".join(r.conformal_set) if r.conformal_set else "",
        "ood_score": "" if r.ood_score is None else f"{r.ood_score:.3f}",
        "quality_ok": "" if r.quality_ok is None else int(r.quality_ok),
        "quality": "; ".join(r.quality.get("reasons", [])) if r.quality else "",
        "triage": r.triage,
        "triage_reason": r.triage_reason,
        "slices": "" if r.n_slices is None else r.n_slices,
        "key_slice": "" if r.key_slice is None else r.key_slice + 1,
        "patient": facts.get("patient") or "",
        "eye": facts.get("eye") or "",
        "date": facts.get("date") or "",
    }
    if names:
        row["patient_name"] = facts.get("patient_name") or ""
    for lab in labels:
        v = r.probabilities.get(lab)
        row[f"p_{lab}"] = "" if v is None else f"{v:.4f}"
    return row


def _summary(
    counts: dict[str, int],
    written: int,
    total: int,
    dt: float,
    device: str,
    where: Any,
    volumes: int = 0,
    slices: int | None = None,
) -> None:
    from .triage import HUMAN_STATES, TRIAGE_STATES

    parts = [f"{k} {counts[k]}" for k in TRIAGE_STATES if counts.get(k)]
    human = sum(counts.get(k, 0) for k in HUMAN_STATES)
    parts.append(f"{human} need a person")
    if volumes:
        n = slices if slices is not None else written
        rate = n / dt if dt > 0 else 0.0
        what = f"{written}/{total} items ({volumes} volumes; {n} images and B-scans)"
    else:
        rate = written / dt if dt > 0 else 0.0
        what = f"{written}/{total} images"
    print(f"screened {what} in {dt:.1f} s ({rate:.1f} img/s, {device}): {', '.join(parts)}")
    print(f"results: {where}")


def _screen_workspace(args, items, models, settings, backend=None, known=None) -> int:  # noqa: ANN001
    from .tasks import TaskState
    from .workspace_screen import screen_into_workspace

    state = TaskState(Progress("screening", quiet=args.quiet))
    t0 = time.monotonic()
    try:
        report = screen_into_workspace(
            args.workspace,
            items,
            models,
            settings,
            state,
            actor=args.actor,
            keep_names=args.patient_names,
            backend=backend,
            known_facts=known,
        )
    except KeyboardInterrupt:
        state.cancel()
        err("interrupted: finished images are saved; run the same command again to resume")
        return EXIT_INTERRUPTED
    dt = time.monotonic() - t0
    print(
        f"{report['skipped']} images already screened with this model and settings were skipped"
        if report["skipped"]
        else "screening every image"
    )
    for path, reason in report.get("unreadable", []):
        err(f"{path}: {reason}")
    n_volumes = sum(1 for it in items if it.is_volume)
    _summary(
        report["counts"],
        report["screened"],
        len(items),
        dt,
        _where(models, backend),
        args.workspace,
        n_volumes,
        report.get("screened_slices") if n_volumes else None,
    )
    kept = report.get("unreadable_kept") or []
    if kept:
        path, reason = kept[0]
        print(
            f"{len(kept)} files screened before could not be read now and keep their earlier "
            f"results (e.g. {path}: {reason})"
        )
    activation = report.get("activation") or {}
    if activation.get("message"):
        print(activation["message"])
    if args.out:
        from .store import Workspace

        with Workspace.open(args.workspace, create=False) as ws:
            n = ws.write_export(args.out, "csv")
        print(f"exported {n} rows to {args.out}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from .modelfile import file_sha256, read_spec

    spec = read_spec(args.model)
    if args.json:
        d = json.loads(spec.to_json())
        d["sha256"] = file_sha256(args.model)
        print_json(d)
        return EXIT_OK
    from .modelcard import model_card_text

    print(model_card_text(spec, file_sha256(args.model)))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out) if args.out else None, quick=args.quick)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .cli_cluster import add_backend_options
    from .engines import ENGINES

    p = argparse.ArgumentParser(
        prog="eyetriage",
        description="EyeTriage: screening and annotation of retinal images. Not a medical device.",
    )
    p.add_argument("--version", action="version", version=f"eyetriage {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("synth", help="write a labelled folder of synthetic fundus or OCT images")
    s.add_argument("out")
    s.add_argument("--modality", choices=["fundus", "oct"], default="fundus")
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=512)
    s.add_argument("--difficulty", type=float, default=0.5)
    s.add_argument("--classes", help="comma-separated subset of the classes")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train a model on labelled images")
    t.add_argument(
        "data", help="folder of class folders, or the root the CSV paths are relative to"
    )
    _add_data_options(t)
    t.add_argument(
        "--arch",
        help="any timm architecture name (default: efficientnet_lite0 with the ImageNet start)",
    )
    t.add_argument(
        "--init",
        choices=["imagenet", "none"],
        help="starting weights: 'imagenet' (EfficientNet-Lite0, shipped, no download) or "
        "'none' (from scratch); default: imagenet when no --arch is given",
    )
    t.add_argument("--img-size", type=int, default=224)
    t.add_argument("--epochs", type=int, help="default 12")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, help="peak learning rate (default 5e-4)")
    t.add_argument(
        "--patience",
        type=int,
        help="early stopping patience in epochs (default: a third of the epochs, at least 3; "
        "never before the warm-up ends)",
    )
    t.add_argument("--no-ema", action="store_true", help="no averaged weights competing")
    t.add_argument(
        "--balance",
        choices=["loss", "sampling"],
        default="loss",
        help="class balance: weight the loss by class (default) or draw balanced batches",
    )
    t.add_argument(
        "--allow-collapsed",
        action="store_true",
        help="save the model even if it predicts one class for nearly every validation image",
    )
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--split", help="train,validation,test fractions (default 0.7,0.15,0.15)")
    t.add_argument(
        "--modality",
        choices=["fundus", "oct"],
        help="default: from the CSV's modality column, else from the images",
    )
    t.add_argument("--ben-graham", action="store_true", help="local-average colour normalisation")
    t.add_argument("--green", action="store_true", help="green-channel emphasis")
    t.add_argument("--no-fov-crop", action="store_true", help="do not crop to the field of view")
    t.add_argument(
        "--init-weights",
        help="start from a local .safetensors file (see import-weights for .pth checkpoints)",
    )
    t.add_argument(
        "--pretrained", action="store_true", help="download timm's ImageNet weights (online)"
    )
    t.add_argument("--strategy", choices=["full", "head", "lora"], default="full")
    t.add_argument(
        "--negative-label",
        action="append",
        default=None,
        help="a 'no finding' class (repeat for several); default: labels named normal, none,"
        " healthy, negative, 0, no_... (binary: else the first label)",
    )
    t.add_argument(
        "--display-name",
        action="append",
        default=None,
        metavar="LABEL=WORDS",
        help="what a label is called on screen, e.g. 1='DME present' (repeat per label)",
    )
    t.add_argument("--name", help="a name for the model")
    t.add_argument("--device", default="auto")
    t.add_argument("--workers", type=int)
    t.add_argument("--max-steps-per-epoch", type=int, help=argparse.SUPPRESS)
    t.add_argument(
        "--demo", action="store_true", help="mark the model as a demo (not for clinical use)"
    )
    t.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    t.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--out", required=True, help="model file to write (.safetensors)")
    t.set_defaults(func=cmd_train)

    iw = sub.add_parser(
        "import-weights",
        help="turn a .pth/.pt/.bin/.ckpt/.npz/.safetensors checkpoint into timm-layout safetensors",
    )
    iw.add_argument("src", help="the checkpoint (pickled files are read tensors-only, never run)")
    iw.add_argument("--arch", required=True, help="the timm architecture the weights belong to")
    iw.add_argument("--out", required=True, help="safetensors file to write")
    iw.add_argument("--json", action="store_true")
    iw.set_defaults(func=cmd_import_weights)

    e = sub.add_parser("evaluate", help="measure a model on every image of a labelled set")
    e.add_argument("model")
    e.add_argument("data")
    _add_data_options(e)
    e.add_argument("--json", action="store_true")
    e.add_argument("--plot", help="write the referral curve as a PNG")
    e.add_argument(
        "--predictions",
        metavar="CSV",
        help="write each image's true label, answer and probabilities to this CSV",
    )
    e.add_argument(
        "--part",
        choices=["train", "validation", "test"],
        help="only this part of the model's own split (same data options as training)",
    )
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--workers", type=int)
    e.add_argument("--device", default="auto")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("calibrate", help="fit temperature, conformal threshold and referral curve")
    c.add_argument("model")
    c.add_argument("data")
    _add_data_options(c)
    c.add_argument(
        "--alpha", type=float, default=0.1, help="conformal miss rate (0.1 = 90%% coverage)"
    )
    c.add_argument(
        "--part",
        choices=["validation", "test"],
        help="only this part of the model's own split (same data options as training)",
    )
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--workers", type=int)
    c.add_argument("--device", default="auto")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_calibrate)

    sc = sub.add_parser("screen", help="screen a folder of images or a manifest")
    sc.add_argument(
        "folder",
        metavar="SOURCE",
        help="folder of images, or a manifest (.csv or .parquet: a path column, optional "
        "patient and eye columns; relative paths from the manifest's folder)",
    )
    sc.add_argument(
        "--model", action="append", required=True, help="model file (repeat for an ensemble)"
    )
    sc.add_argument("--out", help="results file (.csv, or .parquet with pyarrow)")
    sc.add_argument("--workspace", help="workspace folder to record the run in")
    sc.add_argument("--uncertainty", choices=["none", "mc", "mc-full", "tta", "ensemble"])
    sc.add_argument("--k", type=int, help="stochastic passes (default: mc 20, tta 8)")
    sc.add_argument("--policy", choices=["threshold", "conformal"], default="threshold")
    sc.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    sc.add_argument(
        "--refer-findings",
        action="store_true",
        help="every finding, however confident, goes to needs-review (not straight to refer)",
    )
    sc.add_argument(
        "--review-finding",
        action="append",
        default=None,
        metavar="LABEL",
        help="this finding, however confident, goes to needs-review (repeat for several)",
    )
    sc.add_argument("--no-quality", action="store_true", help="skip the image-quality gate")
    sc.add_argument(
        "--slices", action="store_true", help="also write one row per B-scan of each volume"
    )
    sc.add_argument(
        "--patient-names",
        action="store_true",
        help="keep patient names from DICOM files (left out by default)",
    )
    sc.add_argument(
        "--fp32",
        action="store_true",
        help="float32 throughout (no bf16/fp16 autocast): slower, comparable across machines",
    )
    sc.add_argument("--batch-size", type=int, default=32)
    sc.add_argument("--workers", type=int)
    sc.add_argument("--device", default="auto")
    sc.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="CPU inference engine for the backbone (auto: the fastest measured on this "
        "computer, remembered; a GPU keeps torch; on Ray each model worker chooses on its "
        "own node)",
    )
    sc.add_argument("--quiet", action="store_true")
    sc.add_argument(
        "--actor",
        default=os.environ.get("USER", "cli"),
        help="name recorded in the audit log if the run makes its model the active one",
    )
    add_backend_options(sc)
    sc.set_defaults(func=cmd_screen)

    i = sub.add_parser("info", help="show a model file's description (model card)")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="headless demo: synthesise, train, evaluate, screen")
    d.add_argument("--out", help="folder for the demo (default: a temporary folder)")
    d.add_argument("--quick", action="store_true", help="smaller and faster")
    d.set_defaults(func=cmd_demo)

    add_workspace_commands(sub)
    add_grading_commands(sub)
    add_explain_commands(sub)
    add_improve_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return EXIT_OK
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    except CliError as e:
        err(str(e))
        return EXIT_FAIL
    except Exception as e:  # noqa: BLE001 - every known failure type gets one readable line
        known = known_error(e)
        if known is None:
            raise
        err(known)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
