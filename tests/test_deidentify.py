"""De-identified exports keep the findings and drop who the patients are."""

from __future__ import annotations

from engine.deidentify import deidentified_columns, deidentify_rows


def test_patients_become_pseudonyms_dates_become_visit_numbers_paths_are_replaced():
    rows = [
        {
            "path": "/clinic/1221_OD_f.jpg",
            "patient": "1221",
            "eye": "right",
            "date": "2024-05-02",
            "sha256": "ab",
            "label": "DME",
            "patient_name": "Doe, Jane",
            "note": "Jane said...",
        },
        {
            "path": "/clinic/1221_OD_oct.dcm",
            "patient": "1221",
            "eye": "right",
            "date": "2023-01-09",
            "sha256": "cd",
            "label": "NORMAL",
        },
        {
            "path": "/clinic/0736.jpg",
            "patient": "0736",
            "eye": "left",
            "date": "2024-05-02",
            "sha256": "ef",
            "label": "NORMAL",
            "reviewer": "dr. ana",
        },
        {"path": "/clinic/1.2.840.5.17", "patient": None, "eye": None, "date": None, "label": "x"},
    ]
    out = deidentify_rows(rows)
    assert [r["patient"] for r in out] == ["patient-001", "patient-001", "patient-002", None]
    assert [r["visit"] for r in out] == [2, 1, 1, None]  # by date within each patient
    assert [r["path"] for r in out] == [
        "item-0001.jpg",
        "item-0002.dcm",
        "item-0003.jpg",
        "item-0004",
    ]
    for r in out:
        assert not {"sha256", "patient_name", "note", "date"} & set(r)
    assert out[0]["label"] == "DME" and out[2]["reviewer"] == "dr. ana"
    assert rows[0]["patient"] == "1221"  # the input is not changed
    text = repr(out)
    assert "1221" not in text and "Jane" not in text and "2024" not in text


def test_deidentified_columns_drop_identifiers_and_add_the_visit():
    cols = deidentified_columns(["path", "patient", "eye", "date", "sha256", "label"])
    assert cols == ["path", "patient", "eye", "visit", "label"]
