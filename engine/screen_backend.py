"""Where screening runs: this workstation (threads) or a Ray cluster (:mod:`engine.cluster`).

A backend does the two heavy steps of a workspace run, hashing the files and screening
them; everything else (what to skip, the run record, writing the rows) stays in
:mod:`engine.workspace_screen`, so every backend records its results the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from .models import LoadedModel
from .screen import ScreenResult, ScreenSettings, screen
from .tasks import TaskState


class ScreenBackend(Protocol):
    """The two heavy steps of a screening run."""

    name: str

    def file_facts(
        self, paths: Sequence[Path], state: TaskState | None = None
    ) -> list[dict[str, Any]]:
        """One :func:`engine.workspace_screen.file_facts` dict per path, in input order."""
        ...

    def screen(
        self,
        paths: Sequence[Path],
        models: Sequence[LoadedModel],
        settings: ScreenSettings,
        state: TaskState | None = None,
    ) -> Iterator[list[ScreenResult]]:
        """Chunks of results; every path gets exactly one result (``index`` = its position)."""
        ...


class LocalBackend:
    """This workstation: files hashed by a few threads, screening by :func:`engine.screen.screen`."""

    name = "local"

    def file_facts(
        self, paths: Sequence[Path], state: TaskState | None = None
    ) -> list[dict[str, Any]]:
        from .workspace_screen import file_facts

        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
            return list(pool.map(file_facts, paths))

    def screen(
        self,
        paths: Sequence[Path],
        models: Sequence[LoadedModel],
        settings: ScreenSettings,
        state: TaskState | None = None,
    ) -> Iterator[list[ScreenResult]]:
        return screen(paths, models, settings, state)
