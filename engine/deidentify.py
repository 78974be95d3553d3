"""De-identified exports: results a clinic can share without saying who the patients are.

What identifies a patient in an export row, and what becomes of it:

- ``patient`` (an ID from the file or its name) becomes a pseudonym ``patient-001``, the
  same for all of one patient's rows within one export (numbered in row order);
- the acquisition ``date`` becomes ``visit``, that patient's visit number in date order
  (``visit 1`` is the earliest), so the roll-up by eye and visit survives; the year and
  the month are dropped with the day;
- ``path`` (file names often carry an ID or a name) becomes ``item-0001``, the file name's
  extension kept so the kind of file stays readable; ``sha256`` (which would link back to
  the original file) and DICOM study/series UIDs are dropped;
- ``patient_name`` and free-text ``note`` are dropped.

Everything the model and the reviewers said (labels, probabilities, triage, reviewer names)
stays. The mapping is not written anywhere: a de-identified export cannot be re-identified
from EyeTriage's side without the workspace itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any

DROPPED = ("sha256", "patient_name", "note", "notes", "study_uid", "series_uid", "current_sha256")
DATE_FIELDS = ("date", "acquired", "acquisition_date")


def _suffix(path: str) -> str:
    name = PurePath(str(path).replace("\\", "/")).name
    suffix = PurePath(name).suffix.lower()
    return suffix if suffix and not suffix[1:].isdigit() else ""


def deidentify_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``rows`` with patients pseudonymised, dates turned into visit numbers,
    paths replaced and identifying fields dropped (see the module docstring)."""
    rows = [dict(r) for r in rows]
    patients: dict[str, str] = {}
    items: dict[str, str] = {}
    visits: dict[str, dict[str, int]] = {}
    for r in rows:  # visit numbers per patient, in date order
        patient = r.get("patient")
        date = next((r.get(f) for f in DATE_FIELDS if r.get(f)), None)
        if patient and date:
            visits.setdefault(str(patient), {})[str(date)] = 0
    for dates in visits.values():
        for k, d in enumerate(sorted(dates), start=1):
            dates[d] = k
    out = []
    for r in rows:
        patient = r.get("patient")
        date = next((r.get(f) for f in DATE_FIELDS if r.get(f)), None)
        if patient:
            alias = patients.setdefault(str(patient), f"patient-{len(patients) + 1:03d}")
            r["patient"] = alias
        visit = visits.get(str(patient), {}).get(str(date)) if patient and date else None
        for f in DATE_FIELDS:
            if f in r:
                del r[f]
        r["visit"] = visit
        if r.get("path"):
            key = str(r["path"])
            r["path"] = items.setdefault(key, f"item-{len(items) + 1:04d}{_suffix(key)}")
        for f in DROPPED:
            r.pop(f, None)
        out.append(r)
    return out


def deidentified_columns(columns: Sequence[str]) -> list[str]:
    """The export's column order with identifying columns removed and ``visit`` added."""
    keep = [c for c in columns if c not in DROPPED and c not in DATE_FIELDS]
    if "visit" not in keep:
        at = keep.index("eye") + 1 if "eye" in keep else len(keep)
        keep.insert(at, "visit")
    return keep
