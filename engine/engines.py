"""The inference engine names and where their files live; light (no torch) for the CLI and GUI.

The engines themselves are in :mod:`engine.backends`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ENGINES = ("auto", "torch", "onnxruntime", "openvino")
ENGINE_WORDS = {
    "auto": "Automatic (fastest measured on this computer)",
    "torch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
}
EXPORTED = ("onnxruntime", "openvino")  # engines that run the exported backbone
WORKSPACE_CACHE = ("cache", "onnx")  # <workspace>/cache/onnx, beside the model store


def installed_engines() -> list[str]:
    """The engines this installation can run (``auto`` and ``torch`` always)."""
    out = ["auto", "torch"]
    out += [name for name in EXPORTED if importlib.util.find_spec(name) is not None]
    return out


def check_engine(name: str) -> str:
    """The engine name, or a ValueError that lists the choices."""
    if name not in ENGINES:
        raise ValueError(f"unknown inference engine {name!r}; choose from {', '.join(ENGINES)}")
    return name


def user_cache_dir() -> Path:
    """The per-user cache folder (``EYETRIAGE_CACHE_DIR`` overrides the platform default)."""
    env = os.environ.get("EYETRIAGE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return (Path(base) if base else home / "AppData" / "Local") / "EyeTriage" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "EyeTriage"
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else home / ".cache") / "eyetriage"


def engine_cache_dir(workspace: str | os.PathLike[str] | None = None) -> Path:
    """Where exported backbones live: the workspace's cache, or the user cache (CSV mode)."""
    if workspace is not None:
        return Path(workspace).joinpath(*WORKSPACE_CACHE)
    return user_cache_dir() / "onnx"
