"""Screening from the window runs in a child process: the window's own interpreter never
loads torch or runs the model, files that cannot be read are still named in the worklist
with their reason, and a run that cannot go on is reported in words."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from desktop.mainwindow import MainWindow
from desktop.settings import AppSettings

REPO = Path(__file__).resolve().parents[2]


def make_window(qtbot, tmp_path: Path) -> MainWindow:
    w = MainWindow(
        AppSettings(reviewer="ana"), data_dir=tmp_path / "userdata", preload=False, pages=False
    )
    qtbot.addWidget(w)
    w.show()
    return w


def test_an_unreadable_file_is_named_in_the_worklist_with_its_reason(
    qtbot, tmp_path, synth_fundus, tiny_model
):
    folder = tmp_path / "images"
    shutil.copytree(synth_fundus / "normal", folder)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    w = make_window(qtbot, tmp_path)
    with qtbot.waitSignal(w.worklist_loaded, timeout=60_000):
        assert w.open_image_folder(folder) is not None
    assert w.set_model(tiny_model)
    streamed: list[dict] = []
    job = w.start_screening(ask=False, uncertainty="none", batch_size=8)
    assert job is not None
    job.rows.connect(streamed.extend)
    with qtbot.waitSignal(w.screening_finished, timeout=180_000) as done:
        pass
    summary = done.args[0]
    assert summary["status"] == "finished", w.last_error
    assert summary["screened"] == len(streamed) == len(list(folder.iterdir()))
    broken = [r for r in streamed if r["name"] == "broken.jpg"]
    assert len(broken) == 1 and broken[0]["triage"] == "error"
    assert "not an image" in broken[0]["error"]
    qtbot.waitUntil(lambda: w.worklist.model.rowCount() == len(streamed), timeout=60_000)
    shown = next(r for r in w.worklist.model.rows() if r["name"] == "broken.jpg")
    assert shown["error"] == broken[0]["error"]
    assert job.proc.proc.poll() is not None  # the screening process has ended


def test_a_run_that_cannot_go_on_is_reported_in_words(qtbot, tmp_path, synth_fundus, tiny_model):
    folder = tmp_path / "images"
    shutil.copytree(synth_fundus / "normal", folder)
    w = make_window(qtbot, tmp_path)
    with qtbot.waitSignal(w.worklist_loaded, timeout=60_000):
        assert w.open_image_folder(folder) is not None
    assert w.set_model(tiny_model)
    shutil.rmtree(folder)  # the share went offline after the folder was opened
    with qtbot.waitSignal(w.screening_finished, timeout=120_000) as done:
        assert w.start_screening(ask=False, uncertainty="none") is not None
    assert done.args[0]["status"] == "failed"
    assert "images" in w.last_error and "does not exist" in w.last_error
    assert not w.is_screening() and not w.cancel_button.isVisible()


_NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tempfile.mkdtemp())
    app = QApplication([])
    from desktop.mainwindow import MainWindow
    from desktop.pages import PRELOADED
    from desktop.settings import AppSettings
    folder, model, data = (Path(a) for a in sys.argv[1:4])
    w = MainWindow(AppSettings(reviewer="ana"), data_dir=data)  # preloads, as the app does
    w.show()
    out = {}

    def start():
        if not PRELOADED.is_set():
            QTimer.singleShot(50, start)
            return
        w.open_image_folder(folder)
        w.set_model(model)
        w.start_screening(ask=False, uncertainty="none", batch_size=8)

    def finished(summary):
        out["status"] = summary.get("status")
        out["screened"] = summary.get("screened")
        out["rows"] = w.worklist.model.rowCount()
        QTimer.singleShot(0, app.quit)

    w.screening_finished.connect(finished)
    QTimer.singleShot(0, start)
    QTimer.singleShot(240_000, app.quit)
    app.exec()
    out["torch"] = "torch" in sys.modules
    w.close()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def test_the_window_screens_without_loading_torch_itself(tmp_path, synth_fundus, tiny_model):
    """The model runs in the screening process; the window's interpreter (with its
    background preload) never loads torch, which would hold it for up to half a second."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _NO_TORCH_SCRIPT,
            str(synth_fundus / "normal"),
            str(tiny_model),
            str(tmp_path / "userdata"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    lines = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
    assert lines, proc.stderr[-2000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    n = len(list((synth_fundus / "normal").iterdir()))
    assert out["status"] == "finished" and out["screened"] == n
    assert out["rows"] == n
    assert out["torch"] is False


def test_a_spare_screening_process_takes_the_run_and_ends_with_the_window(
    qtbot, tmp_path, synth_fundus, tiny_model
):
    w = MainWindow(
        AppSettings(reviewer="ana"), data_dir=tmp_path / "userdata", preload=True, pages=False
    )
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.worklist_loaded, timeout=60_000):
        assert w.open_image_folder(synth_fundus / "normal") is not None
    assert w.set_model(tiny_model)
    spare = w.screening.spare
    assert spare is not None and spare.running()  # loading the libraries, waiting for a run
    job = w.start_screening(ask=False, uncertainty="none", batch_size=8)
    assert job is not None and job.proc is spare and w.screening.spare is None
    with qtbot.waitSignal(w.screening_finished, timeout=180_000) as done:
        pass
    n = len(list((synth_fundus / "normal").iterdir()))
    assert done.args[0]["status"] == "finished" and done.args[0]["screened"] == n
    assert w.worklist.model.rowCount() == n
    assert spare.proc.poll() is not None  # the run's process ended with the run
    # the next run's spare starts just after this run's end has been shown
    qtbot.waitUntil(lambda: w.screening.spare is not None, timeout=5_000)
    following = w.screening.spare
    assert following is not None and following is not spare and following.running()
    w.close()
    assert following.proc.poll() is not None  # no spare outlives the window


def test_a_progress_step_waits_for_the_windows_next_paint(qtbot, qapp):
    """A progress step is drawn with the rest of the window's next paint, not on the spot (an
    immediate repaint also drew the worklist's new rows and held the window while doing so)."""
    from PySide6.QtCore import QEvent, QObject

    from desktop.screening_control import DeferredProgressBar

    bar = DeferredProgressBar()
    qtbot.addWidget(bar)
    bar.setRange(0, 300)
    bar.show()
    qtbot.waitExposed(bar)
    paints: list[int] = []

    class Count(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt name
            if event.type() == QEvent.Type.Paint:
                paints.append(bar.value())
            return False

    counter = Count()
    bar.installEventFilter(counter)
    bar.setValue(120)
    assert paints == []  # nothing drawn inside setValue
    qtbot.waitUntil(lambda: 120 in paints, timeout=2000)  # drawn with the next paint
    assert bar.text() == "40%"


def _record(image_id: int) -> dict:
    return {"image_id": image_id, "path": f"/images/{image_id}.jpg", "triage": "needs-review"}


def test_chunks_that_arrive_together_update_the_worklist_once(qtbot, tmp_path):
    # three chunks collected in one poll reach the window as one update, in order, with
    # the latest progress; an event that is neither (the end of the run) comes after them
    from desktop.workers import ScreenJob
    from engine.screen_task import ScreenRequest

    job = ScreenJob(ScreenRequest(workspace=tmp_path / "ws", model_path=tmp_path / "m"))
    chunks: list[list[int]] = []
    progress: list[int] = []
    order: list[str] = []
    job.rows.connect(
        lambda rows: (chunks.append([r["image_id"] for r in rows]), order.append("rows"))
    )
    job.progress.connect(lambda done, *_: (progress.append(done), order.append("progress")))
    job.done.connect(lambda _summary: order.append("done"))
    job._handle(
        [
            {"event": "progress", "done": 4, "total": 12},
            {"event": "records", "run_id": 1, "records": [_record(1), _record(2)]},
            {"event": "progress", "done": 8, "total": 12},
            {"event": "records", "run_id": 1, "records": [_record(3)]},
            {"event": "records", "run_id": 1, "records": [_record(4), _record(5)]},
            {"event": "progress", "done": 12, "total": 12},
            {"event": "done", "result": {"screened": 5}},
        ]
    )
    assert chunks == [[1, 2, 3, 4, 5]]
    assert progress == [12]
    assert order == ["rows", "progress", "done"]
    assert job.summary == {"screened": 5}
