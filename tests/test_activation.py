"""One rule decides which model is active after screening, for the CLI and the desktop.

The desktop side of the same rule is in tests/gui/test_screening_rows.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.activation import activate_after_screening, register_model
from engine.cli import main
from engine.store import Workspace

from .test_store import MODEL, OTHER_MODEL, SETTINGS, add_images, prediction


@pytest.fixture
def ws(tmp_path: Path):
    """Model MODEL active, having screened three images."""
    with Workspace.open(tmp_path / "ws") as workspace:
        ids = add_images(workspace, tmp_path, 3)
        workspace.register_model(MODEL, None, "first", activate=True)
        run = workspace.start_run(MODEL, SETTINGS)
        workspace.add_predictions(run, [prediction(i) for i in ids])
        workspace.register_model(OTHER_MODEL, None, "second")
        yield workspace


def screen_with(ws: Workspace, model_hash: str, image_ids: list[int]) -> None:
    run = ws.start_run(model_hash, SETTINGS)
    ws.add_predictions(run, [prediction(i) for i in image_ids])


def image_ids(ws: Workspace) -> list[int]:
    return [r["id"] for r in ws.images()]


def test_a_finished_run_covering_every_image_switches_and_is_audited(ws: Workspace) -> None:
    screen_with(ws, OTHER_MODEL, image_ids(ws))
    decision = activate_after_screening(ws, OTHER_MODEL, "finished", actor="ana")
    assert (decision.activated, decision.changed) == (True, True)
    assert ws.active_model()["hash"] == OTHER_MODEL
    last = ws.audit_log()[-1]
    assert (last["action"], last["actor"], last["details"]["previous"]) == (
        "set_active_model",
        "ana",
        MODEL,
    )
    again = activate_after_screening(ws, OTHER_MODEL, "finished")
    assert (again.activated, again.changed, again.message) == (True, False, "")


def test_a_switch_that_would_hide_images_is_refused_with_the_count(ws: Workspace) -> None:
    screen_with(ws, OTHER_MODEL, image_ids(ws)[:1])
    decision = activate_after_screening(ws, OTHER_MODEL, "finished")
    assert not decision.activated and ws.active_model()["hash"] == MODEL
    assert "2 image(s)" in decision.message and "first" in decision.message
    assert latest_labels_seen(ws) == 3  # nothing dropped out of the worklist


def latest_labels_seen(ws: Workspace) -> int:
    return len(ws.latest_predictions())


@pytest.mark.parametrize("status", ["cancelled", "failed"])
def test_a_run_that_did_not_finish_never_switches(ws: Workspace, status: str) -> None:
    screen_with(ws, OTHER_MODEL, image_ids(ws))
    decision = activate_after_screening(ws, OTHER_MODEL, status)
    assert not decision.activated and ws.active_model()["hash"] == MODEL
    assert status in decision.message


def test_an_improved_version_waiting_for_a_decision_is_not_activated_by_screening(
    tmp_path: Path,
) -> None:
    candidate = "c" * 64
    with Workspace.open(tmp_path / "ws") as ws:
        ids = add_images(ws, tmp_path, 2)
        ws.register_model(MODEL, None, "original", activate=True)
        screen_with(ws, MODEL, ids)
        ws.register_model(candidate, None, "improved", parent=MODEL)  # offered, undecided
        screen_with(ws, candidate, ids)
        decision = activate_after_screening(ws, candidate, "finished")
        assert not decision.activated and ws.active_model()["hash"] == MODEL
        assert "accept it in the Improve model comparison" in decision.message
        ws.audit("ana", "improve.reject", {"hash": candidate, "parent": MODEL})
        decision = activate_after_screening(ws, candidate, "finished")
        assert not decision.activated and "rejected" in decision.message


def test_the_first_model_of_a_workspace_becomes_active_when_registered(
    tmp_path: Path, tiny_model: Path, second_model: Path
) -> None:
    from engine.modelfile import file_sha256, read_spec

    with Workspace.open(tmp_path / "ws") as ws:
        register_model(ws, file_sha256(tiny_model), tiny_model, read_spec(tiny_model))
        register_model(ws, file_sha256(second_model), second_model, read_spec(second_model))
        assert ws.active_model()["hash"] == file_sha256(tiny_model)
        assert len(ws.models()) == 2


# ----------------------------------------------------------------- the command line


def cli(capsys, *argv: object) -> str:
    assert main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


def test_cli_screen_applies_the_same_rule(capsys, tmp_path, synth_fundus, tiny_model, second_model):
    from engine.modelfile import file_sha256

    # eight of the synthetic files, and two of those (an image is known by its real path)
    files = sorted(synth_fundus.rglob("*.png"))[::6][:8]
    folder, some = tmp_path / "all", tmp_path / "some"
    for target, chosen in ((folder, files), (some, files[:2])):
        target.mkdir()
        for p in chosen:
            (target / f"{p.parent.name}_{p.name}").symlink_to(p)
    ws = tmp_path / "ws"
    flags = ["--workspace", ws, "--uncertainty", "none", "--device", "cpu", "--quiet"]
    first, second = file_sha256(tiny_model), file_sha256(second_model)

    cli(capsys, "screen", folder, "--model", tiny_model, *flags)
    with Workspace.open(ws, create=False) as w:
        assert w.active_model()["hash"] == first  # a workspace's first model

    out = cli(capsys, "screen", some, "--model", second_model, *flags)
    assert "The active model stays" in out and "6 image(s)" in out
    with Workspace.open(ws, create=False) as w:
        assert w.active_model()["hash"] == first
        assert len(w.latest_predictions()) == 8  # nothing dropped out of view

    out = cli(capsys, "screen", folder, "--model", second_model, *flags, "--actor", "bo")
    assert f"Model {second[:12]} is now the active model." in out
    with Workspace.open(ws, create=False) as w:
        assert w.active_model()["hash"] == second
        assert {p["model_hash"] for p in w.latest_predictions()} == {second}
        assert w.audit_log()[-1]["actor"] == "bo"
