"""Light checks of the PyInstaller packaging (no build here: CI builds and self-tests it)."""

from __future__ import annotations

import ast
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"
SPEC = PACKAGING / "eyetriage.spec"


def _spec_lists() -> dict[str, list[str]]:
    """The spec's top-level literal lists (``*OTHER`` entries are expanded)."""
    tree = ast.parse(SPEC.read_text(encoding="utf-8"), filename=str(SPEC))
    lists: dict[str, list[str]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.List)):
            continue
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            continue
        items: list[str] = []
        for elt in node.value.elts:
            if isinstance(elt, ast.Starred) and isinstance(elt.value, ast.Name):
                items += lists[elt.value.id]
            else:
                items.append(ast.literal_eval(elt))
        lists[node.targets[0].id] = items
    return lists


@pytest.fixture(scope="module")
def spec() -> dict[str, list[str]]:
    return _spec_lists()


def test_spec_and_hooks_are_valid_python():
    for path in [SPEC, PACKAGING / "entry.py", *sorted((PACKAGING / "hooks").glob("*.py"))]:
        compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_spec_leaves_out_what_the_app_does_not_use(spec):
    excludes = set(spec["EXCLUDES"])
    for name in ("PyQt5", "PyQt6", "PySide2", "tkinter", "IPython", "pytest", "triton", "tests"):
        assert name in excludes
    for prefix in ("QtWebEngine", "Qt3D", "QtQuick3D", "QtMultimedia", "QtBluetooth"):
        assert any(e.startswith(f"PySide6.{prefix}") for e in excludes), prefix
    backends = [e for e in excludes if e.startswith("matplotlib.backends.")]
    assert backends and "matplotlib.backends.backend_agg" not in excludes


def test_spec_collects_the_known_traps(spec):
    hidden = set(spec["HIDDEN_IMPORTS"])
    assert {"torchvision.ops", "captum.attr", "safetensors.torch", "peft"} <= hidden
    assert "desktop.selftest_gui" in hidden  # imported by name from engine.selftest
    assert {"engine", "desktop", "timm"} <= set(spec["COLLECT_ALL_SUBMODULES"])
    assert "timm" in spec["SOURCE_PACKAGES"]  # timm reads its own .py files
    needed = {
        "torch",
        "torchvision",
        "timm",
        "safetensors",
        "peft",
        "transformers",
        "accelerate",
        "huggingface_hub",
        "tqdm",
        "regex",
        "packaging",
        "filelock",
        "numpy",
        "pyyaml",
    }
    assert needed <= set(spec["METADATA"])
    text = SPEC.read_text(encoding="utf-8")
    assert "_C_stable" in text or '"_C"' in text  # torchvision's compiled ops as binaries
    assert {"platforms", "imageformats"} <= set(spec["QT_PLUGIN_DIRS"])


def test_nothing_the_application_imports_is_excluded(spec):
    """An excluded package imported by engine/ or desktop/ would break the bundle."""
    excluded_top = {e for e in spec["EXCLUDES"] if "." not in e} - {"tests"}
    excluded_top -= set(spec["OPTIONAL_EXTRAS"])  # checked by the test below
    used: set[str] = set()
    for folder in ("engine", "desktop"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    used |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    used.add(node.module.split(".")[0])
    assert not (used & excluded_top), sorted(used & excluded_top)


def test_the_cluster_extra_is_optional_installed_by_make_test_and_left_out_of_the_bundle(spec):
    """Ray and pyarrow: not in the base install, in ``make test``, never in the bundle, and
    imported only inside functions so the engine starts without them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = set(spec["OPTIONAL_EXTRAS"])
    assert extras == {"ray", "pyarrow"} and extras <= set(spec["EXCLUDES"])

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in reqs}

    assert not names(project["dependencies"]) & extras
    assert names(project["optional-dependencies"]["cluster"]) == extras
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"pip install .*-e '\.\[dev,cluster\]'", makefile)
    for folder in ("engine", "desktop"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
                if isinstance(node, ast.Import):
                    top = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    top = {node.module.split(".")[0]}
                else:
                    continue
                assert not top & extras, f"{path.name} imports {top & extras} at module level"


def test_committed_packaging_files_hold_no_machine_paths():
    pattern = re.compile(r"/(work|home|Users|root|tmp)/|[A-Z]:\\\\")
    for path in [SPEC, PACKAGING / "build.sh", PACKAGING / "entry.py", REPO / ".ci" / "run"]:
        assert not pattern.search(path.read_text(encoding="utf-8")), path
    assert "SPECPATH" in SPEC.read_text(encoding="utf-8")


def test_entry_calls_freeze_support_before_the_launcher():
    tree = ast.parse((PACKAGING / "entry.py").read_text(encoding="utf-8"))
    main_block = next(
        n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)
    )
    calls = [ast.unparse(n.func) for n in ast.walk(main_block) if isinstance(n, ast.Call)]
    assert calls.index("multiprocessing.freeze_support") < calls.index("run")


def test_entry_gives_a_console_less_process_standard_streams(monkeypatch):
    sys.path.insert(0, str(PACKAGING))
    try:
        import entry
    finally:
        sys.path.remove(str(PACKAGING))
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)
    entry._ensure_streams()
    try:
        print("goes nowhere")  # noqa: T201 - the point: printing must not crash
        assert sys.stdout is not None and sys.stderr is not None
    finally:
        sys.stdout.close()
        sys.stderr.close()


def test_make_package_ci_and_extra_are_wired():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^package:.*\n\t.*packaging/build\.sh", makefile, re.M)
    assert re.search(r"^\.PHONY:.*\bpackage\b", makefile, re.M)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.index("make test") < ci.index("make package") < ci.index("--self-test")
    assert "EYETRIAGE_SKIP_PACKAGE" in ci and "env -i" in ci
    assert os.access(PACKAGING / "build.sh", os.X_OK)
    extra = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    package = extra["project"]["optional-dependencies"]["package"]
    assert any(req.replace(" ", "").startswith("pyinstaller>=6.10") for req in package)


def test_the_onnx_runtime_engine_is_bundled_and_openvino_is_not(spec):
    assert {"onnxruntime", "onnx"} <= set(spec["HIDDEN_IMPORTS"]) & set(spec["METADATA"])
    assert (PACKAGING / "hooks" / "hook-onnxruntime.py").is_file()
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    main = [re.split(r"[<>=!~ ]", d)[0] for d in project["dependencies"]]
    assert {"onnxruntime", "onnx"} <= set(main)  # the CPU path most clinics run
    assert "openvino" not in main and "openvino" in project["optional-dependencies"]
    static: set[str] = set()  # a static import would pull OpenVINO (~180 MB) into the bundle
    for path in (REPO / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                static |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                static.add(node.module.split(".")[0])
    assert "onnxruntime" in static and "openvino" not in static
