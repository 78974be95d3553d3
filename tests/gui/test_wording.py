"""Words on screen that a clinic would read wrongly: rounding that contradicts itself, a
coverage read as a per-image probability, "confident" beside "out of distribution",
internal label names, doubled or broken phrases."""

from __future__ import annotations

import re
import shutil

import pytest

from desktop.evidence import EvidencePanel
from desktop.improve.compare import CompareDialog
from desktop.worklist_model import COL_REVIEW, WorklistModel, row_from_prediction
from engine.modelfile import ModelSpec
from engine.triage import TriagePolicy, decide


def spec(**kw) -> ModelSpec:
    base = dict(
        arch="tiny",
        task="multiclass",
        labels=["diabetic_retinopathy", "normal"],
        display_names={"diabetic_retinopathy": "diabetic retinopathy"},
        conformal={"alpha": 0.1, "qhat": 0.5},
    )
    base.update(kw)
    return ModelSpec(**base)


def reason(confidence: float, threshold: float) -> tuple[str, str]:
    return decide(
        error=None,
        label="normal",
        display="normal",
        confidence=confidence,
        conformal_set=None,
        set_display=None,
        quality_ok=True,
        quality_reasons=None,
        ood=False,
        ood_score=None,
        ood_threshold=None,
        findings=[],
        multilabel_uncertain=None,
        policy=TriagePolicy(kind="threshold", threshold=threshold),
    )


@pytest.mark.parametrize("confidence", [0.8496, 0.84999, 0.851, 0.8504])
def test_triage_reason_never_shows_two_equal_numbers(qtbot, confidence):
    state, why = reason(confidence, 0.85)
    assert state == ("needs-review" if confidence < 0.85 else "auto-cleared")
    relation = "below" if confidence < 0.85 else "at or above"
    found = re.search(rf"confidence ([0-9.]+) {relation} ([0-9.]+)", why)
    assert found, why
    shown, threshold = found.groups()
    assert shown != threshold, why
    assert float(shown) == pytest.approx(confidence, abs=10 ** -(len(shown) - 2))
    panel = EvidencePanel()
    qtbot.addWidget(panel)
    panel.set_spec(spec())
    panel.show_prediction(
        {
            "label": "normal",
            "confidence": confidence,
            "probabilities": {"diabetic_retinopathy": 1 - confidence, "normal": confidence},
            "triage": state,
            "triage_reason": why,
        }
    )
    assert panel.texts()["reason"] == why


def test_conformal_set_is_described_as_an_average_coverage(qtbot):
    panel = EvidencePanel()
    qtbot.addWidget(panel)
    panel.set_spec(spec())
    panel.show_prediction(
        {
            "label": "normal",
            "confidence": 0.6,
            "probabilities": {"diabetic_retinopathy": 0.4, "normal": 0.6},
            "conformal_set": ["diabetic_retinopathy", "normal"],
            "triage": "needs-review",
            "triage_reason": "set {diabetic retinopathy, normal} has 2 labels",
        }
    )
    text = panel.texts()["set"]
    assert "probability" not in text
    assert "90% of images on average" in text
    assert "not a probability for this one image" in panel.set_label.toolTip()
    assert "diabetic_retinopathy" not in " ".join(panel.texts().values())


def test_out_of_distribution_is_never_called_confident_and_its_reason_shows_once(qtbot):
    panel = EvidencePanel()
    qtbot.addWidget(panel)
    panel.set_spec(spec())
    why = "unlike the training data (score 3.10 above 0.90)"
    panel.show_prediction(
        {
            "label": "normal",
            "confidence": 1.0,
            "probabilities": {"diabetic_retinopathy": 0.0, "normal": 1.0},
            "ood": True,
            "ood_score": 3.1,
            "triage": "out-of-distribution",
            "triage_reason": why,
        }
    )
    texts = panel.texts()
    everything = "\n".join(texts.values())
    assert "confident" not in texts["uncertainty"].replace("confidence", "")
    assert "not reliable" in texts["uncertainty"]
    assert everything.lower().count("unlike the training data") == 1
    assert everything.count("3.10") == 1


def test_worklist_review_column_shows_display_names(qtbot):
    model = WorklistModel()
    model.display_name = spec().display
    record = {
        "image_id": 1,
        "path": "/data/a.png",
        "label": "normal",
        "triage": "needs-review",
        "review": {"labels": ["diabetic_retinopathy"], "action": "correct", "reviewer": "ana"},
    }
    model.set_rows([row_from_prediction(record, spec().display)])
    assert model.index(0, COL_REVIEW).data() == "≠ AI diabetic retinopathy (ana)"


def test_review_status_keeps_the_capital_ai_and_names(qtbot, tmp_path, tiny_model, synth_fundus):
    from desktop.review import ReviewPage
    from engine.images import discover_images
    from engine.models import load_model
    from engine.screen import ScreenSettings
    from engine.store import Workspace
    from engine.workspace_screen import screen_into_workspace

    folder = tmp_path / "ws"
    images = discover_images(synth_fundus)[:2]
    screen_into_workspace(
        folder, images, [load_model(tiny_model, device="cpu")], ScreenSettings(device="cpu")
    )
    page = ReviewPage()
    qtbot.addWidget(page)
    page.set_workspace(folder, tiny_model)
    page.set_reviewer("Dr Ana")
    page.set_auto_advance(False)
    with Workspace.open(folder) as ws:
        ids = [int(r["id"]) for r in ws.images()]
    page.set_queue(ids)
    page.show_image(ids[0])
    page.confirm_ai()
    text = page.panel.current_label.text()
    assert text.startswith("Reviewed by Dr Ana: ")
    assert "(confirmed the AI)" in text
    page.shutdown()


def test_dashboard_never_says_workspace_workspace(qtbot, tmp_path):
    from desktop.dashboard import DashboardPage
    from engine.store import Workspace

    folder = tmp_path / "demo" / "workspace"
    Workspace.open(folder, create=True).close()
    page = DashboardPage()
    qtbot.addWidget(page)
    page.set_workspace(folder, None)
    text = page.model_label.text()
    assert "Workspace workspace" not in text and "workspace”" not in text
    assert text.startswith("Workspace “demo”")
    shutil.rmtree(folder)


@pytest.mark.parametrize(
    ("n", "words"),
    [(1, "1 audit image changed its answer"), (3, "3 audit images changed their answer")],
)
def test_counts_agree_with_their_nouns(n, words):
    changed = [{"truth": "normal", "before": "normal", "after": "diabetic_retinopathy"}] * n
    assert CompareDialog._changed_text(changed).startswith(words)


def test_calibration_verdict_needs_its_evidence(qtbot):
    from desktop.dashboard import DashboardPage
    from desktop.dashboard_data import DashboardData

    page = DashboardPage()
    qtbot.addWidget(page)
    few = DashboardData(ok=True, confidence=[0.9] * 23, correct=[True] * 20 + [False] * 3)
    page._apply_calibration(few)  # noqa: SLF001 - the panel's words for given numbers
    text = page.calibration_text.text()
    assert "over-confident" not in text.replace("over-confidence", "")
    assert "too few images" in text and "right on 20" in text and "interval" in text
    many = DashboardData(ok=True, confidence=[0.95] * 200, correct=[True] * 120 + [False] * 80)
    page._apply_calibration(many)  # noqa: SLF001
    assert "it looks over-confident" in page.calibration_text.text()


def test_referral_sentence_names_the_disease_classes_and_where_it_was_measured():
    from desktop.dashboard_data import referral_sentence

    curve = [{"referred": 0.2, "n_referred": 20, "n_kept": 80, "accuracy": 0.9, "sensitivity": 0.8}]
    text = referral_sentence(curve, disease="cataract, glaucoma")
    assert (
        "Disease found among the kept images: 80% of those with a finding (cataract, glaucoma)"
        in text
    )
    assert "validation images when the model was made, not on this workspace" in text


def test_a_graded_answer_below_another_grade_says_why_it_was_chosen(qtbot):
    """An ordinal model answers the middle grade, which can be less probable than another
    grade; the panel says so instead of leaving 'NPDR — 42 %' beside a 43 % PDR bar."""
    panel = EvidencePanel()
    qtbot.addWidget(panel)
    panel.set_spec(spec(task="ordinal", labels=["0", "NPDR", "PDR"], display_names={}))
    pred = {
        "label": "NPDR",
        "confidence": 0.42,
        "probabilities": {"0": 0.15, "NPDR": 0.42, "PDR": 0.43},
        "triage": "needs-review",
        "triage_reason": "confidence 0.42 below 0.85",
    }
    panel.show_prediction(pred)
    words = panel.texts()["uncertainty"]
    assert (
        "NPDR is the middle grade of the answer: 57% for NPDR or milder, 85% for NPDR or more severe."
        in words
    )
    assert not panel.uncertainty_label.isHidden()
    panel.show_prediction(pred, hidden=True)  # blind mode: nothing of the answer shows
    assert panel.uncertainty_label.isHidden()
    panel.show_prediction(
        {
            **pred,
            "label": "PDR",
            "confidence": 0.8,
            "probabilities": {"0": 0.1, "NPDR": 0.1, "PDR": 0.8},
        }
    )
    assert "middle grade" not in panel.texts()["uncertainty"]
