"""The life of a model version: offered, accepted or rejected, rolled back to.

Every decision goes through these functions, from the CLI (``accept-model``,
``reject-model``, ``rollback``, ``history``) and from the desktop (compare dialog, model
history), and each is written to the workspace's audit log. Versions are never changed or
deleted; a rejected or never-accepted version cannot become active.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ImproveError, open_workspace

if TYPE_CHECKING:
    from ..store import Workspace


def resolve(ws: Workspace, model_hash: str) -> dict:
    """The one registered version whose hash starts with ``model_hash``."""
    matches = [m for m in ws.models() if m["hash"].startswith(model_hash or "\0")]
    if len(matches) != 1:
        raise ImproveError(
            f"{model_hash}: {'no' if not matches else 'more than one'} model version matches"
        )
    return matches[0]


def _decisions(ws: Workspace) -> tuple[dict[str, str], set[str]]:
    """Latest accept/reject per hash, and every hash that was ever made active."""
    decided: dict[str, str] = {}
    activated: set[str] = set()
    for e in ws.audit_log():
        d = e.get("details") or {}
        if not isinstance(d, dict):
            continue
        if e["action"] in ("improve.accept", "improve.reject") and d.get("hash"):
            decided[d["hash"]] = e["action"].split(".", 1)[1] + "ed"
        elif e["action"] == "set_active_model" and d.get("hash"):
            activated.add(d["hash"])
    return decided, activated


def _status(row: dict, decided: dict[str, str], activated: set[str]) -> str:
    if row["hash"] in decided:
        return decided[row["hash"]]
    if not row.get("parent"):
        return "original"
    return "accepted" if row["hash"] in activated or row.get("active") else "candidate"


def _activate(ws: Workspace, row: dict, actor: str, action: str) -> None:
    """Make ``row`` the active version and audit it with the one it replaced."""
    if row.get("path") and not Path(row["path"]).is_file():
        raise ImproveError(f"the file of version {row['hash'][:12]} is missing")
    previous = ws.active_model()
    ws.set_active_model(row["hash"], actor=actor)
    ws.audit(
        actor, action, {"hash": row["hash"], "previous": previous["hash"] if previous else None}
    )


def accept(ws_folder: str | os.PathLike, model_hash: str, actor: str) -> dict:
    """Make a candidate version active (audited ``improve.accept``); returns its row."""
    with open_workspace(ws_folder) as ws:
        row = resolve(ws, model_hash)
        decided, _ = _decisions(ws)
        if decided.get(row["hash"]) == "rejected":
            raise ImproveError(f"version {row['hash'][:12]} was rejected; it cannot be accepted")
        _activate(ws, row, actor, "improve.accept")
    return row


def reject(ws_folder: str | os.PathLike, model_hash: str, actor: str) -> dict:
    """Mark a candidate version rejected (audited ``improve.reject``); its file is kept."""
    with open_workspace(ws_folder) as ws:
        row = resolve(ws, model_hash)
        if row.get("active"):
            raise ImproveError(
                f"version {row['hash'][:12]} is the active model; roll back to another first"
            )
        ws.audit(actor, "improve.reject", {"hash": row["hash"], "parent": row.get("parent")})
    return row


def rollback(ws_folder: str | os.PathLike, model_hash: str, actor: str) -> dict:
    """Make an earlier (original or accepted) version active again (audited); returns its row."""
    with open_workspace(ws_folder) as ws:
        row = resolve(ws, model_hash)
        decided, activated = _decisions(ws)
        status = _status(row, decided, activated)
        if status == "rejected":
            raise ImproveError(f"version {row['hash'][:12]} was rejected; it cannot become active")
        if status == "candidate":
            raise ImproveError(
                f"version {row['hash'][:12]} was never accepted; accept it instead of rolling back"
            )
        _activate(ws, row, actor, "improve.rollback")
    return row


def model_file(ws_folder: str | os.PathLike, model_hash: str) -> str | None:
    """The file of a registered version (None when it has none or is unknown)."""
    with open_workspace(ws_folder) as ws:
        for m in ws.models():
            if m.get("hash") == model_hash:
                return m.get("path")
    return None


def model_history(ws_folder: str | os.PathLike) -> list[dict]:
    """Every model version, oldest first, with its audit-set metrics and status.

    ``status`` is ``original`` (no parent), ``candidate`` (offered, undecided), ``accepted``
    or ``rejected``.
    """
    with open_workspace(ws_folder) as ws:
        rows = ws.models()
        decided, activated = _decisions(ws)
    out = []
    for r in rows:
        desc = r.get("description") or {}
        prov = desc.get("provenance") or {}
        metrics = r.get("metrics") or {}
        path = Path(r["path"]) if r.get("path") else None
        out.append(
            {
                "hash": r["hash"],
                "name": r.get("name"),
                "path": r.get("path"),
                "parent": r.get("parent"),
                "created_at": r.get("created_at"),
                "registered_at": r.get("registered_at"),
                "active": bool(r.get("active")),
                "strategy": prov.get("strategy"),
                "metrics": metrics.get("audit"),
                "metrics_before": metrics.get("audit_before"),
                "n_train": (prov.get("counts") or {}).get("train"),
                "epochs_run": prov.get("epochs_run"),
                "lora_base": (prov.get("lora") or {}).get("base"),
                "file_bytes": path.stat().st_size if path and path.is_file() else None,
                "status": _status(r, decided, activated),
            }
        )
    return out


def candidates(ws_folder: str | os.PathLike) -> list[dict]:
    """Versions offered but neither accepted nor rejected (newest last)."""
    return [h for h in model_history(ws_folder) if h["status"] == "candidate"]
