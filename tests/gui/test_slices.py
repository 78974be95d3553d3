"""The slice bar of a volume: slider, buttons, strip clicks, key-slice jump, blind mode."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint, Qt

from desktop.slices import SliceBar


@pytest.fixture
def bar(qtbot) -> SliceBar:
    bar = SliceBar()
    qtbot.addWidget(bar)
    bar.resize(600, 80)
    probs = [0.05] * 49
    probs[30] = 0.91
    states = ["auto-cleared"] * 49
    states[30] = "needs-review"
    bar.set_volume(49, probs, states, key=30)
    bar.show()
    qtbot.waitExposed(bar)
    return bar


def test_a_volume_opens_on_its_most_suspicious_slice_with_words(bar):
    assert bar.isVisible() and bar.n_slices == 49
    assert bar.current() == 30
    assert bar.label.text() == "Slice 31 / 49"
    assert bar.prob_label.text() == "finding probability 0.91"
    assert bar.key_button.text() == "Most suspicious: 31 (M)"


def test_buttons_slider_and_strip_move_through_slices(bar, qtbot):
    seen: list[int] = []
    bar.slice_changed.connect(seen.append)
    qtbot.mouseClick(bar.next_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(bar.prev_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(bar.prev_button, Qt.MouseButton.LeftButton)
    assert seen == [31, 30, 29]
    bar.slider.setValue(3)
    assert seen[-1] == 3 and bar.label.text() == "Slice 4 / 49"
    x = int(bar.strip.width() * (10.5 / 49))
    qtbot.mouseClick(bar.strip, Qt.MouseButton.LeftButton, pos=QPoint(x, 10))
    assert seen[-1] == 10 and bar.current() == 10
    qtbot.mouseClick(bar.key_button, Qt.MouseButton.LeftButton)
    assert bar.current() == 30
    bar.set_current(0)
    n = len(seen)
    bar.step(-1)  # already at the first slice: nothing moves, nothing is emitted
    assert bar.current() == 0 and len(seen) == n and not bar.prev_button.isEnabled()


def test_blind_mode_hides_the_answers_but_keeps_navigation(bar):
    bar.set_blind(True)
    assert not bar.strip.isVisible() and not bar.key_button.isVisible()
    assert bar.prob_label.text() == ""
    bar.jump_to_key()  # does nothing while blind
    bar.set_current(2)
    bar.jump_to_key()
    assert bar.current() == 2
    bar.set_blind(False)
    assert bar.strip.isVisible() and bar.key_button.isVisible()


def test_a_single_image_has_no_slice_bar(bar):
    bar.clear()
    assert not bar.isVisible()
