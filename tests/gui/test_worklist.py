"""The worklist model, filter and thumbnails, driven directly (no screening needed)."""

from __future__ import annotations

import random

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon, QPixmap

from desktop.worklist import QuickFilterBar, WorklistPanel
from desktop.worklist_model import (
    COL_IMAGE,
    COL_REVIEW,
    COL_TRIAGE,
    COL_UNCERTAINTY,
    ImageIdRole,
    WorklistFilter,
    WorklistModel,
    informative_key,
    row_from_prediction,
    uncertainty_value,
)

STATES = ("auto-cleared", "needs-review", "ungradable", "out-of-distribution", "error")


def synthetic_rows(n: int, seed: int = 0, start_id: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        i = start_id + k
        state = STATES[rng.randrange(len(STATES))]
        err = state == "error"
        label = None if err else rng.choice(("diabetic_retinopathy", "normal"))
        review = None
        if rng.random() < 0.1:
            review = {
                "labels": [rng.choice(("diabetic_retinopathy", "normal"))],
                "action": "correct",
                "reviewer": "ana",
            }
        record = {
            "image_id": i,
            "path": f"/data/img_{i:06d}.jpg",
            "image_sha256": None,
            "patient": f"P{i // 2:05d}",
            "eye": ("right", "left")[i % 2],
            "label": label,
            "confidence": None if err else round(rng.uniform(0.5, 1.0), 4),
            "entropy": None if err else round(rng.uniform(0, 0.7), 4),
            "mutual_info": None if err or rng.random() < 0.3 else round(rng.uniform(0, 0.2), 4),
            "triage": state,
            "triage_reason": "decoder said no" if err else "confidence below threshold",
            "error": "file is truncated" if err else None,
            "review": review,
        }
        rows.append(row_from_prediction(record, lambda x: x.replace("_", " ")))
    return rows


def visible_rows(proxy: WorklistFilter) -> list[dict]:
    src = proxy.sourceModel()
    return [src.row(proxy.mapToSource(proxy.index(i, 0)).row()) for i in range(proxy.rowCount())]


def test_100k_rows_filter_and_sort_correctly(qtbot):
    rows = synthetic_rows(100_000, seed=1)
    model = WorklistModel()
    proxy = WorklistFilter()
    proxy.setSourceModel(model)
    model.set_rows(rows)
    assert model.rowCount() == 100_000

    expected = {s: sum(r["triage"] == s for r in rows) for s in STATES}
    counts = model.counts()
    for s in STATES:
        assert counts[s] == expected[s]
    assert counts["all"] == 100_000
    assert counts["reviewed"] == sum(bool(r["reviewed_label"]) for r in rows)

    # default filter: needs review only; default order: most informative first
    assert proxy.quick_filter() == "needs-review"
    shown = visible_rows(proxy)
    assert len(shown) == expected["needs-review"]
    assert {r["triage"] for r in shown} == {"needs-review"}
    keys = [informative_key(r) for r in shown]
    assert keys == sorted(keys, reverse=True)

    proxy.set_quick_filter("error")
    assert proxy.rowCount() == expected["error"]
    proxy.set_quick_filter("disagrees")
    assert proxy.rowCount() == counts["disagrees"] > 0
    assert all(r["disagrees"] for r in visible_rows(proxy))

    proxy.set_quick_filter("all")
    proxy.set_text("img_000123")
    assert [r["name"] for r in visible_rows(proxy)] == ["img_000123.jpg"]
    proxy.set_text("")

    # header-click sort is forwarded to the source (a fast key sort)
    proxy.sort(COL_TRIAGE, Qt.SortOrder.AscendingOrder)
    first = visible_rows(proxy)[0]
    assert first["triage"] == "needs-review"
    proxy.sort(COL_UNCERTAINTY, Qt.SortOrder.DescendingOrder)
    vals = [
        uncertainty_value(r) for r in visible_rows(proxy)[:1000] if r["mutual_info"] is not None
    ]
    assert vals == sorted(vals, reverse=True)


def test_chunks_insert_once_and_reviews_update_one_row(qtbot):
    model = WorklistModel()
    inserts: list[tuple[int, int]] = []
    model.rowsInserted.connect(lambda _p, a, b: inserts.append((a, b)))
    model.upsert_rows(synthetic_rows(32, seed=2, start_id=1))
    assert inserts == [(0, 31)]  # the first chunk: one insert
    model.upsert_rows(synthetic_rows(32, seed=3, start_id=33))
    assert model.rowCount() == 64
    assert sum(b - a + 1 for a, b in inserts) == 64
    # later chunks go straight to their place in "most informative first" order
    keys = [informative_key(r) for r in model.rows()]
    assert keys == sorted(keys, reverse=True)

    # the same image screened again updates its row, no new row
    again = synthetic_rows(1, seed=4, start_id=5)
    model.upsert_rows(again)
    assert model.rowCount() == 64
    assert model.row(model.row_of(5))["confidence"] == again[0]["confidence"]

    target = next(r for r in model.rows() if r["label"] == "normal" and not r["reviewed_label"])
    before = model.counts()
    changed: list[int] = []
    model.dataChanged.connect(lambda a, b, roles=(): changed.append(a.row()))
    assert model.set_review(
        target["image_id"],
        {"labels": ["diabetic_retinopathy"], "action": "correct", "reviewer": "bo"},
    )
    assert changed == [model.row_of(target["image_id"])]
    row = model.row(model.row_of(target["image_id"]))
    assert row["reviewed_label"] == "diabetic_retinopathy" and row["disagrees"]
    after = model.counts()
    assert after["reviewed"] == before["reviewed"] + 1
    assert after["disagrees"] == before["disagrees"] + 1
    idx = model.index(model.row_of(target["image_id"]), COL_REVIEW)
    assert "≠ AI" in idx.data() and "bo" in idx.data()


def test_triage_column_has_icon_word_and_reason(qtbot):
    model = WorklistModel()
    model.set_rows(synthetic_rows(20, seed=5))
    for i in range(model.rowCount()):
        r = model.row(i)
        idx = model.index(i, COL_TRIAGE)
        text = idx.data()
        if r["reviewed_label"]:  # a reviewed row says so; the state stays in the tooltip
            assert text == "✔ Reviewed"
        else:
            assert text.split(" ", 1)[0] in "✓⚠⊘?✕" and len(text) > 2
        assert r["triage_reason"] in idx.data(Qt.ItemDataRole.ToolTipRole)


def test_filter_bar_shows_live_counts_and_switches_with_keys(qtbot):
    bar = QuickFilterBar()
    qtbot.addWidget(bar)
    bar.show()
    bar.set_counts({"needs-review": 1604, "all": 2000})
    assert bar.buttons["needs-review"].text().endswith("1\u202f604")
    assert bar.buttons["all"].text() == "All 2\u202f000"
    seen: list[str] = []
    bar.changed.connect(seen.append)
    qtbot.mouseClick(bar.buttons["error"], Qt.MouseButton.LeftButton)
    assert bar.current() == "error" and seen == ["error"]


def test_thumbnails_are_made_in_background_and_cached(qtbot, synth_fundus, tmp_path):
    from engine.images import discover_images
    from engine.store import sha256_file

    paths = discover_images(synth_fundus)[:5]
    rows = [
        row_from_prediction(
            {
                "image_id": i,
                "path": str(p),
                "image_sha256": sha256_file(p),
                "label": "normal",
                "confidence": 0.9,
                "entropy": 0.1,
                "triage": "needs-review",
            }
        )
        for i, p in enumerate(paths, 1)
    ]
    panel = WorklistPanel()
    qtbot.addWidget(panel)
    panel.set_thumbnail_dir(tmp_path / "thumbs")
    panel.model.set_rows(rows)
    panel.resize(800, 600)
    panel.show()

    def all_ready() -> bool:
        return all(
            isinstance(panel.model.index(i, COL_IMAGE).data(Qt.ItemDataRole.DecorationRole), QIcon)
            for i in range(len(rows))
        )

    qtbot.waitUntil(all_ready, timeout=20_000)
    files = sorted(f.name for f in (tmp_path / "thumbs").glob("*.jpg"))
    assert files == sorted(f"{r['sha256']}.jpg" for r in rows)
    pm = panel.model.thumbnails.get(rows[0])
    assert isinstance(pm, QPixmap) and max(pm.width(), pm.height()) <= 96
    panel.shutdown()


def test_thumbnail_cache_shut_down_before_its_worker_started_makes_nothing(
    qtbot, synth_fundus, tmp_path
):
    # the worker starts a moment after the first request (after the repaint that asked)
    from desktop.thumbnails import WORKER_START_DELAY_MS, ThumbnailCache
    from engine.images import discover_images
    from engine.store import sha256_file

    path = discover_images(synth_fundus)[0]
    row = {"image_id": 1, "path": str(path), "sha256": sha256_file(path)}
    cache = ThumbnailCache(tmp_path / "thumbs")
    assert cache.get(row) is None  # queued, not made yet
    assert cache.shutdown(timeout_s=5)
    qtbot.wait(WORKER_START_DELAY_MS + 200)
    assert not list((tmp_path / "thumbs").glob("*.jpg"))
    assert cache.shutdown(timeout_s=1)


def test_model_index_answers_only_for_cells_it_has():
    model = WorklistModel()
    model.set_rows(synthetic_rows(3, seed=2))
    last = model.columnCount() - 1
    assert model.index(2, last).isValid()
    assert (model.index(2, last).row(), model.index(2, last).column()) == (2, last)
    for row, col in ((3, 0), (-1, 0), (0, last + 1), (0, -1)):
        assert not model.index(row, col).isValid()
    assert not model.index(0, 0, model.index(0, 0)).isValid()  # a table: no children
    assert model.index(1, 0).data(ImageIdRole) == model.row(1)["image_id"]


def test_selection_emits_image_and_queue_follows_filter(qtbot):
    panel = WorklistPanel()
    qtbot.addWidget(panel)
    rows = synthetic_rows(50, seed=6)
    panel.model.set_rows(rows)
    queues: list[list[int]] = []
    panel.queue_changed.connect(queues.append)
    panel.set_quick_filter("auto-cleared")
    assert queues[-1] == [
        panel.proxy.index(i, 0).data(ImageIdRole) for i in range(panel.proxy.rowCount())
    ]
    assert {panel.model.row(panel.model.row_of(i))["triage"] for i in queues[-1]} == {
        "auto-cleared"
    }
    with qtbot.waitSignal(panel.image_selected) as sig:
        assert panel.select_image(queues[-1][2])
    assert sig.args == [queues[-1][2]]
    assert panel.current_image() == queues[-1][2]
    # an image hidden by the filter cannot be selected
    hidden = next(r["image_id"] for r in rows if r["triage"] == "error")
    assert not panel.select_image(hidden)


@pytest.mark.parametrize(
    ("review", "ai", "triage", "disagrees"),
    [
        (
            {"labels": ["normal"], "action": "confirm", "reviewer": "a"},
            "normal",
            "needs-review",
            False,
        ),
        ({"labels": ["dr"], "action": "correct", "reviewer": "a"}, "normal", "needs-review", True),
        ({"labels": [], "action": "ungradable", "reviewer": "a"}, "normal", "auto-cleared", True),
        ({"labels": [], "action": "ungradable", "reviewer": "a"}, None, "ungradable", False),
    ],
)
def test_disagreement_flag(review, ai, triage, disagrees):
    from desktop.worklist_model import review_fields

    assert review_fields(review, ai, triage)["disagrees"] is disagrees


def test_random_sample_order_is_unbiased_and_stable(qtbot):
    from desktop.worklist_model import SORTS

    panel = WorklistPanel()
    qtbot.addWidget(panel)
    rows = synthetic_rows(400, seed=9)
    panel.model.set_rows(rows)
    panel.set_quick_filter("all")
    queues: list[list[int]] = []
    panel.queue_changed.connect(queues.append)
    i = next(k for k, (text, _, _) in enumerate(SORTS) if text.startswith("Random sample"))
    panel.sort_box.setCurrentIndex(i)
    panel.sort_box.activated.emit(i)
    first = [r["image_id"] for r in visible_rows(panel.proxy)]
    informative = sorted(rows, key=informative_key, reverse=True)
    assert sorted(first) == sorted(r["image_id"] for r in rows)
    assert first != [r["image_id"] for r in informative] and first != sorted(first)
    # the first 100 are a fair sample: their share of needs-review is close to the whole run's
    share = (
        sum(panel.model.row(panel.model.row_of(j))["triage"] == "needs-review" for j in first[:100])
        / 100
    )
    overall = sum(r["triage"] == "needs-review" for r in rows) / len(rows)
    assert abs(share - overall) < 0.15
    assert queues and queues[-1] == first
    # the same order again after re-sorting (stable, not reshuffled on every click)
    panel.sort_box.activated.emit(0)
    panel.sort_box.activated.emit(i)
    assert [r["image_id"] for r in visible_rows(panel.proxy)] == first


def test_cells_follow_the_row_the_theme_and_the_reader(qtbot, qapp):
    """Cell values are remembered between repaints; whatever changes what a cell should say
    (a review, the theme, blind mode, the reader) is shown at once, never a stale value."""
    from desktop.style import TRIAGE_STYLES, apply_theme

    apply_theme(qapp, "light")
    panel = WorklistPanel()
    qtbot.addWidget(panel)
    m = panel.model
    m.set_rows(synthetic_rows(1, seed=0))
    m.update_row(m.row(0)["image_id"], triage="needs-review", reviewed_label=None, reviewer=None)
    image_id = m.row(0)["image_id"]
    triage = m.index(0, COL_TRIAGE)
    review = m.index(0, COL_REVIEW)
    colour = triage.data(Qt.ItemDataRole.ForegroundRole).color().name()
    assert colour == TRIAGE_STYLES["needs-review"].light
    assert triage.data() == "⚠ Needs review"
    assert review.data() == "not reviewed"
    try:
        apply_theme(qapp, "dark")
        colour = triage.data(Qt.ItemDataRole.ForegroundRole).color().name()
        assert colour == TRIAGE_STYLES["needs-review"].dark
    finally:
        apply_theme(qapp, "light")
    assert triage.data(Qt.ItemDataRole.ForegroundRole).color().name() == (
        TRIAGE_STYLES["needs-review"].light
    )
    m.set_blind(True, "ana")
    assert triage.data() == "hidden"
    m.set_review(image_id, {"labels": ["normal"], "action": "correct", "reviewer": "ana"})
    assert triage.data() == "✔ Reviewed"
    assert review.data().endswith("normal (ana)")
    m.set_blind(True, "ben")  # another reader has not labelled it: hidden again
    assert triage.data() == "hidden"
    m.display_name = lambda x: x.upper()
    assert review.data().endswith("NORMAL (ana)")


def test_a_fresh_read_of_the_same_rows_changes_nothing_the_reader_sees(qtbot):
    """Re-reading the store (the end of every run) must not reset the list: the same rows
    leave the view alone; a changed row is updated and moves to its place in the order; a
    new one is inserted; only when shown images are gone is the list rebuilt."""
    from PySide6.QtCore import QModelIndex

    panel = WorklistPanel()
    qtbot.addWidget(panel)
    m = panel.model
    panel.set_quick_filter("all")
    rows = synthetic_rows(40, seed=3)
    m.set_rows(rows)
    chosen = panel.proxy.index(7, 0).data(ImageIdRole)
    assert panel.select_image(chosen)
    resets: list[int] = []
    changes: list[int] = []
    m.modelReset.connect(lambda: resets.append(1))
    m.dataChanged.connect(lambda *a: changes.append(1))

    m.refresh_rows([dict(r) for r in rows])  # equal rows: nothing happens
    assert (resets, changes) == ([], [])
    assert panel.current_image() == chosen

    order = [m.row(i)["image_id"] for i in range(m.rowCount())]
    last = m.row(m.rowCount() - 1)  # least informative: give it the largest uncertainty
    moved = {**last, "mutual_info": 9.0, "entropy": 9.0}
    extra = synthetic_rows(1, seed=4, start_id=1000)
    fresh = [moved if r["image_id"] == last["image_id"] else dict(r) for r in rows] + extra
    m.refresh_rows(fresh)
    assert resets == [] and changes
    assert m.row(0)["image_id"] == last["image_id"]  # sorted most informative first
    assert m.rowCount() == 41 and m.row_of(1000) is not None
    assert panel.current_image() == chosen
    assert [i for i in (m.row(k)["image_id"] for k in range(m.rowCount())) if i in order] != order

    m.refresh_rows(fresh[5:])  # images gone from the store: the list is rebuilt
    assert resets == [1] and m.rowCount() == 36
    assert m.index(0, 0, QModelIndex()).isValid()
