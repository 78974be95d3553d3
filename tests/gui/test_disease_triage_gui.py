"""In the window, a confident finding reads "Refer: glaucoma", sorts first and is never
among the cleared images; only a confident "no finding" is cleared."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from desktop.mainwindow import MainWindow
from desktop.settings import AppSettings
from desktop.style import triage_style
from desktop.worklist_model import COL_TRIAGE
from engine.modelfile import load_model_file, save_model_file


def sure_model(tiny_model: Path, out: Path, answer: str, cleared_check: bool = True) -> Path:
    """The tiny model with its head fixed to one confident answer (glaucoma or normal).

    ``cleared_check``: give it a held-out record on which it cleared none of 40 images with
    glaucoma (what a model needs before it may auto-clear, see engine.clearing); without
    one, confident "normal" answers go to review.
    """
    import torch

    spec, weights, extra = load_model_file(tiny_model)
    spec.labels = ["glaucoma", "normal"]
    spec.negative_label, spec.negative_labels = "normal", ["normal"]
    spec.name = f"always {answer}"
    spec.conformal = None
    spec.clearing = None
    if cleared_check:
        probs = [[0.99, 0.01]] * 40 + [[0.02, 0.98]] * 40
        spec.clearing = {
            "source": "validation images",
            "n": 80,
            "probs": probs,
            "y": [0] * 40 + [1] * 40,
        }
    weights["fc.weight"] = torch.zeros_like(weights["fc.weight"])
    weights["fc.bias"] = torch.tensor([8.0, -8.0] if answer == "glaucoma" else [-8.0, 8.0])
    save_model_file(out, spec, weights, extra)
    return out


def screen_with(qtbot, tmp_path: Path, folder: Path, model: Path) -> MainWindow:
    w = MainWindow(
        AppSettings(reviewer="ana"), data_dir=tmp_path / "userdata", preload=False, pages=False
    )
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.worklist_loaded, timeout=60_000):
        assert w.open_image_folder(folder) is not None
    assert w.set_model(model)
    job = w.start_screening(ask=False, uncertainty="none", batch_size=16)
    assert job is not None
    with qtbot.waitSignal(w.screening_finished, timeout=180_000) as done:
        pass
    assert done.args[0]["status"] == "finished", w.last_error
    qtbot.waitUntil(lambda: w.worklist.model.rowCount() == 48, timeout=60_000)
    return w


def shown_rows(w: MainWindow) -> list[tuple[str, str]]:
    """(triage text, AI label) of every row the worklist shows, top to bottom."""
    proxy = w.worklist.proxy
    return [
        (
            proxy.index(i, COL_TRIAGE).data(Qt.ItemDataRole.DisplayRole),
            proxy.index(i, COL_TRIAGE).data(Qt.ItemDataRole.ToolTipRole),
        )
        for i in range(proxy.rowCount())
    ]


@pytest.mark.timeout(600)
def test_a_confident_glaucoma_is_referred_not_cleared(qtbot, tmp_path, synth_fundus, tiny_model):
    model = sure_model(tiny_model, tmp_path / "glaucoma.safetensors", "glaucoma")
    w = screen_with(qtbot, tmp_path, synth_fundus, model)
    rows = w.worklist.model.rows()
    referred = [r for r in rows if r["label"] == "glaucoma" and r["triage"] == "refer"]
    # images the quality gate or the OOD check stops are not graded; every other is referred
    assert referred, {r["triage"] for r in rows}
    assert not any(r["triage"] == "auto-cleared" for r in rows)

    w.worklist.set_quick_filter("auto-cleared")
    assert w.worklist.proxy.rowCount() == 0

    w.worklist.set_quick_filter("refer")
    shown = shown_rows(w)
    assert len(shown) == len(referred)
    assert all(text == "⚑ Refer: glaucoma" for text, _ in shown)
    assert all("confident finding: glaucoma" in tip for _, tip in shown)
    # never green: the referral's colour is its own
    brush = w.worklist.proxy.index(0, COL_TRIAGE).data(Qt.ItemDataRole.ForegroundRole)
    assert brush.color().name() == triage_style("refer").light
    assert brush.color().name() != triage_style("auto-cleared").light
    assert w.filter_bar.buttons["refer"].text().endswith(str(len(referred)))

    # sorted by triage state, referrals come first
    w.worklist.set_quick_filter("all")
    w.worklist.model.sort(COL_TRIAGE, Qt.SortOrder.AscendingOrder)
    texts = [text for text, _ in shown_rows(w)]
    assert texts[: len(referred)] == ["⚑ Refer: glaucoma"] * len(referred)


@pytest.mark.timeout(600)
def test_a_confident_no_finding_is_cleared(qtbot, tmp_path, synth_fundus, tiny_model):
    model = sure_model(tiny_model, tmp_path / "normal.safetensors", "normal")
    w = screen_with(qtbot, tmp_path, synth_fundus, model)
    rows = w.worklist.model.rows()
    cleared = [r for r in rows if r["triage"] == "auto-cleared"]
    assert cleared and all(r["label"] == "normal" for r in cleared)
    assert not any(r["triage"] == "refer" for r in rows)
    w.worklist.set_quick_filter("auto-cleared")
    assert {text for text, _ in shown_rows(w)} == {"✓ Auto-cleared"}


@pytest.mark.timeout(600)
def test_a_model_without_a_clearing_check_clears_nothing(qtbot, tmp_path, synth_fundus, tiny_model):
    model = sure_model(tiny_model, tmp_path / "n.safetensors", "normal", cleared_check=False)
    w = screen_with(qtbot, tmp_path, synth_fundus, model)
    rows = w.worklist.model.rows()
    assert not any(r["triage"] == "auto-cleared" for r in rows)
    confident = [r for r in rows if "confident no finding" in (r["triage_reason"] or "")]
    assert confident, "the model's confident 'normal' answers are kept as such"
    for r in confident:
        assert r["triage"] == "needs-review"
        assert "auto-clear is off for this model" in r["triage_reason"]


def test_the_report_names_the_finding_of_a_referral():
    from desktop.report import _ai_lines

    row = {
        "triage": "refer",
        "triage_reason": "confident finding: glaucoma (confidence 0.97 at or above 0.85)",
        "label": "glaucoma",
        "confidence": 0.97,
    }
    lines = dict(_ai_lines(row, None))
    assert lines["Triage"].startswith("refer: glaucoma — confident finding")


def test_the_screening_summary_lists_referrals_first():
    from desktop.screening_control import summary_text

    text = summary_text(
        {"status": "finished", "screened": 5, "counts": {"auto-cleared": 2, "refer": 3}}
    )
    assert text == "Screening finished: 5 images — ⚑ 3 refer, ✓ 2 auto-cleared"
