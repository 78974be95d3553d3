"""A model's description in words: what it does, what it was trained on, how good it is."""

from __future__ import annotations

from .findings import negative_labels
from .modelfile import ModelSpec

NOT_A_DEVICE = (
    "EyeTriage is a research and workflow tool, not a medical device: it triages images for a "
    "clinician's review and does not diagnose."
)
DEMO_NOTICE = "Demo model — not for clinical use (trained on synthetic images only)."


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def clearing_words(spec: ModelSpec) -> str:
    """Whether this model may auto-clear under the default policy, and the evidence."""
    from .clearing import check_clearing
    from .triage import TriagePolicy

    c = check_clearing(spec, TriagePolicy())
    if c.allowed:
        src = (spec.clearing or {}).get("source", "held-out images")
        return (
            f"on at the default threshold: it cleared {c.cleared_with_finding} of "
            f"{c.n_with_finding} {src} with a finding (at most {100 * (c.upper or 0):.0f} %, "
            "95 % bound)"
        )
    return "off: " + c.reason.removeprefix("auto-clear is off for this model: ")


def model_card_text(spec: ModelSpec, sha256: str = "") -> str:
    lines = []
    title = spec.name or spec.arch
    lines.append(f"{title}{'  [DEMO — not for clinical use]' if spec.demo else ''}")
    if sha256:
        lines.append(f"  file sha256   {sha256[:16]}…")
    lines.append(
        f"  architecture  {spec.arch} ({spec.task}, {spec.modality}, {spec.input_size} px)"
    )
    lines.append("  labels        " + ", ".join(spec.display(x) for x in spec.labels))
    negatives = negative_labels(spec)
    names = ", ".join(spec.display(x) for x in negatives)
    if not names:
        names = "none named or found by the default rule: nothing is auto-cleared"
    elif not spec.negative_labels:
        names += " (default rule)"
    lines.append("  no finding    " + names)
    if negatives or spec.task == "multilabel":
        lines.append("  auto-clear    " + clearing_words(spec))
    prep = spec.preprocessing
    steps = [
        n
        for n, on in (
            ("field-of-view crop", prep.fov_crop),
            ("Ben Graham colour normalisation", prep.ben_graham),
            ("green-channel emphasis", prep.green),
            ("greyscale", prep.grayscale),
        )
        if on
    ]
    lines.append("  preprocessing " + (", ".join(steps) or "resize only"))
    lines.append(
        f"  temperature   {spec.temperature:.3f}"
        + ("" if spec.temperature != 1.0 else " (not calibrated)")
    )
    if spec.conformal:
        cov = 1 - float(spec.conformal.get("alpha", 0.1))
        lines.append(f"  conformal     {cov:.0%} prediction sets ({spec.conformal.get('method')})")
    if spec.ood:
        lines.append(
            f"  OOD check     {spec.ood.get('method')} (threshold {spec.ood.get('threshold', 0):.2f})"
        )
    prov = spec.provenance or {}
    data = prov.get("training_data") or {}
    if data:
        counts = ", ".join(f"{k} {v}" for k, v in (data.get("counts") or {}).items())
        lines.append(f"  trained on    {data.get('n')} images ({data.get('source')}): {counts}")
    if prov.get("start"):
        from .pretrained import describe_start

        lines.append(f"  started from  {describe_start(prov['start'])}")
    split = prov.get("split") or {}
    if split:
        c = split.get("counts", {})
        lines.append(
            f"  split         train {c.get('train')} / validation {c.get('validation')} / "
            f"test {c.get('test')} (seed {split.get('seed')}, {split.get('method')})"
        )
    if prov.get("best_epoch") and prov.get("selection"):
        how = f" ({prov['kept_weights']} weights)" if prov.get("kept_weights") else ""
        lines.append(
            f"  kept epoch    {prov['best_epoch']} of {prov.get('epochs_run')}{how}, by the "
            f"validation {prov['selection']}"
        )
    if prov.get("created_at"):
        lines.append(f"  created       {prov['created_at']} (engine {prov.get('engine_version')})")
    if prov.get("parent"):
        lines.append(f"  parent model  {str(prov['parent'])[:16]}…")
    test = (spec.metrics or {}).get("test") or {}
    if test.get("n"):
        keys = [
            k
            for k in ("accuracy", "balanced_accuracy", "auc", "qwk", "ece")
            if test.get(k) is not None
        ]
        ci = (test.get("intervals") or {}).get("metrics") or {}
        band = lambda k: f" ({ci[k][0]:.2f}-{ci[k][1]:.2f})" if k in ci else ""  # noqa: E731
        lines.append(
            f"  test metrics  n={test['n']}  "
            + "  ".join(f"{k} {_fmt(test[k])}{band(k)}" for k in keys)
        )
        if ci:
            lines.append(
                "                (95% intervals in brackets: bootstrap over the "
                f"{test['intervals'].get('resampled', 'images')})"
            )
    for w in prov.get("warnings") or []:
        lines.append(f"  WARNING       {w}")
    if spec.demo:
        lines.append(f"  {DEMO_NOTICE}")
    lines.append(f"  {NOT_A_DEVICE}")
    return "\n".join(lines)
