"""The "Inference engine" setting: persisted, edited in Settings, passed to screening."""

from __future__ import annotations

from desktop.settings import AppSettings, SettingsDialog


def test_engine_setting_persists_and_an_unknown_value_falls_back_to_auto(isolated_settings):
    assert AppSettings().engine == "auto"
    AppSettings(engine="onnxruntime").save()
    assert AppSettings.load().engine == "onnxruntime"
    AppSettings(engine="tensorrt").save()
    assert AppSettings.load().engine == "auto"


def test_settings_dialog_edits_the_engine(qtbot, isolated_settings):
    dlg = SettingsDialog(AppSettings(engine="torch"))
    qtbot.addWidget(dlg)
    assert dlg.engine.currentData() == "torch"
    labels = [dlg.engine.itemText(i) for i in range(dlg.engine.count())]
    assert labels[0].startswith("Automatic") and "ONNX Runtime" in labels
    dlg.engine.setCurrentIndex(dlg.engine.findData("onnxruntime"))
    assert dlg.value().engine == "onnxruntime"


def test_desktop_screening_runs_on_the_chosen_engine(tmp_path, synth_fundus, tiny_model):
    from engine.models import load_model
    from engine.screen_task import ScreenRequest, screening_events
    from engine.tasks import TaskState

    ws = tmp_path / "W"
    request = ScreenRequest(
        workspace=ws,
        model_path=tiny_model,
        image_folder=synth_fundus / "normal",
        uncertainty="none",
        engine="onnxruntime",
    )
    events = list(screening_events(request, TaskState()))
    summary = events[-1]["result"]
    assert events[-1]["event"] == "done" and summary["status"] == "finished"
    stored = sum(len(e["records"]) for e in events if e["event"] == "records")
    assert stored == summary["screened"] > 0
    sha = load_model(tiny_model, device="cpu").sha256
    assert list((ws / "cache" / "onnx").glob(f"{sha}-*.onnx"))  # exported beside the models
