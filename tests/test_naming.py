"""Patient and eye parsed from file names and patient sheets."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.naming import load_patient_csv, normalise_eye, parse_patient_eye


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1221_OD_f_3.jpg", ("1221", "right")),
        ("1221_OS_f_3.jpg", ("1221", "left")),
        ("88_OI_f_1.JPG", ("88", "left")),
        ("1221-od.png", ("1221", "right")),
        ("123_left.jpeg", ("123", "left")),
        ("123_right.png", ("123", "right")),
        ("10_Right_2.tiff", ("10", "right")),
        ("P12-R.png", ("P12", "right")),
        ("sub01_L.tif", ("sub01", "left")),
        ("study_007_L_2.png", ("study_007", "left")),
        ("/data/clinic/1221_OD_f_3.jpg", ("1221", "right")),
        (r"C:\scans\123_left.jpeg", ("123", "left")),
    ],
)
def test_default_styles_give_patient_and_eye(name: str, expected: tuple) -> None:
    assert parse_patient_eye(name) == expected


@pytest.mark.parametrize("name", ["image001.png", "P12-Retina.png", "scan.left", "OD.png", ""])
def test_names_without_patient_and_eye_give_none(name: str) -> None:
    assert parse_patient_eye(name) == (None, None)


def test_custom_pattern_overrides_the_defaults() -> None:
    pattern = r"^pt(?P<patient>\d+)\.(?P<eye>OD|OS)\."
    assert parse_patient_eye("pt0042.OS.visit3.png", pattern) == ("0042", "left")
    assert parse_patient_eye("1221_OD_f_3.jpg", pattern) == (None, None)  # defaults not used
    assert parse_patient_eye("id-77.png", r"id-(?P<patient>\d+)") == ("77", None)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [(r"(?P<patient>\d+", "invalid file-name pattern"), (r"(\d+)_(OD|OS)", "named group")],
)
def test_bad_custom_patterns_are_reported(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_patient_eye("1_OD.png", pattern)


def test_eye_codes_are_normalised() -> None:
    assert [normalise_eye(v) for v in ("OD", "r", "Right", "os", "OI", "L", "OU", None)] == [
        "right",
        "right",
        "right",
        "left",
        "left",
        "left",
        None,
        None,
    ]


def test_patient_sheet_is_keyed_by_file_name(tmp_path: Path) -> None:
    sheet = tmp_path / "patients.csv"
    sheet.write_text(
        "\ufeffpath,patient,eye\n"  # spreadsheets often add a byte-order mark
        "/mnt/a/1.png,P1,OD\n"
        "2.png,P1,left\n"
        "3.png,,\n",
        encoding="utf-8",
    )
    assert load_patient_csv(sheet) == {
        "1.png": ("P1", "right"),
        "2.png": ("P1", "left"),
        "3.png": (None, None),
    }
    other = tmp_path / "ids.csv"
    other.write_text("file,subject\n4.png,S9\n", encoding="utf-8")
    assert load_patient_csv(other, "file", "subject", None) == {"4.png": ("S9", None)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,patient\n1.png,P1\n", r"missing column\(s\) \['eye'\]"),
        ("path,patient,eye\n1.png,P1,both\n", "row 2: eye 'both'"),
        ("path,patient,eye\n1.png,P1,R\nx/1.png,P2,R\n", "row 3: '1.png' already given"),
    ],
)
def test_bad_patient_sheets_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    sheet = tmp_path / "p.csv"
    sheet.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_patient_csv(sheet)
