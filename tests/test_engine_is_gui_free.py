"""Firm rule 1: the engine never imports Qt or the desktop package."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import engine


def test_importing_every_engine_module_loads_no_qt():
    names = [
        m.name
        for m in pkgutil.walk_packages(engine.__path__, "engine.")
        if m.name != "engine.__main__"
    ]
    assert "engine.improve.process" in names
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
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


def test_the_demo_and_the_command_modules_do_not_import_the_cli_module():
    code = (
        "import sys\n"
        "import engine.demo, engine.evaluate, engine.cli_improve, engine.cli_explain\n"
        "print('engine.cli' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # no import cycle through the command-line module


def test_every_sub_command_is_registered():
    from engine.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"explain", "explain-eval", "improve", "history", "accept-model"} <= set(sub.choices)
