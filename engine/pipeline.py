"""Decode images in worker threads while the model runs, and hand out ordered batches.

Pillow releases the GIL while it decodes and resizes, so threads overlap decoding with the
model's forward pass without the cost (or the frozen-app pitfalls) of worker processes.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .images import Decoded, ImageError
from .tasks import TaskState


@dataclass
class Batch:
    """Ordered slice of the input: the decoded images and the failures among them."""

    indices: list[int]  # positions in the input sequence of the decoded images
    arrays: np.ndarray | None  # (n, H, W, 3) uint8, None when every image failed
    decoded: list[Decoded]
    errors: list[tuple[int, str]]  # (position, reason) for files that could not be used
    start: int  # position of the first input item of this batch
    stop: int


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


def decode_or_reason(decode: Callable[[Path], Decoded], path: Path) -> Decoded | str:
    """The decoded image, or the reason in words why this file cannot be used."""
    try:
        return decode(path)
    except ImageError as e:
        return e.reason
    except MemoryError:
        return "not enough memory to decode this image"
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
        return f"unexpected error while decoding ({type(e).__name__}: {e})"


def iter_decoded_batches(
    paths: Sequence[Path],
    decode: Callable[[Path], Decoded],
    batch_size: int = 32,
    workers: int | None = None,
    state: TaskState | None = None,
) -> Iterator[Batch]:
    """Yield batches in input order; a bad file becomes an error entry, never an exception."""
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    workers = workers or default_workers()
    window = max(2 * batch_size, 4 * workers)

    def safe(p: Path) -> Decoded | str:
        return decode_or_reason(decode, p)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[int, Future[Any]]] = deque()
        next_i = 0
        start = 0
        while start < len(paths):
            if state is not None and state.cancelled():
                for _, fut in pending:
                    fut.cancel()
                return
            while next_i < len(paths) and len(pending) < window:
                pending.append((next_i, pool.submit(safe, paths[next_i])))
                next_i += 1
            stop = min(start + batch_size, len(paths))
            indices: list[int] = []
            decoded: list[Decoded] = []
            errors: list[tuple[int, str]] = []
            while pending and pending[0][0] < stop:
                i, fut = pending.popleft()
                out = fut.result()
                if isinstance(out, str):
                    errors.append((i, out))
                else:
                    indices.append(i)
                    decoded.append(out)
                if next_i < len(paths):
                    pending.append((next_i, pool.submit(safe, paths[next_i])))
                    next_i += 1
            arrays = np.stack([d.array for d in decoded]) if decoded else None
            yield Batch(indices, arrays, decoded, errors, start, stop)
            start = stop
