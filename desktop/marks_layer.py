"""Lesion marks drawn on the viewer: points, boxes, polygons and freehand outlines.

:class:`MarksLayer` puts the marks of the image (or B-scan) on screen above the attribution
overlay and, in *marking mode*, turns the mouse into a pen:

- click: a point; drag: a box; Shift + drag: a freehand outline;
- Ctrl + click: a polygon corner (Enter or a double-click closes it; Esc cancels);
- right-click: select the mark under the pointer (Delete removes it);
- undo (Z, Ctrl+Z) takes back the last mark added or deleted in this session.

Geometry lives in full-resolution image pixels: the layer's root item is scaled by
display width / full width, so the marks' items use the stored coordinates as they are and
:meth:`MarksLayer.to_full` converts a scene position. Pens are cosmetic (constant width on
screen whatever the zoom) and points keep their size on screen.

The layer reads and writes through a small store interface (:class:`MarkStore`), which
:class:`engine.store.Workspace` provides; rules on what a valid mark is live in
:mod:`engine.marks` and the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QMouseEvent, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import (
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QGraphicsView,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .grading_panel import AnswerButton
from .viewer import ImageViewer

PEN_WIDTH = 2.0  # screen pixels, whatever the zoom
POINT_RADIUS = 6.0  # screen pixels
CLICK_SLOP = 4.0  # screen pixels a press may move and still be a click
FREEHAND_STEP = 3.0  # screen pixels between recorded freehand points
PICK_DISTANCE = 8.0  # screen pixels: how near a right-click must be to select a mark
SELECTED = QColor("#ffffff")


class MarkStore(Protocol):
    """What the layer needs from the workspace (``engine.store.Workspace`` has it)."""

    def add_mark(
        self,
        image_id: int,
        lesion: str,
        kind: str,
        points: list[tuple[float, float]],
        reviewer: str,
        slice_index: int | None = None,
    ) -> str: ...

    def delete_mark(self, uid: str, reviewer: str) -> None: ...

    def restore_mark(self, uid: str, reviewer: str) -> str: ...

    def marks(self, image_id: int, slice_index: int | None = None) -> list[Any]: ...


LESION_BUTTON_STYLE = (
    "QPushButton { border: 1px solid palette(mid); border-left: 6px solid COLOUR;"
    " border-radius: 3px; padding: 2px 6px; background: palette(button); }"
    " QPushButton:hover { background: palette(light); }"
    " QPushButton:checked { background: palette(highlight); color: palette(highlighted-text); }"
)


@dataclass(frozen=True)
class Lesion:
    """A lesion type as the layer shows it."""

    key: str
    label: str
    colour: str
    hotkey: str | None = None


def full_scale(full_width: int | None, display_width: int) -> float:
    """Full-resolution pixels per display pixel (1 when the full size is unknown)."""
    if not full_width or display_width <= 0:
        return 1.0
    return float(full_width) / float(display_width)


class MarksLayer(QObject):
    """The marks of one image (or B-scan) on ``viewer``, and the pen of marking mode.

    Signals: ``changed`` after marks were added, deleted or restored (so counts and the
    report can follow); ``message(str, bool)`` says what happened or why nothing was saved
    (the bool: a warning); ``mode_changed(bool)`` and ``visibility_changed(bool)``.
    """

    changed = Signal()
    message = Signal(str, bool)
    mode_changed = Signal(bool)
    visibility_changed = Signal(bool)
    lesion_changed = Signal(str)

    def __init__(self, viewer: ImageViewer, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.root = QGraphicsRectItem(viewer.layer_root())
        self.root.setPen(QPen(Qt.PenStyle.NoPen))
        self.root.setFlag(QGraphicsItem.GraphicsItemFlag.ItemHasNoContents, True)
        self._store: MarkStore | None = None
        self._reviewer = ""
        self._image_id: int | None = None
        self._slice: int | None = None
        self._full_size: tuple[int, int] | None = None
        self._lesions: list[Lesion] = []
        self._lesion: str | None = None
        self._marking = False
        self._visible = True
        self._items: dict[str, QGraphicsItem] = {}
        self._marks: dict[str, Any] = {}
        self._selected: str | None = None
        self._undo: list[tuple[str, str]] = []  # ("add" | "delete", uid)
        # the shape being drawn
        self._press: QPointF | None = None  # scene position of the press
        self._press_screen: QPointF | None = None
        self._gesture: str | None = None  # "click-or-box" | "freehand"
        self._path: list[QPointF] = []  # full-resolution points drawn so far
        self._polygon: list[QPointF] = []
        self._preview = QGraphicsPathItem(self.root)
        self._preview.setZValue(100)
        viewer.viewport().installEventFilter(self)

    # ------------------------------------------------------------------ set-up

    def set_store(self, store: MarkStore | None, reviewer: str = "") -> None:
        self._store = store
        self._reviewer = reviewer
        self._undo.clear()

    def set_reviewer(self, reviewer: str) -> None:
        self._reviewer = (reviewer or "").strip()

    def set_lesions(self, lesions: Sequence[Lesion]) -> None:
        """The lesion types offered (the scheme's, for this image's modality)."""
        self._lesions = list(lesions)
        if self._lesion not in {t.key for t in self._lesions}:
            self._lesion = self._lesions[0].key if self._lesions else None
            self.lesion_changed.emit(self._lesion or "")
        self.reload()

    def lesions(self) -> list[Lesion]:
        return list(self._lesions)

    def set_lesion(self, key: str) -> bool:
        """Draw the next marks as lesion ``key``; False if the scheme has no such type."""
        if key not in {t.key for t in self._lesions}:
            return False
        self._lesion = key
        self.lesion_changed.emit(key)
        self._style_preview()
        return True

    def lesion(self) -> str | None:
        return self._lesion

    def lesion_for_key(self, key: str) -> str | None:
        """The lesion type whose hotkey is ``key`` (normalised spelling), or ``None``."""
        return next((t.key for t in self._lesions if t.hotkey == key), None)

    def show_image(
        self,
        image_id: int | None,
        slice_index: int | None,
        full_size: tuple[int, int] | None,
        display_size: tuple[int, int] | None,
    ) -> None:
        """Show the marks of ``image_id`` (B-scan ``slice_index``); ``full_size`` is the
        image's full-resolution (width, height), ``display_size`` the display copy's."""
        self.cancel_shape()
        self._image_id = image_id
        self._slice = slice_index
        self._full_size = full_size
        self._selected = None
        scale = 1.0
        if full_size and display_size:
            scale = full_scale(full_size[0], display_size[0])
        self.root.setScale(1.0 / scale)
        self.reload()

    def scale(self) -> float:
        """Full-resolution pixels per display pixel."""
        return 1.0 / self.root.scale() if self.root.scale() else 1.0

    # ------------------------------------------------------------------ modes

    def set_marking(self, on: bool) -> None:
        """Marking mode: the mouse draws (the view no longer pans by dragging)."""
        on = bool(on)
        if on == self._marking:
            return
        self.cancel_shape()
        self._marking = on
        self.viewer.setDragMode(
            QGraphicsView.DragMode.NoDrag if on else QGraphicsView.DragMode.ScrollHandDrag
        )
        self.viewer.viewport().setCursor(
            Qt.CursorShape.CrossCursor if on else Qt.CursorShape.OpenHandCursor
        )
        if on and not self._visible:
            self.set_visible(True)  # drawing on a hidden layer would draw blind
        self.mode_changed.emit(on)

    def is_marking(self) -> bool:
        return self._marking

    def set_visible(self, visible: bool) -> None:
        """Show or hide the marks (independent of the attribution overlay)."""
        visible = bool(visible)
        if visible == self._visible:
            return
        self._visible = visible
        self.root.setVisible(visible)
        if not visible and self._marking:
            self.set_marking(False)
        self.visibility_changed.emit(visible)

    def is_visible(self) -> bool:
        return self._visible

    def toggle_visible(self) -> None:
        self.set_visible(not self._visible)

    # ------------------------------------------------------------------ marks

    def marks(self) -> list[Any]:
        """The live marks shown (oldest first)."""
        return list(self._marks.values())

    def selected(self) -> str | None:
        return self._selected

    def reload(self) -> None:
        """Read the marks of the current image (B-scan) from the store and draw them."""
        for item in self._items.values():
            item.setParentItem(None)
            if item.scene() is not None:
                item.scene().removeItem(item)
        self._items.clear()
        self._marks.clear()
        if self._store is None or self._image_id is None:
            return
        for mark in self._store.marks(self._image_id, self._slice):
            self._marks[mark.uid] = mark
            self._items[mark.uid] = self._draw(mark)
        if self._selected not in self._marks:
            self._selected = None
        self._show_selection()

    def select(self, uid: str | None) -> None:
        self._selected = uid if uid in self._marks else None
        self._show_selection()

    def delete_selected(self) -> bool:
        """Delete the selected mark (a tombstone in the store); True if one was deleted."""
        if self._selected is None:
            self.message.emit("Select a mark first (right-click it), then press Delete.", True)
            return False
        if not self._can_write():
            return False
        uid = self._selected
        try:
            self._store.delete_mark(uid, self._reviewer)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the store's reason, shown to the reader
            self.message.emit(f"Mark not deleted: {exc}", True)
            return False
        self._undo.append(("delete", uid))
        self._selected = None
        self.reload()
        self.message.emit("Mark deleted (Z or Ctrl+Z brings it back).", False)
        self.changed.emit()
        return True

    def undo(self) -> bool:
        """Take back the last mark added (deleted) or deleted (restored) in this session."""
        if not self._undo:
            self.message.emit("No mark to undo.", False)
            return False
        if not self._can_write():
            return False
        action, uid = self._undo[-1]
        try:
            if action == "add":
                self._store.delete_mark(uid, self._reviewer)  # type: ignore[union-attr]
                words = "Last mark removed."
            else:
                restored = self._store.restore_mark(uid, self._reviewer)  # type: ignore[union-attr]
                # a later undo of an add of this mark must delete the restored copy
                self._undo = [(a, restored if u == uid else u) for a, u in self._undo]
                words = "Deleted mark restored."
        except Exception as exc:  # noqa: BLE001 - the store's reason, shown to the reader
            self.message.emit(f"Undo failed: {exc}", True)
            return False
        self._undo.pop()
        self.reload()
        self.message.emit(words, False)
        self.changed.emit()
        return True

    def can_undo(self) -> bool:
        return bool(self._undo)

    # ------------------------------------------------------------------ drawing

    def to_full(self, scene_pos: QPointF) -> QPointF:
        """A scene position in full-resolution image pixels, held inside the image."""
        p = self.root.mapFromScene(scene_pos)
        x, y = p.x(), p.y()
        if self._full_size:
            x = min(max(x, 0.0), float(self._full_size[0]))
            y = min(max(y, 0.0), float(self._full_size[1]))
        else:
            x, y = max(x, 0.0), max(y, 0.0)
        return QPointF(x, y)

    def cancel_shape(self) -> bool:
        """Esc: drop the shape being drawn; True if there was one."""
        had = bool(self._polygon or self._press is not None)
        self._press = None
        self._press_screen = None
        self._gesture = None
        self._path = []
        self._polygon = []
        self._preview.setPath(QPainterPath())
        return had

    def close_polygon(self) -> bool:
        """Enter: save the polygon being drawn (three corners or more); True if saved."""
        if len(self._polygon) < 3:
            if self._polygon:
                self.message.emit("A polygon needs three corners or more (Esc cancels).", True)
            return False
        points = list(self._polygon)
        self.cancel_shape()
        return self._commit("polygon", points)

    def drawing(self) -> str | None:
        """The shape in progress ("polygon", "freehand", "box") or ``None``."""
        if self._polygon:
            return "polygon"
        if self._press is not None:
            return self._gesture
        return None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if not self._marking or self._image_id is None or not self.viewer.has_image():
            return False
        kind = event.type()
        if kind not in (
            QEvent.Type.MouseButtonPress,
            QEvent.Type.MouseMove,
            QEvent.Type.MouseButtonRelease,
            QEvent.Type.MouseButtonDblClick,
        ) or not isinstance(event, QMouseEvent):
            return False
        screen = event.position()
        scene = self.viewer.mapToScene(screen.toPoint())
        button = event.button()
        modifiers = event.modifiers()
        if kind == QEvent.Type.MouseButtonDblClick and button == Qt.MouseButton.LeftButton:
            if self._polygon:
                self.close_polygon()
            return True
        if kind == QEvent.Type.MouseButtonPress:
            if button == Qt.MouseButton.RightButton:
                self.select(self._pick(scene))
                return True
            if button != Qt.MouseButton.LeftButton:
                return False
            if modifiers & Qt.KeyboardModifier.ControlModifier:
                self._polygon.append(self.to_full(scene))
                self._show_preview(self._polygon, closed=False)
                return True
            if self._polygon:  # a plain click while a polygon is open adds a corner too
                self._polygon.append(self.to_full(scene))
                self._show_preview(self._polygon, closed=False)
                return True
            self._press = scene
            self._press_screen = QPointF(screen)
            shift = bool(modifiers & Qt.KeyboardModifier.ShiftModifier)
            self._gesture = "freehand" if shift else "box"
            self._path = [self.to_full(scene)]
            return True
        if kind == QEvent.Type.MouseMove:
            if self._press is None:
                if self._polygon:
                    self._show_preview([*self._polygon, self.to_full(scene)], closed=False)
                return bool(self._polygon)
            here = self.to_full(scene)
            if self._gesture == "freehand":
                last = self._path[-1]
                if self._screen_distance(last, here) >= FREEHAND_STEP:
                    self._path.append(here)
                self._show_preview(self._path, closed=False)
            else:
                start = self._path[0]
                self._show_preview(
                    [start, QPointF(here.x(), start.y()), here, QPointF(start.x(), here.y())],
                    closed=True,
                )
            return True
        if kind == QEvent.Type.MouseButtonRelease and button == Qt.MouseButton.LeftButton:
            if self._press is None:
                return bool(self._polygon)
            start_screen = self._press_screen or QPointF(screen)
            moved = math.hypot(screen.x() - start_screen.x(), screen.y() - start_screen.y())
            start = self._path[0]
            end = self.to_full(scene)
            gesture = self._gesture
            path = list(self._path)
            self.cancel_shape()
            if moved < CLICK_SLOP:
                self._commit("point", [start])
            elif gesture == "freehand":
                if self._screen_distance(path[-1], end) > 0:
                    path.append(end)
                self._commit("freehand", path)
            else:
                self._commit("box", [start, end])
            return True
        return False

    # ------------------------------------------------------------------ internals

    def _can_write(self) -> bool:
        if self._store is None or self._image_id is None:
            return False
        if not self._reviewer:
            self.message.emit(
                "Set your reviewer name first (Settings → Reviewer). Nothing was saved.", True
            )
            return False
        return True

    def _commit(self, kind: str, points: Sequence[QPointF]) -> bool:
        if not self._can_write():
            return False
        if self._full_size is None:
            self.message.emit(
                "The full size of this image is not known, so a mark cannot be placed in "
                "its pixels; screen the image first. Nothing was saved.",
                True,
            )
            return False
        if self._lesion is None:
            self.message.emit("This scheme has no lesion types to mark.", True)
            return False
        coords = [(round(p.x(), 1), round(p.y(), 1)) for p in points]
        try:
            uid = self._store.add_mark(  # type: ignore[union-attr]
                self._image_id,  # type: ignore[arg-type]
                self._lesion,
                kind,
                coords,
                self._reviewer,
                slice_index=self._slice,
            )
        except Exception as exc:  # noqa: BLE001 - the store's reason, shown to the reader
            self.message.emit(f"Mark not saved: {exc}", True)
            return False
        self._undo.append(("add", uid))
        self.reload()
        name = self._lesion_label(self._lesion)
        self.message.emit(f"{kind.capitalize()} marked: {name}.", False)
        self.changed.emit()
        return True

    def _lesion_label(self, key: str | None) -> str:
        return next((t.label for t in self._lesions if t.key == key), key or "")

    def _colour(self, key: str | None) -> QColor:
        colour = next((t.colour for t in self._lesions if t.key == key), "#ffffff")
        return QColor(colour)

    def _pen(self, colour: QColor, width: float = PEN_WIDTH) -> QPen:
        pen = QPen(colour, width)
        pen.setCosmetic(True)  # constant width on screen, whatever the zoom
        pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        return pen

    def _draw(self, mark: Any) -> QGraphicsItem:
        colour = self._colour(mark.lesion)
        points = [QPointF(float(x), float(y)) for x, y in mark.points]
        if mark.kind == "point":
            item: QGraphicsItem = _PointItem(points[0], colour, self.root)
        else:
            path = QPainterPath()
            if mark.kind == "box":
                path.addRect(QRectF(points[0], points[1]).normalized())
            else:
                path.addPolygon(QPolygonF(points))
                path.closeSubpath()
            shape = QGraphicsPathItem(path, self.root)
            shape.setPen(self._pen(colour))
            fill = QColor(colour)
            fill.setAlpha(40)
            shape.setBrush(QBrush(fill))
            item = shape
        item.setToolTip(
            f"{self._lesion_label(mark.lesion)} ({mark.kind}) by {mark.reviewer}; "
            "right-click selects, Delete removes"
        )
        item.setData(0, mark.uid)
        return item

    def _show_selection(self) -> None:
        for uid, item in self._items.items():
            chosen = uid == self._selected
            mark = self._marks[uid]
            colour = SELECTED if chosen else self._colour(mark.lesion)
            if isinstance(item, _PointItem):
                item.set_colour(colour, thick=chosen)
            elif isinstance(item, QGraphicsPathItem):
                pen = self._pen(colour, PEN_WIDTH * (2 if chosen else 1))
                if chosen:
                    pen.setStyle(Qt.PenStyle.DashLine)
                item.setPen(pen)

    def _style_preview(self) -> None:
        pen = self._pen(self._colour(self._lesion))
        pen.setStyle(Qt.PenStyle.DashLine)
        self._preview.setPen(pen)

    def _show_preview(self, points: Sequence[QPointF], closed: bool) -> None:
        self._style_preview()
        path = QPainterPath()
        if points:
            path.addPolygon(QPolygonF(list(points)))
            if closed:
                path.closeSubpath()
        self._preview.setPath(path)

    def _screen_distance(self, a: QPointF, b: QPointF) -> float:
        """Distance on screen between two full-resolution points."""
        zoom = self.viewer.scale_factor() * self.root.scale()
        return math.hypot(a.x() - b.x(), a.y() - b.y()) * zoom

    def _pick(self, scene: QPointF) -> str | None:
        """The mark nearest to ``scene`` within :data:`PICK_DISTANCE` screen pixels."""
        here = self.root.mapFromScene(scene)
        zoom = self.viewer.scale_factor() * self.root.scale()
        best, best_d = None, PICK_DISTANCE / max(zoom, 1e-9)
        for uid, mark in self._marks.items():
            d = _distance_to_mark(mark, here.x(), here.y())
            if d <= best_d:
                best, best_d = uid, d
        return best


class _PointItem(QGraphicsEllipseItem):
    """A point mark: a ring with a centre dot, the same size on screen at any zoom."""

    def __init__(self, centre: QPointF, colour: QColor, parent: QGraphicsItem) -> None:
        r = POINT_RADIUS
        super().__init__(-r, -r, 2 * r, 2 * r, parent)
        self.setPos(centre)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self._dot = QGraphicsEllipseItem(-1.5, -1.5, 3, 3, self)
        self.set_colour(colour)

    def set_colour(self, colour: QColor, thick: bool = False) -> None:
        pen = QPen(colour, PEN_WIDTH * (2 if thick else 1))
        pen.setCosmetic(True)
        self.setPen(pen)
        self._dot.setPen(QPen(Qt.PenStyle.NoPen))
        self._dot.setBrush(QBrush(colour))


def _distance_to_mark(mark: Any, x: float, y: float) -> float:
    """Full-resolution distance from (x, y) to a mark: to a point, or to the nearest edge
    of a box or outline (0 inside a box)."""
    pts = [(float(a), float(b)) for a, b in mark.points]
    if mark.kind == "point":
        return math.hypot(pts[0][0] - x, pts[0][1] - y)
    if mark.kind == "box":
        (x0, y0), (x1, y1) = pts
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        if x0 <= x <= x1 and y0 <= y <= y1:
            return 0.0
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    else:
        corners = pts
    best = math.inf
    for (ax, ay), (bx, by) in zip(corners, [*corners[1:], corners[0]], strict=True):
        dx, dy = bx - ax, by - ay
        t = 0.0 if dx == dy == 0 else ((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)
        t = min(max(t, 0.0), 1.0)
        best = min(best, math.hypot(ax + t * dx - x, ay + t * dy - y))
    return best


MARK_KEYS = {"mode": "Shift+M", "visible": "Shift+H"}
MARK_HINT = (
    "click: point · drag: box · Shift+drag: freehand · Ctrl+click: polygon corner "
    "(Enter or double-click closes) · Esc: cancel · right-click: select · Delete: remove · "
    "Z: undo"
)


class MarksPanel(QWidget):
    """Marking mode, layer visibility and the lesion types with their keys."""

    def __init__(self, layer: MarksLayer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("marksPanel")
        self._layer = layer
        self.mode_button = QToolButton()
        self.mode_button.setObjectName("markingMode")
        self.mode_button.setText("⇧M  Mark lesions")
        self.mode_button.setCheckable(True)
        self.mode_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.mode_button.setToolTip(
            "Marking mode (Shift+M): the mouse draws marks and the lesion keys choose the "
            "type; the review keys work as before outside it"
        )
        self.mode_button.toggled.connect(layer.set_marking)
        self.visible_button = QToolButton()
        self.visible_button.setObjectName("marksVisible")
        self.visible_button.setText("⇧H  Marks shown")
        self.visible_button.setCheckable(True)
        self.visible_button.setChecked(True)
        self.visible_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.visible_button.setToolTip(
            "Show or hide the marks layer (Shift+H), apart from the overlay"
        )
        self.visible_button.toggled.connect(layer.set_visible)
        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.setSpacing(4)
        top.addWidget(self.mode_button, 1)
        top.addWidget(self.visible_button, 1)
        self.types = QWidget()
        self.types_grid = QGridLayout(self.types)
        self.types_grid.setContentsMargins(0, 0, 0, 0)
        self.types_grid.setSpacing(3)
        self.type_buttons: dict[str, AnswerButton] = {}  # the types offered now, by key
        self._made: dict[Lesion, AnswerButton] = {}  # every button made (see set_lesions)
        self.count_label = QLabel()
        self.count_label.setObjectName("marksCount")
        self.count_label.setWordWrap(True)
        self.hint = QLabel(MARK_HINT)
        self.hint.setObjectName("marksHint")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: palette(placeholder-text); font-size: 9pt;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.setSpacing(3)
        layout.addLayout(top)
        layout.addWidget(self.types)
        layout.addWidget(self.count_label)
        layout.addWidget(self.hint)
        layer.mode_changed.connect(self._on_mode)
        layer.visibility_changed.connect(self._on_visible)
        layer.lesion_changed.connect(self._on_lesion)
        layer.changed.connect(self.update_count)
        self._on_mode(layer.is_marking())

    def set_lesions(self, lesions: Sequence[Lesion]) -> None:
        """One button per lesion type, its colour and key on it.

        A button once made is kept (hidden when its type is not offered): the first image
        of a workspace changes the offer from every type to its modality's, and making the
        buttons anew there, each with its own style sheet, lengthened that opening's pause
        (bench_gui: shorter in each of 5 alternated runs without it)."""
        for button in self.type_buttons.values():
            self.types_grid.removeWidget(button)
            button.hide()
        self.type_buttons = {}
        for i, t in enumerate(lesions):
            button = self._made.get(t)
            if button is None:
                button = self._made[t] = self._lesion_button(t)
            self.type_buttons[t.key] = button
            self.types_grid.addWidget(button, i // 2, i % 2)
            button.show()
        self._on_lesion(self._layer.lesion() or "")
        self.update_count()

    def _lesion_button(self, t: Lesion) -> AnswerButton:
        key = t.hotkey or ""
        button = AnswerButton(f"{key}  {t.label}" if key else t.label, self.types)
        button.setObjectName(f"lesion_{t.key}")
        button.setCheckable(True)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        button.setMinimumHeight(22)
        # the colour the type's marks are drawn in, as the button's left edge (a border on
        # one side alone left the style's own frame in place, and no colour showed)
        button.setStyleSheet(LESION_BUTTON_STYLE.replace("COLOUR", t.colour))
        button.setToolTip(f"Mark {t.label}" + (f" (key {key} in marking mode)" if key else ""))
        button.clicked.connect(lambda _=False, k=t.key: self._choose(k))
        return button

    def _choose(self, key: str) -> None:
        self._layer.set_lesion(key)
        if not self._layer.is_marking():
            self._layer.set_marking(True)

    def update_count(self) -> None:
        marks = self._layer.marks()
        # outside marking mode the panel is one row (and the count, when there are marks)
        self.count_label.setVisible(bool(marks) or self._layer.is_marking())
        if not marks:
            self.count_label.setText("No marks on this image yet.")
            return
        counts: dict[str, int] = {}
        for mark in marks:
            counts[mark.lesion] = counts.get(mark.lesion, 0) + 1
        names = {t.key: t.label for t in self._layer.lesions()}
        words = ", ".join(f"{n} {names.get(k, k).lower()}" for k, n in counts.items())
        self.count_label.setText(f"{len(marks)} mark{'s' if len(marks) != 1 else ''}: {words}")

    def _on_mode(self, on: bool) -> None:
        self.mode_button.blockSignals(True)
        self.mode_button.setChecked(on)
        self.mode_button.blockSignals(False)
        self.mode_button.setStyleSheet("font-weight: bold;" if on else "")
        self.hint.setVisible(on)
        self.types.setVisible(on)  # the lesion types matter only while marking
        self.update_count()

    def _on_visible(self, visible: bool) -> None:
        self.visible_button.blockSignals(True)
        self.visible_button.setChecked(visible)
        self.visible_button.blockSignals(False)
        self.visible_button.setText("⇧H  Marks shown" if visible else "⇧H  Marks hidden")

    def _on_lesion(self, key: str) -> None:
        for k, button in self.type_buttons.items():
            button.setChecked(k == key)
