"""Items to screen: single images and OCT volumes, and the rule that judges a volume.

An OCT examination is a volume of B-scans. It reaches EyeTriage as a multi-frame DICOM file
(Ophthalmic Tomography), a multi-page TIFF, or a folder of numbered B-scan images marked as
one volume by a ``volume.json`` file in it (``{}`` is enough; it may also say
``{"patient": "1221", "eye": "OD", "date": "2024-05-02"}``).

Every B-scan is screened like any image, batched together with the other items' images, and
the volume gets one result by a rule a clinician can read (:func:`roll_up`):

- the volume is **referred** (not auto-cleared) when any of its B-scans is;
- its **probabilities** are those of its most suspicious B-scan, the one with the highest
  probability of a finding, and the evidence names that slice;
- it is **out of distribution** (or **ungradable**) when at least half of its readable
  B-scans are; fewer such slices send it to review instead;
- a slice that cannot be read sends the volume to review; if none can be read it is an error.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .images import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    TIFF_EXTENSIONS,
    FrameRef,
    ImageError,
    Source,
    is_hidden,
    is_image_file,
)

if TYPE_CHECKING:
    from .dicom import DicomInfo
    from .models import LoadedModel
    from .screen import ScreenResult, ScreenSettings
    from .tasks import TaskState
    from .triage import TriagePolicy

VOLUME_MARKER = "volume.json"
KINDS = ("image", "volume")


@dataclass
class Item:
    """One worklist entry: an image, or a volume whose B-scans are its ``slices``."""

    path: Path  # the file (image, DICOM, TIFF) or the volume folder
    kind: str = "image"
    slices: list[Source] = field(default_factory=list)
    source: str = "image"  # image, dicom, dicom-volume, tiff-volume, folder-volume
    info: DicomInfo | None = None  # the DICOM header, when the item is a DICOM file
    marker: dict[str, Any] | None = None  # a volume folder's volume.json
    error: str | None = None  # why the item cannot be screened at all (e.g. bad volume.json)

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def is_volume(self) -> bool:
        return self.kind == "volume"

    def __str__(self) -> str:
        return str(self.path)


def image_item(path: str | Path) -> Item:
    path = Path(path)
    return Item(path, "image", [path], "image")


# --------------------------------------------------------------------------- frames


def _is_tiff(path: Path) -> bool:
    if path.suffix.lower() in TIFF_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) in (b"II*\x00", b"MM\x00*")
    except OSError:
        return False


def open_frame(ref: FrameRef, min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """One slice of a multi-frame DICOM or multi-page TIFF, and its (width, height)."""
    if _is_tiff(ref.path):
        im = _TIFF.page(ref.path, ref.frame)
    else:
        from .dicom import open_dicom_frame

        im, full, _ = open_dicom_frame(ref.path, ref.frame, min_side)
        im.info["frames"] = 1
        return im, full
    im.info["frames"] = 1
    return im, im.size


@dataclass
class _OpenTiff:
    image: Image.Image
    frames: int
    depth: int | None  # bit depth used to scale 16-bit pages, the same for every page
    lock: threading.Lock = field(default_factory=threading.Lock)


class _TiffPages:
    """Open multi-page TIFF files, one lock each: Pillow seeks one page at a time."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.open: OrderedDict[tuple, _OpenTiff] = OrderedDict()
        self.lock = threading.Lock()

    def _entry(self, path: Path) -> _OpenTiff:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageError(path, "file not found") from None
        except OSError as e:
            raise ImageError(path, f"cannot be read ({e.strerror or e})") from None
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        with self.lock:
            entry = self.open.get(key)
            if entry is not None:
                self.open.move_to_end(key)
                return entry
            try:
                im = Image.open(path)
                frames = getattr(im, "n_frames", 1)
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageError(path, f"TIFF file is corrupt or unreadable ({e})") from None
            entry = _OpenTiff(im, frames, None)
            entry.depth = _volume_depth(path, entry)
            self.open[key] = entry
            while len(self.open) > self.keep:
                _, old = self.open.popitem(last=False)
                with old.lock:
                    old.image.close()
            return entry

    def page(self, path: Path, index: int) -> Image.Image:
        entry = self._entry(path)
        if not 0 <= index < entry.frames:
            raise ImageError(path, f"has {entry.frames} page(s); slice {index + 1} does not exist")
        with entry.lock:
            try:
                entry.image.seek(index)
                page = entry.image.copy()
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise ImageError(
                    path, f"page {index + 1} is corrupt or unreadable ({e or type(e).__name__})"
                ) from None
        if page.width < 8 or page.height < 8:
            raise ImageError(path, f"page {index + 1} is too small ({page.width}×{page.height} px)")
        return _scale_page(page, entry.depth)

    def clear(self) -> None:
        with self.lock:
            for entry in self.open.values():
                with entry.lock:
                    entry.image.close()
            self.open.clear()


def _volume_depth(path: Path, entry: _OpenTiff) -> int | None:
    """One bit depth for a 16-bit volume (from its first and middle pages), so every slice
    is scaled alike; a dark edge slice must not be stretched brighter than its neighbours."""
    if entry.image.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return None
    top = 0.0
    for i in sorted({0, entry.frames // 2}):
        try:
            entry.image.seek(i)
            top = max(top, float(np.asarray(entry.image).max()))
        except (OSError, ValueError, EOFError) as e:
            raise ImageError(path, f"TIFF page {i + 1} is unreadable ({e})") from None
    return 8 if top <= 255 else 12 if top <= 4095 else 16


def _scale_page(page: Image.Image, depth: int | None) -> Image.Image:
    if depth is None or page.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return page
    a = np.asarray(page, dtype=np.float32) * (255.0 / (2**depth - 1))
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")


_TIFF = _TiffPages()


def release_open_files() -> None:
    """Close cached TIFF volumes and forget parsed DICOM volumes."""
    from .dicom import clear_cache

    _TIFF.clear()
    clear_cache()


# --------------------------------------------------------------------------- discovery


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def folder_volume(folder: str | Path) -> Item:
    """A folder marked by ``volume.json``: its images (not sub-folders), in numbered order."""
    folder = Path(folder)
    marker: dict[str, Any] = {}
    error = None
    try:
        text = (folder / VOLUME_MARKER).read_text(encoding="utf-8").strip()
        loaded = json.loads(text) if text else {}
        if not isinstance(loaded, dict):
            raise ValueError("it must hold a JSON object such as {}")
        marker = loaded
    except (OSError, UnicodeDecodeError, ValueError) as e:
        error = f"{VOLUME_MARKER} cannot be read ({e})"
    names = sorted(
        (p for p in folder.iterdir() if p.is_file() and is_image_file(p)),
        key=lambda p: _natural_key(p.name),
    )
    slices: list[Source] = list(names)
    if not slices and error is None:
        error = f"volume folder holds no images ({VOLUME_MARKER} marks it as one volume)"
    return Item(folder, "volume", slices, "folder-volume", marker=marker, error=error)


def item_for_file(path: str | Path) -> Item | None:
    """The item a file is: a volume when it holds several frames; None for a DICOMDIR."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS or suffix not in IMAGE_EXTENSIONS:
        from .dicom import read_info

        try:
            info = read_info(path)
        except ImageError:
            return Item(path, "image", [path], "dicom")  # decoding reports the reason
        if info.is_directory:
            return None
        if info.frames > 1:
            refs: list[Source] = [FrameRef(path, i) for i in range(info.frames)]
            return Item(path, "volume", refs, "dicom-volume", info=info)
        return Item(path, "image", [path], "dicom", info=info)
    if suffix in TIFF_EXTENSIONS:
        frames = _tiff_frames(path)
        if frames > 1:
            return Item(path, "volume", [FrameRef(path, i) for i in range(frames)], "tiff-volume")
    return image_item(path)


def item_for_path(path: str | Path) -> Item | None:
    """A file's item, or a volume folder's; None for a DICOMDIR or an unmarked folder."""
    path = Path(path)
    if path.is_dir():
        return folder_volume(path) if (path / VOLUME_MARKER).is_file() else None
    return item_for_file(path)


_ITEMS: OrderedDict[tuple, Item] = OrderedDict()
_ITEMS_LOCK = threading.Lock()


def slice_source(path: str | Path, index: int) -> Source:
    """What to decode for slice ``index`` (0-based) of the volume stored at ``path``.

    For the viewer: a :class:`FrameRef` into a multi-frame file, or the slice's own file in a
    volume folder (the folder's listing is cached while it does not change).
    """
    path = Path(path)
    if not path.is_dir():
        return FrameRef(path, index)
    try:
        stamp = (str(path), path.stat().st_mtime_ns)
    except OSError as e:
        raise ImageError(path, f"cannot be read ({e.strerror or e})") from None
    with _ITEMS_LOCK:
        item = _ITEMS.get(stamp)
    if item is None:
        item = folder_volume(path)
        with _ITEMS_LOCK:
            _ITEMS[stamp] = item
            while len(_ITEMS) > 32:
                _ITEMS.popitem(last=False)
    if item.error:
        raise ImageError(path, item.error)
    if not 0 <= index < item.n_slices:
        raise ImageError(path, f"has {item.n_slices} slices; slice {index + 1} does not exist")
    return item.slices[index]


def _tiff_frames(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    except (OSError, SyntaxError, ValueError):
        return 1  # decoding reports the reason


def discover_items(root: str | Path, recursive: bool = True) -> list[Item]:
    """Images and volumes under ``root`` (a folder, a file, or a volume folder), sorted.

    Multi-frame DICOM and multi-page TIFF files are volumes; a folder holding
    ``volume.json`` is one volume; DICOMDIR index files are skipped (the images they list
    are found by walking the folder). Hidden entries and ``_`` folders are skipped.
    """
    import os

    root = Path(root)
    if root.is_file():
        item = item_for_file(root)
        return [item] if item is not None else []
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if (root / VOLUME_MARKER).is_file():
        return [folder_volume(root)]
    found: list[Item] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here != root and VOLUME_MARKER in filenames:
            found.append(folder_volume(here))
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d)) if recursive else []
        for name in filenames:
            p = here / name
            if is_image_file(p):
                item = item_for_file(p)
                if item is not None:
                    found.append(item)
    return sorted(found, key=lambda it: it.path.relative_to(root).as_posix())


def expand(items: Sequence[Item]) -> tuple[list[Source], list[int]]:
    """Every slice of every item in order, and the item each one belongs to."""
    flat: list[Source] = []
    owner: list[int] = []
    for k, it in enumerate(items):
        if it.error is not None:
            continue
        flat.extend(it.slices)
        owner.extend([k] * it.n_slices)
    return flat, owner


def count_slices(items: Sequence[Item]) -> int:
    return sum(it.n_slices for it in items if it.error is None)


# --------------------------------------------------------------------------- the rule


def finding_probability(probabilities: dict[str, float], spec: Any) -> float | None:
    """The probability that an image shows a finding (any label but the "no finding" one).

    None when the model has no "no finding" class to measure against.
    """
    if not probabilities:
        return None
    neg = spec.negative_label
    if spec.task == "multilabel":
        values = [v for k, v in probabilities.items() if k != neg]
        return max(values) if values else None
    if neg and neg in probabilities:
        return 1.0 - float(probabilities[neg])
    return None


def finding_scores(probs: np.ndarray, spec: Any) -> np.ndarray:
    """Per row of (N, C) probabilities: the finding probability, or, for a model without a
    "no finding" class, one minus the top probability (the least confident row scores
    highest). The same ranking :func:`key_slice` uses."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = list(spec.labels)
    neg = spec.negative_label
    if spec.task == "multilabel":
        keep = [i for i, lab in enumerate(labels) if lab != neg]
        return probs[:, keep].max(1) if keep else 1.0 - probs.max(1)
    if neg and neg in labels:
        return 1.0 - probs[:, labels.index(neg)]
    return 1.0 - probs.max(1)


def roll_up_arrays(
    owners: Sequence[str], y: np.ndarray, probs: np.ndarray, raw: np.ndarray, spec: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation at volume level: one row per owner (volume), from its most suspicious row.

    Rows are B-scans (or single images, each its own owner); ``y`` must agree within an
    owner (a volume's label). Returns targets, probabilities and uncalibrated probabilities.
    """
    order = list(dict.fromkeys(owners))
    rows: dict[str, list[int]] = {o: [] for o in order}
    for i, o in enumerate(owners):
        rows[o].append(i)
    scores = finding_scores(probs, spec)
    pick = [rows[o][int(np.argmax(scores[rows[o]]))] for o in order]
    return y[pick], probs[pick], raw[pick]


def key_slice(slices: Sequence[ScreenResult], spec: Any) -> int | None:
    """Position of the most suspicious readable slice: the highest finding probability, or,
    for a model without a "no finding" class, the least confident slice."""
    ok = [i for i, r in enumerate(slices) if r.error is None and r.probabilities]
    if not ok:
        return None
    mat = np.array([[slices[i].probabilities.get(lab, 0.0) for lab in spec.labels] for i in ok])
    return ok[int(np.argmax(finding_scores(mat, spec)))]


def most_suspicious_slice(lm: LoadedModel, item: Item, batch_size: int = 32) -> int:
    """Screen a volume's B-scans with one model pass each and return the key slice (0-based)."""
    from .calibration import sigmoid, softmax
    from .inference import predict_logits

    spec = lm.spec
    logits, errors, _ = predict_logits(lm, item.slices, batch_size)
    ok = ~np.isnan(logits).any(1)
    if not ok.any():
        first = next(iter(errors.values()), "no slice could be read")
        raise ImageError(item.path, first)
    z = logits / spec.temperature
    probs = sigmoid(z) if spec.task == "multilabel" else softmax(z, 1.0)
    scores = np.where(ok, finding_scores(np.nan_to_num(probs), spec), -np.inf)
    return int(np.argmax(scores))


def _slice_words(spec: Any, r: ScreenResult) -> str:
    p = finding_probability(r.probabilities, spec)
    if p is not None:
        return f"finding probability {p:.2f}"
    return f"{r.display_label or r.label} {float(r.confidence or 0):.2f}"


def roll_up(
    item: Item, slices: Sequence[ScreenResult], spec: Any, policy: TriagePolicy | None = None
) -> ScreenResult:
    """The volume's result from its slices' results (see the module docstring for the rule)."""
    from .screen import ScreenResult

    n = len(slices)
    base = {"index": 0, "path": str(item.path), "kind": "volume", "n_slices": n}
    readable = [r for r in slices if r.error is None]
    errors = [r for r in slices if r.error is not None]
    if not readable:
        reasons = {r.error for r in errors}
        reason = item.error or (
            next(iter(reasons))
            if len(reasons) == 1
            else f"none of the {n} slices could be read (first: {errors[0].error})"
        )
        if n and len(reasons) == 1 and n > 1:
            reason = f"{reason} (all {n} slices)"
        return ScreenResult(
            **base, error=reason, triage="error", triage_reason=reason, slices=list(slices)
        )
    k = key_slice(slices, spec)
    assert k is not None
    key = slices[k]
    referred = [i for i, r in enumerate(slices) if r.error is None and r.triage != "auto-cleared"]
    ood = [i for i, r in enumerate(slices) if r.error is None and r.triage == "out-of-distribution"]
    ungradable = [i for i, r in enumerate(slices) if r.error is None and r.triage == "ungradable"]
    m = len(readable)
    if ood and 2 * len(ood) >= m:
        state = "out-of-distribution"
        first = slices[ood[0]]
        reason = f"{len(ood)} of {n} slices unlike the training data (slice {ood[0] + 1}: {first.triage_reason})"
    elif ungradable and 2 * len(ungradable) >= m:
        state = "ungradable"
        first = slices[ungradable[0]]
        reason = f"{len(ungradable)} of {n} slices ungradable (slice {ungradable[0] + 1}: {first.triage_reason})"
    elif referred or errors:
        # a confident finding on any slice refers the volume (the most urgent state); the
        # slice named first is one of those
        refer = [i for i in referred if slices[i].triage == "refer"]
        state = "refer" if refer else "needs-review"
        named = refer or referred
        parts = []
        if referred:
            scores = {i: finding_probability(slices[i].probabilities, spec) for i in named}
            d = (
                k
                if k in named
                else max(
                    named,
                    key=lambda i: (
                        scores[i] if scores[i] is not None else 1 - (slices[i].confidence or 0)
                    ),
                )
            )
            parts.append(f"slice {d + 1} of {n}: {slices[d].triage_reason}")
            if len(referred) > 1:
                parts.append(f"{len(referred)} of {n} slices need a clinician")
            if d != k:
                parts.append(f"most suspicious slice {k + 1} ({_slice_words(spec, key)})")
        else:
            parts.append(f"most suspicious slice {k + 1} ({_slice_words(spec, key)})")
        if errors:
            parts.append(
                f"{len(errors)} of {n} slices could not be read (slice "
                f"{slices.index(errors[0]) + 1}: {errors[0].error})"
            )
        reason = "; ".join(parts)
    else:
        state = "auto-cleared"
        reason = (
            f"all {n} slices cleared; most suspicious slice {k + 1} ({_slice_words(spec, key)})"
        )
    scores = [r.ood_score for r in readable if r.ood_score is not None]
    q_known = [r for r in readable if r.quality_ok is not None]
    quality = None
    quality_ok = None
    if q_known:
        quality_ok = not (ungradable and 2 * len(ungradable) >= m)
        bad = [r for r in q_known if not r.quality_ok]
        quality = {
            "ok": quality_ok,
            "reasons": [f"{len(bad)} of {n} slices fail the quality gate"] if bad else [],
        }
    return ScreenResult(
        **base,
        label=key.label,
        display_label=key.display_label,
        confidence=key.confidence,
        probabilities=dict(key.probabilities),
        entropy=key.entropy,
        mutual_info=key.mutual_info,
        top_std=key.top_std,
        uncertainty_words=key.uncertainty_words,
        conformal_set=key.conformal_set,
        ood_score=round(statistics.median(scores), 4) if scores else None,
        ood=state == "out-of-distribution",
        quality=quality,
        quality_ok=quality_ok,
        triage=state,
        triage_reason=reason,
        uncertainty_method=key.uncertainty_method,
        width=key.width,
        height=key.height,
        key_slice=k,
        slices=list(slices),
    )


# --------------------------------------------------------------------------- screening


def screen_items(
    items: Sequence[Item],
    models: Sequence[LoadedModel],
    settings: ScreenSettings | None = None,
    state: TaskState | None = None,
    keep_names: bool = False,
) -> Iterator[list[ScreenResult]]:
    """Screen images and volumes together; yield item results in input order.

    All B-scans of all items go through the ordinary batched screen (progress counts
    B-scans); each item's result is yielded as soon as its last slice has been screened.
    Results carry the item's position as ``index`` and what the file says as ``facts``.
    """
    from .filefacts import item_facts
    from .screen import ScreenResult, ScreenSettings, screen

    settings = settings or ScreenSettings()
    spec = models[0].spec
    flat, owner = expand(items)
    collected: dict[int, list[ScreenResult]] = {}
    next_item = 0

    def finish(k: int) -> ScreenResult:
        it = items[k]
        got = collected.pop(k, [])
        if it.error is not None:
            r = ScreenResult(
                k, str(it.path), error=it.error, triage="error", triage_reason=it.error
            )
            r.kind, r.n_slices = it.kind, it.n_slices
        elif it.kind == "volume":
            r = roll_up(it, got, spec, settings.policy)
        else:
            r = got[0]
            r.path = str(it.path)
        r.index = k
        r.facts = item_facts(it, keep_names=keep_names)
        return r

    def ready() -> list[ScreenResult]:
        nonlocal next_item
        out = []
        while next_item < len(items):
            it = items[next_item]
            need = 0 if it.error is not None else it.n_slices
            if len(collected.get(next_item, [])) < need:
                break
            out.append(finish(next_item))
            next_item += 1
        return out

    first = ready()  # leading items with nothing to screen (errors)
    if first:
        yield first
    for chunk in screen(flat, models, settings, state):
        for r in chunk:
            k = owner[r.index]
            src = flat[r.index]
            position = len(collected.setdefault(k, []))
            if items[k].kind == "volume":
                r.kind = "slice"
                r.slice_index = position
                r.path = str(src.path if isinstance(src, FrameRef) else src)
            collected[k].append(r)
        out = ready()
        if out:
            yield out
    if state is None or not state.cancelled():
        rest = ready()
        if rest:
            yield rest


def screen_items_all(
    items: Sequence[Item],
    models: Sequence[LoadedModel],
    settings: ScreenSettings | None = None,
    state: TaskState | None = None,
) -> list[ScreenResult]:
    """Convenience: every item's result as one list."""
    out: list[ScreenResult] = []
    for chunk in screen_items(items, models, settings, state):
        out.extend(chunk)
    return out
