"""What to screen: a folder (walked) or a manifest (listed), with patient and eye if known.

An archive is usually described by a table rather than a folder tree: a manifest is a CSV
or Parquet file with a ``path`` column and optional ``patient`` and ``eye`` columns.
Relative paths are taken from the manifest's own folder. Listing is cheap at any size (no
directory walk over shared storage), and the patient and eye given there win over what
the file name suggests. Parquet needs pyarrow (part of the ``cluster`` extra).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import discover_images
from .naming import normalise_eye

MANIFEST_SUFFIXES = (".csv", ".parquet")
PYARROW_MISSING = "reading Parquet needs pyarrow: pip install 'eyetriage[cluster]'"


class ManifestError(ValueError):
    """A manifest that cannot be used, with the file and the reason."""


@dataclass
class Source:
    """The files to screen, in order, and what the manifest said about them."""

    paths: list[Path]
    known_facts: dict[str, dict[str, Any]] = field(default_factory=dict)  # by resolved path
    duplicates: int = 0  # manifest rows naming a file already listed (screened once)


def is_manifest(source: str | Path) -> bool:
    p = Path(source)
    return p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES


def load_source(source: str | Path) -> Source:
    """A folder (or one image) is walked; a ``.csv``/``.parquet`` file is read as a manifest."""
    if is_manifest(source):
        return read_manifest(source)
    return Source(discover_images(source))


def read_manifest(manifest: str | Path) -> Source:
    """The rows of a manifest; a missing ``path`` column or a bad eye value is an error."""
    manifest = Path(manifest)
    rows = _read_parquet(manifest) if manifest.suffix.lower() == ".parquet" else _read_csv(manifest)
    base = manifest.resolve().parent
    paths: list[Path] = []
    known: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        raw = str(row.get("path") or "").strip()
        if not raw:
            raise ManifestError(f"{manifest.name} row {n}: empty path")
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else base / p
        key = str(p.resolve())
        if key in known:
            duplicates += 1
            continue
        raw_eye = str(row.get("eye") or "").strip()
        eye = normalise_eye(raw_eye)
        if raw_eye and eye is None:
            raise ManifestError(
                f"{manifest.name} row {n}: eye {raw_eye!r} is not one of right/left/R/L/OD/OS/OI"
            )
        patient = str(row.get("patient") or "").strip() or None
        known[key] = {"patient": patient, "eye": eye}
        paths.append(p)
    return Source(paths, known, duplicates)


def _read_csv(manifest: Path) -> list[dict[str, Any]]:
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            _check_columns(manifest, reader.fieldnames or [])
            return list(reader)
    except UnicodeDecodeError:
        raise ManifestError(f"{manifest.name}: not a UTF-8 text CSV file") from None
    except csv.Error as e:
        raise ManifestError(f"{manifest.name}: not a readable CSV file ({e})") from None


def _read_parquet(manifest: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ManifestError(f"{manifest.name}: {PYARROW_MISSING}") from None
    try:
        schema = pq.read_schema(manifest)
        _check_columns(manifest, schema.names)
        wanted = [c for c in ("path", "patient", "eye") if c in schema.names]
        return pq.read_table(manifest, columns=wanted).to_pylist()
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise ManifestError(f"{manifest.name}: not a readable Parquet file ({e})") from None


def _check_columns(manifest: Path, columns: list[str]) -> None:
    if "path" not in columns:
        raise ManifestError(
            f"{manifest.name}: a manifest needs a 'path' column (optional: patient, eye); "
            f"found {', '.join(columns) or 'no columns'}"
        )
