"""The one CSV writer: no cell can become a spreadsheet formula.

A file name such as ``=HYPERLINK("http://evil.example","click").jpg``, a reviewer typed
as ``@SUM(...)`` or a label from a foreign model file would run as a formula when a
results file is opened in Excel, LibreOffice or Google Sheets (CSV injection). Every CSV
the program writes goes through :class:`SafeDictWriter` or :func:`safe_writer`, which
prefix a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
with an apostrophe (the spreadsheet convention for "this is text"; OWASP's advice). Plain
numbers written as text (``-0.25``, ``+1e-3``) are left alone, so numeric columns stay
numeric. Standard library only: the store imports it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from typing import IO, Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|nan)", re.I)


def formula_safe(value: Any) -> Any:
    """``value`` unchanged unless it is text a spreadsheet would run as a formula, which
    gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        if not _NUMBER.fullmatch(value):
            return "'" + value
    return value


def formula_plain(value: str) -> str:
    """The original text of a cell :func:`formula_safe` protected (reading an export back)."""
    if value.startswith("'") and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


class SafeDictWriter(csv.DictWriter):
    """:class:`csv.DictWriter` whose every cell (the header too) passes :func:`formula_safe`."""

    def writerow(self, rowdict: Mapping[str, Any]) -> Any:
        return super().writerow({k: formula_safe(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]) -> None:
        for row in rowdicts:
            self.writerow(row)


class _SafeWriter:
    def __init__(self, handle: IO[str], **kwargs: Any) -> None:
        self._writer = csv.writer(handle, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([formula_safe(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def safe_writer(handle: IO[str], **kwargs: Any) -> _SafeWriter:
    """Like :func:`csv.writer`, with every cell passed through :func:`formula_safe`."""
    return _SafeWriter(handle, **kwargs)
