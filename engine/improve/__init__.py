"""Improve the active model from reviewers' labels, safely.

:func:`improve` fine-tunes the workspace's active model on the reviewed images (current
labels; ungradable and skipped excluded), weighting the images a reviewer corrected, and
writes a new, immutable model version that is registered but **not** made active. Old and
new are measured on a fixed **audit set**: a deterministic share of reviewed images chosen
by the hash of the patient (or of the image when no patient is known), never trained on.
:func:`judge` says whether the new version is better, with the evidence. :func:`accept`
makes a version active, :func:`reject` marks it so it is never offered again,
:func:`rollback` returns to an earlier version; every step is written to the audit log.

The package, by concern:

* ``config``    settings, errors, the progress object;
* ``selection`` usable reviews, the audit split, extra training images, decoding;
* ``run``       one run: fine-tune (the shared loop in :mod:`engine.fit`) and measure;
* ``measure``   audit metrics and workload (via :mod:`engine.triage`), calibration, OOD check;
* ``verdict``   the one acceptance rule, for the CLI and the desktop;
* ``versions``  accept / reject / rollback / history;
* ``process``   the one child-process runner (command, JSON lines, kill the tree).

Only the standard library is imported at package level, so :func:`review_status` (which
the desktop calls to enable its button) is cheap.
"""

from __future__ import annotations

from .config import (
    ACTOR,
    MODELS_DIR,
    STRATEGIES,
    ImproveCancelled,
    ImproveCollapsed,
    ImproveConfig,
    ImproveError,
    ImproveState,
)
from .process import ImproveProcess, WorkerProcess, worker_command
from .run import improve
from .selection import audit_split, review_status
from .verdict import MIN_AUDIT_IMAGES, Verdict, judge
from .versions import accept, candidates, model_file, model_history, reject, rollback

__all__ = [
    "ACTOR",
    "MIN_AUDIT_IMAGES",
    "MODELS_DIR",
    "STRATEGIES",
    "ImproveCancelled",
    "ImproveCollapsed",
    "ImproveConfig",
    "ImproveError",
    "ImproveProcess",
    "ImproveState",
    "Verdict",
    "WorkerProcess",
    "accept",
    "audit_split",
    "candidates",
    "improve",
    "judge",
    "model_file",
    "model_history",
    "reject",
    "review_status",
    "rollback",
    "worker_command",
]
