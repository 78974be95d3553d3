"""Fixtures for every GUI test: settings kept out of the user's profile, and no background
work left running when a test ends."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, QThreadPool

# How long a finished test may take to let the pool drain before it counts as a leak.
DRAIN_MS = 10_000


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path) -> Path:
    """QSettings go to an INI file under tmp_path, never the user's real settings."""
    folder = tmp_path / "qsettings"
    folder.mkdir()
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(folder))
    return folder


@pytest.fixture(autouse=True)
def no_pool_work_left(request: pytest.FixtureRequest):
    """Fail a test that leaves work running on the global QThreadPool.

    Autouse fixtures are set up first and torn down last, so widgets that ``qtbot``
    closes have already shut their work down when this looks. A leaked worker is
    waited for (so it cannot disturb the next test) and the test fails.
    """
    yield
    pool = QThreadPool.globalInstance()
    running = pool.activeThreadCount()
    if running:
        drained = pool.waitForDone(DRAIN_MS)
        pytest.fail(
            f"{request.node.name} left {running} QThreadPool task(s) running"
            + ("" if drained else f" (still running after {DRAIN_MS / 1000:.0f} s)"),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def screened_template(tmp_path_factory, tiny_model, synth_fundus) -> Path:
    """A workspace in which the tiny model screened the 48 synthetic images, made once per
    run; tests that change it work on a copy (:func:`ws_folder`)."""
    from engine.images import discover_images
    from engine.models import load_model
    from engine.screen import ScreenSettings
    from engine.workspace_screen import screen_into_workspace

    folder = tmp_path_factory.mktemp("ws_template")
    screen_into_workspace(
        folder,
        discover_images(synth_fundus),
        [load_model(tiny_model, device="cpu")],
        ScreenSettings(device="cpu"),
    )
    return folder


@pytest.fixture
def ws_folder(tmp_path, screened_template) -> Path:
    """A private copy of the screened workspace that a test may add reviews to."""
    folder = tmp_path / "ws"
    shutil.copytree(screened_template, folder)
    return folder
