"""Summaries of a workspace: reviewer agreement, the patient roll-up, dashboard totals.

Reads only; each summary is computed from one snapshot with the rules of
:mod:`engine.store.rules` (active model, latest prediction, current review).
``engine.metrics`` is imported inside :meth:`Summaries.agreement` only, so store-only
commands start fast.
"""

from __future__ import annotations

import math

from .base import StoreBase
from .common import REFERRED_STATES, TRIAGE_SEVERITY, TRIAGE_STATES, single_label
from .rules import active_hash, current_reviews, latest_prediction_rows


class Summaries(StoreBase):
    """Figures computed over the whole workspace."""

    def agreement(self, weights: str | None = None, labels: list[str] | None = None) -> dict:
        """Cohen's kappa between reviewers, and of each reviewer with the AI.

        Uses each reviewer's current single label per image (multi-label reviews are
        left out; an ``ungradable`` review without labels counts as ``"ungradable"``)
        and, for the AI, the latest prediction of the active model. Pairs are compared
        on the images both rated. ``weights`` ("linear"/"quadratic") needs ordered
        classes: pass ``labels`` in order, else labels are sorted. ``kappa`` is ``None``
        when undefined (no images, or chance agreement already total).
        """
        from engine.metrics import cohen_kappa

        with self._read() as conn:
            reviewers = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT reviewer FROM reviews WHERE action != 'undo' ORDER BY reviewer"
                )
            ]
            per_reviewer: dict[str, dict[int, str]] = {}
            for reviewer in reviewers:
                current = current_reviews(conn, reviewer=reviewer)
                per_reviewer[reviewer] = {
                    image_id: single
                    for image_id, review in current.items()
                    if (single := single_label(review)) is not None
                }
            ai = {
                r["image_id"]: r["label"]
                for r in latest_prediction_rows(conn, active_hash(conn))
                if r["label"] is not None and r["triage"] != "error"
            }
        reviewers = [r for r in reviewers if per_reviewer[r]]
        categories = list(labels) if labels else []
        seen = set(categories)
        extra = {v for d in (*per_reviewer.values(), ai) for v in d.values()} - seen
        categories += sorted(extra)
        index = {c: i for i, c in enumerate(categories)}

        def kappa(x: dict[int, str], y: dict[int, str]) -> tuple[int, float | None]:
            common = sorted(x.keys() & y.keys())
            if not common:
                return 0, None
            value = cohen_kappa(
                [index[x[i]] for i in common],
                [index[y[i]] for i in common],
                n_classes=len(categories),
                weights=weights,
            )
            return len(common), (None if math.isnan(value) else float(value))

        pairs = []
        for i, a in enumerate(reviewers):
            for b in reviewers[i + 1 :]:
                n, k = kappa(per_reviewer[a], per_reviewer[b])
                pairs.append({"a": a, "b": b, "n": n, "kappa": k})
        with_ai = []
        for reviewer in reviewers:
            n, k = kappa(per_reviewer[reviewer], ai)
            with_ai.append({"reviewer": reviewer, "n": n, "kappa": k})
        return {"reviewers": reviewers, "pairs": pairs, "with_ai": with_ai}

    def patient_rollup(self) -> list[dict]:
        """Per patient: image count, most urgent triage per eye, and whether referred.

        A patient is referred when any image's latest triage (active model) is
        needs-review, ungradable, out-of-distribution or error. Images without a patient
        are left out; images not yet screened are counted in ``unscreened``. Eyes are
        ``right``, ``left`` or ``unknown``.
        """
        with self._read() as conn:
            triage = {
                r["image_id"]: r["triage"] for r in latest_prediction_rows(conn, active_hash(conn))
            }
            images = conn.execute(
                "SELECT id, patient, eye FROM images WHERE patient IS NOT NULL ORDER BY patient, id"
            ).fetchall()
        patients: dict[str, dict] = {}
        for image in images:
            entry = patients.setdefault(
                image["patient"],
                {
                    "patient": image["patient"],
                    "images": 0,
                    "unscreened": 0,
                    "eyes": {},
                    "triage_counts": {},
                    "referred": False,
                },
            )
            entry["images"] += 1
            state = triage.get(image["id"])
            if state is None:
                entry["unscreened"] += 1
                continue
            entry["triage_counts"][state] = entry["triage_counts"].get(state, 0) + 1
            eye = image["eye"] or "unknown"
            previous = entry["eyes"].get(eye)
            if previous is None or TRIAGE_SEVERITY.index(state) < TRIAGE_SEVERITY.index(previous):
                entry["eyes"][eye] = state
            if state in REFERRED_STATES:
                entry["referred"] = True
        return list(patients.values())

    def dashboard_totals(self) -> dict:
        """The dashboard's figures in one snapshot.

        ``n_images``; the active model's ``model_hash`` and ``model_name`` (``None`` when
        none is active; predictions then come from any model); ``n_screened`` and
        ``triage_counts`` over each image's latest prediction; ``n_reviewed``, screened
        images with a current review; ``compared``, one ``(reviewed label, AI label,
        AI confidence)`` per reviewed image with one label on both sides; and
        ``left_out``, reviewed images that cannot be compared (several labels, or no AI
        label because of an error).
        """
        with self._read() as conn:
            n_images = int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
            active = conn.execute("SELECT hash, name FROM models WHERE active = 1").fetchone()
            model_hash = None if active is None else str(active["hash"])
            latest = {r["image_id"]: r for r in latest_prediction_rows(conn, model_hash)}
            current = current_reviews(conn)
        triage_counts = dict.fromkeys(TRIAGE_STATES, 0)
        for row in latest.values():
            triage_counts[row["triage"]] = triage_counts.get(row["triage"], 0) + 1
        n_reviewed, left_out = 0, 0
        compared: list[tuple[str, str, float | None]] = []
        for image_id, review in current.items():
            prediction = latest.get(image_id)
            if prediction is None:
                continue
            n_reviewed += 1
            reviewed = single_label(review)
            if reviewed is None or prediction["label"] is None:
                left_out += 1
                continue
            compared.append((reviewed, prediction["label"], prediction["confidence"]))
        return {
            "n_images": n_images,
            "model_hash": model_hash,
            "model_name": None if active is None else active["name"],
            "n_screened": len(latest),
            "triage_counts": triage_counts,
            "n_reviewed": n_reviewed,
            "compared": compared,
            "left_out": left_out,
        }
