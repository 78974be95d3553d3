"""Display images and attribution overlays for the review page, made off the GUI thread.

:class:`ImageLoader` runs two private thread pools of one thread each: decoding (images)
and the network (overlays), so one network is never used by two threads. Workers get plain
values (paths, hashes, a :class:`ModelHolder`), return ``QImage`` objects, always finish
and never touch a widget. Results are kept in small LRU caches so an image that comes back
on screen shows at once; the page asks for the current image first and prefetches the next
ones at a lower priority. Results of an earlier workspace are dropped by generation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal
from PySide6.QtGui import QImage
from superqt.utils import FunctionWorker

from .qimage import pil_to_qimage, pil_to_qimage_rgba

DISPLAY_LONGEST = 2048  # display images are reduced to this many pixels on the long side
IMAGE_CACHE_ITEMS = 16  # images, or B-scans of the volume being read and their neighbours
OVERLAY_CACHE_ITEMS = 8
IG_KWARGS = {"n_steps": 16, "internal_batch_size": 8}  # interactive on a CPU

# Priorities in the private pools: the image on screen first, then prefetching.
PRIORITY_CURRENT = 2
PRIORITY_PREFETCH = 0


class _LRU(OrderedDict):
    """A tiny least-recently-used dict (GUI thread only)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def get_fresh(self, key: Hashable) -> Any:
        if key not in self:
            return None
        self.move_to_end(key)
        return self[key]

    def put(self, key: Hashable, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


class ModelHolder:
    """A page's own model and attribution cache, made once by the first worker that asks.

    Both are created in a worker: importing the attribution stack (torch, captum) takes
    seconds and must never happen on the GUI thread.
    """

    def __init__(self, path: Path | None, cache_folder: Path | None = None) -> None:
        self.path = path
        self.cache_folder = cache_folder
        self._lock = threading.Lock()
        self._model: Any = None
        self._error: str | None = None
        self._cache: Any = None

    def cache(self) -> Any:
        """The :class:`engine.attribution.AttributionCache` (``None`` without a folder)."""
        with self._lock:
            if self._cache is None and self.cache_folder is not None:
                from engine.attribution import AttributionCache

                self._cache = AttributionCache(self.cache_folder)
            return self._cache

    def get(self) -> Any:
        """The :class:`engine.models.LoadedModel`; raises RuntimeError with a readable reason."""
        with self._lock:
            if self._model is None and self._error is None:
                if self.path is None:
                    self._error = (
                        "no model file is known for this workspace, so no overlays can be computed"
                    )
                else:
                    try:
                        from engine.models import load_model

                        self._model = load_model(self.path, device="auto")
                    except Exception as exc:  # noqa: BLE001 - reported to the reader as words
                        self._error = f"the model {Path(self.path).name} could not be loaded: {exc}"
            if self._error is not None:
                raise RuntimeError(self._error)
            return self._model


@dataclass
class OverlayResult:
    image: QImage
    target_label: str
    probability: float


def display_source(path: str, slice_index: int | None) -> Any:
    """What to decode: the file, or B-scan ``slice_index`` (0-based) of the volume at ``path``."""
    if slice_index is None:
        return path
    from engine.volumes import slice_source

    return slice_source(path, slice_index)


def load_display_qimage(
    path: str, longest: int = DISPLAY_LONGEST, slice_index: int | None = None
) -> QImage:
    """Decode, orient and reduce an image (or one B-scan of a volume) for display (worker
    side; no torch import)."""
    from engine.images import load_display_image

    return pil_to_qimage(load_display_image(display_source(path, slice_index), longest=longest))


def compute_overlay(
    holder: ModelHolder,
    path: str,
    sha256: str | None,
    method: str,
    longest: int = DISPLAY_LONGEST,
    slice_index: int | None = None,
) -> OverlayResult:
    """Attribution of the predicted class, drawn over the display image (worker side); for
    a volume, of B-scan ``slice_index``.

    The overlay is the fully tinted image (alpha 1); the viewer's opacity slider then
    blends it with the original, which is the same as drawing it at that alpha.
    """
    from engine.explain import explain_file
    from engine.images import load_display_image
    from engine.overlay import render_overlay

    lm = holder.get()
    kw = dict(IG_KWARGS) if method == "ig" else {}
    source = display_source(path, slice_index)
    if sha256 and slice_index is not None:
        sha256 = f"{sha256}#slice{slice_index + 1}"  # one cached map per B-scan
    exp = explain_file(lm, source, method=method, cache=holder.cache(), image_sha256=sha256, **kw)
    display = load_display_image(source, longest=longest)
    amap = exp.map_on_original(display.width, display.height)
    tinted = render_overlay(display, amap, alpha=1.0, contour_top_pct=10.0)
    return OverlayResult(pil_to_qimage_rgba(tinted), exp.target_label, float(exp.probability))


class ImageLoader(QObject):
    """Cached, prioritised loading of display images and overlays (GUI-thread object).

    Signals (GUI thread): ``image_ready(image_id, QImage)``, ``image_failed(image_id,
    message)``, ``overlay_ready(image_id, method, OverlayResult)`` and
    ``overlay_failed(image_id, method, message)``. A failure is remembered, so the same
    file is not retried until the workspace changes.
    """

    image_ready = Signal(int, object)
    image_failed = Signal(int, str)
    overlay_ready = Signal(int, str, object)
    overlay_failed = Signal(int, str, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._holder = ModelHolder(None)
        self._gen = 0
        self._closed = False
        self._images: _LRU = _LRU(IMAGE_CACHE_ITEMS)
        self._overlays: _LRU = _LRU(OVERLAY_CACHE_ITEMS)
        self._failed: dict[Hashable, str] = {}
        self._pending: dict[Hashable, FunctionWorker] = {}
        # workers of an earlier generation still running: referenced until they finish, or
        # their signals would be collected under them; their results are ignored
        self._retired: set[FunctionWorker] = set()
        self._io_pool = QThreadPool(self)
        self._io_pool.setMaxThreadCount(1)
        self._model_pool = QThreadPool(self)
        self._model_pool.setMaxThreadCount(1)  # one network, one thread (attribution hooks)

    # ------------------------------------------------------------------ state

    def reset(self, holder: ModelHolder) -> None:
        """A new workspace or model: forget everything; late results are ignored."""
        self._gen += 1
        self._holder = holder
        self.clear()

    def clear(self) -> None:
        """Forget cached and failed results; queued work no longer counts as pending."""
        self._images.clear()
        self._overlays.clear()
        self._failed.clear()
        self._retired.update(self._pending.values())
        self._pending.clear()

    def is_busy(self) -> bool:
        """True while any worker is queued or running."""
        return (
            bool(self._pending)
            or self._io_pool.activeThreadCount() > 0
            or self._model_pool.activeThreadCount() > 0
        )

    def shutdown(self) -> None:
        """Drop queued work and wait for the running workers."""
        if self._closed:
            return
        self._closed = True
        for worker in list(self._pending.values()):
            worker.quit()
        self._io_pool.clear()
        self._model_pool.clear()
        self._io_pool.waitForDone(-1)
        self._model_pool.waitForDone(-1)
        self.clear()
        self._retired.clear()

    # ------------------------------------------------------------------ images

    def image(self, image_id: int, slice_index: int | None = None) -> QImage | None:
        """The cached display image, or B-scan ``slice_index`` of a volume (marks it
        recently used), or ``None``."""
        return self._images.get_fresh((image_id, slice_index))

    def image_error(self, image_id: int, slice_index: int | None = None) -> str | None:
        return self._failed.get(("image", image_id, slice_index))

    def request_image(
        self,
        image_id: int,
        path: str,
        priority: int = PRIORITY_CURRENT,
        slice_index: int | None = None,
    ) -> None:
        """Decode ``path`` (or B-scan ``slice_index`` of the volume there) for display unless
        it is cached, queued or failed before."""
        key = ("image", image_id, slice_index)
        if self._images.get((image_id, slice_index)) is not None or key in self._failed:
            return
        self._submit(
            key,
            self._io_pool,
            priority,
            load_display_qimage,
            str(path),
            DISPLAY_LONGEST,
            slice_index,
        )

    # ------------------------------------------------------------------ overlays

    def overlay(
        self, image_id: int, method: str, slice_index: int | None = None
    ) -> OverlayResult | None:
        return self._overlays.get_fresh(("overlay", image_id, method, slice_index))

    def overlay_error(
        self, image_id: int, method: str, slice_index: int | None = None
    ) -> str | None:
        return self._failed.get(("overlay", image_id, method, slice_index))

    def request_overlay(
        self,
        image_id: int,
        path: str,
        sha256: str | None,
        method: str,
        priority: int = PRIORITY_CURRENT,
        slice_index: int | None = None,
    ) -> None:
        """Compute an overlay (of one B-scan for a volume) unless it is cached, queued or
        failed before."""
        key = ("overlay", image_id, method, slice_index)
        if self._overlays.get(key) is not None or key in self._failed:
            return
        self._submit(
            key,
            self._model_pool,
            priority,
            compute_overlay,
            self._holder,
            str(path),
            sha256,
            method,
            DISPLAY_LONGEST,
            slice_index,
        )

    def prefetch(self, image_id: int, path: str, sha256: str | None, method: str) -> None:
        """Queue an upcoming image and, unless ``method`` is ``"none"``, its overlay, at
        the prefetch priority."""
        self.request_image(image_id, path, PRIORITY_PREFETCH)
        if method != "none":
            self.request_overlay(image_id, path, sha256, method, PRIORITY_PREFETCH)

    # ------------------------------------------------------------------ workers

    def _submit(
        self, key: Hashable, pool: QThreadPool, priority: int, func: Callable[..., Any], *args: Any
    ) -> None:
        if self._closed or key in self._pending:
            return
        worker = FunctionWorker(func, *args)
        gen = self._gen
        worker.returned.connect(lambda result, k=key, g=gen: self._on_result(k, g, result))
        worker.errored.connect(lambda exc, k=key, g=gen: self._on_error(k, g, exc))
        worker.finished.connect(lambda k=key, w=worker: self._on_finished(k, w))
        self._pending[key] = worker
        pool.start(worker, priority)

    def _on_finished(self, key: Hashable, worker: FunctionWorker) -> None:
        if self._pending.get(key) is worker:
            del self._pending[key]
        self._retired.discard(worker)

    def _on_result(self, key: Any, gen: int, result: Any) -> None:
        if self._closed or gen != self._gen:
            return
        if key[0] == "image":
            self._images.put((key[1], key[2]), result)
            self.image_ready.emit(key[1], result)
        else:
            self._overlays.put(key, result)
            self.overlay_ready.emit(key[1], key[2], result)

    def _on_error(self, key: Any, gen: int, exc: BaseException) -> None:
        if self._closed or gen != self._gen:
            return
        self._failed[key] = str(exc)
        if key[0] == "image":
            self.image_failed.emit(key[1], str(exc))
        else:
            self.overlay_failed.emit(key[1], key[2], str(exc))
