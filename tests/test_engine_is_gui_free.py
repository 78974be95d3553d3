"""Firm rule 1: the engine never imports Qt or the desktop package."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import engine


def test_importing_every_engine_module_loads_no_qt():
    names = [m.name for m in pkgutil.iter_modules(engine.__path__) if m.name != "__main__"]
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module('engine.' + n)\n"
        "bad = [m for m in sys.modules if m.startswith(('PySide6', 'shiboken6', 'superqt', 'desktop'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"engine imported GUI modules: {out.stdout}"


def test_store_only_commands_do_not_import_torch():
    code = (
        "import sys\n"
        "from engine import cli\n"
        "cli.build_parser()\n"
        "import engine.store\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
