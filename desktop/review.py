"""The review page: the image, the AI's evidence and one-key decisions, with undo.

Layout: the :class:`~desktop.viewer.ImageViewer` in the centre with, for an OCT volume,
the :class:`~desktop.slices.SliceBar` and then the overlay bar under it; on the right the
:class:`~desktop.evidence.EvidencePanel` and the :class:`ReviewPanel`. Reviews are appended
to the workspace store (undo is a new review, never a delete); a volume's review records
the slice it was read at.

Threading: the GUI thread only reads and writes small rows of the store, through
:class:`engine.store.Workspace` methods. Display images and attribution overlays come from
the :class:`~desktop.image_loader.ImageLoader` (background workers, LRU caches,
prefetching of the next two images of the queue, and of a volume's neighbouring slices).

Why one module of about 730 lines: decisions, blind mode, display, slices and overlays all
act on the current item's record and are kept together; the loader, the decision panel
(:mod:`desktop.review_panel`) and the keys (:mod:`desktop.shortcuts`) live apart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QKeyEvent, QKeySequence, QShortcut, QShowEvent
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from .enhance_bar import ENHANCE_KEYS, DisplayEnhancer, EnhanceBar
from .evidence import WARN, EvidencePanel, label_names
from .grading_panel import LOAD_FROM_FILE, GradingPanel
from .image_loader import PRIORITY_CURRENT, ImageLoader, ModelHolder
from .marks_layer import MARK_KEYS, Lesion, MarksLayer, MarksPanel
from .review_panel import MAX_LABEL_KEYS, ReviewPanel, ago
from .shortcuts import TEXT_FIELDS, Binding, PageShortcuts
from .slices import SliceBar
from .viewer import OVERLAY_NAMES, ImageViewer, OverlayBar

if TYPE_CHECKING:
    from engine.modelfile import ModelSpec
    from engine.schemes import Scheme
    from engine.store import Workspace

PREFETCH = 2  # images of the queue decoded (and explained) ahead of the reader
# an opened image is painted in a later turn of the event loop than the one that fills and
# lays out the page (see ReviewPage._paint_next_turn); a timer of at least 1 ms, since Qt
# runs a zero timer as a posted call, in the same turn as the layout
PAINT_LATER_MS = 1


# --------------------------------------------------------------------------- the page


_KEY_EVENTS = (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress, QEvent.Type.KeyRelease)


class ReviewPage(QWidget):
    """Viewer + evidence + keyboard review of one image at a time, along a queue."""

    reviewed = Signal(int)  # image_id whose review was saved or undone
    current_changed = Signal(int)  # image_id now shown

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reviewPage")
        self._ws: Workspace | None = None
        self._ws_folder: Path | None = None
        self._spec: ModelSpec | None = None
        self._reviewer = ""
        self._blind = False
        self._auto_advance = True
        self._queue: list[int] = []
        self._done: set[int] = set()  # images of the queue that have a current review
        self._end_hold: int | None = None  # saved at the end of the list: keys no longer relabel
        self._current: dict[str, Any] | None = None
        self._shown_at = time.monotonic()
        self._revealed: set[int] = set()
        self._notes: dict[int, str] = {}  # unsaved notes, kept when the reader moves on
        self._labels: list[str] = []
        self._method = "none"
        self._slice: int | None = None  # the B-scan shown (0-based) when the item is a volume
        self._closed = False
        self.loader = ImageLoader(self)
        self.loader.image_ready.connect(self._on_image_ready)
        self.loader.image_failed.connect(self._on_image_failed)
        self.loader.overlay_ready.connect(self._on_overlay_ready)
        self.loader.overlay_failed.connect(lambda image_id, *_: self._on_overlay_changed(image_id))

        self._scheme: Scheme | None = None
        self._scheme_shortcuts: list[QShortcut] = []
        self._facts: dict[int, dict[str, Any]] = {}  # image rows (size, modality) by id
        self.viewer = ImageViewer()
        self.slice_bar = SliceBar()
        self.bar = OverlayBar()
        self.enhancer = DisplayEnhancer(self.viewer, self)
        self.enhance_bar = EnhanceBar(self.enhancer)
        self.marks = MarksLayer(self.viewer, self)
        self.marks_panel = MarksPanel(self.marks)
        self.evidence = EvidencePanel()
        self.panel = ReviewPanel()
        self.grading = GradingPanel()
        self._build_layout()
        self._connect()
        self._install_shortcuts()
        self.viewer.set_message("No image selected.\nChoose an image in the worklist.")
        self._update_mode_line()

    # ------------------------------------------------------------------ layout

    def _build_layout(self) -> None:
        centre = QWidget()
        centre_layout = QVBoxLayout(centre)
        centre_layout.setContentsMargins(0, 0, 0, 0)
        centre_layout.setSpacing(0)
        centre_layout.addWidget(self.viewer, 1)
        centre_layout.addWidget(self.slice_bar)
        centre_layout.addWidget(self.enhance_bar)
        centre_layout.addWidget(self.bar)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(0)
        right_layout.addWidget(self.evidence)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)
        right_layout.addWidget(line)
        right_layout.addWidget(self.panel)
        for part in (self.grading, self.marks_panel):
            rule = QFrame()
            rule.setFrameShape(QFrame.Shape.HLine)
            rule.setFrameShadow(QFrame.Shadow.Sunken)
            right_layout.addWidget(rule)
            right_layout.addWidget(part)
        right_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setObjectName("evidenceScroll")
        scroll.setWidget(right)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumWidth(300)
        scroll.setMaximumWidth(420)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(centre)
        splitter.addWidget(scroll)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setCollapsible(0, False)
        splitter.setCollapsible(1, False)
        splitter.setSizes([700, 330])
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

    def _connect(self) -> None:
        self.slice_bar.slice_changed.connect(self._on_slice_changed)
        self.viewer.slice_wheel.connect(self.slice_bar.step)
        self.bar.method_changed.connect(self.set_overlay_method)
        self.bar.opacity_changed.connect(self.viewer.set_overlay_opacity)
        self.bar.side_by_side_changed.connect(self.viewer.set_side_by_side)
        self.viewer.set_overlay_opacity(self.bar.opacity())
        self.panel.confirm_button.clicked.connect(self.confirm_ai)
        self.panel.ungradable_button.clicked.connect(self.mark_ungradable)
        self.panel.note_button.clicked.connect(self.edit_note)
        self.panel.undo_button.clicked.connect(self.undo)
        self.panel.prev_button.clicked.connect(self.previous_image)
        self.panel.next_button.clicked.connect(self.next_image)
        self.panel.next_unreviewed_button.clicked.connect(self.next_unreviewed)
        self.panel.note_edit.returnPressed.connect(self._note_done)
        self.panel.note_edit.textEdited.connect(self._note_edited)
        self.grading.answer_clicked.connect(self.answer)
        self.grading.scheme_chosen.connect(self.choose_scheme)
        self.viewer.image_changed.connect(self._update_marks)
        self.marks.message.connect(lambda text, warn: self.panel.set_prompt(text, warning=warn))

    def _install_shortcuts(self) -> None:
        """Window-wide keys, active while this page is visible (a text field keeps its keys)."""
        bindings: list[Binding] = [
            ([Qt.Key.Key_Return, Qt.Key.Key_Enter], self.confirm_ai),
            ([Qt.Key.Key_U], self.mark_ungradable),
            ([Qt.Key.Key_N], self.edit_note),
            ([Qt.Key.Key_Z, "Ctrl+Z"], self.undo),
            ([Qt.Key.Key_J, Qt.Key.Key_Right], self.next_image),
            ([Qt.Key.Key_K, Qt.Key.Key_Left], self.previous_image),
            (["Shift+J", "Shift+Right"], self.next_unreviewed),
            ([Qt.Key.Key_PageDown], lambda: self.slice_bar.step(1)),
            ([Qt.Key.Key_PageUp], lambda: self.slice_bar.step(-1)),
            ([Qt.Key.Key_M], self.slice_bar.jump_to_key),
            ([Qt.Key.Key_G], lambda: self.set_overlay_method("gradcam")),
            ([Qt.Key.Key_I], lambda: self.set_overlay_method("ig")),
            ([Qt.Key.Key_O], lambda: self.set_overlay_method("none")),
            ([Qt.Key.Key_S], lambda: self.bar.side_button.toggle()),
            ([Qt.Key.Key_F, Qt.Key.Key_0], self.viewer.fit),
            ([Qt.Key.Key_Equal], self.viewer.actual_size),  # Ctrl+1 switches the main tabs
            ([Qt.Key.Key_Plus, "Ctrl+="], self.viewer.zoom_in),
            ([Qt.Key.Key_Minus], self.viewer.zoom_out),
            # display enhancement (the file is never changed); Shift steps down
            ([ENHANCE_KEYS["brightness"]], lambda: self.enhancer.step("brightness", +1)),
            ([f"Shift+{ENHANCE_KEYS['brightness']}"], lambda: self.enhancer.step("brightness", -1)),
            ([ENHANCE_KEYS["contrast"]], lambda: self.enhancer.step("contrast", +1)),
            ([f"Shift+{ENHANCE_KEYS['contrast']}"], lambda: self.enhancer.step("contrast", -1)),
            ([ENHANCE_KEYS["gamma"]], lambda: self.enhancer.step("gamma", +1)),
            ([f"Shift+{ENHANCE_KEYS['gamma']}"], lambda: self.enhancer.step("gamma", -1)),
            ([ENHANCE_KEYS["green"]], lambda: self.enhancer.toggle("green")),
            ([ENHANCE_KEYS["clahe"]], lambda: self.enhancer.toggle("clahe")),
            ([ENHANCE_KEYS["reset"]], self.enhancer.reset),
            # lesion marks
            ([MARK_KEYS["mode"]], lambda: self.marks.set_marking(not self.marks.is_marking())),
            ([MARK_KEYS["visible"]], self.marks.toggle_visible),
        ]
        for i in range(MAX_LABEL_KEYS):
            bindings.append(([getattr(Qt.Key, f"Key_{i + 1}")], lambda i=i: self.press_label(i)))
        self._shortcuts = PageShortcuts(self, bindings)
        # Space is held, not pressed: the original shows while it is down (a shortcut only
        # sees the press, so the page watches the key itself). It watches only the objects
        # a key it acts on goes to (see _page_key): the focused widget and the window. A
        # filter on the whole application ran Python for every event of every widget, and
        # each of those calls waited its turn for the interpreter while a background thread
        # held it (bench_gui, longest pause while screening, 6 alternated runs each: median
        # 38.5 ms, 5 within 50 ms, against 47 ms and 3)
        self._watched: list[QObject] = []
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.focusChanged.connect(self._watch_keys)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        kind = event.type()  # every event of the watched objects passes here: cheapest test first
        if kind not in _KEY_EVENTS or not self._page_key(watched, event):
            return super().eventFilter(watched, event)
        if kind in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress) and self.marks.is_marking():
            action = self._marking_key(event)  # type: ignore[arg-type]
            if action is not None:
                if kind == QEvent.Type.ShortcutOverride:
                    event.accept()  # the key comes back as a key press, not as a shortcut
                else:
                    action()
                return True
        if (
            kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease)
            and event.key() == Qt.Key.Key_Space  # type: ignore[attr-defined]
        ):
            if not event.isAutoRepeat():  # type: ignore[attr-defined]
                self.viewer.hold_original(kind == QEvent.Type.KeyPress)
            return True
        return super().eventFilter(watched, event)

    def _watch_keys(self, *_: object) -> None:
        """Filter the events of the focused widget and of this page's window only."""
        if self._closed:
            return
        wanted = [w for w in (QApplication.focusWidget(), self.window()) if w is not None]
        for obj in self._watched:
            if not any(obj is w for w in wanted):
                with contextlib.suppress(RuntimeError):  # already deleted
                    obj.removeEventFilter(self)
        for obj in wanted:
            if not any(obj is w for w in self._watched):
                obj.installEventFilter(self)
        self._watched = wanted

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self._watch_keys()  # the page's window is known now

    def _page_key(self, watched: QObject, event: QEvent) -> bool:
        """A key event meant for this page: it is shown, and the key went to its window's
        focused widget (or the window itself), which is not a text field."""
        return (
            isinstance(event, QKeyEvent)
            and not self._closed
            and self.isVisible()
            and isinstance(watched, QWidget)
            and watched.window() is self.window()
            and watched is (QApplication.focusWidget() or self.window())
            and not isinstance(watched, TEXT_FIELDS)
        )

    def _marking_key(self, event: QKeyEvent) -> Any:
        """What a key does in marking mode (``None``: what it does elsewhere)."""
        key = event.key()
        if key == Qt.Key.Key_Escape:
            return self._escape_marking
        if key in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace):
            return self.marks.delete_selected
        if (
            event.modifiers()
            & ~Qt.KeyboardModifier.ShiftModifier
            & ~Qt.KeyboardModifier.KeypadModifier
        ):
            return None
        text = QKeySequence(event.keyCombination()).toString()
        try:
            from engine.schemes import normalise_key

            name = normalise_key(text)
        except ValueError:
            return None
        lesion = self.marks.lesion_for_key(name)
        if lesion is None:
            return None
        return lambda: self.marks.set_lesion(lesion)

    def _escape_marking(self) -> None:
        """Esc: drop the shape being drawn, else leave marking mode."""
        if not self.marks.cancel_shape():
            self.marks.set_marking(False)
            self.panel.set_prompt("Marking mode off; the review keys are back.")

    # ------------------------------------------------------------------ public API

    def set_workspace(self, ws_folder: Path, model_path: Path | None) -> None:
        """Open this page's own connection to the workspace; the model loads lazily in a worker."""
        from engine.store import Workspace

        self._drop_workspace()
        self._ws_folder = Path(ws_folder)
        self._ws = Workspace.open(self._ws_folder, create=False)
        if model_path is None:
            active = self._ws.active_model()
            if active is not None and active.get("path"):
                model_path = Path(active["path"])
        self._spec = None
        if model_path is not None:
            try:
                from engine.modelfile import read_spec

                self._spec = read_spec(model_path)
            except Exception as exc:  # noqa: BLE001 - the page works without overlays
                self.bar.set_status(f"{WARN} Model description unreadable: {exc}")
        self.loader.reset(ModelHolder(model_path, self._ws.cache_dir / "attribution"))
        self.evidence.set_spec(self._spec)
        self._current = None
        self.viewer.clear()
        self.viewer.set_message("No image selected.\nChoose an image in the worklist.")
        self.evidence.set_file("")
        self.evidence.show_prediction(None)
        self.panel.set_current("")
        if self._spec is not None:
            self._set_labels(list(self._spec.labels))
        self.marks.set_store(self._ws, self._reviewer)
        self._apply_scheme(self._ws.scheme())

    def set_reviewer(self, name: str) -> None:
        """Whose decisions are saved; nothing is saved while it is empty."""
        self._reviewer = (name or "").strip()
        self.marks.set_reviewer(self._reviewer)
        self._update_mode_line()
        if self._reviewer and self.panel.prompt_label.property("warning"):
            self.panel.set_prompt("")
        if self._current is not None:
            self._refresh(self._current["image_id"])

    def reviewer(self) -> str:
        return self._reviewer

    def set_blind(self, blind: bool) -> None:
        """Blind mode: AI answer and overlay hidden until the reviewer commits a label."""
        self._blind = bool(blind)
        self._update_mode_line()
        if self._current is not None:
            self._refresh(self._current["image_id"])

    def set_auto_advance(self, on: bool) -> None:
        """Move to the next image of the queue after each decision."""
        self._auto_advance = bool(on)
        self._update_mode_line()

    def set_queue(self, image_ids: list[int], reviewed: Iterable[int] | None = None) -> None:
        """The worklist's visible order; J/K and the arrows move along it.

        ``reviewed``: the images of the queue that already have a review (for the progress
        line and Shift+J); without it the page asks the store for each image.
        """
        self._queue = [int(i) for i in image_ids]
        if reviewed is not None:
            self._done = {int(i) for i in reviewed}
        elif self._ws is not None:
            self._done = {i for i in self._queue if self._ws.current_review(i) is not None}
        else:
            self._done = set()
        self._update_progress()
        self._prefetch()

    def progress(self) -> tuple[int, int]:
        """``(reviewed, total)`` images of the queue."""
        queued = set(self._queue)
        return len(self._done & queued), len(queued)

    def show_image(self, image_id: int) -> None:
        """Show an image (no-op if it is already shown); emits ``current_changed``."""
        if self._current is not None and self._current["image_id"] == int(image_id):
            return
        self._show(int(image_id))

    def clear_image(self, message: str) -> None:
        """Show no image (and accept no decision) with ``message`` in the viewer."""
        self._current = None
        self.grading.clear_answers()
        self._end_hold = None
        self.viewer.clear()
        self.viewer.set_message(message)
        self.evidence.set_file("")
        self.evidence.show_prediction(None)
        self.panel.set_current("")
        self.panel.note_edit.clear()
        self.panel.note_edit.hide()

    def current_image_id(self) -> int | None:
        return None if self._current is None else int(self._current["image_id"])

    def current_slice(self) -> int | None:
        """The B-scan shown (0-based) when the item is a volume, else ``None``."""
        return self._slice

    def set_overlay_method(self, method: str) -> None:
        """``"none"``, ``"gradcam"`` or ``"ig"`` (keys O, G, I)."""
        if method not in OVERLAY_NAMES:
            raise ValueError(f"unknown overlay {method!r}; expected one of {sorted(OVERLAY_NAMES)}")
        self._method = method
        self.bar.set_method(method)
        if method != "none":
            self.viewer.set_overlay_visible(True)
        self._update_overlay()
        self._prefetch()

    def overlay_method(self) -> str:
        return self._method

    def is_busy(self) -> bool:
        """True while any of this page's workers is queued or running."""
        return self.loader.is_busy()

    def shutdown(self) -> None:
        """Cancel queued work, wait for running workers, close the workspace connection."""
        if self._closed:
            return
        self._closed = True
        app = QApplication.instance()
        if isinstance(app, QApplication):
            with contextlib.suppress(RuntimeError, TypeError):
                app.focusChanged.disconnect(self._watch_keys)
        for obj in self._watched:
            with contextlib.suppress(RuntimeError):
                obj.removeEventFilter(self)
        self._watched = []
        self.loader.shutdown()
        self.enhancer.shutdown()
        self._drop_workspace()

    # ------------------------------------------------------------------ navigation

    def next_image(self) -> None:
        """Next image of the queue (J or →)."""
        self._step(+1)

    def previous_image(self) -> None:
        """Previous image of the queue (K or ←)."""
        self._step(-1)

    def next_unreviewed(self) -> None:
        """Shift+J: the next image of the queue without a review (wrapping to the start)."""
        if not self._queue:
            self.panel.set_prompt("The worklist is empty.")
            return
        current = self.current_image_id()
        start = self._queue.index(current) + 1 if current in self._queue else 0
        order = self._queue[start:] + self._queue[:start]
        target = next((i for i in order if i not in self._done and i != current), None)
        if target is None:
            self.panel.set_prompt("Every image in this list is reviewed.")
            return
        self._show(target)

    def _step(self, direction: int) -> bool:
        if not self._queue:
            self.panel.set_prompt("The worklist is empty.")
            return False
        current = self.current_image_id()
        if current not in self._queue:
            target = self._queue[0] if direction > 0 else self._queue[-1]
        else:
            index = self._queue.index(current) + direction
            if not 0 <= index < len(self._queue):
                self.panel.set_prompt(self._end_words() if direction > 0 else "Start of the list.")
                return False
            target = self._queue[index]
        self._show(target)
        return True

    # ------------------------------------------------------------------ decisions

    def _held_at_end(self) -> bool:
        """True (and says so) when the last image was just saved and a key would relabel it."""
        if self._current is None or self._end_hold != int(self._current["image_id"]):
            return False
        self.panel.set_prompt(
            f"{self._end_words()} Nothing was changed: {Path(self._current['path']).name} "
            "is already saved. K/← goes back; Z undoes; click the image in the list to change it.",
            warning=True,
        )
        return True

    def _end_words(self) -> str:
        done, total = self.progress()
        left = total - done
        if left:
            plural = "images are" if left != 1 else "image is"
            return f"End of list. {left} {plural} not reviewed yet (Shift+J goes to the next)."
        return "End of list. Every image in it is reviewed."

    def press_label(self, index: int) -> None:
        """Key ``index + 1``: label the image (single-label) or tick a label (multi-label)."""
        if self._current is None or index >= len(self._labels) or self._held_at_end():
            return
        if self.panel.label_checks:
            box = self.panel.label_checks[index]
            box.setChecked(not box.isChecked())
            return
        label = self._labels[index]
        pred = self._current.get("prediction")
        ai = pred.get("label") if pred and not pred.get("error") else None
        # a blind read is the reader's own label (the prediction it was blind to is recorded
        # with it), never a confirmation of an answer the reader did not see
        blind = self._is_hidden(int(self._current["image_id"]))
        self._save([label], "confirm" if label == ai and not blind else "correct")

    def confirm_ai(self) -> None:
        """Enter: save the AI label (multi-label: the ticked labels); in marking mode
        Enter closes the polygon being drawn and never saves a review."""
        if self.marks.is_marking():
            if self.marks.drawing() == "polygon":
                self.marks.close_polygon()
            else:
                self.panel.set_prompt(
                    "Marking mode: Enter closes a polygon. Shift+M leaves marking mode "
                    "to confirm the AI answer.",
                    warning=True,
                )
            return
        if self._current is None or self._held_at_end():
            return
        image_id = self._current["image_id"]
        pred = self._current.get("prediction")
        ai_labels = self._ai_labels(pred)
        if self.panel.label_checks:
            ticked = [
                lab
                for lab, box in zip(self._labels, self.panel.label_checks, strict=False)
                if box.isChecked()
            ]
            if not ticked:
                self.panel.set_prompt(
                    "Tick at least one label (1–9), or press U for ungradable.", warning=True
                )
                return
            blind = self._is_hidden(image_id)
            same = pred is not None and set(ticked) == set(ai_labels)
            self._save(ticked, "confirm" if same and not blind else "correct")
            return
        if self._is_hidden(image_id):
            self.panel.set_prompt(
                "Blind mode: choose your own label first (1–9 or U).", warning=True
            )
            return
        if not ai_labels:
            self.panel.set_prompt(
                "There is no AI answer to confirm; choose a label (1–9) or U.", warning=True
            )
            return
        self._save(ai_labels, "confirm")

    def mark_ungradable(self) -> None:
        """U: the image cannot be graded."""
        if self._current is not None and not self._held_at_end():
            self._save([], "ungradable")

    def edit_note(self) -> None:
        """N: open the note field (the note is saved with the next decision on this image)."""
        if self._current is None:
            return
        self.panel.note_edit.show()
        self.panel.note_edit.setFocus(Qt.FocusReason.ShortcutFocusReason)

    def _note_edited(self, text: str) -> None:
        if self._current is not None:
            self._notes[int(self._current["image_id"])] = text

    def _note_done(self) -> None:
        self.viewer.setFocus(Qt.FocusReason.OtherFocusReason)
        note = self.panel.note_edit.text().strip()
        if not note:
            return
        review = self._current.get("review") if self._current else None
        if review is not None and review.get("reviewer") == self._reviewer and self._ws:
            self._save_note(review, note)
            return
        self.panel.set_prompt("Note kept; it is saved with your decision on this image.")

    def _save_note(self, review: dict, note: str) -> None:
        """A note on an image this reader already reviewed: the same decision is appended
        again with the note (reviews are never edited), so the note is not lost."""
        assert self._current is not None and self._ws is not None
        from engine.store import StoreError

        image_id = int(self._current["image_id"])
        action = review.get("action")
        try:
            self._ws.add_review(
                image_id,
                self._reviewer,
                list(review.get("labels") or []),
                action=action if action in ("confirm", "correct", "ungradable") else "correct",
                prediction_id=review.get("prediction_id"),
                note=note,
            )
        except StoreError as exc:
            self.panel.set_prompt(f"Note not saved: {exc}", warning=True)
            return
        self._notes.pop(image_id, None)
        self.panel.note_edit.clear()
        self.panel.note_edit.hide()
        self._refresh(image_id)
        self.reviewed.emit(image_id)
        self.panel.set_prompt(
            f"Note saved with your review of {Path(self._current['path']).name} "
            "(the decision is unchanged)."
        )

    def undo(self) -> None:
        """Z: undo your last decision (a new "undo" review) and go back to that image; in
        marking mode, undo the last mark added or deleted."""
        if self.marks.is_marking():
            self.marks.undo()
            return
        if not self._require_reviewer() or self._ws is None:
            return
        from engine.store import StoreError

        try:
            undo_id = self._ws.undo_last_review(self._reviewer)
        except StoreError as exc:
            self.panel.set_prompt(f"Undo failed: {exc}", warning=True)
            return
        if undo_id is None:
            self.panel.set_prompt(
                f"Nothing to undo: {self._reviewer} has no decision left to undo."
            )
            return
        undone = self._ws.review(undo_id)
        assert undone is not None  # written just now, in this connection
        image_id = int(undone["image_id"])
        if self._ws.current_review(image_id) is None:
            self._done.discard(image_id)
        else:
            self._done.add(image_id)
        self._update_progress()
        if self.current_image_id() != image_id:
            self._show(image_id)
        else:
            self._refresh(image_id)
        review = self._current.get("review") if self._current else None
        now = self._review_words(review) if review else "not reviewed"
        self.panel.set_prompt(
            f"Undone. {Path(self._current['path']).name if self._current else ''} is now {now}."
        )
        self.reviewed.emit(image_id)

    def _require_reviewer(self) -> bool:
        if self._reviewer:
            return True
        self.panel.set_prompt(
            "Set your reviewer name first (Settings → Reviewer). Nothing was saved.", warning=True
        )
        return False

    def _save(self, labels: list[str], action: str) -> None:
        if self._current is None or self._ws is None or not self._require_reviewer():
            return
        from engine.store import StoreError

        image_id = int(self._current["image_id"])
        pred = self._current.get("prediction")
        note = self.panel.note_edit.text().strip() or None
        try:
            self._ws.add_review(
                image_id,
                self._reviewer,
                labels,
                action=action,
                prediction_id=None if pred is None else int(pred["id"]),
                seconds=round(max(0.0, time.monotonic() - self._shown_at), 3),
                note=note,
                slice=None if self._slice is None else self._slice + 1,
            )
        except StoreError as exc:
            self.panel.set_prompt(f"Not saved: {exc}", warning=True)
            return
        self._notes.pop(image_id, None)
        self.panel.note_edit.clear()
        self.panel.note_edit.hide()
        self._done.add(image_id)
        self._update_progress()
        was_hidden = self._is_hidden(image_id)
        self._revealed.add(image_id)
        name = Path(self._current["path"]).name
        words = ", ".join(label_names(self._spec, labels)) if labels else "ungradable"
        if self._slice is not None:
            words += f" (read at slice {self._slice + 1})"
        self.reviewed.emit(image_id)
        if was_hidden:
            self._refresh(image_id)
            self.panel.set_prompt(
                f"Saved {name}: {words}. The AI answer is shown now; J/→ for the next image."
            )
            return
        if self._auto_advance and self._step(+1):
            self.panel.set_prompt(f"Saved {name}: {words}.")
            return
        self._refresh(image_id)
        at_end = bool(self._queue) and self._queue[-1] == image_id
        if at_end and self._auto_advance:
            self._end_hold = image_id  # a further key press must not relabel this image
        self.panel.set_prompt(
            f"Saved {name}: {words}." + (f" {self._end_words()}" if at_end else "")
        )

    # ------------------------------------------------------------------ showing

    def _show(self, image_id: int) -> None:
        if self._ws is None or self._closed:
            return
        record = self._record(image_id)
        if record is None:
            self._current = None
            self.viewer.set_message(f"Image {image_id} is not in this workspace.")
            self.evidence.show_prediction(None)
            return
        self._current = record
        self._end_hold = None
        self._shown_at = time.monotonic()
        self._paint_next_turn()
        note = self._notes.get(image_id, "")
        self.panel.note_edit.setText(note)
        self.panel.note_edit.setVisible(bool(note))
        self.panel.set_prompt("")
        self._set_up_slices(record)
        self._show_picture()
        self._refresh(image_id, record)
        self._prefetch()
        self.current_changed.emit(image_id)

    def _paint_next_turn(self) -> None:
        """Hold the page's repaint until a later turn of the event loop.

        Opening an image fills the evidence and review panels, which Qt lays out and then
        paints in the next turn, all before it takes the next key press or timer. On a
        2-core machine busy screening, the first image took 16-25 ms to fill, 7-15 ms to
        lay out and 17-22 ms to paint, one pause of up to 60 ms; with the paint in a turn
        of its own, the window answers in between. bench_gui, 6 alternated runs each:
        longest pause while screening 26-42 ms (median 35.5) against 32-61 ms (median 47).
        """
        if self.updatesEnabled():
            self.setUpdatesEnabled(False)
            QTimer.singleShot(PAINT_LATER_MS, self, self._paint_now)

    def _paint_now(self) -> None:
        self.setUpdatesEnabled(True)  # repaints the whole page

    def _set_up_slices(self, record: dict[str, Any]) -> None:
        """The slice bar for a volume (per-slice finding probabilities and states, opening
        on the most suspicious slice); none for an image."""
        n = int(record.get("n_slices") or 0)
        if record.get("kind") != "volume" or n < 1:
            self._slice = None
            self.slice_bar.clear()
            self.viewer.set_slice_wheel(False)
            return
        assert self._ws is not None
        pred = record.get("prediction")
        probs: list[float | None] = [None] * n
        states: list[str | None] = [None] * n
        if pred is not None:
            for row in self._ws.slice_predictions(int(pred["id"])):
                if 1 <= row["slice"] <= n:
                    probs[row["slice"] - 1] = row["finding"]
                    states[row["slice"] - 1] = row["triage"]
        key = None if pred is None or pred.get("key_slice") is None else pred["key_slice"] - 1
        hidden = self._is_hidden(int(record["image_id"]))
        # blind: open in the middle of the volume, not where the AI points
        start = n // 2 if hidden or key is None else key
        self.slice_bar.set_blind(hidden)
        self.slice_bar.set_volume(n, probs, states, key=key, current=start)
        self.viewer.set_slice_wheel(True)
        self._slice = self.slice_bar.current()

    def _show_picture(self) -> None:
        """The current image (or B-scan) from the cache, else ask the loader for it."""
        record = self._current
        if record is None:
            return
        image_id = int(record["image_id"])
        image = self.loader.image(image_id, self._slice)
        error = self.loader.image_error(image_id, self._slice)
        if image is not None:
            self.viewer.set_image(image, keep_view=self._slice is not None)
        elif error is not None:
            self.viewer.set_message(_cannot_show(record["path"], error))
        else:
            where = "" if self._slice is None else f", slice {self._slice + 1}"
            self.viewer.clear()
            self.viewer.set_message(f"Loading {Path(record['path']).name}{where}…")
            self.loader.request_image(image_id, record["path"], PRIORITY_CURRENT, self._slice)
        if self._slice is not None:  # the neighbours, for smooth scrolling
            for near in (self._slice + 1, self._slice - 1):
                if 0 <= near < self.slice_bar.n_slices:
                    self.loader.request_image(image_id, record["path"], 0, near)

    def _on_slice_changed(self, index: int) -> None:
        if self._current is None or self._slice is None:
            return
        self._slice = index
        self._show_picture()
        self._update_overlay()

    def _refresh(self, image_id: int, record: dict[str, Any] | None = None) -> None:
        """Update every part but the image from the store (or from ``record`` just read)."""
        if self._ws is None:
            return
        if self._current is None or self._current["image_id"] != image_id:
            return
        record = record or self._record(image_id)
        if record is None:
            return
        self._current = record
        pred = record.get("prediction")
        hidden = self._is_hidden(image_id)
        if self._spec is None and pred and pred.get("probabilities"):
            self._set_labels(list(pred["probabilities"]))
        patient = " · ".join(
            x
            for x in (
                record.get("patient") and f"patient {record['patient']}",
                record.get("eye") and f"{record['eye']} eye",
                record.get("acquired"),
                record.get("kind") == "volume" and f"OCT volume, {record.get('n_slices')} slices",
            )
            if x
        )
        self.evidence.set_file(Path(record["path"]).name + (f"  ({patient})" if patient else ""))
        self.evidence.show_prediction(pred, hidden=hidden)
        if self._slice is not None:
            self.slice_bar.set_blind(hidden)
        review = record.get("review")
        self._show_review_state(review, pred, hidden)
        self._show_grades(image_id, pred, hidden)
        self._update_overlay()

    def _show_review_state(self, review: dict | None, pred: dict | None, hidden: bool) -> None:
        if review is None:
            self.panel.set_current("Not reviewed")
        elif self._blind and hidden:
            self.panel.set_current(
                f"Reviewed by {review['reviewer']} (their label is hidden in blind mode)"
            )
        else:
            words = self._review_words(review)
            self.panel.set_current(words[:1].upper() + words[1:])
        current = (
            set(review["labels"]) if review is not None and not (self._blind and hidden) else set()
        )
        for label, button in zip(self._labels, self.panel.label_buttons, strict=False):
            button.setChecked(label in current)
            name = button.text().removesuffix("  ✓")
            button.setText(f"{name}  ✓" if label in current else name)
        if self.panel.label_checks:
            ticked = current or (set() if hidden else set(self._ai_labels(pred)))
            for label, box in zip(self._labels, self.panel.label_checks, strict=False):
                box.setChecked(label in ticked)
        can_confirm = bool(self.panel.label_checks) or (not hidden and bool(self._ai_labels(pred)))
        self.panel.confirm_button.setEnabled(can_confirm)

    def _review_words(self, review: dict) -> str:
        labels = label_names(self._spec, list(review.get("labels") or []))
        what = ", ".join(labels) if labels else "ungradable"
        if review.get("action") == "confirm":
            what += " (confirmed the AI)"
        if review.get("slice"):
            what += f", noted slice {review['slice']}"
        return f"reviewed by {review['reviewer']}: {what}, {ago(review.get('created_at'))}"

    def _record(self, image_id: int) -> dict[str, Any] | None:
        """The image, its latest prediction of the active model and its current review."""
        assert self._ws is not None
        return self._ws.image_record(image_id)

    def _is_hidden(self, image_id: int) -> bool:
        if not self._blind or image_id in self._revealed:
            return False
        review = (
            self._current.get("review")
            if self._current and self._current["image_id"] == image_id
            else None
        )
        return not (review is not None and review.get("reviewer") == self._reviewer)

    def _ai_labels(self, pred: dict | None) -> list[str]:
        if not pred or pred.get("error") or pred.get("label") is None:
            return []
        if pred.get("triage") == "ungradable":
            return []  # no grade is given for an ungradable image, so none can be confirmed
        return [x for x in str(pred["label"]).split(";") if x in self._labels or not self._labels]

    def _set_labels(self, labels: list[str]) -> None:
        self._labels = labels
        multilabel = self._spec is not None and self._spec.task == "multilabel"
        graded = self._scheme is not None and self._scheme.name != "model"
        digits_free = not graded or not any(
            o.hotkey and o.hotkey.isdigit() for q in self._scheme.questions for o in q.options
        )
        self.panel.set_labels(labels, label_names(self._spec, labels), multilabel, digits_free)
        keys = "1" if len(labels) == 1 else f"1–{min(len(labels), MAX_LABEL_KEYS)}"
        if digits_free:
            self.panel.heading.setText(f"<b>Your review</b> · keys {keys} label the image")
            self.evidence.set_label_keys(keys)
        else:
            self.panel.heading.setText(
                "<b>Your review</b> · click a label (the digit keys answer the grading below)"
            )
            self.evidence.hidden_label.setText(
                "Hidden in blind mode: commit your review first (click a label, or U); the "
                "AI answer and overlay appear after you commit."
            )

    def _update_progress(self) -> None:
        done, total = self.progress()
        self.panel.set_progress(done, total)

    def _update_mode_line(self) -> None:
        """Who reviews and the modes that change what a key does (one short line)."""
        who = f"Reviewer: {self._reviewer}" if self._reviewer else f"{WARN} No reviewer name set"
        parts = [
            who,
            "auto-advance" if self._auto_advance else "auto-advance off",
            "blind mode" if self._blind else "",
        ]
        self.panel.mode_label.setText(" · ".join(p for p in parts if p))
        # the usual case (a name, auto-advance, not blind) is on the status bar already: the
        # line shows only when a mode changes what the keys do, or the name is missing
        self.panel.mode_label.setVisible(
            not self._reviewer or not self._auto_advance or self._blind
        )
        self.panel.mode_label.setToolTip(
            f"Auto-advance {'on' if self._auto_advance else 'off'}, blind mode "
            f"{'on' if self._blind else 'off'} (Settings, Ctrl+,)"
        )

    # ------------------------------------------------------------------ grading and marks

    def scheme(self) -> Scheme | None:
        """The workspace's grading scheme as the page uses it."""
        return self._scheme

    def answer(self, question: str, value: str) -> None:
        """A scheme answer key (or button): save ``value`` as the answer to ``question``
        (a multi-choice question toggles it) for the image, or the whole volume."""
        if self._current is None or self._ws is None or self._scheme is None:
            return
        if not self._require_reviewer():
            return
        q = self._scheme.question(question)
        if q is None or q.option(value) is None:
            return
        from engine.store import StoreError

        image_id = int(self._current["image_id"])
        current = self._ws.grades(image_id).get(question, [])
        if q.kind == "multi":
            values = [v for v in current if v != value] if value in current else [*current, value]
        else:
            values = [value]
        try:
            self._ws.record_grade(image_id, question, values, self._reviewer)
        except (StoreError, ValueError) as exc:
            self.panel.set_prompt(f"Answer not saved: {exc}", warning=True)
            return
        option = q.option(value)
        assert option is not None
        chosen = "removed" if q.kind == "multi" and value in current else "saved"
        self.panel.set_prompt(f"{q.title.split(' (')[0]}: {option.label} {chosen}.")
        self._refresh(image_id)

    def choose_scheme(self, name: str) -> None:
        """Make a preset (or, for ``"file"``, a JSON file the reader picks) the workspace's
        grading scheme; kept in the workspace with the reader's name."""
        if self._ws is None:
            return
        if not self._require_reviewer():
            self._apply_scheme(self._scheme or self._ws.scheme())  # chooser back as it was
            return
        from engine.schemes import SchemeError, preset

        try:
            if name == LOAD_FROM_FILE:
                from PySide6.QtWidgets import QFileDialog

                path, _ = QFileDialog.getOpenFileName(
                    self, "Load a grading scheme", "", "Grading scheme (*.json)"
                )
                if not path:
                    self._apply_scheme(self._scheme or self._ws.scheme())
                    return
                scheme = self.load_scheme_file(Path(path))
            else:
                labels = list(self._spec.labels) if self._spec is not None else list(self._labels)
                scheme = preset(name, labels, spec=self._spec)
            self._ws.set_scheme(scheme, self._reviewer)
        except (SchemeError, OSError, ValueError) as exc:
            self.panel.set_prompt(f"Scheme not changed: {exc}", warning=True)
            self._apply_scheme(self._scheme or self._ws.scheme())
            return
        self._apply_scheme(self._ws.scheme())
        self.panel.set_prompt(f"Grading scheme is now {scheme.name!r}.")
        if self._current is not None:
            self._refresh(int(self._current["image_id"]))

    @staticmethod
    def load_scheme_file(path: Path) -> Scheme:
        """A validated scheme from a JSON file; the error names the file and the reason."""
        from engine.schemes import Scheme, SchemeError

        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemeError(f"{path.name}: cannot be read ({exc})") from None
        try:
            return Scheme.from_json(text).validate()
        except SchemeError as exc:
            raise SchemeError(f"{path.name}: {exc}") from None

    def _page_keys(self) -> dict[str, str]:
        """The page's own keys (normalised) → what they do: scheme keys may not take them."""
        from engine.schemes import SchemeError, normalise_key

        out: dict[str, str] = {}
        for shortcut in self._shortcuts.shortcuts:
            text = shortcut.key().toString()
            try:
                out[normalise_key(text)] = "a review-page key"
            except SchemeError:
                continue
        return out

    def _apply_scheme(self, scheme: Scheme) -> None:
        """Show the scheme's questions and lesion types and bind their keys."""
        from engine.schemes import normalise_key

        self._scheme = scheme
        for shortcut in self._scheme_shortcuts:
            shortcut.setEnabled(False)
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._scheme_shortcuts = []
        shared = scheme.name == "model"
        answer_keys: dict[str, tuple[str, str]] = {}
        if not shared:
            for q in scheme.questions:
                for o in q.options:
                    if o.hotkey:
                        answer_keys[normalise_key(o.hotkey)] = (q.key, o.value)
        # digits given to the scheme's answers no longer label the review
        digits = {k for k in answer_keys if k.isdigit()}
        for shortcut in self._shortcuts.shortcuts:
            text = shortcut.key().toString()
            if text.isdigit():
                shortcut.setEnabled(text not in digits)
        taken = {k: v for k, v in self._page_keys().items() if k not in digits}
        unbound = {k: f"already {v}" for k in answer_keys if k in taken for v in [taken[k]]}
        for key, (question, value) in answer_keys.items():
            if key in unbound:
                continue
            self._scheme_shortcuts += self._shortcuts.make(
                [key], lambda q=question, v=value: self.answer(q, v)
            )
        self.grading.set_scheme(scheme, unbound, shared=shared)
        if self._labels:
            self._set_labels(self._labels)
        self._apply_lesions()

    def _apply_lesions(self) -> None:
        """The lesion types offered for the current image's modality, and their keys."""
        from engine.schemes import normalise_key

        if self._scheme is None:
            return
        modality = None
        if self._current is not None:
            facts = self._image_facts(int(self._current["image_id"]))
            modality = facts.get("modality")
            if self._current.get("kind") == "volume":
                modality = "oct"
        lesions = [
            Lesion(t.key, t.label, t.colour, normalise_key(t.hotkey) if t.hotkey else None)
            for t in self._scheme.lesions_for(modality)
        ]
        if [t.key for t in lesions] != [t.key for t in self.marks.lesions()]:
            self.marks.set_lesions(lesions)
            self.marks_panel.set_lesions(lesions)

    def _show_grades(self, image_id: int, pred: dict | None, hidden: bool) -> None:
        """The grader's answers and the AI's answers in the scheme's terms."""
        if self._ws is None or self._scheme is None:
            return
        from engine.schemes import ai_answer

        answers = self._ws.grades(image_id)
        probs = (pred or {}).get("probabilities") or {}
        ai = {}
        if pred is not None and not pred.get("error") and probs:
            ai = {q.key: ai_answer(self._scheme, q, probs) for q in self._scheme.questions}
        self.grading.show_answers(answers, ai, hidden=hidden)

    def _image_facts(self, image_id: int) -> dict[str, Any]:
        """The image's stored row (full-resolution size, modality); cached per image."""
        cached = self._facts.get(image_id)
        if cached is None and self._ws is not None:
            cached = self._ws.image(image_id) or {}
            self._facts[image_id] = cached
        return cached or {}

    def _find_full_size(
        self, image_id: int, path: str, display: tuple[int, int]
    ) -> tuple[int, int] | None:
        """The full-resolution size of an image stored without one (an older workspace),
        recorded in the workspace once found: the display copy when it was not reduced,
        else the photograph's header (oriented as shown); ``None`` if neither says."""
        from engine.store import StoreError

        from .image_loader import DISPLAY_LONGEST

        size: tuple[int, int] | None = None
        if max(display) < DISPLAY_LONGEST:
            size = display  # only copies larger than DISPLAY_LONGEST are reduced
        elif self._current is not None and self._current.get("kind") != "volume":
            size = header_size(path)
        if size is not None and self._ws is not None:
            try:
                self._ws.set_image_sizes({image_id: size})
            except StoreError:
                pass  # a read-only workspace: the size still serves this session
            self._facts.setdefault(image_id, {}).update(width=size[0], height=size[1])
        return size

    def _update_marks(self) -> None:
        """Marks of the image (B-scan) on screen, in its full-resolution pixels."""
        if self._current is None or not self.viewer.has_image():
            self.marks.show_image(None, None, None, None)
            self.marks_panel.update_count()
            return
        self._apply_lesions()
        record = self._current
        shown = self.viewer.source_image()
        display = (shown.width(), shown.height())
        image_id = int(record["image_id"])
        facts = self._image_facts(image_id)
        width, height = facts.get("width"), facts.get("height")
        full: tuple[int, int] | None = None
        if width and height:  # recorded by screening (a volume: its B-scans' size)
            full = (int(width), int(height))
        else:
            full = self._find_full_size(image_id, record["path"], display)
        # without a full size the marks cannot be placed: the layer refuses to save them
        self.marks.show_image(image_id, self._slice, full, display)
        self.marks_panel.update_count()

    # ------------------------------------------------------------------ overlays

    def _update_overlay(self) -> None:
        """Show the selected overlay for the current image if it is ready, else ask for it."""
        current = self._current
        if current is None:
            return
        image_id = int(current["image_id"])
        method = self._method
        if method == "none":
            self.viewer.set_overlay(None)
            self.bar.set_status("")
            return
        if self._is_hidden(image_id):
            self.viewer.set_overlay(None)
            self.bar.set_status("Overlay hidden (blind mode)")
            return
        key = ("overlay", image_id, method, self._slice)
        result = self.loader.overlay(image_id, method, self._slice)
        name = OVERLAY_NAMES[method]
        if result is not None:
            if not self.viewer.has_overlay() or self.viewer.overlay_item().data(0) != key:
                self.viewer.set_overlay(result.image)
                self.viewer.overlay_item().setData(0, key)
            label = label_names(self._spec, [result.target_label])[0]
            self.bar.set_status(f"{name} of “{label}”")
            self.bar.status.setToolTip(
                f"{name} explains the answer “{label}” (probability {result.probability:.0%})"
            )
            return
        self.viewer.set_overlay(None)
        error = self.loader.overlay_error(image_id, method, self._slice)
        if error is not None:
            self.bar.set_status(f"{WARN} {name} unavailable: {error}")
            return
        self.bar.set_status(f"Computing {name}…")
        self.loader.request_overlay(
            image_id, current["path"], current["sha256"], method, PRIORITY_CURRENT, self._slice
        )

    def _prefetch(self) -> None:
        """Decode (and, with an overlay selected, explain) the next images of the queue."""
        if self._ws is None or self._closed or self._current is None:
            return
        current = self.current_image_id()
        if current not in self._queue:
            return
        index = self._queue.index(current)
        for image_id in self._queue[index + 1 : index + 1 + PREFETCH]:
            image = self._ws.image(image_id)
            if image is not None and image.get("kind") != "volume":  # volumes open on demand
                self.loader.prefetch(image_id, image["path"], image["sha256"], self._method)

    # ------------------------------------------------------------------ loader results

    def _on_image_ready(self, image_id: int, _image: Any) -> None:
        if self.current_image_id() != image_id:
            return
        image = self.loader.image(image_id, self._slice)  # a neighbouring slice may be ready
        if image is not None:
            self.viewer.set_image(image, keep_view=self._slice is not None)
            self._update_overlay()

    def _on_image_failed(self, image_id: int, _error: str) -> None:
        if self.current_image_id() != image_id or self._current is None:
            return
        error = self.loader.image_error(image_id, self._slice)
        if error is not None:
            self.viewer.set_message(_cannot_show(self._current["path"], error))

    def _on_overlay_ready(self, image_id: int, method: str, _result: Any) -> None:
        if method == self._method:
            self._on_overlay_changed(image_id)

    def _on_overlay_changed(self, image_id: int) -> None:
        if self.current_image_id() == image_id:
            self._update_overlay()

    def _drop_workspace(self) -> None:
        self.loader.clear()
        self._facts.clear()
        self.marks.set_store(None)
        self._revealed.clear()
        self._notes.clear()
        if self._ws is not None:
            self._ws.close()
            self._ws = None


def header_size(path: str) -> tuple[int, int] | None:
    """A photograph's (width, height) as shown (EXIF orientation applied), from its header
    only; ``None`` for a file Pillow cannot read (DICOM, a missing file)."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any failure means "not known"
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _cannot_show(path: str, error: str) -> str:
    """What the viewer says when an image cannot be decoded."""
    return (
        f"Cannot show {Path(path).name}.\n{error}\n\n"
        "Check that the file is still there and readable (a disconnected drive?). "
        "You can still review it from the evidence, or skip it with J/→."
    )
