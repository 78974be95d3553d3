"""Screen into a workspace: incremental, resumable, one transaction per chunk.

Items are images and OCT volumes (:mod:`engine.volumes`): a volume is one worklist item with
its B-scan count, its most suspicious slice and one stored row per B-scan. What the file
says (:mod:`engine.filefacts`: patient, eye, acquisition date, device) is stored with the
item and wins over the file name; the patient's name only when the caller keeps names.

Images already screened by the same model with the same settings (matched by file hash)
are skipped, so re-running a folder only does the new or changed files, and a run that was
interrupted (Ctrl+C, a crash, ``kill -9``) resumes where it stopped.

Each chunk event carries the rows just stored (``records``: the same shape as
:meth:`engine.store.Workspace.latest_predictions`, with each image's current review), so a
caller that shows them never has to read the database again. When the run ends, the one
activation rule (:mod:`engine.activation`) decides which model is active, and the ``done``
event says what it decided.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .activation import activate_after_screening, register_model
from .models import LoadedModel
from .safefiles import UnreadableFile, sha256_and_size
from .screen import ScreenResult, ScreenSettings
from .screen_backend import LocalBackend, ScreenBackend
from .store.common import normalise_path
from .tasks import TaskState
from .volumes import Item, finding_probability, item_for_path, screen_items

if TYPE_CHECKING:
    from .store import Workspace

# the hash recorded for a file that could not be read: that of no content (as for an empty
# file, which is refused too); the file's prediction row says why it was not screened
NO_CONTENT_SHA256 = hashlib.sha256(b"").hexdigest()


def register(ws: Workspace, lm: LoadedModel, actor: str = "system") -> None:
    """Record the model version in the workspace (idempotent; see :mod:`engine.activation`)."""
    register_model(ws, lm.sha256, lm.path, lm.spec, actor=actor)


def file_facts(path: Path) -> dict[str, Any]:
    """What the workspace records about a plain image file: resolved path, hash, size,
    patient, eye (from the name). Used by backends that screen image files only."""
    from .naming import parse_patient_eye

    identity = normalise_path(path)
    try:
        sha, size = sha256_and_size(path)  # special files are refused before any open
    except UnreadableFile as e:
        return {"path": identity, "sha256": NO_CONTENT_SHA256, "error": e.reason}
    except OSError as e:
        reason = f"cannot be read ({e.strerror or e})"
        return {"path": identity, "sha256": NO_CONTENT_SHA256, "error": reason}
    patient, eye = parse_patient_eye(path.name)
    return {
        "path": identity,
        "sha256": sha,
        "size_bytes": size,
        "patient": patient,
        "eye": eye,
    }


def _item_sha256(item: Item) -> tuple[str, int]:
    """The item's content hash and size: its file's, or for a volume folder a hash over its
    B-scan files' names and hashes (a changed, added or removed B-scan changes it)."""
    if not item.path.is_dir():
        return sha256_and_size(item.path)
    digest = hashlib.sha256()
    size = 0
    for part in item.slices:
        part = Path(part)  # a folder volume's slices are its image files
        sha, n = sha256_and_size(part)
        digest.update(f"{part.name}\0{sha}\n".encode())
        size += n
    return digest.hexdigest(), size


def item_row(source: Path | Item, keep_names: bool = False) -> dict[str, Any]:
    """What the store keeps of one item: hash, size, kind, slice count and what the file says
    (patient, eye and date, the file's word before the file name's; ``facts`` with each
    fact's source and the device). ``error`` instead when it cannot be read or used;
    ``item`` is the :class:`engine.volumes.Item` itself (``None`` when it is not an item)."""
    from .filefacts import item_facts

    path = Path(source.path if isinstance(source, Item) else source)
    resolved = normalise_path(path)
    item = source if isinstance(source, Item) else item_for_path(path)
    if item is None:
        return {
            "path": resolved,
            "item": None,
            "error": "is not an image, a volume or a DICOM file",
        }
    if item.error is not None:
        return {"path": resolved, "item": item, "error": item.error}
    try:
        sha, size = _item_sha256(item)
    except UnreadableFile as e:  # a FIFO, a device, a broken link: refused, never opened
        return {"path": resolved, "item": item, "error": e.reason}
    except OSError as e:
        return {"path": resolved, "item": item, "error": f"cannot be read ({e.strerror or e})"}
    said = item_facts(item, keep_names=keep_names)
    facts = {k: v for k, v in said.items() if k not in ("patient", "eye", "date", "patient_name")}
    return {
        "path": resolved,
        "item": item,
        "sha256": sha,
        "size_bytes": size,
        "kind": item.kind,
        "n_slices": item.n_slices if item.is_volume else None,
        "patient": said["patient"],
        "eye": said["eye"],
        "acquired": said["date"],
        "facts": facts,
        "patient_name": said.get("patient_name") if keep_names else None,
    }


def screen_into_workspace(
    workspace: str | Path,
    paths: Sequence[Path],
    models: Sequence[LoadedModel],
    settings: ScreenSettings,
    state: TaskState | None = None,
    on_chunk: Any = None,
    actor: str = "system",
    keep_names: bool = False,
    backend: ScreenBackend | None = None,
    known_facts: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the screen and record it; returns counts, the run id, what was skipped and the
    activation decision (``activation``: :meth:`engine.activation.Activation.as_dict`).

    ``paths`` are image files, DICOM files, multi-page TIFFs, volume folders or
    :class:`engine.volumes.Item` objects; ``keep_names`` stores the patient's name the
    file carries (left out by default)."""
    report: dict[str, Any] = {}
    events = iter_screen_into_workspace(
        workspace,
        paths,
        models,
        settings,
        state,
        actor=actor,
        keep_names=keep_names,
        backend=backend,
        known_facts=known_facts,
    )
    for event in events:
        if event["kind"] == "chunk" and on_chunk is not None:
            on_chunk(event["results"])
        if event["kind"] == "done":
            report = event
    return report


def iter_screen_into_workspace(
    workspace: str | Path,
    paths: Sequence[Path | Item],
    models: Sequence[LoadedModel],
    settings: ScreenSettings,
    state: TaskState | None = None,
    actor: str = "system",
    keep_names: bool = False,
    backend: ScreenBackend | None = None,
    known_facts: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Generator form: yields ``chunk`` events (``results``, ``records``, ``run_id``) and a
    final ``done`` event; ``actor`` is recorded if the run changes the active model.

    Progress counts B-scans (an image is one); a volume is stored once all its B-scans are
    screened, so a cancelled run leaves no volume half done.

    ``backend`` hashes and screens (default: this workstation, which screens images and
    volumes; another backend, such as a Ray cluster, screens image files only and refuses
    volumes); whichever it is, the rows are stored, handed back and the activation rule
    applied here, the same way. ``known_facts`` maps a resolved path to facts a manifest
    gave (patient, eye), which win over what the file says.
    """
    from .store import Workspace, settings_key

    state = state or TaskState()
    backend = backend or LocalBackend()
    local = backend.name == "local"
    if not local:
        volumes = [p for p in paths if isinstance(p, Item) and p.is_volume]
        if volumes:
            raise ValueError(
                f"{volumes[0].path}: OCT volumes are screened on this workstation, not on the "
                f"{backend.name} backend ({len(volumes)} volume(s) given)"
            )
        paths = [p.path if isinstance(p, Item) else Path(p) for p in paths]
    lm = models[0]
    run_settings = settings.prediction_key()
    run_settings["models"] = [m.sha256 for m in models]
    key = settings_key(run_settings)
    with Workspace.open(workspace) as ws:
        for m in models:
            register(ws, m, actor=actor)
        state.progress(0, len(paths), "hashing files")
        if local:
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
                facts = list(pool.map(lambda p: item_row(p, keep_names), paths))
        else:
            facts = backend.file_facts(paths, state)
        if known_facts:
            facts = [_with_known(f, known_facts.get(f["path"])) for f in facts]
        # A file that cannot be read now but was read before (a share gone offline) keeps
        # its image row and earlier results, and is reported; overwriting them with an
        # error would hide a screened image.
        kept = [f for f in facts if "error" in f and _known(ws, f["path"])]
        facts = [f for f in facts if f not in kept]
        # every other item found gets an image row, the unreadable ones too (with the hash
        # of no content), so each ends in exactly one state in the workspace and its export
        ids = ws.add_images([_image_row(f) | {"modality": lm.spec.modality} for f in facts])
        id_by_path = {f["path"]: i for f, i in zip(facts, ids, strict=True)}
        done = ws.done_images(lm.sha256, key)
        readable = [(f, i) for f, i in zip(facts, ids, strict=True) if "error" not in f]
        todo: list[Any] = [
            f["item"] if local else Path(f["path"])
            for f, i in readable
            if (i, f["sha256"]) not in done
        ]
        skipped = len(readable) - len(todo)
        unreadable = [f for f in facts if "error" in f]
        run_id = ws.start_run(lm.sha256, run_settings)  # the store derives the same key
        counts: dict[str, int] = {}
        status = "failed"
        screened = 0
        screened_slices = 0  # images and B-scans
        try:
            chunks = (
                screen_items(todo, models, settings, state, keep_names)
                if local
                else backend.screen(todo, models, settings, state)
            )
            for chunk in _with_refused(unreadable, chunks):
                rows = [_row(r, id_by_path, lm.spec) for r in chunk]
                pred_ids = ws.add_predictions(run_id, rows)
                # the full-resolution size: the frame of graders' marks on the image
                ws.set_image_sizes(
                    {
                        row["image_id"]: (r.width, r.height)
                        for r, row in zip(chunk, rows, strict=True)
                        if r.width and r.height and not r.error
                    }
                )
                for r, pid in zip(chunk, pred_ids, strict=True):
                    counts[r.triage] = counts.get(r.triage, 0) + 1
                    r.prediction_id = pid  # type: ignore[attr-defined]
                screened += len(chunk)
                screened_slices += sum(r.n_slices or 1 for r in chunk)
                records = ws.prediction_records(pred_ids)
                yield {"kind": "chunk", "results": chunk, "records": records, "run_id": run_id}
            status = "cancelled" if state.cancelled() else "finished"
        except GeneratorExit:
            status = "cancelled"
            raise
        except KeyboardInterrupt:
            status = "cancelled"
            raise
        finally:
            counts_all = {
                **counts,
                "to_screen": len(todo),
                "skipped": skipped,
                "unreadable": len(unreadable),
            }
            ws.finish_run(run_id, status, counts_all)
        activation = activate_after_screening(ws, lm.sha256, status, actor=actor)
        yield {
            "kind": "done",
            "run_id": run_id,
            "status": status,
            "counts": counts,
            "screened": screened,
            "screened_slices": screened_slices,
            "skipped": skipped,
            "unreadable": [(f["path"], f["error"]) for f in unreadable],
            "unreadable_kept": [(f["path"], f["error"]) for f in kept],
            "activation": activation.as_dict(),
        }


def _image_row(facts: dict[str, Any]) -> dict[str, Any]:
    """The store's image row for one item's facts; an unreadable file is kept as an image
    with the hash of no content (its error becomes its prediction)."""
    row = {k: v for k, v in facts.items() if k not in ("error", "item")}
    if "error" in facts:
        row = {"path": facts["path"], "sha256": NO_CONTENT_SHA256}
    return row


def _known(ws: Workspace, path: str) -> bool:
    """Whether the workspace holds this file with content read before."""
    image_id = ws.image_id(path)
    if image_id is None:
        return False
    image = ws.image(image_id)
    return image is not None and image.get("sha256") != NO_CONTENT_SHA256


def _with_refused(
    unreadable: list[dict[str, Any]], chunks: Iterator[list[ScreenResult]]
) -> Iterator[list[ScreenResult]]:
    """The files refused before decoding (one ``error`` chunk, stored and shown like any
    other), then the screened chunks."""
    if unreadable:
        yield [
            ScreenResult(n, f["path"], error=f["error"], triage_reason=f["error"])
            for n, f in enumerate(unreadable)
        ]
    yield from chunks


def _with_known(facts: dict[str, Any], known: Mapping[str, Any] | None) -> dict[str, Any]:
    if not known or "error" in facts:
        return facts
    return {**facts, **{k: v for k, v in known.items() if v is not None}}


def _row(r: ScreenResult, id_by_path: dict[str, int], spec: Any) -> dict[str, Any]:
    """The store's prediction row for an item's result (slice numbers 1-based)."""
    slices = [
        {
            "slice": s.slice_index + 1,
            "label": s.label,
            "confidence": s.confidence,
            "finding": finding_probability(s.probabilities, spec),
            "probabilities": s.probabilities or None,
            "ood_score": s.ood_score,
            "quality_ok": s.quality_ok,
            "triage": s.triage,
            "triage_reason": s.triage_reason,
            "error": s.error,
        }
        for s in r.slices or []
        if s.slice_index is not None
    ]
    return {
        "key_slice": None if r.key_slice is None else r.key_slice + 1,
        "slices": slices,
        "image_id": id_by_path[normalise_path(r.path)],
        "probabilities": r.probabilities,
        "label": r.label,
        "confidence": r.confidence,
        "entropy": r.entropy,
        "mutual_info": r.mutual_info,
        "top_std": r.top_std,
        "conformal_set": r.conformal_set,
        "ood_score": r.ood_score,
        "ood": r.ood,
        "quality": r.quality,
        "quality_ok": r.quality_ok,
        "triage": r.triage,
        "triage_reason": r.triage_reason,
        "error": r.error,
        "uncertainty_method": r.uncertainty_method,
    }
