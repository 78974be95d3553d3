"""Which model is active after screening: one rule for the command line and the desktop.

The active model decides what every reader sees: the worklist, the dashboard, exports and
patient reports show each image's latest prediction *of the active model*. So a switch must
never make a result drop out of view, and must never bypass the Improve model comparison.

The rule:

1. a workspace's first model becomes active when it is registered (nothing is hidden by
   it: there was nothing to show before);
2. after a run that was cancelled or failed, the active model does not change;
3. a version that Improve model offered and nobody accepted yet (a *candidate*), or one
   that was *rejected*, never becomes active by screening: accepting is done in the
   comparison (or ``eyetriage improve --accept``), where old and new are measured;
4. after a finished run of another model, that model becomes active only when no image
   would drop out of view: every image the active model screened must have a result from
   the new model as well. Otherwise the active model stays and the decision says how many
   images the new model has not screened yet;
5. otherwise the model that screened becomes active (audited, with the actor).

Before, the desktop activated the model of every finished run (which could hide images
that only the previous model had screened, and could make a candidate version active
without its comparison), while the command line activated only a workspace's first model
(so ``screen --workspace W --out results.csv`` with a new model exported the old model's
answers). Both now call :func:`activate_after_screening`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .modelfile import ModelSpec
    from .store import Workspace

__all__ = ["Activation", "activate_after_screening", "register_model"]

# Improve-model version states that screening must not turn into the active model.
UNDECIDED_OR_REJECTED = ("candidate", "rejected")


@dataclass(frozen=True)
class Activation:
    """What the rule decided, with a message a user can act on (empty when nothing to say)."""

    activated: bool  # the screened model is the active one now (it may have been already)
    changed: bool  # the active model changed because of this run
    model_hash: str  # the model that screened
    active_hash: str | None  # the active model after the decision
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _short(model_hash: str | None) -> str:
    return (model_hash or "")[:12]


def _model(ws: Workspace, model_hash: str) -> dict | None:
    return next((m for m in ws.models() if m["hash"] == model_hash), None)


def _named(model: dict | None, model_hash: str = "") -> str:
    """``name (short hash)``, or ``model <short hash>`` for a model without a name."""
    model_hash = (model or {}).get("hash") or model_hash
    name = (model or {}).get("name")
    return f"{name} ({_short(model_hash)})" if name else f"model {_short(model_hash)}"


def register_model(
    ws: Workspace,
    sha256: str,
    path: str | os.PathLike[str] | None,
    spec: ModelSpec,
    actor: str = "system",
) -> None:
    """Record a model version in the workspace (idempotent); rule 1 for its first model."""
    ws.register_model(
        sha256,
        path,
        spec.name or spec.arch,
        parent=spec.provenance.get("parent"),
        created_at=spec.provenance.get("created_at"),
        metrics=spec.metrics,
        description=json.loads(spec.to_json()),
    )
    if ws.active_model() is None:
        ws.set_active_model(sha256, actor=actor)


def _version_status(ws: Workspace, model_hash: str) -> str | None:
    """The Improve-model status of a version (``original``, ``candidate``, ...)."""
    from .improve import model_history

    for version in model_history(ws.path):
        if version["hash"] == model_hash:
            return version["status"]
    return None


def activate_after_screening(
    ws: Workspace, model_hash: str, status: str, actor: str = "system"
) -> Activation:
    """Apply rules 2–5 (module docstring) to a run of ``model_hash`` that ended with
    ``status``; makes the switch (audited) when the rule allows it."""
    active = ws.active_model()
    active_hash = None if active is None else str(active["hash"])
    if active_hash == model_hash:
        return Activation(True, False, model_hash, active_hash, "")

    def keep(message: str) -> Activation:
        return Activation(False, False, model_hash, active_hash, message)

    if status != "finished":
        return keep(f"The run was {status}, so the active model did not change.")
    version = _version_status(ws, model_hash)
    if version in UNDECIDED_OR_REJECTED:
        how = (
            "it was rejected in Improve model"
            if version == "rejected"
            else "it is an improved version nobody has accepted yet; accept it in the "
            "Improve model comparison, where old and new are measured"
        )
        return keep(f"Model {_short(model_hash)} did not become the active model: {how}.")
    if active_hash is not None:
        missing = ws.unscreened_by(model_hash, screened_by=active_hash)
        if missing:
            return keep(
                f"The active model stays {_named(active)}: {missing} image(s) it screened "
                f"have no result from {_named(_model(ws, model_hash), model_hash)} and would "
                "drop out of the worklist. Screen them with that model too."
            )
    ws.set_active_model(model_hash, actor=actor)
    return Activation(
        True, True, model_hash, model_hash, f"Model {_short(model_hash)} is now the active model."
    )
