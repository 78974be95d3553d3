"""Improve model: fine-tune on the reviewers' corrections in a child process, then compare.

* ``run``        :class:`ImproveRun` — the engine's child-process runner as Qt signals;
* ``dialog``     :class:`ImproveDialog` — choose the strategy, run, show progress or why it
  failed (nothing in the workspace changes then);
* ``compare``    :class:`CompareDialog` — old vs new on the audit set with the engine's
  verdict, missed disease first; Accept/Keep call the engine, which audits both;
* ``controller`` :class:`ImproveController` — the toolbar button and the dialogs.

The engine is imported inside functions, so this package imports without torch.
"""

from __future__ import annotations

from .compare import CompareDialog, format_metric, metric_change, metric_rows
from .controller import ImproveController, button_state, model_file
from .dialog import MIN_NEW_REVIEWS, ImproveDialog, progress_text
from .run import ImproveRun

__all__ = [
    "MIN_NEW_REVIEWS",
    "CompareDialog",
    "ImproveController",
    "ImproveDialog",
    "ImproveRun",
    "button_state",
    "format_metric",
    "metric_change",
    "metric_rows",
    "model_file",
    "progress_text",
]
