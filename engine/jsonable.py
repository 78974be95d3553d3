"""The one JSON sanitiser: anything the engine returns, made valid JSON.

numpy scalars and arrays become Python numbers and lists, NaN and infinities become
``None`` (JSON has no NaN), paths and other objects become strings, tuples become lists.
Used for model-file metrics, the CLI's ``--json`` output and the worker's event lines.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any


def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return to_jsonable(value.tolist())
    return str(value)
