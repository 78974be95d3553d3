"""Screening as a child task (``eyetriage --worker screen``, request on stdin): the
request travels as JSON, the child stores the same rows as the command line's ``screen``,
stops after the current batch when told to (or when the window that started it is gone),
names unreadable files, and says in words why a run could not go on."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from engine.screen_task import ScreenProcess, ScreenRequest


def run_child(request: ScreenRequest, timeout: float = 300) -> tuple[ScreenProcess, list[dict]]:
    proc = ScreenProcess(request)
    proc.start()
    events = [e for e in proc.events() if e.get("event") != "stderr"]
    assert proc.join(timeout)
    return proc, events


def stored(ws: Path) -> dict[str, dict]:
    """The latest prediction per file name, as the store keeps it."""
    from engine.store import Workspace

    with Workspace.open(ws, create=False) as store:
        return {Path(r["path"]).name: r for r in store.latest_predictions()}


def test_a_request_survives_its_trip_as_json(tmp_path):
    request = ScreenRequest(
        workspace=tmp_path / "ws",
        model_path=tmp_path / "m.safetensors",
        paths=[tmp_path / "a.jpg", tmp_path / "b.png"],
        uncertainty="none",
        threshold=0.7,
        extra={"actor": "ana"},
    )
    import json

    again = ScreenRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request
    with pytest.raises(ValueError, match="unknown screening settings: colour"):
        ScreenRequest.from_dict({**request.to_dict(), "colour": "red"})


def test_the_child_stores_the_rows_the_command_line_stores(tmp_path, synth_fundus, tiny_model):
    from engine.cli import main as cli_main

    folder = tmp_path / "images"
    shutil.copytree(synth_fundus / "normal", folder)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    ws_child, ws_cli = tmp_path / "child", tmp_path / "cli"
    request = ScreenRequest(
        workspace=ws_child,
        model_path=tiny_model,
        image_folder=folder,
        uncertainty="none",
        batch_size=8,
        device="cpu",
    )
    proc, events = run_child(request)
    assert proc.outcome()[0] == "done" and proc.pid != os.getpid()
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done" and "records" in kinds and "progress" in kinds
    summary = events[-1]["result"]
    assert summary["status"] == "finished" and summary["device"] == "CPU"
    streamed = [r for e in events if e["event"] == "records" for r in e["records"]]
    n_files = len(list(folder.iterdir()))
    assert summary["screened"] == len(streamed) == n_files

    # the unreadable file is a row of its own, named, with the reason
    broken = [r for r in streamed if Path(r["path"]).name == "broken.jpg"]
    assert len(broken) == 1 and broken[0]["triage"] == "error"
    assert "not an image" in broken[0]["error"]

    code = cli_main(
        [
            "screen",
            str(folder),
            "--model",
            str(tiny_model),
            "--workspace",
            str(ws_cli),
            "--uncertainty",
            "none",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "cli.csv"),
        ]
    )
    assert code == 0
    child_rows, cli_rows = stored(ws_child), stored(ws_cli)
    assert set(child_rows) == set(cli_rows) and len(child_rows) == n_files
    for name, row in child_rows.items():
        other = cli_rows[name]
        for key in ("label", "triage", "triage_reason", "error", "quality_ok", "ood"):
            assert row[key] == other[key], (name, key)
        if row["confidence"] is not None:
            assert row["confidence"] == pytest.approx(other["confidence"], abs=1e-4)


def test_cancel_stops_after_the_current_batch_and_records_it(tmp_path, synth_fundus, tiny_model):
    ws = tmp_path / "ws"
    request = ScreenRequest(
        workspace=ws, model_path=tiny_model, image_folder=synth_fundus, uncertainty="none",
        batch_size=4, device="cpu",
    )  # fmt: skip
    proc = ScreenProcess(request)
    proc.start()
    events = []
    for event in proc.events():
        events.append(event)
        if event.get("event") == "records":
            proc.stop()  # the window's Cancel
    assert proc.join(120)
    done = [e for e in events if e.get("event") == "done"]
    assert done and done[0]["result"]["status"] == "cancelled"
    assert 0 < done[0]["result"]["screened"] < 48
    conn = sqlite3.connect(ws / "workspace.sqlite")
    assert [r[0] for r in conn.execute("SELECT status FROM runs")] == ["cancelled"]
    conn.close()


def test_a_child_whose_window_is_gone_stops_and_records_a_cancelled_run(
    tmp_path, synth_fundus, tiny_model
):
    ws = tmp_path / "ws"
    request = ScreenRequest(
        workspace=ws, model_path=tiny_model, image_folder=synth_fundus, uncertainty="none",
        batch_size=4, device="cpu",
    )  # fmt: skip
    proc = ScreenProcess(request)
    proc.start()
    for event in proc.events():
        if event.get("event") == "records":
            proc.close_stdin()  # what the child sees when the window's process ends
    assert proc.join(120)
    assert proc.result is not None and proc.result["status"] == "cancelled"


def test_a_run_that_cannot_go_on_says_why_in_words(tmp_path, tiny_model):
    missing = tmp_path / "unplugged"
    request = ScreenRequest(workspace=tmp_path / "ws", model_path=tiny_model, image_folder=missing)
    proc, events = run_child(request)
    kind, message = proc.outcome()
    assert kind == "failed" and proc.proc.returncode == 1
    assert "unplugged" in message and "does not exist" in message
    assert events[-1]["event"] == "error"

    not_a_model = tmp_path / "model.safetensors"
    not_a_model.write_bytes(b"not a model")
    (tmp_path / "imgs").mkdir()
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "imgs" / "x.jpg")
    request = ScreenRequest(
        workspace=tmp_path / "ws2", model_path=not_a_model, image_folder=tmp_path / "imgs"
    )
    proc, _ = run_child(request)
    kind, message = proc.outcome()
    assert kind == "failed" and "model.safetensors" in message


def test_a_child_that_dies_is_reported_and_keeps_what_it_stored(tmp_path, synth_fundus, tiny_model):
    request = ScreenRequest(
        workspace=tmp_path / "ws", model_path=tiny_model, image_folder=synth_fundus,
        uncertainty="none", batch_size=4, device="cpu",
    )  # fmt: skip
    proc = ScreenProcess(request)
    proc.start()
    for event in proc.events():
        if event.get("event") == "records":
            os.kill(proc.pid, 9)  # a crash, or the system ending it
            break
    assert proc.join(60)
    kind, message = proc.outcome()
    assert kind == "failed"
    assert "The screening process stopped unexpectedly" in message
    assert "kept in the workspace" in message
    assert stored(tmp_path / "ws")  # the chunks stored before it died are there


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX process priorities")
def test_the_child_runs_below_the_windows_priority():
    """A person working in the window comes first: the screening child lowers its own CPU
    priority as it starts (it still gets every core the window leaves idle)."""
    import time

    from engine.worker import BACKGROUND_NICENESS

    mine = os.getpriority(os.PRIO_PROCESS, 0)
    spare = ScreenProcess()  # a spare: starts, loads its libraries, waits for a request
    spare.start()
    try:
        deadline = time.monotonic() + 60
        niceness = mine
        while time.monotonic() < deadline and spare.running():
            niceness = os.getpriority(os.PRIO_PROCESS, spare.pid)
            if niceness != mine:
                break
            time.sleep(0.05)
        assert niceness == min(mine + BACKGROUND_NICENESS, 19)
        ours = Path("/proc/self/autogroup")
        before = ours.read_text() if ours.is_file() else ""
        # Linux autogroups: the child's own group is lowered too. The file is empty for a
        # process in the kernel's default group (its session never made a group of its own,
        # as for a service started without a new session): then there is nothing to compare
        if before.strip():
            theirs = Path(f"/proc/{spare.pid}/autogroup")
            group = theirs.read_text().split()
            while time.monotonic() < deadline and group[-1:] != [str(niceness)]:
                time.sleep(0.05)  # it lowers its group just after itself
                group = theirs.read_text().split()
            assert group[0] != before.split()[0]  # its own session, so its own group
            assert group[-1] == str(niceness)
            assert ours.read_text() == before  # the window's group is left as it was
    finally:
        spare.cancel()
        spare.join(30)


@pytest.mark.skipif(not hasattr(os, "getsid"), reason="POSIX sessions")
def test_a_child_whose_group_change_is_refused_for_now_tries_once_more(monkeypatch):
    """The kernel lets an unprivileged process change a scheduling group once per 100 ms:
    a child started just after another one retries; any other refusal is left alone."""
    import builtins
    import errno

    from engine import worker

    written: list[str] = []
    refusals = [errno.EAGAIN]

    class Group:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text: str) -> None:
            written.append(text)

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/self/autogroup"
        if refusals:
            raise OSError(refusals.pop(0), "refused")
        return Group()

    monkeypatch.setattr(os, "getsid", lambda pid: os.getpid())  # as a session leader
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    monkeypatch.setattr(builtins, "open", fake_open)
    worker._lower_autogroup(10)
    assert written == ["10"]

    refusals[:] = [errno.EACCES]
    worker._lower_autogroup(10)
    assert written == ["10"] and not refusals  # refused for good: no second try

    refusals[:] = [errno.EAGAIN, errno.EAGAIN]
    worker._lower_autogroup(10)
    assert written == ["10"] and not refusals  # once more, not forever
