"""One referral decision per patient, eye and visit, with its parts listed."""

from __future__ import annotations

from engine.visits import visit_rollup


def test_a_photograph_and_a_volume_of_one_eye_on_one_day_are_one_decision():
    rows = [
        {
            "path": "f.jpg",
            "patient": "1221",
            "eye": "right",
            "date": "2024-05-02",
            "triage": "auto-cleared",
        },
        {
            "path": "oct.dcm",
            "patient": "1221",
            "eye": "right",
            "date": "2024-05-02",
            "triage": "needs-review",
            "kind": "volume",
        },
        {
            "path": "l.jpg",
            "patient": "1221",
            "eye": "left",
            "date": "2024-05-02",
            "triage": "auto-cleared",
        },
        {
            "path": "old.jpg",
            "patient": "1221",
            "eye": "right",
            "date": "2023-01-09",
            "triage": "auto-cleared",
        },
        {"path": "x.jpg", "patient": "1221", "eye": None, "date": None, "triage": None},
        {
            "path": "anon.jpg",
            "patient": None,
            "eye": "left",
            "date": "2024-05-02",
            "triage": "error",
        },
    ]
    visits = visit_rollup(rows)
    keys = [(v["eye"], v["date"]) for v in visits]
    assert keys == [
        ("unknown", None),
        ("right", "2023-01-09"),
        ("left", "2024-05-02"),
        ("right", "2024-05-02"),
    ]
    today_right = visits[3]
    assert [p["path"] for p in today_right["parts"]] == ["f.jpg", "oct.dcm"]
    assert today_right["referred"] and today_right["triage"] == "needs-review"
    assert today_right["decision"] == "refer"
    assert visits[2]["decision"] == "no referral needed"
    assert visits[0]["decision"] == "not screened" and visits[0]["unscreened"] == 1
    assert all(v["patient"] == "1221" for v in visits)  # rows without a patient are left out


def test_an_unscreened_part_leaves_a_cleared_visit_incomplete():
    rows = [
        {"patient": "7", "eye": "left", "date": "2024-01-01", "triage": "auto-cleared"},
        {"patient": "7", "eye": "left", "date": "2024-01-01", "triage": None},
    ]
    [visit] = visit_rollup(rows)
    assert visit["decision"] == "incomplete" and not visit["referred"]
