"""Patient PDF reports and File > Export (CSV/JSON) write what the store holds."""

from __future__ import annotations

import csv
import json
import re
import shutil
import threading
from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog

from desktop.report import (
    IMAGES_PER_PAGE,
    report_page_count,
    write_all_patient_reports,
    write_patient_report,
)
from engine.images import discover_images
from engine.modelfile import read_spec
from engine.models import load_model
from engine.screen import ScreenSettings
from engine.store import Workspace
from engine.tasks import TaskState
from engine.workspace_screen import screen_into_workspace

PATIENT = "0042"
PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")
IMAGE = re.compile(rb"/Subtype\s*/Image")


@pytest.fixture(scope="module")
def template(tmp_path_factory, synth_fundus, tiny_model) -> Path:
    """Five images of patient 0042 (three pages) plus six other synthetic images, screened;
    dr_ana reviewed two of 0042's images, dr_ben one."""
    root = tmp_path_factory.mktemp("report")
    images = root / "images"
    images.mkdir()
    sources = discover_images(synth_fundus)
    names = [f"{PATIENT}_OD_f_{i}.png" for i in (1, 2, 3)] + [
        f"{PATIENT}_OI_f_{i}.png" for i in (1, 2)
    ]
    for source, name in zip(sources[:5], names, strict=True):
        shutil.copy(source, images / name)
    for source in sources[5:11]:
        shutil.copy(source, images / source.name)
    ws_folder = root / "ws"
    screen_into_workspace(
        ws_folder, discover_images(images), [load_model(tiny_model)], ScreenSettings()
    )
    with Workspace.open(ws_folder) as ws:
        ws.add_review(images / names[0], "dr_ana", ["normal"], "correct", note="clear fundus")
        ws.add_review(images / names[1], "dr_ana", ["diabetic_retinopathy"], "correct")
        ws.add_review(images / names[3], "dr_ben", [], "ungradable")
    return root


@pytest.fixture
def case(template, tmp_path) -> Path:
    """A private copy (images and workspace) that a test may change."""
    root = Path(shutil.copytree(template, tmp_path / "case"))
    # the workspace stores absolute paths: point the copy at its own images
    with Workspace.open(root / "ws") as ws:
        ws.conn.execute(
            "UPDATE images SET path = replace(path, ?, ?)",
            (str(template.resolve()), str(root.resolve())),
        )
    return root


def pdf_pages(path: Path) -> int:
    return len(PAGE.findall(path.read_bytes()))


def test_patient_report_has_images_overlays_and_one_page_per_two_images(
    qapp, case, tiny_model, tmp_path
):
    out = write_patient_report(
        case / "ws", PATIENT, tmp_path / "r.pdf", spec=read_spec(tiny_model), model_path=tiny_model
    )
    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    assert report_page_count(5) == 3 == -(-5 // IMAGES_PER_PAGE)
    assert pdf_pages(out) == 3
    assert len(IMAGE.findall(data)) >= 10  # five photographs and five Grad-CAM overlays
    assert f"patient {PATIENT}".encode("utf-16-be") in data  # document title
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_missing_image_and_missing_model_do_not_break_the_report(qapp, case, tmp_path):
    missing = case / "images" / f"{PATIENT}_OD_f_2.png"
    missing.unlink()
    with_model = write_patient_report(case / "ws", PATIENT, tmp_path / "a.pdf", with_overlays=False)
    assert with_model.read_bytes().startswith(b"%PDF")
    assert pdf_pages(with_model) == 3
    assert len(IMAGE.findall(with_model.read_bytes())) == 4  # the readable photographs only

    no_model = write_patient_report(
        case / "ws", PATIENT, tmp_path / "b.pdf", model_path=tmp_path / "gone.safetensors"
    )
    assert pdf_pages(no_model) == 3
    assert len(IMAGE.findall(no_model.read_bytes())) == 4  # overlays left out, with a note


def test_report_can_be_written_from_a_worker_thread(qapp, case, tmp_path):
    errors: list[BaseException] = []

    def work() -> None:
        try:
            write_patient_report(case / "ws", PATIENT, tmp_path / "w.pdf", with_overlays=False)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and not errors
    assert pdf_pages(tmp_path / "w.pdf") == 3


def test_unknown_patient_is_refused_in_words(qapp, case, tmp_path):
    with pytest.raises(ValueError, match="no screened images"):
        write_patient_report(case / "ws", "9999", tmp_path / "x.pdf", with_overlays=False)
    assert not (tmp_path / "x.pdf").exists()


def test_all_patient_reports_one_file_each_with_progress_and_cancel(qapp, case, tmp_path):
    with Workspace.open(case / "ws") as ws:
        patients = sorted({r["patient"] for r in ws.latest_predictions() if r["patient"]})
    seen: list[tuple[int, int]] = []
    state = TaskState(
        on_progress=lambda done, total, msg: seen.append((done, total)), min_interval=0
    )
    written = write_all_patient_reports(
        case / "ws", tmp_path / "out", with_overlays=False, state=state
    )
    assert [p.name for p in written] == [f"patient-{p}.pdf" for p in patients]
    assert all(p.read_bytes().startswith(b"%PDF") for p in written)
    assert seen[-1] == (len(patients), len(patients))

    cancelled = TaskState()
    cancelled.cancel()
    assert write_all_patient_reports(case / "ws", tmp_path / "none", state=cancelled) == []


@pytest.fixture
def window(qtbot, case, tmp_path):
    """The application window on the case's workspace (shell only)."""
    from desktop.mainwindow import MainWindow
    from desktop.settings import AppSettings

    w = MainWindow(
        AppSettings(reviewer="ana"), data_dir=tmp_path / "userdata", preload=False, pages=False
    )
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.worklist_loaded, timeout=60_000):
        assert w.open_workspace(case / "ws")
    return w


def export(qtbot, window, fmt: str, answer: tuple[str, str], monkeypatch):
    """File > Export with ``answer`` from the save dialog; waits for the background write."""
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: answer))
    job = window.export_results(fmt)
    if job is not None:
        with qtbot.waitSignal(job.finished, timeout=60_000):
            pass
    return job


def test_export_writes_json_with_current_reviews_and_says_how_many(
    qtbot, window, tmp_path, monkeypatch
):
    export(qtbot, window, "json", (str(tmp_path / "results"), "JSON (*.json)"), monkeypatch)
    rows = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))  # suffix added
    assert len(rows) == 11
    reviewed = {Path(r["path"]).name: r["reviewed_label"] for r in rows if r["reviewed_label"]}
    assert reviewed == {
        f"{PATIENT}_OD_f_1.png": "normal",
        f"{PATIENT}_OD_f_2.png": "diabetic_retinopathy",
        f"{PATIENT}_OI_f_1.png": "ungradable",
    }
    assert "Exported 11 rows" in window.statusBar().currentMessage()


def test_export_csv_cancel_and_failure(qtbot, window, tmp_path, monkeypatch):
    export(qtbot, window, "csv", (str(tmp_path / "table.csv"), "CSV (*.csv)"), monkeypatch)
    with open(tmp_path / "table.csv", newline="", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 11
    assert export(qtbot, window, "csv", ("", ""), monkeypatch) is None  # cancelled
    assert window.last_error is None and sorted(p.name for p in tmp_path.glob("*.csv")) == [
        "table.csv"
    ]
    bad = str(tmp_path / "no-such-folder" / "x.csv")
    export(qtbot, window, "csv", (bad, "CSV (*.csv)"), monkeypatch)
    assert window.last_error and window.last_error.startswith("Export failed")
    assert "no-such-folder" in window.last_error
