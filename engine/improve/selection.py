"""Which images an improvement learns from and which it is judged on.

The reviewed images with one current label the model knows are split, by a hash of the
patient (or of the image when no patient is known), into those the fine-tune may learn from
and a fixed **audit set** it never sees. Optional extra training images: confident
unreviewed images (self-learning) and the model's original training data.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..tasks import TaskState
from .config import ImproveConfig, Log, open_workspace

if TYPE_CHECKING:
    import numpy as np

    from ..modelfile import ModelSpec
    from ..store import Workspace


def model_labels(model_row: dict) -> list[str]:
    """The labels of a registered model version (from its stored description)."""
    return list((model_row.get("description") or {}).get("labels") or [])


def usable_reviews(ws: Workspace, labels: list[str], model_hash: str | None) -> list[dict]:
    """Reviewed images with one current label the model knows (ungradable/skip excluded).

    With ``model_hash`` each row also carries that model's answer (``ai_label``) and the
    image's stored quality report (``quality``) from its latest screening.
    """
    images = {r["id"]: r for r in ws.images()}
    latest = {}
    if model_hash:
        latest = {p["image_id"]: p for p in ws.latest_predictions(model_hash)}
    reviewed = sorted({r["image_id"] for r in ws.reviews()})
    known = set(labels)
    rows = []
    for image_id in reviewed:
        review = ws.current_review(image_id)
        if review is None or review["action"] not in ("confirm", "correct"):
            continue
        if len(review["labels"]) != 1 or review["labels"][0] not in known:
            continue
        image = images[image_id]
        pred = latest.get(image_id) or {}
        rows.append(
            {
                "image_id": image_id,
                "path": image["path"],
                "patient": image["patient"],
                "sha256": image["sha256"],
                "label": review["labels"][0],
                "review_id": review["id"],
                "reviewed_at": review["created_at"],
                "ai_label": pred.get("label"),
                "quality": pred.get("quality") if isinstance(pred.get("quality"), dict) else None,
            }
        )
    return rows


def split_key(row: dict) -> str:
    """``patient:<id>``, or ``image:<sha256>`` when no patient is known."""
    patient = row.get("patient")
    return f"patient:{patient}" if patient not in (None, "") else f"image:{row.get('sha256')}"


def unit_hash(key: str, salt: str = "audit") -> float:
    """A number in [0, 1) fixed by ``key`` (and ``salt``): the same key, the same side."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def audit_split(rows: list[dict], fraction: float = 0.25) -> tuple[list[dict], list[dict]]:
    """Split reviewed rows into ``(train, audit)``, deterministically and by patient.

    A row goes to the audit set when the sha256 of its patient key (``patient:<id>``, or
    ``image:<sha256>`` when no patient is known) maps below ``fraction`` in [0, 1). The same
    patient always lands on the same side, and adding reviews never moves an image between
    sides, so the audit set is fixed and is never trained on.
    """
    train, audit = [], []
    for row in rows:
        (audit if unit_hash(split_key(row)) < fraction else train).append(row)
    return train, audit


def review_status(
    ws_folder: str | os.PathLike, min_new_reviews: int = 20, audit_fraction: float = 0.25
) -> dict:
    """What the Improve button needs: how many usable reviews are new since the active model.

    ``new_reviews`` counts usable reviews (current single labels the model knows) made after
    the active model was registered in the workspace (for an improved version: after the
    reviews it was trained from were read); ``audit_n`` / ``train_n`` split all
    usable reviews; ``enough`` is ``new_reviews >= min_new_reviews``.
    """
    with open_workspace(ws_folder) as ws:
        active = ws.active_model()
        if active is None:
            return {
                "active_model": None,
                "new_reviews": 0,
                "reviewed_total": 0,
                "audit_n": 0,
                "train_n": 0,
                "enough": False,
                "min_new_reviews": min_new_reviews,
            }
        rows = usable_reviews(ws, model_labels(active), None)
    prov = (active.get("description") or {}).get("provenance") or {}
    last_id = prov.get("last_review_id")
    if isinstance(last_id, int):  # an improved version: reviews after its data snapshot
        new = [r for r in rows if r["review_id"] > last_id]
    else:  # a version made elsewhere: reviews after it was registered here
        since = active.get("registered_at") or ""
        new = [r for r in rows if r["reviewed_at"] > since]
    train, audit = audit_split(rows, audit_fraction)
    return {
        "active_model": active["hash"],
        "new_reviews": len(new),
        "reviewed_total": len(rows),
        "audit_n": len(audit),
        "train_n": len(train),
        "enough": len(new) >= min_new_reviews,
        "min_new_reviews": min_new_reviews,
    }


def pseudo_rows(
    ws: Workspace, spec: ModelSpec, model_hash: str, exclude_ids: set[int], patients: set[str]
) -> list[dict]:
    """Unreviewed images the active model is very sure about (not OOD, quality not failed)."""
    rows = []
    for p in ws.latest_predictions(model_hash):
        if p["image_id"] in exclude_ids or p.get("review") is not None or p.get("stale"):
            continue
        if p.get("patient") and p["patient"] in patients:
            continue  # keep the audit patients' images out of training altogether
        if p["triage"] == "error" or p.get("ood") or p.get("quality_ok") == 0:
            continue
        if p.get("label") not in spec.labels or p.get("confidence") is None:
            continue
        rows.append(
            {
                "image_id": p["image_id"],
                "path": p["path"],
                "patient": p.get("patient"),
                "sha256": p["image_sha256"],
                "label": p["label"],
                "confidence": float(p["confidence"]),
            }
        )
    return rows


def screened_paths(ws: Workspace, model_hash: str, limit: int) -> list[str]:
    """Up to ``limit`` images this model screened without error, a fixed sample by hash."""
    rows = [
        p
        for p in ws.latest_predictions(model_hash)
        if p["triage"] != "error" and not p.get("stale")
    ]
    rows.sort(key=lambda p: unit_hash(str(p["image_sha256"]), "ood-check"))
    return [p["path"] for p in rows[:limit]]


def training_data_rows(
    cfg: ImproveConfig, spec: ModelSpec, audit_rows: list[dict], log: Log
) -> list[dict]:
    """The model's original training data (a folder of class folders), audit patients removed."""
    if not cfg.include_training_data:
        return []
    root = cfg.training_data or (spec.provenance.get("training_data") or {}).get("root")
    if not root or not Path(root).is_dir():
        log("original training data: location unknown or missing; using the reviews only")
        return []
    from ..data import load_folder_dataset

    ds = load_folder_dataset(root)
    audit_patients = {r["patient"] for r in audit_rows if r.get("patient")}
    audit_paths = {str(Path(r["path"]).resolve()) for r in audit_rows}
    rows = []
    for s in ds.samples:
        label = ds.labels[int(s.target)]
        if label not in spec.labels or str(s.path.resolve()) in audit_paths:
            continue
        patient = s.group.split(":", 1)[1] if s.group.startswith("patient:") else None
        if patient and patient in audit_patients:
            continue
        rows.append({"path": str(s.path), "patient": patient, "label": label, "sha256": ""})
    log(f"original training data: {len(rows)} images from {Path(root).name}")
    return rows


def validation_split(rows: list[dict], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation) of the training reviews, by patient, per class."""
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r["label"], []).append(i)
    tr, va = [], []
    for idx in by_label.values():
        keyed = sorted(idx, key=lambda i: unit_hash(split_key(rows[i]), f"val{seed}"))
        n_val = round(len(idx) * fraction) if len(idx) >= 3 else 0
        cut = {split_key(rows[i]) for i in keyed[:n_val]}
        for i in idx:
            (va if split_key(rows[i]) in cut else tr).append(i)
    return sorted(tr), sorted(va)


def decode_images(
    paths: list[str], spec: ModelSpec, state: TaskState, message: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(arrays, ok mask, problems) for the given files with the model's preprocessing."""
    import numpy as np

    from ..images import decode_for_model
    from ..pipeline import iter_decoded_batches

    size = spec.input_size
    arrays = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    problems: list[str] = []

    def decode(p: Path):  # noqa: ANN202
        return decode_for_model(p, size, spec.modality, spec.preprocessing)

    for b in iter_decoded_batches([Path(p) for p in paths], decode, 32, None, state):
        if b.arrays is not None:
            arrays[b.indices] = b.arrays
            ok[b.indices] = True
        problems += [f"{Path(paths[i]).name}: {reason}" for i, reason in b.errors]
        state.progress(b.stop, len(paths), message)
    state.check()
    return arrays, ok, problems
