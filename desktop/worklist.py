"""The worklist widgets: quick-filter buttons with live counts, and the panel (search, sort
order, table) over :class:`~desktop.worklist_model.WorklistModel`."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QEvent, QModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from .style import triage_style
from .thumbnails import ThumbnailCache
from .worklist_model import (
    AI_COLUMNS,
    AI_FILTERS,
    COL_CONFIDENCE,
    COL_IMAGE,
    COL_LABEL,
    COL_RANDOM,
    COL_REVIEW,
    COL_TRIAGE,
    COL_UNCERTAINTY,
    QUICK_FILTERS,
    SORTS,
    TRIAGE_ORDER,
    ImageIdRole,
    WorklistFilter,
    WorklistModel,
    group_thousands,
)

ICON_SIDE = 44  # shown size in logical pixels


class QuickFilterBar(QWidget):
    """Tab-like, mutually exclusive filter buttons with live counts (Alt+1, Alt+2, …)."""

    changed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        layout.setSpacing(4)
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        self.buttons: dict[str, QPushButton] = {}
        self._names = {k: (short, full) for k, short, full in QUICK_FILTERS}
        for n, (key, short, full) in enumerate(QUICK_FILTERS, 1):
            b = QPushButton(short)
            b.setObjectName("filterButton")
            b.setCheckable(True)
            b.setFocusPolicy(Qt.FocusPolicy.TabFocus)
            b.setToolTip(f"Show: {full}  (Alt+{n})")
            b.setProperty("filter_key", key)
            b.clicked.connect(lambda _=False, k=key: self._pick(k))
            sc = QShortcut(QKeySequence(f"Alt+{n}"), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(lambda k=key: self._pick(k))
            self._group.addButton(b)
            self.buttons[key] = b
            layout.addWidget(b)
        last = len(QUICK_FILTERS)
        hint = QLabel(f"Alt+1…{last}")
        hint.setObjectName("notice")
        hint.setToolTip(f"Alt+1 … Alt+{last} switch between these filters")
        layout.addWidget(hint)
        layout.addStretch(1)
        self.progress = QLabel()
        self.progress.setObjectName("worklistProgress")
        self.progress.setToolTip(
            "Images that need a clinician (every state but auto-cleared) not reviewed yet"
        )
        layout.addWidget(self.progress)
        self._blind = False
        self._counts: dict[str, int] = {}
        self.buttons["needs-review"].setChecked(True)
        self.set_counts({})

    def _pick(self, key: str) -> None:
        if not self.buttons[key].isEnabled():
            return
        self.buttons[key].setChecked(True)
        self.changed.emit(key)

    def current(self) -> str:
        b = self._group.checkedButton()
        return b.property("filter_key") if b is not None else "all"

    def set_current(self, key: str) -> None:
        self._pick(key)

    def set_blind(self, blind: bool) -> None:
        """Blind mode: the filters that reveal the AI's answer are not offered."""
        self._blind = bool(blind)
        for key in AI_FILTERS:
            b = self.buttons[key]
            b.setEnabled(not blind)
            n = list(self.buttons).index(key) + 1
            _, full = self._names[key]
            b.setToolTip(
                f"Hidden in blind mode: it would reveal the AI's answer  (Alt+{n})"
                if blind
                else f"Show: {full}  (Alt+{n})"
            )
        if blind and self.current() in AI_FILTERS:
            self._pick("all")
        self.set_counts(self._counts)

    def set_counts(self, counts: dict[str, int]) -> None:
        """Triage filters count the images still to review (the number falls as they are
        reviewed); the tooltip gives the total."""
        self._counts = dict(counts)
        for key, b in self.buttons.items():
            short, full = self._names[key]
            n = counts.get(key, 0)
            glyph = triage_style(key).glyph + " " if key in TRIAGE_ORDER else ""
            if self._blind and key in AI_FILTERS:  # even a count says what the AI answered
                b.setText(f"{glyph}{short}")
                b.setAccessibleName(f"{full}: hidden in blind mode")
            elif key in TRIAGE_ORDER:
                left = counts.get(f"{key}:left", n)
                b.setText(f"{glyph}{short} {group_thousands(left)}")
                b.setAccessibleName(f"{full}: {left} not reviewed, {n} in all")
                if not (self._blind and key in AI_FILTERS):
                    n_key = list(self.buttons).index(key) + 1
                    b.setToolTip(
                        f"Show: {full}  (Alt+{n_key})\n{left} not reviewed yet, "
                        f"{n - left} reviewed, {n} in all"
                    )
            else:
                b.setText(f"{glyph}{short} {group_thousands(n)}")
                b.setAccessibleName(f"{full}: {n}")
        person, left = counts.get("person", 0), counts.get("person:left", 0)
        self.progress.setText(
            f"Need a clinician: <b>{group_thousands(left)} left</b> of {group_thousands(person)}"
            if person
            else ""
        )

    def progress_text(self) -> str:
        """The progress line as plain text."""
        return self.progress.text().replace("<b>", "").replace("</b>", "")


class WorklistPanel(QWidget):
    """Search box, sort order and the table; emits the selected image and the visible queue."""

    image_selected = Signal(int)
    queue_changed = Signal(list)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = WorklistModel(self)
        self.proxy = WorklistFilter(self)
        self.proxy.setSourceModel(self.model)

        self.search = QLineEdit()
        self.search.setPlaceholderText("Search file, patient, label, reviewer…  (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._on_text)
        QShortcut(QKeySequence.StandardKey.Find, self, activated=self.search.setFocus)

        self.sort_box = QComboBox()
        for text, _, _ in SORTS:
            self.sort_box.addItem(f"sorted: {text.lower()}")
        self.sort_box.setToolTip("Order of the worklist (or click a column header)")
        self.sort_box.activated.connect(self._on_sort_box)

        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setAlternatingRowColors(True)
        self.view.setShowGrid(False)
        self.view.setWordWrap(False)
        self.view.setSortingEnabled(True)
        self.view.setIconSize(QSize(ICON_SIDE, ICON_SIDE))
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.view.verticalHeader().setDefaultSectionSize(ICON_SIDE + 6)
        self.view.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        header = self.view.horizontalHeader()
        header.setStretchLastSection(False)  # no empty column taking the image's width
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for col, width in (
            (COL_IMAGE, 165),
            (COL_LABEL, 140),
            (COL_CONFIDENCE, 80),
            (COL_TRIAGE, 175),  # room for "⚑ Refer: diabetic retinopathy" at most fonts
            (COL_UNCERTAINTY, 90),
            (COL_REVIEW, 150),
        ):
            header.resizeSection(col, width)
        header.setSortIndicator(COL_UNCERTAINTY, Qt.SortOrder.DescendingOrder)
        self.view.selectionModel().currentRowChanged.connect(self._on_current)

        self.empty = QLabel("No images here yet.")
        self.empty.setObjectName("notice")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.hide()

        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.search, 1)
        top.addWidget(self.sort_box)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.empty)

        # the queue is sent at most every 150 ms (a chunk of rows is one update, not 32)
        self._queue_timer = QTimer(self)
        self._queue_timer.setSingleShot(True)
        self._queue_timer.setInterval(150)
        self._queue_timer.timeout.connect(self._emit_queue)
        for sig in (self.model.sorted_changed, self.model.rowsInserted, self.model.modelReset):
            sig.connect(lambda *_: self._queue_timer.start())
        self.proxy.layoutChanged.connect(self._update_empty)
        self.proxy.rowsInserted.connect(self._update_empty)
        self.proxy.modelReset.connect(self._update_empty)

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt override
        # the theme changed (a hidden panel is told of the style, a shown one of the palette
        # too): the triage colours with it
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.StyleChange):
            self.model.forget_cells()
        super().changeEvent(event)

    # ---- thumbnails
    def set_thumbnail_dir(self, folder: Path | None) -> None:
        """Use (or stop using) a thumbnail cache in ``folder``."""
        old = self.model.thumbnails
        if old is not None:
            old.shutdown()
            old.ready.disconnect(self.model.thumbnail_ready)
        self.model.thumbnails = None
        if folder is not None:
            cache = ThumbnailCache(folder, self)
            cache.ready.connect(self.model.thumbnail_ready)
            self.model.thumbnails = cache

    def shutdown(self) -> None:
        if self.model.thumbnails is not None:
            self.model.thumbnails.shutdown()

    # ---- filters / order
    def set_quick_filter(self, key: str) -> None:
        self.proxy.set_quick_filter(key)
        self._after_filter()

    def _on_text(self, text: str) -> None:
        self.proxy.set_text(text)
        self._after_filter()

    def _on_sort_box(self, i: int) -> None:
        _, col, order = SORTS[i]
        if col == COL_RANDOM:  # no header to mark: sort directly
            self.view.horizontalHeader().setSortIndicatorShown(False)
            self.proxy.sort(col, order)
            self._emit_queue()
            return
        self.view.horizontalHeader().setSortIndicatorShown(True)
        self.view.sortByColumn(col, order)

    def _after_filter(self) -> None:
        self._update_empty()
        self._emit_queue()

    def _update_empty(self, *args: object) -> None:
        n = self.proxy.rowCount()
        self.empty.setVisible(n == 0)
        if n == 0:
            total = self.model.rowCount()
            self.empty.setText(
                "No images screened yet — press F5 to screen."
                if total == 0
                else "No images match this filter."
            )

    def _emit_queue(self, *args: object) -> None:
        self.queue_changed.emit(self.proxy.visible_ids())

    def set_blind(self, blind: bool, reader: str) -> None:
        """Blind mode for the table: AI columns hidden and AI orders not offered."""
        self.model.set_blind(blind, reader)
        self.proxy.invalidate()
        for i, (_, col, _) in enumerate(SORTS):
            item = self.sort_box.model().item(i)  # type: ignore[attr-defined]
            if item is not None:
                item.setEnabled(not (blind and col in AI_COLUMNS))
        if blind and SORTS[self.sort_box.currentIndex()][1] in AI_COLUMNS:
            self.sort_box.setCurrentIndex(next(i for i, s in enumerate(SORTS) if s[1] == COL_IMAGE))
            self.view.horizontalHeader().setSortIndicator(COL_IMAGE, Qt.SortOrder.AscendingOrder)
        self._emit_queue()

    # ---- selection
    def _on_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid():
            self.image_selected.emit(int(current.data(ImageIdRole)))

    def current_image(self) -> int | None:
        idx = self.view.currentIndex()
        return int(idx.data(ImageIdRole)) if idx.isValid() else None

    def select_image(self, image_id: int) -> bool:
        """Make ``image_id`` the current row if it is visible; True when done."""
        src_row = self.model.row_of(image_id)
        if src_row is None:
            return False
        idx = self.proxy.mapFromSource(self.model.index(src_row, 0))
        if not idx.isValid():
            return False
        if self.view.currentIndex().row() != idx.row():
            self.view.setCurrentIndex(idx)
        self.view.scrollTo(idx)
        return True

    def select_first(self) -> None:
        if self.proxy.rowCount() and not self.view.currentIndex().isValid():
            self.view.setCurrentIndex(self.proxy.index(0, 0))
