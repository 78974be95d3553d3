"""Settings, errors and the progress object of one improvement run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from ..tasks import TaskState

if TYPE_CHECKING:
    from ..store import Workspace

Log = Callable[[str], None]
STRATEGIES = ("full", "head", "lora")
DEFAULT_LR = {"full": 3e-4, "head": 1e-3, "lora": 1e-3}
SELECTIONS = ("score", "loss")  # how the kept epoch is chosen (engine.recipe / engine.fit)
MIN_EPOCH_SAMPLES = 64  # tiny review sets are repeated so an epoch has a few steps
MAX_PSEUDO_LABELS = 2000
MODELS_DIR = "models"
ACTOR = "improve"


class ImproveError(Exception):
    """Improvement could not run or finish; the message says why in words."""


class ImproveCancelled(ImproveError):
    """The user cancelled the improvement; nothing was changed."""


class ImproveCollapsed(ImproveError):
    """The fine-tune predicts (nearly) one class: it is not offered, nothing was written."""


@dataclass
class ImproveConfig:
    """Settings of one improvement run (the dialog's and the CLI's options)."""

    epochs: int = 5
    strategy: str = "head"  # "full" | "head" | "lora"
    audit_fraction: float = 0.25
    corrected_weight: float = 2.0
    min_new_reviews: int = 20
    include_training_data: bool = False
    self_learning: bool = False
    pseudo_threshold: float = 0.95
    pseudo_weight: float = 0.3
    seed: int = 0
    batch_size: int = 16
    lr: float | None = None
    device: str = "auto"
    training_data: str | None = None  # folder of class folders: the original training data
    patience: int = 3
    validation_fraction: float = 0.2
    selection: str = "score"  # kept epoch: best task score ("score") or lowest loss ("loss")

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ImproveError(
                f"unknown strategy {self.strategy!r}; choose {', '.join(STRATEGIES)}"
            )
        if self.epochs < 1:
            raise ImproveError("epochs must be at least 1")
        if not 0.0 < self.audit_fraction < 1.0:
            raise ImproveError("the audit fraction must lie strictly between 0 and 1")
        if self.corrected_weight <= 0 or self.pseudo_weight <= 0:
            raise ImproveError("sample weights must be positive")
        if not 0.0 < self.pseudo_threshold <= 1.0:
            raise ImproveError("the pseudo-label threshold must lie in (0, 1]")
        if self.batch_size < 1:
            raise ImproveError("batch size must be at least 1")
        if self.selection not in SELECTIONS:
            raise ImproveError(
                f"unknown epoch selection {self.selection!r}; choose {', '.join(SELECTIONS)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImproveConfig:
        """Build from a dict; unknown keys are ignored (settings from a newer program)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})


class ImproveState(TaskState):
    """A :class:`TaskState` that also reports structured training progress as events.

    ``on_event`` receives ``{"event": "progress", "done", "total", "epoch", "loss",
    "eta_s", "message"}`` dicts (throttled like ``progress``).
    """

    def __init__(
        self, on_event: Callable[[dict], None] | None = None, min_interval: float = 0.25
    ) -> None:
        super().__init__(None, min_interval)
        self.on_event = on_event
        self.epoch: int | None = None
        self.loss: float | None = None
        self.eta_s: float | None = None

    def training_step(self, epoch: int, loss: float, eta_s: float) -> None:
        """Remember where training is; the next progress event carries it."""
        self.epoch, self.loss, self.eta_s = epoch, loss, round(eta_s, 1)

    def progress(self, done: int, total: int, message: str = "") -> None:
        self.done, self.total, self.message = done, total, message
        now = time.monotonic()
        if self.on_event and (done >= total or now - self._last >= self._min_interval):
            self._last = now
            self.on_event(
                {
                    "event": "progress",
                    "done": done,
                    "total": total,
                    "epoch": self.epoch,
                    "loss": self.loss,
                    "eta_s": self.eta_s,
                    "message": message,
                }
            )


def open_workspace(ws_folder: str | os.PathLike) -> Workspace:
    """The existing workspace in ``ws_folder`` (never creates one)."""
    from ..store import Workspace

    return Workspace.open(ws_folder, create=False)
