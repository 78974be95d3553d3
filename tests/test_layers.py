"""The layers hold: import-linter contracts (engine without Qt, desktop without SQLite, Ray
only in the cluster backend) and no SQL outside the store package."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = (
    "import sys\n"
    "from importlinter.cli import lint_imports\n"
    "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))\n"
)


def lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LINT], cwd=folder, capture_output=True, text=True, timeout=300
    )


def test_import_contracts_are_kept():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


def _module_file(root: Path, module: str) -> Path:
    *packages, name = module.split(".")
    folder = root.joinpath(*packages)
    for depth in range(1, len(packages) + 1):
        init = root.joinpath(*packages[:depth]) / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        init.touch()
    return folder / f"{name}.py"


def test_the_contracts_catch_qt_in_the_engine_sqlite_in_the_desktop_and_stray_ray(tmp_path):
    """The same contracts, on a tiny tree that breaks all three, report all three."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    section = config["tool"]["importlinter"]
    lines = [
        "[tool.importlinter]",
        'root_packages = ["engine", "desktop"]',
        "include_external_packages = true",
    ]
    named: set[str] = set()
    ignored: list[tuple[str, str]] = []
    for contract in section["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON values are valid TOML here
        named.update(contract.get("source_modules", []))
        named.update(contract.get("forbidden_modules", []))
        for rule in contract.get("ignore_imports", []):
            importer, imported = (part.strip() for part in rule.split("->"))
            ignored.append((importer, imported))
            named.update((importer, imported))
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for module in sorted(named):  # every module the contracts name exists, empty ...
        if module.split(".")[0] in ("engine", "desktop") and "." in module:
            _module_file(tmp_path, module).touch()
    for importer, imported in ignored:  # ... and each ignored import is there to be ignored
        _module_file(tmp_path, importer).write_text(f"import {imported}\n", encoding="utf-8")
    for module, body in (
        ("engine.bad", "def f():\n    from PySide6 import QtCore\n"),
        ("desktop.bad", "import sqlite3\n"),
        ("engine.screen", "def f():\n    import ray\n"),
    ):
        _module_file(tmp_path, module).write_text(body, encoding="utf-8")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "0 kept, 3 broken" in done.stdout, done.stdout
    assert "engine.bad -> PySide6" in done.stdout
    assert "desktop.bad -> sqlite3" in done.stdout
    assert "engine.screen -> ray" in done.stdout


def _python_files(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((REPO / f).rglob("*.py"))]


def _sql_uses(path: Path) -> list[str]:
    """Imports of SQLite drivers and calls that run SQL (``.execute``) in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found += [f"import {n}" for n in names if n.split(".")[0] in ("sqlite3", "sqlite_utils")]
        if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany", "conn"):
            found.append(f".{node.attr} (line {node.lineno})")
    return found


def test_sql_lives_only_in_the_store_package():
    store = REPO / "engine" / "store"
    offenders = {
        str(p.relative_to(REPO)): uses
        for p in _python_files("engine", "desktop")
        if not p.is_relative_to(store) and (uses := _sql_uses(p))
    }
    assert offenders == {}


def test_the_sql_finder_sees_sql(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        textwrap.dedent(
            """
            import sqlite3
            def rows(ws):
                return ws.conn.execute("SELECT 1").fetchall()
            """
        ),
        encoding="utf-8",
    )
    assert _sql_uses(sample) == ["import sqlite3", ".execute (line 4)", ".conn (line 4)"]
