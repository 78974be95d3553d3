"""Screen into a workspace: incremental, resumable, one transaction per chunk.

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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .activation import activate_after_screening, register_model
from .models import LoadedModel
from .screen import ScreenResult, ScreenSettings
from .screen_backend import LocalBackend, ScreenBackend
from .store.common import normalise_path
from .tasks import TaskState

if TYPE_CHECKING:
    from .store import Workspace

# the hash recorded for a file that could not be read: that of no content (as for an empty
# file, which is refused too); the file's prediction row says why it was not screened
NO_CONTENT_SHA256 = hashlib.sha256(b"").hexdigest()


def register(ws: Workspace, lm: LoadedModel, actor: str = "system") -> None:
    """Record the model version in the workspace (idempotent; see :mod:`engine.activation`)."""
    register_model(ws, lm.sha256, lm.path, lm.spec, actor=actor)


def file_facts(path: Path) -> dict[str, Any]:
    """What the workspace records about a file: resolved path, hash, size, patient, eye."""
    from .naming import parse_patient_eye
    from .safefiles import UnreadableFile, sha256_and_size

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


def screen_into_workspace(
    workspace: str | Path,
    paths: Sequence[Path],
    models: Sequence[LoadedModel],
    settings: ScreenSettings,
    state: TaskState | None = None,
    on_chunk: Any = None,
    actor: str = "system",
    backend: ScreenBackend | None = None,
    known_facts: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the screen and record it; returns counts, the run id, what was skipped and the
    activation decision (``activation``: :meth:`engine.activation.Activation.as_dict`)."""
    report: dict[str, Any] = {}
    events = iter_screen_into_workspace(
        workspace,
        paths,
        models,
        settings,
        state,
        actor=actor,
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
    paths: Sequence[Path],
    models: Sequence[LoadedModel],
    settings: ScreenSettings,
    state: TaskState | None = None,
    actor: str = "system",
    backend: ScreenBackend | None = None,
    known_facts: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Generator form: yields ``chunk`` events (``results``, ``records``, ``run_id``) and a
    final ``done`` event; ``actor`` is recorded if the run changes the active model.

    ``backend`` hashes and screens (default: this workstation); whichever it is, the rows
    are stored, handed back and the activation rule applied here, the same way.
    ``known_facts`` maps a resolved path to facts a manifest gave (patient, eye), which win
    over the file name.
    """
    from .store import Workspace, settings_key

    state = state or TaskState()
    backend = backend or LocalBackend()
    lm = models[0]
    run_settings = settings.prediction_key()
    run_settings["models"] = [m.sha256 for m in models]
    key = settings_key(run_settings)
    with Workspace.open(workspace) as ws:
        for m in models:
            register(ws, m, actor=actor)
        state.progress(0, len(paths), "hashing files")
        facts = backend.file_facts(paths, state)
        if known_facts:
            facts = [_with_known(f, known_facts.get(f["path"])) for f in facts]
        # A file that cannot be read now but was read before (a share gone offline) keeps
        # its image row and earlier results, and is reported; overwriting them with an
        # error would hide a screened image.
        kept = [f for f in facts if "error" in f and _known(ws, f["path"])]
        facts = [f for f in facts if f not in kept]
        # every other file found gets an image row, the unreadable ones too (with the hash
        # of no content), so each ends in exactly one state in the workspace and its export
        ids = ws.add_images(
            [
                {k: v for k, v in f.items() if k != "error"}
                | {"sha256": f.get("sha256") or NO_CONTENT_SHA256, "modality": lm.spec.modality}
                for f in facts
            ]
        )
        id_by_path = {f["path"]: i for f, i in zip(facts, ids, strict=True)}
        done = ws.done_images(lm.sha256, key)
        readable = [(f, i) for f, i in zip(facts, ids, strict=True) if "error" not in f]
        todo = [Path(f["path"]) for f, i in readable if (i, f["sha256"]) not in done]
        skipped = len(readable) - len(todo)
        unreadable = [f for f in facts if "error" in f]
        run_id = ws.start_run(lm.sha256, run_settings)  # the store derives the same key
        counts: dict[str, int] = {}
        status = "failed"
        screened = 0
        try:
            for chunk in _with_refused(unreadable, backend.screen(todo, models, settings, state)):
                rows = [_row(r, id_by_path) for r in chunk]
                pred_ids = ws.add_predictions(run_id, rows)
                for r, pid in zip(chunk, pred_ids, strict=True):
                    counts[r.triage] = counts.get(r.triage, 0) + 1
                    r.prediction_id = pid  # type: ignore[attr-defined]
                screened += len(chunk)
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
            "skipped": skipped,
            "unreadable": [(f["path"], f["error"]) for f in unreadable],
            "unreadable_kept": [(f["path"], f["error"]) for f in kept],
            "activation": activation.as_dict(),
        }


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


def _row(r: ScreenResult, id_by_path: dict[str, int]) -> dict[str, Any]:
    return {
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
