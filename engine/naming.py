"""Patient and eye from image file names or a patient sheet.

Screening is rolled up per patient and per eye, but most image collections only encode
that in the file name (``1221_OD_f_3.jpg``, EyePACS ``123_left.jpeg``). This module turns
names into ``(patient, eye)`` with eye normalised to ``"right"``, ``"left"`` or ``None``.
Standard library only, so it is cheap to import.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from .safefiles import UnreadableFile, read_text

__all__ = [
    "DEFAULT_PATTERNS",
    "load_patient_csv",
    "normalise_date",
    "normalise_eye",
    "parse_patient_eye",
]

_RIGHT = {"r", "right", "od", "re", "rt"}
_LEFT = {"l", "left", "os", "oi", "le", "lt"}

# Tried in order against the file name without its extension; the first match wins.
# The eye token must be followed by a separator or the end, so "P12-Retina" is not "right".
DEFAULT_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        # 1221_OD_f_3, 1221-OS, 1221_OI_2
        r"^(?P<patient>[^_\-\s.]+)[_\-\s.](?P<eye>OD|OS|OI)(?=$|[_\-\s.])",
        # EyePACS 123_left, 123_right_2
        r"^(?P<patient>.+?)[_\-\s.](?P<eye>left|right)(?=$|[_\-\s.])",
        # P12-R, sub01_L, 7_R_2
        r"^(?P<patient>.+?)[_\-\s.](?P<eye>L|R)(?=$|[_\-\s.])",
    )
)


def normalise_eye(value: str | None) -> str | None:
    """Map OD/OS/OI/R/L/right/left (any case) to ``"right"``/``"left"``; else ``None``."""
    if value is None:
        return None
    token = str(value).strip().lower()
    if token in _RIGHT:
        return "right"
    if token in _LEFT:
        return "left"
    return None


def normalise_date(value: object) -> str | None:
    """``YYYYMMDD``, ``YYYY-MM-DD`` or a DICOM date-time to ``YYYY-MM-DD``; else ``None``."""
    text = str(value or "").strip()
    if len(text) >= 10 and text[4] == "-" and text[7] == "-":
        text = text[:4] + text[5:7] + text[8:10]
    if len(text) < 8 or not text[:8].isdigit():
        return None
    y, m, d = int(text[:4]), int(text[4:6]), int(text[6:8])
    if not (1 <= m <= 12 and 1 <= d <= 31 and y > 1800):
        return None
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}"


def _file_name(name: str) -> str:
    """Last component of a POSIX or Windows path."""
    return re.split(r"[\\/]", str(name))[-1]


def _compile_custom(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid file-name pattern {pattern!r}: {exc}") from None
    if not {"patient", "eye"} & set(compiled.groupindex):
        raise ValueError(
            f"file-name pattern {pattern!r} needs a named group (?P<patient>...) "
            "and/or (?P<eye>...)"
        )
    return compiled


def parse_patient_eye(name: str, pattern: str | None = None) -> tuple[str | None, str | None]:
    """Return ``(patient, eye)`` parsed from a file name (a path is fine).

    Without ``pattern`` the default styles are tried on the name minus its extension.
    A custom ``pattern`` is a regex searched in the whole file name, with named groups
    ``patient`` and/or ``eye``; it replaces the defaults. Unparseable names give
    ``(None, None)``; an eye token that is not right/left gives eye ``None``.
    """
    file_name = _file_name(name)
    if pattern is not None:
        match = _compile_custom(pattern).search(file_name)
        if match is None:
            return None, None
        groups = match.groupdict()
        patient = (groups.get("patient") or "").strip() or None
        return patient, normalise_eye(groups.get("eye"))
    stem = file_name.rsplit(".", 1)[0] if "." in file_name.lstrip(".") else file_name
    for compiled in DEFAULT_PATTERNS:
        match = compiled.match(stem)
        if match:
            return match.group("patient"), normalise_eye(match.group("eye"))
    return None, None


def load_patient_csv(
    csv_path: str | Path,
    path_col: str = "path",
    patient_col: str = "patient",
    eye_col: str | None = "eye",
) -> dict[str, tuple[str | None, str | None]]:
    """Read a patient sheet into ``{file name: (patient, eye)}``.

    The path column may hold full paths or bare file names; the key is the file name so
    the sheet works wherever the images are mounted. ``eye_col=None`` reads no eye
    column. A missing column, an unrecognised eye value or one file name mapped to two
    different patients/eyes raises ``ValueError`` naming the row (header = row 1).
    """
    csv_path = Path(csv_path)
    result: dict[str, tuple[str | None, str | None]] = {}
    seen_at: dict[str, int] = {}
    try:
        text = read_text(csv_path)  # regular files only, like every file the user names
    except UnreadableFile as e:
        raise ValueError(str(e)) from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        wanted = [c for c in (path_col, patient_col, eye_col) if c is not None]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ValueError(f"{csv_path.name}: missing column(s) {missing}; found {list(header)}")
        for row_number, row in enumerate(reader, start=2):
            raw_path = (row.get(path_col) or "").strip()
            if not raw_path:
                raise ValueError(f"{csv_path.name} row {row_number}: empty {path_col!r}")
            patient = (row.get(patient_col) or "").strip() or None
            eye = None
            if eye_col is not None:
                raw_eye = (row.get(eye_col) or "").strip()
                eye = normalise_eye(raw_eye)
                if raw_eye and eye is None:
                    raise ValueError(
                        f"{csv_path.name} row {row_number}: eye {raw_eye!r} is not one of "
                        "right/left/R/L/OD/OS/OI"
                    )
            key = _file_name(raw_path)
            if key in result and result[key] != (patient, eye):
                raise ValueError(
                    f"{csv_path.name} row {row_number}: {key!r} already given as "
                    f"{result[key]} in row {seen_at[key]}"
                )
            result[key] = (patient, eye)
            seen_at.setdefault(key, row_number)
    return result
