"""Screening results as a CSV or Parquet file, written as they come.

Rows go to the hidden temporary file of :func:`engine.fileio.atomic_file` beside the
target, which replaces it when the run ends, also after Ctrl+C (with the rows so far), so
the file never holds half a row; a failed run leaves the target untouched. A name ending in
``.parquet`` gives Parquet, which keeps numbers as numbers (full precision) and needs
pyarrow (part of the ``cluster`` extra); any other name gives CSV.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .csvsafe import SafeDictWriter
from .fileio import atomic_file
from .safefiles import path_text
from .screen import ScreenResult

NUMBER_COLUMNS = ("confidence", "entropy", "mutual_info", "top_std", "ood_score")


def result_record(r: ScreenResult, labels: Sequence[str]) -> dict[str, Any]:
    """One typed row (numbers as floats, missing as None) for a columnar results file."""
    row: dict[str, Any] = {
        "path": path_text(r.path),  # names that are not UTF-8 as \\xNN text
        "label": r.label,
        "confidence": r.confidence,
        "error": r.error,
    }
    for lab in labels:
        row[f"p_{lab}"] = r.probabilities.get(lab)
    row.update(
        {
            "entropy": r.entropy,
            "mutual_info": r.mutual_info,
            "top_std": r.top_std,
            "conformal_set": "|".join(r.conformal_set) if r.conformal_set else None,
            "ood_score": r.ood_score,
            "quality_ok": r.quality_ok,
            "quality": "; ".join(r.quality.get("reasons", [])) if r.quality else None,
            "triage": r.triage,
            "triage_reason": r.triage_reason,
        }
    )
    return row


class ResultsFile:
    """Append chunks of results to ``out`` (.csv or .parquet); :meth:`close` renames it in."""

    def __init__(
        self,
        out: str | Path,
        columns: Sequence[str],
        labels: Sequence[str],
        csv_row: Callable[[ScreenResult, Sequence[str]], dict[str, Any]],
    ) -> None:
        self.out = Path(out)
        self.kind = ".parquet" if self.out.suffix.lower() == ".parquet" else ".csv"
        self.columns = list(columns)
        self.labels = list(labels)
        self.rows = 0
        self._closing = contextlib.ExitStack()
        if self.kind == ".csv":
            self._csv_row = csv_row
            self._file = self._closing.enter_context(
                atomic_file(self.out, "w", newline="", encoding="utf-8")
            )
            self._csv = SafeDictWriter(self._file, fieldnames=self.columns)  # no formulas
            self._csv.writeheader()
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(
                    f"{self.out.name}: writing Parquet needs pyarrow: "
                    "pip install 'eyetriage[cluster]'"
                ) from None
            numeric = set(NUMBER_COLUMNS) | {f"p_{lab}" for lab in self.labels}
            self._schema = pa.schema(
                [
                    (
                        c,
                        pa.float64()
                        if c in numeric
                        else pa.bool_()
                        if c == "quality_ok"
                        else pa.string(),
                    )
                    for c in self.columns
                ]
            )
            self._file = self._closing.enter_context(atomic_file(self.out, "wb"))
            self._parquet = pq.ParquetWriter(self._file, self._schema)

    def write(self, chunk: Sequence[ScreenResult]) -> None:
        if self.kind == ".csv":
            for r in chunk:
                self._csv.writerow(self._csv_row(r, self.labels))
            self._file.flush()
        elif chunk:
            import pyarrow as pa

            records = [result_record(r, self.labels) for r in chunk]
            self._parquet.write_table(pa.Table.from_pylist(records, schema=self._schema))
        self.rows += len(chunk)

    def close(self, publish: bool = True) -> None:
        """Finish the file (also after an interruption) and move it into place.

        ``publish=False`` (a failed run) removes the temporary file; the target is untouched.
        """
        if publish:
            if self.kind == ".parquet":
                self._parquet.close()  # writes the footer; the file itself stays open
            self._closing.close()
            return
        if self.kind == ".parquet":
            with contextlib.suppress(Exception):  # the run already failed; say that instead
                self._parquet.close()
        failed = RuntimeError("the run failed")
        self._closing.__exit__(RuntimeError, failed, None)
