"""What every part of the store shares: names, constants, errors and row conversions.

Standard library only (plus :mod:`engine.naming` and the triage states of :mod:`engine.triage`), so store-only commands start fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..jsonable import to_jsonable
from ..naming import normalise_date, normalise_eye
from ..safefiles import path_text, sha256_and_size
from ..triage import HUMAN_STATES, TRIAGE_STATES

REVIEW_ACTIONS = ("confirm", "correct", "ungradable", "skip", "undo")
RUN_STATUSES = ("running", "finished", "cancelled", "failed")
# The states that need a person: every one but "auto-cleared" (the triage rule's own list).
REFERRED_STATES = HUMAN_STATES
# Actions whose review sets the image's label; "skip" and "undo" do not.
LABELLING_ACTIONS = ("confirm", "correct", "ungradable")
# Most to least urgent: the state shown for an eye with several images.
TRIAGE_SEVERITY = TRIAGE_STATES

DB_NAME = "workspace.sqlite"
CACHE_DIR = "cache"
BUSY_TIMEOUT_MS = 10_000
# SQLite's default limit on "?" parameters is far higher; this keeps statements short.
IN_CHUNK = 500

# What a prediction says about an image, in the order exports show it.
PREDICTION_VALUES = (
    "label",
    "confidence",
    "entropy",
    "mutual_info",
    "top_std",
    "conformal_set",
    "probabilities",
    "ood_score",
    "ood",
    "quality",
    "quality_ok",
    "triage",
    "triage_reason",
    "error",
    "uncertainty_method",
)
REAL_FIELDS = ("confidence", "entropy", "mutual_info", "top_std", "ood_score")
ITEM_KINDS = ("image", "volume")
# What one B-scan of a volume was given (table ``slice_predictions``; slice numbers 1-based).
SLICE_VALUES = (
    "label",
    "confidence",
    "finding",
    "probabilities",
    "ood_score",
    "quality_ok",
    "triage",
    "triage_reason",
    "error",
)
BOOL_FIELDS = ("ood", "quality_ok")


class StoreError(Exception):
    """A workspace operation was refused; the message says what was wrong."""


def database_path(folder: str | os.PathLike[str]) -> Path:
    """The database file of the workspace in ``folder`` (the one place its name is spelled)."""
    return Path(folder) / DB_NAME


def is_workspace(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds a workspace database (cheap: one ``stat``)."""
    return database_path(folder).is_file()


def now() -> str:
    """ISO-8601 UTC timestamp with microseconds, e.g. ``2025-01-02T03:04:05.123456+00:00``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def dumps(value: Any) -> str | None:
    """JSON text for a column (``None`` stays NULL)."""
    if value is None:
        return None
    return json.dumps(to_jsonable(value), ensure_ascii=False)


def loads(text: str | None) -> Any:
    """The Python value of a JSON column (NULL is ``None``)."""
    return None if text is None else json.loads(text)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a regular file, streamed under the stall deadline.

    Special files (a FIFO, a link to ``/dev/zero``) are refused before anything is opened:
    :class:`engine.safefiles.UnreadableFile` (an ``OSError``) says why, naming the file.
    """
    return sha256_and_size(path)[0]


def settings_key(settings: dict) -> str:
    """Stable 16-hex-digit hash of the canonical JSON of ``settings`` (key order ignored).

    Two screenings with equal keys would give equal predictions, so incremental
    re-screening can skip images already done under the same key.
    """
    if not isinstance(settings, dict):
        raise StoreError(f"settings must be a dict, got {type(settings).__name__}")
    canonical = json.dumps(
        to_jsonable(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def normalise_path(path: str | os.PathLike[str]) -> str:
    """Absolute, resolved path text: the identity of an image.

    ``os.path.realpath`` (not ``Path.resolve``) so a symbolic link loop keeps its own name
    instead of raising; a name that is not valid UTF-8 is kept as its ``\\xNN`` text
    (:func:`engine.safefiles.path_text`), which the file readers map back to the file.
    """
    given = os.path.expanduser(os.fspath(path))
    real = os.path.realpath(given)
    if not os.path.isfile(real) and os.path.lexists(given):
        # a broken link, or a link to a device, is named as itself, not as its target
        real = os.path.abspath(given)
    return path_text(real)


def chunks(values: list, size: int = IN_CHUNK) -> list[list]:
    """``values`` in pieces of at most ``size`` (for ``IN (?, ?, ...)`` clauses)."""
    return [values[i : i + size] for i in range(0, len(values), size)]


# --------------------------------------------------------------------------- rows → dicts


def model_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["metrics"] = loads(d["metrics"])
    d["description"] = loads(d["description"])
    d["active"] = bool(d["active"])
    return d


def prediction_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    for field in ("probabilities", "conformal_set", "quality"):
        d[field] = loads(d[field])
    return d


def slice_dict(row: sqlite3.Row) -> dict:
    """One B-scan's stored result (``slice`` 1-based; probabilities parsed)."""
    d = dict(row)
    d["probabilities"] = loads(d["probabilities"])
    if d["quality_ok"] is not None:
        d["quality_ok"] = bool(d["quality_ok"])
    return d


def review_dict(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["labels"] = loads(d["labels"]) or []
    return d


def image_dict(row: sqlite3.Row) -> dict:
    """An image row with its ``facts`` parsed."""
    d = dict(row)
    if "facts" in d:
        d["facts"] = loads(d["facts"])
    return d


def review_label(review: dict) -> str:
    """A review's label as one string: labels joined by ``;`` (``ungradable`` if none)."""
    if review["labels"]:
        return ";".join(review["labels"])
    return "ungradable" if review["action"] == "ungradable" else ""


def single_label(review: dict) -> str | None:
    """The one label of a review (``"ungradable"`` for an ungradable one), else ``None``."""
    labels = review["labels"]
    if len(labels) == 1:
        return labels[0]
    if not labels and review["action"] == "ungradable":
        return "ungradable"
    return None


# --------------------------------------------------------------------------- checks


def clean_image_row(index: int, row: dict) -> dict:
    """A validated image row for ``add_images``; :class:`StoreError` names what is wrong."""
    if not isinstance(row, dict):
        raise StoreError(f"image row {index} must be a dict, got {type(row).__name__}")
    if not row.get("path"):
        raise StoreError(f"image row {index}: missing 'path'")
    sha = row.get("sha256")
    if (
        not isinstance(sha, str)
        or len(sha) != 64
        or not all(c in "0123456789abcdef" for c in sha.lower())
    ):
        raise StoreError(
            f"image row {index} ({row['path']}): sha256 must be 64 hex digits, got {sha!r}"
        )
    raw_eye = row.get("eye")
    eye = normalise_eye(raw_eye)
    if raw_eye not in (None, "") and eye is None:
        raise StoreError(
            f"image row {index} ({row['path']}): eye {raw_eye!r} is not right/left/OD/OS/OI/R/L"
        )
    where = f"image row {index} ({row['path']})"
    kind = row.get("kind") or "image"
    if kind not in ITEM_KINDS:
        raise StoreError(f"{where}: kind must be one of {ITEM_KINDS}, got {kind!r}")
    raw_date = row.get("acquired")
    acquired = normalise_date(raw_date)
    if raw_date not in (None, "") and acquired is None:
        raise StoreError(f"{where}: acquired {raw_date!r} is not a date (YYYY-MM-DD)")
    facts = row.get("facts")
    if facts is not None and not isinstance(facts, dict):
        raise StoreError(f"{where}: facts must be a dict, got {type(facts).__name__}")
    name = row.get("patient_name")
    clean = {
        "path": normalise_path(row["path"]),
        "sha256": sha.lower(),
        "modality": row.get("modality"),
        "patient": None if row.get("patient") in (None, "") else str(row["patient"]),
        "eye": eye,
        "kind": kind,
        "acquired": acquired,
        "facts": dumps(facts),
        "patient_name": None if name in (None, "") else str(name),
    }
    for field in ("size_bytes", "width", "height", "n_slices"):
        clean[field] = number(row.get(field), int, f"{where}: {field}")
        if clean[field] is not None and clean[field] < 0:
            raise StoreError(f"{where}: {field} must be >= 0")
    if kind == "volume" and not clean["n_slices"]:
        raise StoreError(f"{where}: a volume needs its number of slices (n_slices >= 1)")
    if kind == "image":
        clean["n_slices"] = None
    return clean


def number(value: Any, kind: type[int] | type[float], what: str) -> Any:
    """``None``, or ``value`` as an int/float; :class:`StoreError` names ``what`` otherwise."""
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        noun = "an integer" if kind is int else "a number"
        raise StoreError(f"{what} must be {noun}, got {value!r}") from None


def check_reviewer(reviewer: Any) -> str:
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise StoreError(f"reviewer must be a non-empty name, got {reviewer!r}")
    return reviewer.strip()


def check_labels(labels: Any) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str) or not isinstance(labels, list | tuple):
        raise StoreError(f"labels must be a list of label names, got {labels!r}")
    clean = []
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise StoreError(f"each label must be a non-empty string, got {label!r}")
        clean.append(label.strip())
    return list(dict.fromkeys(clean))


def as_list(value: Any) -> list | None:
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    return [str(v) for v in value]
