"""PNG charts for clinicians: the referral curve and the reliability diagram.

matplotlib is imported inside the functions (it is slow to import and only needed when a
chart is drawn) and used through ``Figure`` with the Agg canvas, never pyplot, so drawing
is safe from worker threads and leaves no global state behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

_SERIES = (
    ("accuracy", "Accuracy", "#1f77b4", "o"),
    ("sensitivity", "Sensitivity (abnormal found)", "#d62728", "s"),
    ("specificity", "Specificity (normal cleared)", "#2ca02c", "^"),
    ("balanced_accuracy", "Balanced accuracy", "#7f7f7f", "d"),
)


def _new_figure(width: float = 7.0, height: float = 4.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out


def plot_referral_curve(curve: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Draw kept-image accuracy (and sensitivity/specificity) against the share referred."""
    if not curve:
        raise ValueError("cannot plot an empty referral curve")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    x_all = [100.0 * pt["referred"] for pt in curve]
    for key, name, colour, marker in _SERIES:
        pts = [
            (x, 100.0 * pt[key])
            for x, pt in zip(x_all, curve, strict=True)
            if pt.get(key) is not None
        ]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker=marker, color=colour, label=name, linewidth=1.8, markersize=4)
    ax.set_xlabel("Images referred to a physician, most uncertain first (%)")
    ax.set_ylabel("Performance on the images the model keeps (%)")
    ax.set_xlim(0, max(100.0 * max(pt["referred"] for pt in curve), 5.0) + 2)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or "Referring uncertain images: workload vs quality")
    return _save(fig, path)


def _bin_points(bins: Sequence[dict]) -> tuple[list[float], list[float], list[int]]:
    xs, ys, ns = [], [], []
    for b in bins:
        if b.get("count") and b.get("confidence") is not None:
            xs.append(100.0 * b["confidence"])
            ys.append(100.0 * b["accuracy"])
            ns.append(int(b["count"]))
    return xs, ys, ns


def plot_reliability(
    bins_before: Sequence[dict],
    bins_after: Sequence[dict] | None,
    path: str | Path,
    title: str = "",
) -> Path:
    """Reliability diagram: stated confidence vs how often the model was right.

    ``bins_*`` come from :func:`engine.metrics.reliability_bins`; ``bins_after`` (after
    temperature scaling) may be None. Marker area grows with the number of images per bin.
    """
    fig = _new_figure(6.0, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(
        [0, 100], [0, 100], linestyle="--", color="#555555", label="Perfectly honest confidence"
    )
    series = [(bins_before, "Before calibration", "#d62728", "o")]
    if bins_after is not None:
        series.append((bins_after, "After calibration", "#1f77b4", "s"))
    total = max(1, max(sum(int(b.get("count") or 0) for b in s[0]) for s in series))
    for bins, name, colour, marker in series:
        xs, ys, ns = _bin_points(bins)
        if not xs:
            continue
        sizes = [12 + 240 * n / total for n in ns]
        ax.plot(xs, ys, color=colour, linewidth=1.5, alpha=0.8)
        ax.scatter(xs, ys, s=sizes, color=colour, marker=marker, label=name, alpha=0.85)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("Model's stated confidence (%)")
    ax.set_ylabel("How often the model was right (%)")
    ax.text(
        97,
        3,
        "below the dashed line = over-confident\nlarger marker = more images",
        fontsize=8,
        color="#555555",
        ha="right",
        va="bottom",
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    ax.set_title(title or "Does the model's confidence match reality?")
    return _save(fig, path)
