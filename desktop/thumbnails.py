"""Worklist thumbnails: made in one background worker, cached as small JPEG files.

Thumbnails are kept in the workspace cache, keyed by the image's sha256, and handed to the
worklist model, which shows them (``DecorationRole``) once ready.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, QTimer, Signal
from PySide6.QtGui import QIcon, QPixmap

THUMB_SIDE = 96  # stored thumbnail size (crisp at 200% scaling of a 48 px cell)
WORKER_START_DELAY_MS = 100  # see ThumbnailCache._request


def make_thumbnail(
    path: str | Path, out: Path, side: int = THUMB_SIDE, slice_index: int | None = None
) -> Path:
    """Decode ``path`` small (JPEG draft) and write a ``side`` px JPEG to ``out`` atomically.

    For an OCT volume ``slice_index`` (0-based) names the B-scan to show: its most
    suspicious one."""
    from engine.fileio import atomic_file
    from engine.images import open_image, to_rgb

    source: Any = path
    if slice_index is not None:
        from engine.volumes import slice_source

        source = slice_source(path, slice_index)
    im, _ = open_image(source, min_side=side)
    im = to_rgb(im)
    im.thumbnail((side, side))
    with atomic_file(out, "wb") as f:
        im.save(f, "JPEG", quality=85)
    return out


class ThumbnailCache(QObject):
    """Thumbnails made on demand in one background worker; LRU of pixmaps on the GUI side.

    ``get(row)`` returns a pixmap if ready, else queues the image and returns None;
    ``ready(image_id)`` is emitted when a thumbnail file exists.
    """

    ready = Signal(int)

    def __init__(
        self, cache_dir: Path, parent: QObject | None = None, max_pixmaps: int = 3000
    ) -> None:
        super().__init__(parent)
        self.cache_dir = Path(cache_dir)
        self._pixmaps: OrderedDict[int, QPixmap] = OrderedDict()
        # one icon per thumbnail, kept with it: an icon keeps its cell-sized copy, so a
        # repaint does not scale the thumbnail down again
        self._icons: dict[int, QIcon] = {}
        self._max = max_pixmaps
        self._queue: deque[tuple[int, str, str, int | None]] = deque()
        self._queued: set[int] = set()
        self._failed: set[int] = set()
        self._lock = threading.Lock()
        self._running = False
        self._starting = False  # a worker is due to start (see _request)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._worker: Any = None
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)

    def file_for(self, sha256: str) -> Path:
        return self.cache_dir / f"{sha256}.jpg"

    def get(self, row: dict) -> QPixmap | None:
        image_id = row["image_id"]
        pm = self._pixmaps.get(image_id)
        if pm is not None:
            self._pixmaps.move_to_end(image_id)
            return pm
        sha = row.get("sha256")
        if not sha or image_id in self._failed:
            return None
        f = self.file_for(sha)
        if f.is_file():
            pm = QPixmap(str(f))
            if not pm.isNull():
                self._remember(image_id, pm)
                return pm
        key = row.get("key_slice") if row.get("kind") == "volume" else None
        self._request(image_id, row["path"], sha, None if key is None else int(key) - 1)
        return None

    def icon(self, row: dict) -> QIcon | None:
        """The thumbnail as an icon (the same icon each time), or None as :meth:`get`."""
        icon = self._icons.get(row["image_id"])
        if icon is not None:
            self._pixmaps.move_to_end(row["image_id"])
            return icon
        pm = self.get(row)
        if pm is None:
            return None
        icon = self._icons[row["image_id"]] = QIcon(pm)
        return icon

    def _remember(self, image_id: int, pm: QPixmap) -> None:
        self._pixmaps[image_id] = pm
        self._icons.pop(image_id, None)
        while len(self._pixmaps) > self._max:
            old, _ = self._pixmaps.popitem(last=False)
            self._icons.pop(old, None)

    def _request(self, image_id: int, path: str, sha: str, slice_index: int | None = None) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            if image_id in self._queued:
                return
            self._queued.add(image_id)
            self._queue.append((image_id, path, sha, slice_index))
            start = not self._running
            if start:
                self._running = True
                self._starting = True
                self._idle.clear()
        if start:
            # requests come from a repaint of the worklist: the worker starts after it, so
            # the repaint's many calls into Python do not take turns with the worker's
            QTimer.singleShot(WORKER_START_DELAY_MS, self, self._start_worker)

    def _start_worker(self) -> None:
        from superqt.utils import create_worker

        with self._lock:
            self._starting = False
            if self._stop.is_set():  # shut down before the worker started (idle already)
                self._running = False
                return

        worker = create_worker(
            self._work, _start_thread=False, _connect={"errored": self._on_error}
        )
        worker.yielded.connect(self._on_made)
        self._worker = worker
        # on the cache's own one-thread pool: a long run of thumbnails never holds a thread
        # of the global pool, where loading the worklist, exports and reports wait their turn
        self._pool.start(worker)

    def _work(self):  # noqa: ANN202 - generator run in the worker thread
        try:
            batch: list[tuple[int, bool]] = []
            while not self._stop.is_set():
                with self._lock:
                    if not self._queue:
                        self._running = False
                        break
                    image_id, path, sha, slice_index = self._queue.popleft()
                out = self.file_for(sha)
                ok = True
                if not out.is_file():
                    try:
                        make_thumbnail(path, out, slice_index=slice_index)
                    except Exception:  # noqa: BLE001 - a bad file just has no thumbnail
                        ok = False
                batch.append((image_id, ok))
                if len(batch) >= 8:
                    yield batch
                    batch = []
            if batch:
                yield batch
        finally:
            with self._lock:
                self._running = False
            self._idle.set()

    def _on_made(self, batch: list[tuple[int, bool]]) -> None:
        for image_id, ok in batch:
            self._queued.discard(image_id)
            if ok:
                self.ready.emit(image_id)
            else:
                self._failed.add(image_id)

    def _on_error(self, exc: Exception) -> None:  # pragma: no cover - defensive
        from .crash import log

        log.warning("thumbnail worker failed: %s", exc)

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        """Stop making thumbnails and wait for the worker; True when it has stopped."""
        self._stop.set()
        with self._lock:
            self._queue.clear()
            if self._starting:  # the worker was due to start: it never will
                self._starting = False
                self._running = False
                self._idle.set()
        return self._idle.wait(timeout_s)
