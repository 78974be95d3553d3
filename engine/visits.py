"""Roll-up by eye and visit: one referral decision per patient, eye and acquisition date.

A visit may bring a fundus photograph and an OCT volume of the same eye; the clinician
decides once for that eye on that day. The visit is referred when any of its parts is
(the same rule as the patient roll-up: any part needing review, ungradable, unfamiliar or
unreadable), its state is the most urgent of its parts', and its parts are listed so the
decision shows what it rests on. Parts without a date form one visit of unknown date per
eye; images without a patient are left out, as in the patient roll-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .store import REFERRED_STATES

SEVERITY = (*REFERRED_STATES, "auto-cleared")  # most urgent first
UNKNOWN_EYE = "unknown"


def visit_rollup(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Visits from item rows (``patient``, ``eye``, ``date``, ``triage`` and anything else).

    Returns one dict per (patient, eye, date) in patient, date, eye order, with ``parts``
    (the rows, in their order), ``triage`` (most urgent screened part, None when nothing is
    screened), ``referred``, ``unscreened`` (parts without a triage) and ``decision``.
    """
    visits: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        patient = row.get("patient")
        if not patient:
            continue
        eye = row.get("eye") or UNKNOWN_EYE
        date = row.get("date") or ""
        key = (str(patient), str(eye), str(date))
        visit = visits.setdefault(
            key,
            {
                "patient": key[0],
                "eye": key[1],
                "date": date or None,
                "parts": [],
                "triage": None,
                "referred": False,
                "unscreened": 0,
            },
        )
        visit["parts"].append(row)
        state = row.get("triage")
        if state not in SEVERITY:
            visit["unscreened"] += 1
            continue
        if visit["triage"] is None or SEVERITY.index(state) < SEVERITY.index(visit["triage"]):
            visit["triage"] = state
        if state in REFERRED_STATES:
            visit["referred"] = True
    out = sorted(visits.values(), key=lambda v: (v["patient"], v["date"] or "", v["eye"]))
    for v in out:
        v["decision"] = (
            "refer"
            if v["referred"]
            else "not screened"
            if v["triage"] is None
            else "no referral needed"
            if not v["unscreened"]
            else "incomplete"
        )
    return out
