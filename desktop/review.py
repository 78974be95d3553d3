"""The review page: the image, the AI's evidence and one-key decisions, with undo.

Layout: the :class:`~desktop.viewer.ImageViewer` in the centre with the overlay bar under
it; on the right the :class:`~desktop.evidence.EvidencePanel` and the :class:`ReviewPanel`.
Reviews are appended to the workspace store (undo is a new review, never a delete).

Threading: the GUI thread only reads and writes small rows of the store. Decoding the
display image and computing attribution overlays run in superqt workers on two private
thread pools (one thread each: images, and the model, so one network is never used by
two threads). Workers get plain values (paths, hashes, a model holder, a cache), return
``QImage`` objects, always finish, and never touch a widget. Results for an image that is
no longer on screen are kept in a small LRU and shown instantly when it comes back; the
next two images of the queue are prefetched.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage, QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)
from superqt.utils import FunctionWorker

from .evidence import WARN, EvidencePanel, label_names
from .viewer import OVERLAY_NAMES, ImageViewer, OverlayBar, pil_to_qimage, pil_to_qimage_rgba

if TYPE_CHECKING:
    from engine.modelfile import ModelSpec
    from engine.store import Workspace

DISPLAY_LONGEST = 2048  # display images are reduced to this many pixels on the long side
IMAGE_CACHE_ITEMS = 6
OVERLAY_CACHE_ITEMS = 8
PREFETCH = 2
IG_KWARGS = {"n_steps": 16, "internal_batch_size": 8}  # interactive on a CPU
MAX_LABEL_KEYS = 9

# Priorities in the private pools: the image on screen first, then prefetching.
PRIORITY_CURRENT = 2
PRIORITY_PREFETCH = 0


# --------------------------------------------------------------------------- worker side


class _LRU(OrderedDict):
    """A tiny least-recently-used dict (GUI thread only)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def get_fresh(self, key: Hashable) -> Any:
        if key not in self:
            return None
        self.move_to_end(key)
        return self[key]

    def put(self, key: Hashable, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


class ModelHolder:
    """This page's own model and attribution cache, made once by the first worker that asks.

    Both are created in a worker: importing the attribution stack (torch, captum) takes
    seconds and must never happen on the GUI thread.
    """

    def __init__(self, path: Path | None, cache_folder: Path | None = None) -> None:
        self.path = path
        self.cache_folder = cache_folder
        self._lock = threading.Lock()
        self._model: Any = None
        self._error: str | None = None
        self._cache: Any = None

    def cache(self) -> Any:
        """The :class:`engine.attribution.AttributionCache` (``None`` without a folder)."""
        with self._lock:
            if self._cache is None and self.cache_folder is not None:
                from engine.attribution import AttributionCache

                self._cache = AttributionCache(self.cache_folder)
            return self._cache

    def get(self) -> Any:
        """The :class:`engine.models.LoadedModel`; raises RuntimeError with a readable reason."""
        with self._lock:
            if self._model is None and self._error is None:
                if self.path is None:
                    self._error = (
                        "no model file is known for this workspace, so no overlays can be computed"
                    )
                else:
                    try:
                        from engine.models import load_model

                        self._model = load_model(self.path, device="auto")
                    except Exception as exc:  # noqa: BLE001 - reported to the reader as words
                        self._error = f"the model {Path(self.path).name} could not be loaded: {exc}"
            if self._error is not None:
                raise RuntimeError(self._error)
            return self._model


@dataclass
class OverlayResult:
    image: QImage
    target_label: str
    probability: float


def load_display_qimage(path: str, longest: int = DISPLAY_LONGEST) -> QImage:
    """Decode, orient and reduce an image for display (worker side; no torch import).

    Same steps as ``engine.explain.load_display_image``; that module imports torch at
    import time, which would delay the first image by seconds.
    """
    from PIL import Image

    from engine.images import open_image, to_rgb

    image, _ = open_image(path, min_side=None)
    rgb = to_rgb(image)
    if longest and max(rgb.size) > longest:
        scale = longest / max(rgb.size)
        rgb = rgb.resize(
            (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BILINEAR
        )
    return pil_to_qimage(rgb)


def compute_overlay(
    holder: ModelHolder,
    path: str,
    sha256: str | None,
    method: str,
    longest: int = DISPLAY_LONGEST,
) -> OverlayResult:
    """Attribution of the predicted class, drawn over the display image (worker side).

    The overlay is the fully tinted image (alpha 1); the viewer's opacity slider then
    blends it with the original, which is the same as drawing it at that alpha.
    """
    from engine.explain import explain_file, load_display_image
    from engine.overlay import render_overlay

    lm = holder.get()
    kw = dict(IG_KWARGS) if method == "ig" else {}
    exp = explain_file(lm, path, method=method, cache=holder.cache(), image_sha256=sha256, **kw)
    display = load_display_image(path, longest=longest)
    amap = exp.map_on_original(display.width, display.height)
    tinted = render_overlay(display, amap, alpha=1.0, contour_top_pct=10.0)
    return OverlayResult(pil_to_qimage_rgba(tinted), exp.target_label, float(exp.probability))


# --------------------------------------------------------------------------- review panel


def _key_button(text: str, tip: str, name: str) -> QPushButton:
    button = QPushButton(text)
    button.setObjectName(name)
    button.setToolTip(tip)
    button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    button.setMinimumHeight(28)
    button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return button


class ReviewPanel(QWidget):
    """Decision buttons (keys printed on them), the note field and the review status."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reviewPanel")
        self.heading = QLabel()
        self.heading.setObjectName("reviewHeading")
        self.heading.setWordWrap(True)
        self.label_box = QWidget()
        self.label_grid = QGridLayout(self.label_box)
        self.label_grid.setContentsMargins(0, 0, 0, 0)
        self.label_grid.setSpacing(4)
        self.label_buttons: list[QPushButton] = []
        self.label_checks: list[QCheckBox] = []
        self.confirm_button = _key_button(
            "Enter  Confirm AI", "Save the AI answer as your label (Enter)", "confirmButton"
        )
        self.ungradable_button = _key_button(
            "U  Ungradable", "The image cannot be graded (U)", "ungradableButton"
        )
        self.note_button = _key_button(
            "N  Note", "Write a note saved with your next decision (N)", "noteButton"
        )
        self.undo_button = _key_button(
            "Z  Undo", "Undo your last decision (Z); it is kept in the history", "undoButton"
        )
        self.prev_button = _key_button(
            "K/←  Previous", "Previous image in the worklist (K or ←)", "previousButton"
        )
        self.next_button = _key_button(
            "J/→  Next", "Next image in the worklist (J or →)", "nextButton"
        )
        actions = QGridLayout()
        actions.setSpacing(4)
        actions.addWidget(self.confirm_button, 0, 0)
        actions.addWidget(self.ungradable_button, 0, 1)
        actions.addWidget(self.note_button, 1, 0)
        actions.addWidget(self.undo_button, 1, 1)
        actions.addWidget(self.prev_button, 2, 0)
        actions.addWidget(self.next_button, 2, 1)
        self.note_edit = QLineEdit()
        self.note_edit.setObjectName("noteEdit")
        self.note_edit.setPlaceholderText("Note, saved with your next decision (Enter: done)")
        self.note_edit.setClearButtonEnabled(True)
        self.note_edit.hide()
        self.current_label = QLabel("Not reviewed")
        self.current_label.setObjectName("currentReview")
        self.current_label.setWordWrap(True)
        self.prompt_label = QLabel()
        self.prompt_label.setObjectName("reviewPrompt")
        self.prompt_label.setWordWrap(True)
        self.prompt_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.mode_label = QLabel()
        self.mode_label.setObjectName("reviewMode")
        self.mode_label.setStyleSheet("color: palette(placeholder-text); font-size: 9pt;")
        self.mode_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.setSpacing(5)
        layout.addWidget(self.heading)
        layout.addWidget(self.label_box)
        layout.addLayout(actions)
        layout.addWidget(self.note_edit)
        layout.addWidget(self.current_label)
        layout.addWidget(self.prompt_label)
        layout.addWidget(self.mode_label)
        self._labels: list[str] = []
        self._multilabel = False
        self.set_prompt("")

    def set_labels(self, labels: list[str], names: list[str], multilabel: bool) -> bool:
        """One button (or checkbox for a multi-label task) per label; returns True if rebuilt."""
        if (
            labels == self._labels
            and multilabel == self._multilabel
            and (self.label_buttons or self.label_checks)
        ):
            return False
        self._labels = list(labels)
        self._multilabel = multilabel
        for widget in (*self.label_buttons, *self.label_checks):
            self.label_grid.removeWidget(widget)
            widget.deleteLater()
        self.label_buttons, self.label_checks = [], []
        columns = 2 if max((len(n) for n in names), default=0) <= 12 else 1
        for i, name in enumerate(names):
            key = str(i + 1) if i < MAX_LABEL_KEYS else ""
            text = f"{key}  {name}" if key else name
            if multilabel:
                widget: QWidget = QCheckBox(text)
                widget.setFocusPolicy(Qt.FocusPolicy.NoFocus)
                widget.setToolTip(f"Tick or untick {name} ({key}); Enter saves the ticked labels")
                self.label_checks.append(widget)  # type: ignore[arg-type]
            else:
                widget = _key_button(
                    text, f"Label the image {name} (key {key})" if key else name, f"label_{i + 1}"
                )
                widget.setCheckable(True)  # checked = the current review's label
                self.label_buttons.append(widget)  # type: ignore[arg-type]
            widget.setObjectName(f"label_{i + 1}")
            self.label_grid.addWidget(widget, i // columns, i % columns)
        self.confirm_button.setText(
            "Enter  Save ticked labels" if multilabel else "Enter  Confirm AI"
        )
        return True

    def set_current(self, text: str) -> None:
        self.current_label.setText(text)

    def set_prompt(self, text: str, warning: bool = False) -> None:
        """A one-line message under the buttons (saved, nothing to undo, name needed…)."""
        self.prompt_label.setText(f"{WARN} {text}" if warning and text else text)
        self.prompt_label.setProperty("warning", warning)
        self.prompt_label.setStyleSheet("color: #b35c00; font-weight: bold;" if warning else "")
        self.prompt_label.setVisible(bool(text))


def _ago(iso: str | None) -> str:
    """``"2 min ago"`` from an ISO-8601 UTC timestamp."""
    if not iso:
        return ""
    try:
        then = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(0.0, (datetime.now(UTC) - then).total_seconds())
    if seconds < 45:
        return "just now"
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min ago"
    if seconds < 86400:
        return f"{round(seconds / 3600)} h ago"
    return f"on {then.date().isoformat()}"


# --------------------------------------------------------------------------- the page


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
        self._holder = ModelHolder(None)
        self._reviewer = ""
        self._blind = False
        self._auto_advance = True
        self._queue: list[int] = []
        self._current: dict[str, Any] | None = None
        self._shown_at = time.monotonic()
        self._revealed: set[int] = set()
        self._notes: dict[int, str] = {}  # unsaved notes, kept when the reader moves on
        self._labels: list[str] = []
        self._method = "none"
        self._gen = 0
        self._closed = False
        self._images: _LRU = _LRU(IMAGE_CACHE_ITEMS)
        self._overlays: _LRU = _LRU(OVERLAY_CACHE_ITEMS)
        self._failed: dict[Hashable, str] = {}
        self._pending: dict[Hashable, FunctionWorker] = {}
        self._io_pool = QThreadPool(self)
        self._io_pool.setMaxThreadCount(1)
        self._model_pool = QThreadPool(self)
        self._model_pool.setMaxThreadCount(1)  # one network, one thread (attribution hooks)

        self.viewer = ImageViewer()
        self.bar = OverlayBar()
        self.evidence = EvidencePanel()
        self.panel = ReviewPanel()
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
        splitter.setSizes([700, 320])
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

    def _connect(self) -> None:
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
        self.panel.note_edit.returnPressed.connect(self._note_done)
        self.panel.note_edit.textEdited.connect(self._note_edited)

    def _install_shortcuts(self) -> None:
        """Window-wide keys, active while this page is visible (a text field keeps its keys)."""
        bindings: list[tuple[list[Any], Callable[[], None]]] = [
            ([Qt.Key.Key_Return, Qt.Key.Key_Enter], self.confirm_ai),
            ([Qt.Key.Key_U], self.mark_ungradable),
            ([Qt.Key.Key_N], self.edit_note),
            ([Qt.Key.Key_Z, "Ctrl+Z"], self.undo),
            ([Qt.Key.Key_J, Qt.Key.Key_Right], self.next_image),
            ([Qt.Key.Key_K, Qt.Key.Key_Left], self.previous_image),
            ([Qt.Key.Key_G], lambda: self.set_overlay_method("gradcam")),
            ([Qt.Key.Key_I], lambda: self.set_overlay_method("ig")),
            ([Qt.Key.Key_O], lambda: self.set_overlay_method("none")),
            ([Qt.Key.Key_Space], self.viewer.toggle_overlay),
            ([Qt.Key.Key_S], lambda: self.bar.side_button.toggle()),
            ([Qt.Key.Key_F, Qt.Key.Key_0], self.viewer.fit),
            ([Qt.Key.Key_Equal], self.viewer.actual_size),  # Ctrl+1 switches the main tabs
            ([Qt.Key.Key_Plus, "Ctrl+="], self.viewer.zoom_in),
            ([Qt.Key.Key_Minus], self.viewer.zoom_out),
        ]
        for i in range(MAX_LABEL_KEYS):
            bindings.append(([getattr(Qt.Key, f"Key_{i + 1}")], lambda i=i: self.press_label(i)))
        self._shortcuts: list[QShortcut] = []
        for keys, slot in bindings:
            for key in keys:
                sequence = QKeySequence(key) if isinstance(key, str) else QKeySequence(key)
                shortcut = QShortcut(sequence, self)
                shortcut.setContext(Qt.ShortcutContext.WindowShortcut)
                shortcut.setAutoRepeat(False)
                shortcut.activated.connect(lambda s=shortcut, f=slot: self._on_shortcut(s, f))
                self._shortcuts.append(shortcut)

    def _on_shortcut(self, shortcut: QShortcut, slot: Callable[[], None]) -> None:
        """Run ``slot``, unless a text field has the focus: then the key goes to the field.

        Text fields already keep letters and digits; Enter has to be handed back here, so
        Enter in the note field (or any search box of the window) never confirms the AI.
        """
        focus = QApplication.focusWidget()
        if isinstance(focus, QLineEdit | QTextEdit | QPlainTextEdit | QAbstractSpinBox):
            sequence = shortcut.key()
            if sequence.count():
                combo = sequence[0]
                same = [sc for sc in self._shortcuts if sc.key() == sequence and sc.isEnabled()]
                for sc in same:  # or the forwarded key would trigger the shortcut again
                    sc.setEnabled(False)
                try:
                    for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
                        event = QKeyEvent(kind, combo.key(), combo.keyboardModifiers())
                        QApplication.sendEvent(focus, event)
                finally:
                    for sc in same:
                        sc.setEnabled(True)
            return
        slot()

    # ------------------------------------------------------------------ public API

    def set_workspace(self, ws_folder: Path, model_path: Path | None) -> None:
        """Open this page's own connection to the workspace; the model loads lazily in a worker."""
        from engine.store import Workspace

        self._drop_workspace()
        self._gen += 1
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
        self._holder = ModelHolder(model_path, self._ws.cache_dir / "attribution")
        self.evidence.set_spec(self._spec)
        self._current = None
        self.viewer.clear()
        self.viewer.set_message("No image selected.\nChoose an image in the worklist.")
        self.evidence.show_prediction(None)
        self.panel.set_current("")
        if self._spec is not None:
            self._set_labels(list(self._spec.labels))

    def set_reviewer(self, name: str) -> None:
        """Whose decisions are saved; nothing is saved while it is empty."""
        self._reviewer = (name or "").strip()
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

    def set_queue(self, image_ids: list[int]) -> None:
        """The worklist's visible order; J/K and the arrows move along it."""
        self._queue = [int(i) for i in image_ids]
        self._prefetch()

    def show_image(self, image_id: int) -> None:
        """Show an image (no-op if it is already shown); emits ``current_changed``."""
        if self._current is not None and self._current["image_id"] == int(image_id):
            return
        self._show(int(image_id))

    def current_image_id(self) -> int | None:
        return None if self._current is None else int(self._current["image_id"])

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
        return (
            bool(self._pending)
            or self._io_pool.activeThreadCount() > 0
            or self._model_pool.activeThreadCount() > 0
        )

    def shutdown(self) -> None:
        """Cancel queued work, wait for running workers, close the workspace connection."""
        if self._closed:
            return
        self._closed = True
        for worker in list(self._pending.values()):
            worker.quit()
        self._io_pool.clear()
        self._model_pool.clear()
        self._io_pool.waitForDone(-1)
        self._model_pool.waitForDone(-1)
        self._pending.clear()
        self._drop_workspace()

    # ------------------------------------------------------------------ navigation

    def next_image(self) -> None:
        """Next image of the queue (J or →)."""
        self._step(+1)

    def previous_image(self) -> None:
        """Previous image of the queue (K or ←)."""
        self._step(-1)

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
                self.panel.set_prompt(
                    "End of the worklist." if direction > 0 else "Start of the worklist."
                )
                return False
            target = self._queue[index]
        self._show(target)
        return True

    # ------------------------------------------------------------------ decisions

    def press_label(self, index: int) -> None:
        """Key ``index + 1``: label the image (single-label) or tick a label (multi-label)."""
        if self._current is None or index >= len(self._labels):
            return
        if self.panel.label_checks:
            box = self.panel.label_checks[index]
            box.setChecked(not box.isChecked())
            return
        label = self._labels[index]
        pred = self._current.get("prediction")
        ai = pred.get("label") if pred and not pred.get("error") else None
        self._save([label], "confirm" if label == ai else "correct")

    def confirm_ai(self) -> None:
        """Enter: save the AI label (multi-label: the ticked labels)."""
        if self._current is None:
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
            self._save(
                ticked,
                "confirm" if pred is not None and set(ticked) == set(ai_labels) else "correct",
            )
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
        if self._current is not None:
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
        if self.panel.note_edit.text().strip():
            self.panel.set_prompt("Note kept; it is saved with your decision on this image.")

    def undo(self) -> None:
        """Z: undo your last decision (a new "undo" review) and go back to that image."""
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
        row = self._ws.conn.execute(
            "SELECT image_id FROM reviews WHERE id = ?", (undo_id,)
        ).fetchone()
        image_id = int(row[0])
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
            )
        except StoreError as exc:
            self.panel.set_prompt(f"Not saved: {exc}", warning=True)
            return
        self._notes.pop(image_id, None)
        self.panel.note_edit.clear()
        self.panel.note_edit.hide()
        was_hidden = self._is_hidden(image_id)
        self._revealed.add(image_id)
        name = Path(self._current["path"]).name
        words = ", ".join(label_names(self._spec, labels)) if labels else "ungradable"
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
        at_end = self._queue and self._queue[-1] == image_id
        self.panel.set_prompt(
            f"Saved {name}: {words}." + (" End of the worklist." if at_end else "")
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
        self._shown_at = time.monotonic()
        note = self._notes.get(image_id, "")
        self.panel.note_edit.setText(note)
        self.panel.note_edit.setVisible(bool(note))
        self.panel.set_prompt("")
        image = self._images.get_fresh(image_id)
        if image is not None:
            self.viewer.set_image(image)
        elif ("image", image_id) in self._failed:
            self.viewer.set_message(self._failed[("image", image_id)])
        else:
            self.viewer.clear()
            self.viewer.set_message(f"Loading {Path(record['path']).name}…")
            self._request_image(image_id, record["path"], PRIORITY_CURRENT)
        self._refresh(image_id, record)
        self._prefetch()
        self.current_changed.emit(image_id)

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
            )
            if x
        )
        self.evidence.set_file(Path(record["path"]).name + (f"  ({patient})" if patient else ""))
        self.evidence.show_prediction(pred, hidden=hidden)
        review = record.get("review")
        self._show_review_state(review, pred, hidden)
        self._update_overlay()

    def _show_review_state(self, review: dict | None, pred: dict | None, hidden: bool) -> None:
        if review is None:
            self.panel.set_current("Not reviewed")
        elif self._blind and hidden:
            self.panel.set_current(
                f"Reviewed by {review['reviewer']} (their label is hidden in blind mode)"
            )
        else:
            self.panel.set_current(self._review_words(review).capitalize())
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
        return f"reviewed by {review['reviewer']}: {what}, {_ago(review.get('created_at'))}"

    def _record(self, image_id: int) -> dict[str, Any] | None:
        """The image row, its latest prediction of the active model and its current review."""
        assert self._ws is not None
        row = self._ws.conn.execute(
            "SELECT id, path, sha256, patient, eye FROM images WHERE id = ?", (image_id,)
        ).fetchone()
        if row is None:
            return None
        active = self._ws.active_model()
        predictions = self._ws.predictions(image_id)
        if active is not None:
            predictions = [p for p in predictions if p["model_hash"] == active["hash"]]
        return {
            "image_id": int(row["id"]),
            "path": row["path"],
            "sha256": row["sha256"],
            "patient": row["patient"],
            "eye": row["eye"],
            "prediction": predictions[-1] if predictions else None,
            "review": self._ws.current_review(image_id),
        }

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
        return [x for x in str(pred["label"]).split(";") if x in self._labels or not self._labels]

    def _set_labels(self, labels: list[str]) -> None:
        self._labels = labels
        multilabel = self._spec is not None and self._spec.task == "multilabel"
        self.panel.set_labels(labels, label_names(self._spec, labels), multilabel)
        keys = "1" if len(labels) == 1 else f"1–{min(len(labels), MAX_LABEL_KEYS)}"
        self.panel.heading.setText(f"<b>Your review</b> · keys {keys} label the image")
        self.evidence.set_label_keys(keys)

    def _update_mode_line(self) -> None:
        who = f"Reviewer: {self._reviewer}" if self._reviewer else f"{WARN} No reviewer name set"
        parts = [
            who,
            f"auto-advance {'on' if self._auto_advance else 'off'}",
            f"blind mode {'on' if self._blind else 'off'}",
        ]
        self.panel.mode_label.setText(" · ".join(parts))

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
        key = ("overlay", image_id, method)
        result = self._overlays.get_fresh(key)
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
        if key in self._failed:
            self.bar.set_status(f"{WARN} {name} unavailable: {self._failed[key]}")
            return
        self.bar.set_status(f"Computing {name}…")
        self._request_overlay(
            image_id, current["path"], current["sha256"], method, PRIORITY_CURRENT
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
            info = None
            if self._images.get(image_id) is None and ("image", image_id) not in self._failed:
                info = info or self._path_and_hash(image_id)
                if info:
                    self._request_image(image_id, info[0], PRIORITY_PREFETCH)
            if self._method != "none":
                key = ("overlay", image_id, self._method)
                if self._overlays.get(key) is None and key not in self._failed:
                    info = info or self._path_and_hash(image_id)
                    if info:
                        self._request_overlay(
                            image_id, info[0], info[1], self._method, PRIORITY_PREFETCH
                        )

    def _path_and_hash(self, image_id: int) -> tuple[str, str] | None:
        assert self._ws is not None
        row = self._ws.conn.execute(
            "SELECT path, sha256 FROM images WHERE id = ?", (image_id,)
        ).fetchone()
        return None if row is None else (row["path"], row["sha256"])

    # ------------------------------------------------------------------ workers

    def _request_image(self, image_id: int, path: str, priority: int) -> None:
        self._submit(
            ("image", image_id),
            self._io_pool,
            priority,
            load_display_qimage,
            str(path),
            DISPLAY_LONGEST,
        )

    def _request_overlay(
        self, image_id: int, path: str, sha256: str, method: str, priority: int
    ) -> None:
        self._submit(
            ("overlay", image_id, method),
            self._model_pool,
            priority,
            compute_overlay,
            self._holder,
            str(path),
            sha256,
            method,
            DISPLAY_LONGEST,
        )

    def _submit(
        self, key: Hashable, pool: QThreadPool, priority: int, func: Callable[..., Any], *args: Any
    ) -> None:
        if self._closed or key in self._pending:
            return
        worker = FunctionWorker(func, *args)
        gen = self._gen
        worker.returned.connect(lambda result, k=key, g=gen: self._on_result(k, g, result))
        worker.errored.connect(lambda exc, k=key, g=gen: self._on_error(k, g, exc))
        worker.finished.connect(lambda k=key, w=worker: self._on_finished(k, w))
        self._pending[key] = worker
        pool.start(worker, priority)

    def _on_finished(self, key: Hashable, worker: FunctionWorker) -> None:
        if self._pending.get(key) is worker:
            del self._pending[key]

    def _on_result(self, key: Any, gen: int, result: Any) -> None:
        if self._closed or gen != self._gen:
            return
        kind, image_id = key[0], key[1]
        current = self.current_image_id()
        if kind == "image":
            self._images.put(image_id, result)
            if current == image_id:
                self.viewer.set_image(result)
                self._update_overlay()
        else:
            self._overlays.put(key, result)
            if current == image_id and key[2] == self._method:
                self._update_overlay()

    def _on_error(self, key: Any, gen: int, exc: BaseException) -> None:
        if self._closed or gen != self._gen:
            return
        kind, image_id = key[0], key[1]
        if kind == "image":
            path = self._path_and_hash(image_id)
            name = Path(path[0]).name if path else f"image {image_id}"
            self._failed[key] = (
                f"Cannot show {name}.\n{exc}\n\n"
                "Check that the file is still there and readable (a disconnected drive?). "
                "You can still review it from the evidence, or skip it with J/→."
            )
            if self.current_image_id() == image_id:
                self.viewer.set_message(self._failed[key])
        else:
            self._failed[key] = str(exc)
            if self.current_image_id() == image_id:
                self._update_overlay()

    def _drop_workspace(self) -> None:
        self._images.clear()
        self._overlays.clear()
        self._failed.clear()
        self._revealed.clear()
        self._notes.clear()
        self._pending.clear()  # late results of the old workspace are ignored by generation
        if self._ws is not None:
            self._ws.close()
            self._ws = None
