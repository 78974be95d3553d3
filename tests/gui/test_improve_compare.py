"""The compare dialog shows the engine's one verdict: the same sentence the CLI prints, the
same recommendation ``--accept-if-better`` follows, missed disease first, the workload with
its meaning, and sentences instead of raw messages. Results are built by hand."""

from __future__ import annotations

import pytest

from desktop.improve import CompareDialog
from engine.cli_improve import decide_acceptance
from engine.improve import judge
from tests.improve_results import DR, NORMAL, fixes, result


@pytest.fixture
def show(qtbot, tmp_path):
    def make(res: dict) -> CompareDialog:
        dlg = CompareDialog(tmp_path, res, "ana")
        dlg.decision = "closed in test"  # closing must not record a decision
        qtbot.addWidget(dlg)
        dlg.show()
        return dlg

    return make


def test_a_tiny_rise_the_old_cli_accepted_is_refused_by_the_cli_and_the_dialog(show):
    truth = [DR] * 20 + [NORMAL] * 20
    before = [DR] * 15 + [NORMAL] * 5 + [NORMAL] * 20
    after = [DR] * 16 + [NORMAL] * 4 + [NORMAL] * 20  # one image better: +2.5 points
    res = result(truth, before, after)
    dlg = show(res)
    accepted, reason = decide_acceptance(res)
    assert not accepted
    assert dlg.verdict.text() == judge(res).headline and dlg.verdict.text() in reason
    assert dlg.verdict.text().startswith("= Not enough evidence that the new model is better")
    assert dlg.accept_button.text().startswith("Accept anyway")
    assert dlg.keep_button.isDefault() and not dlg.accept_button.isDefault()


def test_the_dialog_recommends_exactly_what_the_cli_accepts(show):
    res = fixes(20, 20, fixed=8)
    dlg = show(res)
    assert decide_acceptance(res)[0]
    assert dlg.verdict.text().startswith("▲ The new model is better")
    assert "95 % CI" in dlg.verdict.text() and "p = " in dlg.verdict.text()
    assert dlg.accept_button.text().startswith("Accept new model")
    assert dlg.accept_button.isDefault()


def test_too_few_audit_images_read_cannot_judge(show):
    dlg = show(fixes(4, 3, fixed=4))  # 7 images, 4 changed: once called "better"
    assert dlg.verdict.text().startswith("Cannot judge: the audit set holds only 7 images")
    assert "better" not in dlg.verdict.text()
    assert dlg.accept_button.text().startswith("Accept anyway")


def test_missed_disease_comes_first_and_fewer_reviews_is_explained(show):
    truth = [DR] * 20 + [NORMAL] * 20
    after = [NORMAL] * 3 + [DR] * 17 + [NORMAL] * 20
    dlg = show(result(truth, truth, after, review_workload=(0.857, 0.143)))
    first = dlg.metrics.item(0, 0).text()
    assert first.startswith("Missed disease") and "'normal'" in first
    assert dlg.metrics.item(0, 1).text() == "0 of 20" and dlg.metrics.item(0, 2).text() == "3 of 20"
    assert dlg.metrics.item(0, 3).text().startswith("▼ 3 more missed")
    assert "85.7 % → 14.3 %" in dlg.workload.text() and "not a gain" in dlg.workload.text()
    workload_change = dlg.metric_texts()["review_workload"][2]
    assert "better" not in workload_change and workload_change.startswith("↓")
    assert any("misses more disease" in line for line in dlg.reasons.text().splitlines())


def test_notes_are_sentences_and_an_ood_flood_is_named(show):
    res = fixes(20, 20, fixed=8)
    res["warnings"] = [
        "calibration (temperature, conformal sets, referral curve) kept from the current "
        "model: only 3 validation reviews, at least 30 are needed to refit it"
    ]
    res["ood_check"] = {"n": 60, "before": 2, "after": 28}
    dlg = show(res)
    assert dlg.notes.text().startswith(
        "Note: Calibration (temperature"
    ) and dlg.notes.text().endswith(".")
    assert "alpha=" not in dlg.notes.text() + dlg.verdict.text()
    assert "28 of 60 workspace images unfamiliar" in dlg.reasons.text()
    assert dlg.accept_button.text().startswith("Accept anyway")
    assert not decide_acceptance(res)[0]


def test_thumbnails_follow_the_one_file_rule(tmp_path):
    """A stored name that is not UTF-8 (kept as ``\\xNN`` text) still shows its image; a
    file since swapped for a named pipe shows none and does not block."""
    import os

    import numpy as np
    from PIL import Image

    from desktop.improve.compare import load_thumbnails
    from engine.store.common import normalise_path

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")
    try:
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(odd)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take names that are not UTF-8")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    thumbs = load_thumbnails([normalise_path(odd), str(fifo)], height=20)
    assert thumbs[0] is not None and thumbs[0].height() == 20
    assert thumbs[1] is None


def test_thumbnails_follow_the_photographs_orientation_and_skip_broken_files(tmp_path):
    """A photograph stored on its side with an EXIF turn shows upright; a truncated file
    shows none and the others still come."""
    import numpy as np
    from PIL import Image

    from desktop.improve.compare import load_thumbnails

    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotate 90 degrees)
    Image.fromarray(np.full((40, 120, 3), 128, np.uint8)).save(turned, exif=exif)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(turned.read_bytes()[:200])
    plain = tmp_path / "plain.png"
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(plain)
    thumbs = load_thumbnails([str(turned), str(broken), str(plain)], height=30)
    assert thumbs[0] is not None and (thumbs[0].width(), thumbs[0].height()) == (10, 30)
    assert thumbs[1] is None
    assert thumbs[2] is not None and (thumbs[2].width(), thumbs[2].height()) == (60, 30)
