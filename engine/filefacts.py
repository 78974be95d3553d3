"""Who, which eye and when: what an item's file says, before what its name suggests.

A DICOM file carries the patient ID, the laterality, the acquisition date and the device;
a volume folder's ``volume.json`` may carry the same; otherwise the patient and eye are
parsed from the file name (:mod:`engine.naming`). The file wins, field by field, and every
value says where it came from. The patient's name is only kept when the caller asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .naming import normalise_date, normalise_eye, parse_patient_eye

if TYPE_CHECKING:
    from .volumes import Item

FACT_FIELDS = ("patient", "eye", "date")


def item_facts(item: Item, keep_names: bool = False, pattern: str | None = None) -> dict[str, Any]:
    """``patient``, ``eye``, ``date`` (and device fields for DICOM) with ``facts_from``.

    ``facts_from`` maps each of patient/eye/date to ``"dicom"``, ``"volume.json"`` or
    ``"file name"`` (absent when nothing is known).
    """
    facts: dict[str, Any] = {f: None for f in FACT_FIELDS}
    source: dict[str, str] = {}
    if item.info is not None:
        dicom = item.info.facts(keep_names=keep_names)
        for key, value in dicom.items():
            if key in FACT_FIELDS:
                if value:
                    facts[key] = value
                    source[key] = "dicom"
            elif value is not None:
                facts[key] = value
    if item.marker:
        m = item.marker
        values = {
            "patient": str(m.get("patient") or "").strip() or None,
            "eye": normalise_eye(m.get("eye")),
            "date": normalise_date(m.get("date")),
        }
        for key, value in values.items():
            if value and not facts[key]:
                facts[key] = value
                source[key] = "volume.json"
        if keep_names and m.get("patient_name") and not facts.get("patient_name"):
            facts["patient_name"] = str(m["patient_name"])
    if not facts["patient"] or not facts["eye"]:
        patient, eye = parse_patient_eye(item.path.name, pattern)
        for key, value in (("patient", patient), ("eye", eye)):
            if value and not facts[key]:
                facts[key] = value
                source[key] = "file name"
    facts["facts_from"] = source
    return facts
