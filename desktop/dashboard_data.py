"""What the dashboard shows, as plain data and words (no Qt): read from the store's
dashboard totals and reviewer agreement, so it is cheap enough for the GUI thread."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.modelfile import ModelSpec
from engine.store import TRIAGE_STATES, StoreError, Workspace, is_workspace

__all__ = [
    "CALIBRATION_BINS",
    "MIN_CALIBRATION_N",
    "TRIAGE_WORDS",
    "UNGRADABLE",
    "DashboardData",
    "kappa_words",
    "load_dashboard_data",
    "pct",
    "referral_sentence",
]

# Below this many reviewed images a reliability diagram is mostly noise.
MIN_CALIBRATION_N = 20
CALIBRATION_BINS = 10
UNGRADABLE = "ungradable"  # the reviewed "label" of an ungradable image
TRIAGE_WORDS = {
    "auto-cleared": "Auto-cleared",
    "needs-review": "Needs review",
    "ungradable": "Ungradable",
    "out-of-distribution": "Out of distribution",
    "error": "Error",
}


# --------------------------------------------------------------------------- data


@dataclass
class DashboardData:
    """Everything the dashboard shows, read from one workspace (plain data, no Qt)."""

    ok: bool = False
    message: str = ""  # why there is nothing to show (no workspace, unreadable store...)
    n_images: int = 0
    n_screened: int = 0
    n_reviewed: int = 0  # screened images with a current review
    triage_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRIAGE_STATES, 0))
    model_name: str | None = None
    model_hash: str | None = None
    row_labels: list[str] = field(default_factory=list)  # reviewed label (confusion rows)
    col_labels: list[str] = field(default_factory=list)  # AI label (confusion columns)
    confusion: list[list[int]] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)  # AI top probability, graded reviews
    correct: list[bool] = field(default_factory=list)  # AI label == reviewed label
    left_out: int = 0  # reviewed images not comparable (multi-label review or AI error)
    agreement: dict[str, Any] = field(
        default_factory=lambda: {"reviewers": [], "pairs": [], "with_ai": []}
    )


def load_dashboard_data(ws_folder: Path | None, spec: ModelSpec | None = None) -> DashboardData:
    """Read the dashboard's numbers from the workspace store; never raises.

    Predictions are each image's latest one from the active model (any model when none
    is active), the reviewed label is the image's current review, and ``spec`` only
    orders the labels.
    """
    if ws_folder is None:
        return DashboardData(message="Open a workspace to see its dashboard.")
    folder = Path(ws_folder)
    if not is_workspace(folder):
        return DashboardData(
            message=f"{folder.name} is not a workspace yet: screen a folder first."
        )
    try:
        with Workspace.open(folder, create=False) as ws:
            return _read(ws, spec)
    except (StoreError, OSError, ValueError) as exc:  # sqlite3.Error is not an OSError
        return DashboardData(message=f"The workspace could not be read: {exc}")
    except Exception as exc:  # noqa: BLE001 - a dashboard must never take the window down
        return DashboardData(
            message=f"The workspace could not be read ({type(exc).__name__}: {exc})"
        )


def _read(ws: Workspace, spec: ModelSpec | None) -> DashboardData:
    totals = ws.dashboard_totals()
    data = DashboardData(ok=True)
    data.n_images = totals["n_images"]
    data.model_hash, data.model_name = totals["model_hash"], totals["model_name"]
    data.n_screened = totals["n_screened"]
    data.triage_counts.update(totals["triage_counts"])
    data.n_reviewed, data.left_out = totals["n_reviewed"], totals["left_out"]
    pairs: list[tuple[str, str, float | None]] = totals["compared"]  # (reviewed, AI, conf.)

    known = list(spec.labels) if spec is not None else []
    ai_labels = known + sorted({a for _, a, _ in pairs} - set(known))
    reviewed_labels = list(ai_labels) + sorted({r for r, _, _ in pairs} - set(ai_labels))
    data.row_labels, data.col_labels = reviewed_labels, ai_labels
    data.confusion = [[0] * len(ai_labels) for _ in reviewed_labels]
    for reviewed, ai_label, confidence in pairs:
        data.confusion[reviewed_labels.index(reviewed)][ai_labels.index(ai_label)] += 1
        if reviewed in ai_labels and confidence is not None and math.isfinite(confidence):
            data.confidence.append(min(1.0, max(0.0, float(confidence))))
            data.correct.append(reviewed == ai_label)
    data.agreement = ws.agreement(labels=known or None)
    return data


# --------------------------------------------------------------------------- words


def kappa_words(kappa: float | None) -> str:
    """Landis & Koch's words for a Cohen's kappa."""
    if kappa is None or not math.isfinite(kappa):
        return "not defined (too few images or one label only)"
    if kappa < 0:
        return "worse than chance"
    if kappa < 0.01:
        return "no better than chance"
    for limit, words in ((0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial")):
        if kappa <= limit:
            return f"{words} agreement"
    return "almost perfect agreement"


def pct(value: float) -> str:
    """``0.934`` -> ``93%``."""
    return f"{100 * value:.0f}%"


def referral_sentence(curve: list[dict] | None, target: float = 0.2) -> str:
    """One sentence reading the referral curve at about ``target`` referred."""
    points = [p for p in curve or [] if p.get("accuracy") is not None]
    if not points:
        return "This model has no referral curve (it was made without labelled validation images)."
    point = min(points, key=lambda p: (abs(float(p["referred"]) - target), -float(p["referred"])))
    kept = 1.0 - float(point["referred"])
    n = int(point.get("n_referred", 0)) + int(point.get("n_kept", 0))
    if point["referred"] <= 0:
        text = f"Referring no image, the AI is right on {pct(point['accuracy'])} of images"
    else:
        text = (
            f"Refer the {pct(point['referred'])} most uncertain images to a clinician and "
            f"the AI is right on {pct(point['accuracy'])} of the other {pct(kept)}"
        )
    if point.get("sensitivity") is not None:
        text += f" (finds {pct(point['sensitivity'])} of the disease among them)"
    text += "."
    if n:
        text += f" Measured on {n} labelled validation images when the model was made."
    return text
