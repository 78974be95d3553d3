"""Where workspaces live: one per image folder in the user data folder, and the recent list.

An image folder is never written to: its workspace is made under ``<data>/workspaces/``
and a small JSON file beside the database remembers which folder it belongs to (and
whether it is the demo). The recent list is kept in the user's settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import QStandardPaths

from engine.fileio import atomic_write_text
from engine.store import is_workspace

from .settings import AppSettings

META_NAME = "eyetriage-desktop.json"

__all__ = [
    "META_NAME",
    "WorkspaceRegistry",
    "default_data_dir",
    "read_meta",
    "workspace_for_folder",
    "write_meta",
]


def default_data_dir() -> Path:
    """The user data folder (``AppDataLocation``), where workspaces are created."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(base or Path.home() / ".eyetriage")


def read_meta(ws_folder: Path) -> dict[str, Any]:
    """The desktop's notes about a workspace (``image_folder``, ``demo``), or ``{}``."""
    try:
        return json.loads((ws_folder / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_meta(ws_folder: Path, **values: Any) -> None:
    """Merge ``values`` into the workspace's notes."""
    meta = {**read_meta(ws_folder), **values}
    atomic_write_text(ws_folder / META_NAME, json.dumps(meta, indent=2))


def workspace_for_folder(image_folder: Path, data_dir: Path) -> Path:
    """The workspace for an image folder, in the user data folder (never in the image folder)."""
    image_folder = image_folder.resolve()
    base = data_dir / "workspaces"
    name = image_folder.name or "images"
    for n in range(1, 1000):
        candidate = base / (name if n == 1 else f"{name}-{n}")
        meta = read_meta(candidate)
        if not candidate.exists() or meta.get("image_folder") == str(image_folder):
            return candidate
    raise RuntimeError(f"too many workspaces named {name}")


class WorkspaceRegistry:
    """Maps image folders to workspaces and keeps the recent-workspaces list."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    @property
    def demo_dir(self) -> Path:
        return self.data_dir / "demo"

    def workspace_for(self, folder: Path) -> tuple[Path, bool]:
        """``(workspace, existing)`` for a folder the user chose: the folder itself when it
        is a workspace, else the workspace of that image folder (recorded, not created)."""
        folder = Path(folder).resolve()
        if is_workspace(folder):
            return folder, True
        ws = workspace_for_folder(folder, self.data_dir)
        write_meta(ws, image_folder=str(folder))
        return ws, False

    @staticmethod
    def image_folder(ws_folder: Path) -> Path | None:
        """The image folder a workspace screens, if one is recorded."""
        folder = read_meta(ws_folder).get("image_folder")
        return Path(folder) if folder else None

    @staticmethod
    def set_image_folder(ws_folder: Path, image_folder: Path, demo: bool | None = None) -> None:
        extra = {} if demo is None else {"demo": demo}
        write_meta(ws_folder, image_folder=str(image_folder), **extra)

    @staticmethod
    def remember(settings: AppSettings, ws_folder: Path) -> list[str]:
        """Put a workspace first in the recent list and save the settings; returns the
        recent workspaces that still exist, newest first."""
        settings.remember_workspace(str(ws_folder))
        settings.save()
        return WorkspaceRegistry.recent(settings)

    @staticmethod
    def recent(settings: AppSettings) -> list[str]:
        """The recent workspaces that still exist, newest first."""
        return [f for f in settings.recent_workspaces or [] if is_workspace(Path(f))]
