"""The dashboard tab shows what the workspace store holds, in words and numbers."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

import pytest

from desktop.dashboard import TRIAGE_WORDS, DashboardPage, referral_sentence
from engine.modelfile import read_spec
from engine.store import TRIAGE_STATES, Workspace

OTHER = {"diabetic_retinopathy": "normal", "normal": "diabetic_retinopathy"}


@pytest.fixture
def screened_ws(screened_template, tmp_path) -> Path:
    """A private copy of the screened workspace that a test may add reviews to."""
    return Path(shutil.copytree(screened_template, tmp_path / "ws"))


def add_two_reviewers(ws_folder: Path, n: int = 30) -> None:
    """dr_ana grades the first ``n`` images, dr_ben every second one (some disagreeing),
    one image is marked ungradable and one of dr_ben's reviews is undone."""
    with Workspace.open(ws_folder) as ws:
        rows = ws.latest_predictions()
        for i, row in enumerate(rows[:n]):
            truth = Path(row["path"]).parent.name
            ws.add_review(row["image_id"], "dr_ana", [truth], "correct")
            if i % 2 == 0:
                label = OTHER[truth] if i % 6 == 0 else truth
                ws.add_review(row["image_id"], "dr_ben", [label], "correct", note="checked")
        ws.add_review(rows[n]["image_id"], "dr_ana", [], "ungradable")
        ws.add_review(rows[0]["image_id"], "dr_ben", [], "undo")


@pytest.fixture
def page(qtbot) -> DashboardPage:
    widget = DashboardPage()
    qtbot.addWidget(widget)
    widget.resize(1366, 700)
    return widget


def test_triage_counts_and_reviewed_count_match_the_store(page, screened_ws, tiny_model):
    add_two_reviewers(screened_ws)
    page.set_workspace(screened_ws, read_spec(tiny_model))
    with Workspace.open(screened_ws) as ws:
        rows = ws.latest_predictions()
    stored = Counter(r["triage"] for r in rows)
    shown = page.triage_counts_shown()
    assert shown == {TRIAGE_WORDS[s]: stored.get(s, 0) for s in TRIAGE_STATES}
    categories = [page.triage_axis.at(i) for i in range(page.triage_axis.count())]
    for state in TRIAGE_STATES:
        assert f"{TRIAGE_WORDS[state]}: {stored.get(state, 0)}" in categories
    reviewed = sum(1 for r in rows if r["review"] is not None)
    assert reviewed == 31
    assert f"Reviewed {reviewed} of {len(rows)} screened images" in page.reviewed_label.text()
    human = sum(n for s, n in stored.items() if s != "auto-cleared")
    assert f"{human} need a clinician" in page.reviewed_label.text()
    assert not page.triage_panel.is_empty()


def test_agreement_table_shows_the_kappa_the_store_computes(page, screened_ws, tiny_model):
    add_two_reviewers(screened_ws)
    page.set_workspace(screened_ws, read_spec(tiny_model))
    with Workspace.open(screened_ws) as ws:
        agreement = ws.agreement()
    table = page.agreement_table
    shown = {
        table.item(i, 0).text(): (table.item(i, 1).text(), table.item(i, 2).text())
        for i in range(table.rowCount())
    }
    expected = {f"{p['a']} vs {p['b']}": (p["n"], p["kappa"]) for p in agreement["pairs"]} | {
        f"{p['reviewer']} vs AI": (p["n"], p["kappa"]) for p in agreement["with_ai"]
    }
    assert set(shown) == set(expected) == {"dr_ana vs dr_ben", "dr_ana vs AI", "dr_ben vs AI"}
    for who, (n, kappa) in expected.items():
        assert shown[who][0] == str(n)
        assert shown[who][1] == ("—" if kappa is None else f"{kappa:.2f}")
    assert all(table.item(i, 3).text() for i in range(table.rowCount()))  # kappa in words


def test_confusion_matrix_counts_every_reviewed_image_once(page, screened_ws, tiny_model):
    add_two_reviewers(screened_ws)
    spec = read_spec(tiny_model)
    page.set_workspace(screened_ws, spec)
    with Workspace.open(screened_ws) as ws:
        rows = ws.latest_predictions()
    reviewed = [r for r in rows if r["review"] is not None]
    expected = Counter(((r["review"]["labels"] or ["ungradable"])[0], r["label"]) for r in reviewed)
    raw = {spec.display(label): label for label in spec.labels} | {"ungradable": "ungradable"}
    table = page.confusion_table
    counts = page.confusion_counts()
    assert sum(map(sum, counts)) == len(reviewed) == 31
    for i in range(table.rowCount()):
        for j in range(table.columnCount()):
            reviewed_as = raw[table.verticalHeaderItem(i).text().removeprefix("Reviewed: ")]
            ai_said = raw[table.horizontalHeaderItem(j).text().removeprefix("AI: ")]
            assert counts[i][j] == expected.get((reviewed_as, ai_said), 0)
            assert table.item(i, j).background().color().isValid()  # shaded heat-map cell
    assert "Reviewed: ungradable" in [
        table.verticalHeaderItem(i).text() for i in range(table.rowCount())
    ]
    assert f"{len(reviewed)} reviewed images" in page.confusion_text.text()


def test_calibration_waits_for_twenty_reviews_then_draws(page, screened_ws, tiny_model):
    spec = read_spec(tiny_model)
    with Workspace.open(screened_ws) as ws:
        rows = ws.latest_predictions()
        for row in rows[:5]:
            ws.add_review(row["image_id"], "dr_ana", [Path(row["path"]).parent.name])
    page.set_workspace(screened_ws, spec)
    assert page.calibration_panel.is_empty()
    assert "Not enough reviewed images yet (n = 5" in page.calibration_panel.empty_label.text()

    with Workspace.open(screened_ws) as ws:
        for row in rows[5:25]:
            ws.add_review(row["image_id"], "dr_ana", [Path(row["path"]).parent.name])
    page.refresh()
    assert not page.calibration_panel.is_empty()
    assert page.calibration_series.count() >= 1
    assert "On 25 reviewed images" in page.calibration_text.text()
    for point in page.calibration_series.points():
        assert 0 <= point.x() <= 100 and 0 <= point.y() <= 100


def test_referral_curve_is_drawn_with_a_sentence(page, screened_ws, tiny_model):
    spec = read_spec(tiny_model)
    page.set_workspace(screened_ws, spec)
    usable = [p for p in spec.referral_curve or [] if p.get("accuracy") is not None]
    assert usable, "the tiny model is expected to carry a referral curve"
    assert not page.referral_panel.is_empty()
    assert page.referral_accuracy.count() == len(usable)
    assert "the AI is right on" in page.referral_text.text()


def test_referral_sentence_reads_the_point_near_twenty_percent():
    curve = [
        {"referred": 0.0, "n_referred": 0, "n_kept": 100, "accuracy": 0.9, "sensitivity": 0.8},
        {"referred": 0.2, "n_referred": 20, "n_kept": 80, "accuracy": 0.96, "sensitivity": 0.93},
        {"referred": 0.4, "n_referred": 40, "n_kept": 60, "accuracy": 0.99, "sensitivity": None},
    ]
    text = referral_sentence(curve, disease="glaucoma")
    assert "Refer the 20% most uncertain images" in text
    assert "right on 96% of the other 80%" in text
    assert "Disease found among the kept images: 93%" in text and "(glaucoma)" in text
    assert "100 labelled validation images" in text
    assert "no referral curve" in referral_sentence(None)
    curve[1].update(disease_found=0.97, n_missed=2)
    text = referral_sentence(curve, disease="cataract, glaucoma")
    assert "97% of images with a finding (cataract, glaucoma) reach a clinician" in text
    assert "2 would be auto-cleared" in text


def test_empty_workspace_and_no_model_show_empty_states(page, tmp_path):
    panels = [
        page.triage_panel,
        page.referral_panel,
        page.calibration_panel,
        page.agreement_panel,
        page.confusion_panel,
    ]
    page.set_workspace(None, None)
    assert all(p.is_empty() for p in panels)
    assert "Open a workspace" in page.triage_panel.empty_label.text()

    page.set_workspace(tmp_path / "not-a-workspace", None)
    assert all(p.is_empty() for p in panels)

    Workspace.open(tmp_path / "empty", create=True).close()
    page.set_workspace(tmp_path / "empty", None)
    assert all(p.is_empty() for p in panels)
    assert "No screened images yet" in page.triage_panel.empty_label.text()
    assert "No model is active" in page.referral_panel.empty_label.text()
    assert "Not enough reviewed images yet (n = 0" in page.calibration_panel.empty_label.text()
    assert "No reviews yet" in page.agreement_panel.empty_label.text()
    assert "No reviewed images yet" in page.confusion_panel.empty_label.text()


def test_demo_model_is_flagged_on_the_dashboard(page, screened_ws, tiny_model):
    spec = read_spec(tiny_model)
    page.set_workspace(screened_ws, spec)
    assert not page.demo_label.isVisibleTo(page)
    page.set_workspace(screened_ws, dataclasses.replace(spec, demo=True))
    assert page.demo_label.isVisibleTo(page)
    assert "not for clinical use" in page.demo_label.text()


def test_an_older_binary_curve_that_counted_the_wrong_class_is_not_read_as_disease_found():
    from engine.modelfile import ModelSpec

    spec = ModelSpec("resnet10t", "binary", ["diabetic_retinopathy", "normal"])
    curve = [{"referred": 0.2, "n_referred": 2, "n_kept": 8, "accuracy": 0.9, "sensitivity": 0.7}]
    text = referral_sentence(curve, disease="diabetic retinopathy", spec=spec)
    assert "70%" not in text and "recalibrate" in text
    healthy_first = ModelSpec("resnet10t", "binary", ["normal", "glaucoma"])
    assert "70%" in referral_sentence(curve, spec=healthy_first)
