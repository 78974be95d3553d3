"""Lesion marks in and out: COCO JSON (export and import) and per-image mask PNGs.

**COCO export.** ``images`` lists every image of the workspace (an image without marks is
a useful negative) and, for an OCT volume, each B-scan that has marks, with ``file_name``
relative to the images' common folder (``info.image_root`` names that folder),
``width``/``height`` in full-resolution pixels and the extra fields ``sha256``,
``slice_index`` (0-based B-scan, or null) and ``eyetriage_id``. ``categories`` are the
scheme's lesion types (``name`` is the type's key; ``label`` and ``colour`` ride along).
Each annotation has ``bbox`` ``[x, y, w, h]``, ``area``, ``iscrowd`` 0, and
``attributes`` ``{reviewer, created_at, kind, uid, slice_index}``:

* a box or outline has one ``segmentation`` polygon (a box as its four corners);
* a **point** is written keypoint-style: ``keypoints`` ``[x, y, 2]``, ``num_keypoints``
  1, a zero-size ``bbox`` at the point, ``area`` 0 and an empty ``segmentation`` (a tiny
  polygon would claim an extent the grader never drew).

**COCO import** matches each file image to a workspace image by ``sha256``, then by file
name (unique); keeps a mark's uid, reviewer and time from ``attributes`` when present;
skips an exact duplicate of a live mark (same image, slice, lesion, kind and points) so a
re-import adds nothing; refuses an annotation with bad geometry or an unknown category,
saying which and why, and goes on with the others.

**Masks** are one PNG per image (B-scan) with marks: ``<stem>__all.png`` and
``<stem>__<lesion>.png`` (white = marked), never written into a folder holding source
images.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .marks import Mark, MarkError, bounding_box, box_corners, check_geometry, mark_area, rasterise

if TYPE_CHECKING:
    from .store import Workspace


class CocoError(ValueError):
    """A COCO file cannot be used at all (unreadable, not JSON, not COCO); names the file."""


@dataclass
class ImportReport:
    """What :func:`import_coco` did: counts, and a reason per refused annotation."""

    added: int = 0
    duplicates: int = 0
    refused: list[str] = field(default_factory=list)
    unknown_categories: dict[str, int] = field(default_factory=dict)
    unmatched_images: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as sentences for a terminal."""
        out = [f"added {self.added} marks; {self.duplicates} already present (skipped)"]
        if self.unknown_categories:
            cats = ", ".join(f"{k} ({n})" for k, n in sorted(self.unknown_categories.items()))
            out.append(f"unknown lesion categories, not imported: {cats}")
        if self.unmatched_images:
            shown = ", ".join(self.unmatched_images[:5])
            more = len(self.unmatched_images) - 5
            out.append(
                f"{len(self.unmatched_images)} images not in this workspace: {shown}"
                + (f" and {more} more" if more > 0 else "")
            )
        out += [f"refused {r}" for r in self.refused]
        return out


def source_size(
    path: str | os.PathLike[str], slice_index: int | None = None
) -> tuple[int, int] | None:
    """The full-resolution ``(width, height)`` of an image (or a volume's 0-based B-scan)
    read from the file itself, for a workspace that never recorded it; ``None`` when the
    file cannot be read."""
    from .images import ImageError, open_image
    from .volumes import slice_source

    try:
        source = path if slice_index is None else slice_source(path, slice_index)
        _, size = open_image(source, longest=64)
    except (ImageError, OSError):
        return None
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------- export


def _common_root(paths: list[str]) -> Path | None:
    parents = [str(Path(p).parent) for p in paths]
    if not parents:
        return None
    try:
        return Path(os.path.commonpath(parents))
    except ValueError:  # different drives
        return None


def _relative(path: str, root: Path | None) -> str:
    if root is None:
        return Path(path).name
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def coco_document(ws: Workspace) -> dict[str, Any]:
    """The workspace's live marks as a COCO dictionary (see the module docstring)."""
    scheme = ws.scheme()
    images = ws.images()
    marks = ws.all_marks()
    root = _common_root([im["path"] for im in images])
    lesions = [t.key for t in scheme.lesion_types]
    lesions += sorted({m.lesion for m in marks} - set(lesions))  # types the scheme dropped
    categories = []
    for i, key in enumerate(lesions, start=1):
        t = scheme.lesion(key)
        categories.append(
            {
                "id": i,
                "name": key,
                "supercategory": "lesion",
                "label": t.label if t else key,
                "colour": t.colour if t else "#ffffff",
            }
        )
    cat_id = {key: i for i, key in enumerate(lesions, start=1)}
    by_item: dict[tuple[int, int | None], list[Mark]] = {}
    for m in marks:
        by_item.setdefault((int(m.image_id or 0), m.slice_index), []).append(m)
    coco_images = []
    annotations = []
    item_ids: dict[tuple[int, int | None], int] = {}
    for im in images:
        keys = [(im["id"], None)] if im.get("kind") != "volume" else []
        keys += sorted(
            (k for k in by_item if k[0] == im["id"] and k[1] is not None), key=lambda k: k[1]
        )
        for key in keys:
            item_ids[key] = len(coco_images) + 1
            width, height = im.get("width"), im.get("height")
            if (not width or not height) and key in by_item:
                width, height = source_size(im["path"], key[1]) or (None, None)
            coco_images.append(
                {
                    "id": item_ids[key],
                    "file_name": _relative(im["path"], root),
                    "width": width,
                    "height": height,
                    "sha256": im["sha256"],
                    "slice_index": key[1],
                    "eyetriage_id": im["id"],
                }
            )
    for key, item_marks in by_item.items():
        if key not in item_ids:  # cannot happen: a volume's marks name their B-scan
            continue
        for m in item_marks:
            annotations.append(
                _annotation(len(annotations) + 1, item_ids[key], cat_id[m.lesion], m)
            )
    return {
        "info": {
            "description": f"EyeTriage lesion marks (scheme {scheme.name})",
            "version": "1",
            "image_root": str(root) if root is not None else None,
            "points": "point marks are keypoints [x, y, 2] with a zero-size bbox and no segmentation",
        },
        "images": coco_images,
        "categories": categories,
        "annotations": annotations,
    }


def _annotation(ann_id: int, image_id: int, category_id: int, m: Mark) -> dict[str, Any]:
    x, y, w, h = bounding_box(m.points)
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, w, h],
        "area": mark_area(m.kind, m.points),
        "iscrowd": 0,
        "attributes": {
            "reviewer": m.reviewer,
            "created_at": m.created_at,
            "kind": m.kind,
            "uid": m.uid,
            "slice_index": m.slice_index,
        },
    }
    if m.kind == "point":
        ann["segmentation"] = []
        ann["keypoints"] = [m.points[0][0], m.points[0][1], 2]
        ann["num_keypoints"] = 1
    else:
        outline = box_corners(m.points) if m.kind == "box" else m.points
        ann["segmentation"] = [[c for pt in outline for c in pt]]
    return ann


def export_coco(ws: Workspace, out_path: str | os.PathLike[str]) -> dict[str, int]:
    """Write the workspace's marks as COCO JSON atomically; returns counts of
    ``images``, ``annotations`` and ``categories``."""
    from .fileio import atomic_write_text

    doc = coco_document(ws)
    out = Path(out_path).expanduser()
    if not out.parent.is_dir():
        raise CocoError(f"folder {out.parent} does not exist")
    atomic_write_text(out, json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    if not ws.readonly:
        ws.audit(
            "system", "export_coco", {"path": str(out), "annotations": len(doc["annotations"])}
        )
    return {k: len(doc[k]) for k in ("images", "annotations", "categories")}


def export_masks(ws: Workspace, folder: str | os.PathLike[str]) -> int:
    """Write mask PNGs of every image (B-scan) with marks into ``folder``; returns the
    number of files. Refuses a folder that holds source images of the workspace."""
    from PIL import Image

    from .fileio import atomic_file

    out = Path(folder).expanduser().resolve()
    images = {im["id"]: im for im in ws.images()}
    sources = {Path(im["path"]).parent.resolve() for im in images.values()}
    if out in sources:
        raise CocoError(
            f"{out} holds the workspace's source images; masks are never written beside them "
            "- choose another folder"
        )
    marks = ws.all_marks()
    by_item: dict[tuple[int, int | None], list[Mark]] = {}
    for m in marks:
        by_item.setdefault((int(m.image_id or 0), m.slice_index), []).append(m)
    stems = Counter(Path(im["path"]).stem for im in images.values())
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for (image_id, slice_index), item_marks in sorted(
        by_item.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])
    ):
        im = images[image_id]
        width, height = im.get("width"), im.get("height")
        if not width or not height:
            size = source_size(im["path"], slice_index)
            if size is None:
                continue  # size unknown and the file unreadable: a mask would be guesswork
            width, height = size
        stem = Path(im["path"]).stem
        if stems[stem] > 1:
            stem = f"{stem}-{image_id}"
        if slice_index is not None:
            stem = f"{stem}__s{slice_index:03d}"
        masks = {"all": rasterise(item_marks, width, height)}
        for lesion in sorted({m.lesion for m in item_marks}):
            masks[lesion] = rasterise(item_marks, width, height, lesion=lesion)
        for name, mask in masks.items():
            with atomic_file(out / f"{stem}__{name}.png", "wb") as fh:
                Image.fromarray(mask.astype("uint8") * 255, mode="L").save(fh, format="PNG")
            written += 1
    return written


# --------------------------------------------------------------------------- import


def _read_coco(path: Path) -> dict[str, Any]:
    from .safefiles import UnreadableFile, read_text

    try:
        text = read_text(path)
    except UnreadableFile as exc:
        raise CocoError(f"cannot read {exc}") from None
    except OSError as exc:
        raise CocoError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CocoError(f"{path.name} is not UTF-8 text, so not COCO JSON") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise CocoError(f"{path.name} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise CocoError(f"{path.name} is not COCO JSON (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise CocoError(f"{path.name}: '{key}' must be a list")
    return doc


def _plain(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def _geometry(ann: dict[str, Any]) -> tuple[str, Any]:
    """``(kind, points)`` an annotation describes (kind from its attributes when given)."""
    attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    kind = attrs.get("kind")
    seg = ann.get("segmentation")
    kp = ann.get("keypoints")
    polygon = None
    if isinstance(seg, list) and seg and isinstance(seg[0], list):
        if len(seg) > 1:
            raise MarkError(f"has {len(seg)} polygons; one mark is one outline")
        flat = seg[0]
        if len(flat) % 2:
            raise MarkError("its segmentation has an odd number of coordinates")
        polygon = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    elif isinstance(seg, dict):
        raise MarkError("has an RLE segmentation, which EyeTriage does not import")
    if kind == "point" or (kind is None and kp and polygon is None):
        if not isinstance(kp, list) or len(kp) < 2:
            raise MarkError("is a point without keypoints [x, y, v]")
        return "point", [(kp[0], kp[1])]
    if kind == "box" or (kind is None and polygon is None):
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise MarkError("has neither a segmentation nor a bbox [x, y, w, h]")
        x, y, w, h = bbox
        try:
            return "box", [(x, y), (float(x) + float(w), float(y) + float(h))]
        except (TypeError, ValueError):
            raise MarkError(f"has a bbox that is not numbers: {bbox!r}") from None
    if polygon is None:
        raise MarkError(f"is a {kind} without a segmentation polygon")
    return (kind if kind in ("polygon", "freehand") else "polygon"), polygon


def import_coco(ws: Workspace, path: str | os.PathLike[str], reviewer: str) -> ImportReport:
    """Import the marks of a COCO file into the workspace (see the module docstring).

    A file that cannot be used at all raises :class:`CocoError` naming it; a bad
    annotation is refused with its reason in the report and the others are imported.
    """
    path = Path(path).expanduser()
    doc = _read_coco(path)
    scheme = ws.scheme()
    report = ImportReport()
    by_key = {t.key: t.key for t in scheme.lesion_types}
    by_key.update({_plain(t.label): t.key for t in scheme.lesion_types})
    by_key.update({_plain(t.key): t.key for t in scheme.lesion_types})
    categories: dict[Any, str] = {}
    for cat in doc.get("categories", []):
        if isinstance(cat, dict) and "id" in cat:
            categories[cat["id"]] = str(cat.get("name", cat["id"]))
    images = ws.images()
    by_sha: dict[str, list[dict]] = {}
    by_name: dict[str, list[dict]] = {}
    for im in images:
        by_sha.setdefault(im["sha256"], []).append(im)
        by_name.setdefault(Path(im["path"]).name, []).append(im)
    targets: dict[Any, tuple[dict, int | None]] = {}
    for entry in doc["images"]:
        if not isinstance(entry, dict) or "id" not in entry:
            report.refused.append(f"an image entry without an id: {str(entry)[:60]}")
            continue
        name = str(entry.get("file_name", ""))
        found = by_sha.get(str(entry.get("sha256", "")).lower()) or []
        if len(found) != 1:
            found = by_name.get(Path(name.replace("\\", "/")).name, [])
        if len(found) != 1:
            report.unmatched_images.append(name or f"image {entry['id']}")
            continue
        slice_index = entry.get("slice_index")
        targets[entry["id"]] = (found[0], slice_index if isinstance(slice_index, int) else None)
    live: set[tuple] = set()
    for m in ws.all_marks():
        live.add(_signature(m.image_id, m.slice_index, m.lesion, m.kind, m.points))
    rows = []
    for i, ann in enumerate(doc.get("annotations", []), start=1):
        where = f"annotation {ann.get('id', i) if isinstance(ann, dict) else i}"
        if not isinstance(ann, dict):
            report.refused.append(f"{where}: not an object")
            continue
        if ann.get("image_id") not in targets:
            continue  # its image is reported as unmatched (or missing from 'images')
        cat_name = categories.get(ann.get("category_id"), f"category {ann.get('category_id')}")
        lesion = by_key.get(cat_name) or by_key.get(_plain(cat_name))
        if lesion is None:
            report.unknown_categories[cat_name] = report.unknown_categories.get(cat_name, 0) + 1
            continue
        image, slice_index = targets[ann["image_id"]]
        attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        if slice_index is None and isinstance(attrs.get("slice_index"), int):
            slice_index = attrs["slice_index"]
        try:
            kind, raw = _geometry(ann)
            points = check_geometry(kind, raw, image.get("width"), image.get("height"))
        except MarkError as exc:
            report.refused.append(f"{where} on {Path(image['path']).name}: {exc}")
            continue
        if slice_index is not None and (
            image.get("kind") != "volume" or not 0 <= slice_index < int(image["n_slices"] or 0)
        ):
            report.refused.append(
                f"{where} on {Path(image['path']).name}: slice_index {slice_index} is not a "
                "B-scan of this item"
            )
            continue
        signature = _signature(image["id"], slice_index, lesion, kind, points)
        if signature in live:
            report.duplicates += 1
            continue
        live.add(signature)
        rows.append(
            {
                "image_id": image["id"],
                "slice_index": slice_index,
                "lesion": lesion,
                "kind": kind,
                "points": points,
                "uid": attrs.get("uid") if isinstance(attrs.get("uid"), str) else None,
                "reviewer": _text(attrs.get("reviewer")),
                "created_at": _text(attrs.get("created_at")),
            }
        )
    if rows:
        ws.add_marks(rows, reviewer, source=path.name)
    report.added = len(rows)
    return report


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _signature(image_id: Any, slice_index: Any, lesion: str, kind: str, points: Any) -> tuple:
    """What makes two marks the same mark (coordinates to a millionth of a pixel)."""
    pts = tuple((round(float(x), 6), round(float(y), 6)) for x, y in points)
    return (int(image_id), slice_index, lesion, kind, pts)


# --------------------------------------------------------------------------- marks as ground truth


@dataclass
class MarkedImage:
    """One image (or one 0-based B-scan of a volume) with its graders' marks: the ground
    truth of ``explain-eval --marks``. ``width``/``height`` are the marks' pixel frame."""

    path: Path
    slice_index: int | None
    width: int
    height: int
    marks: list[Mark]

    @property
    def name(self) -> str:
        where = "" if self.slice_index is None else f" slice {self.slice_index + 1}"
        return f"{self.path.name}{where}"


def marked_images(source: str | os.PathLike[str]) -> tuple[list[MarkedImage], list[str]]:
    """The images with at least one live mark, from a workspace folder or a COCO file,
    and the problems met (annotations refused, images whose file cannot be found).

    A COCO image's file is looked for under ``info.image_root``, then beside the COCO
    file; a workspace's images are where it recorded them.
    """
    from .store import Workspace, is_workspace

    source = Path(source).expanduser()
    problems: list[str] = []
    out: list[MarkedImage] = []
    if is_workspace(source):
        with Workspace.open(source, create=False) as ws:
            images = {im["id"]: im for im in ws.images()}
            grouped: dict[tuple[int, int | None], list[Mark]] = {}
            for m in ws.all_marks():
                grouped.setdefault((int(m.image_id or 0), m.slice_index), []).append(m)
        for (image_id, slice_index), marks in sorted(
            grouped.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])
        ):
            im = images[image_id]
            size = (im.get("width"), im.get("height"))
            if not size[0] or not size[1]:
                size = source_size(im["path"], slice_index) or (None, None)
            if not size[0] or not size[1]:
                name = Path(im["path"]).name
                problems.append(f"{name}: its size is unknown and the file unreadable")
                continue
            out.append(
                MarkedImage(Path(im["path"]), slice_index, int(size[0]), int(size[1]), marks)
            )
        return out, problems
    doc = _read_coco(source)
    roots = [Path(r) for r in [(doc.get("info") or {}).get("image_root")] if isinstance(r, str)]
    roots.append(source.parent)
    categories = {
        c["id"]: str(c.get("name", c["id"]))
        for c in doc.get("categories", [])
        if isinstance(c, dict) and "id" in c
    }
    by_image: dict[Any, list[dict]] = {}
    for ann in doc.get("annotations", []):
        if isinstance(ann, dict):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    for entry in doc["images"]:
        if not isinstance(entry, dict) or entry.get("id") not in by_image:
            continue
        name = str(entry.get("file_name", ""))
        path = next((r / name for r in roots if (r / name).exists()), None)
        if path is None:
            problems.append(f"{name}: file not found under the image root or beside the COCO file")
            continue
        width, height = entry.get("width"), entry.get("height")
        if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
            problems.append(f"{name}: no width/height in the COCO file; skipped")
            continue
        slice_index = entry.get("slice_index")
        marks = []
        for ann in by_image[entry["id"]]:
            try:
                kind, raw = _geometry(ann)
                points = check_geometry(kind, raw, width, height)
            except MarkError as exc:
                problems.append(f"annotation {ann.get('id')} on {name}: {exc}")
                continue
            lesion = categories.get(ann.get("category_id"), str(ann.get("category_id")))
            marks.append(Mark(str(ann.get("id")), lesion, kind, points, "", "", slice_index))
        if marks:
            out.append(
                MarkedImage(
                    path,
                    slice_index if isinstance(slice_index, int) else None,
                    width,
                    height,
                    marks,
                )
            )
    return out, problems


__all__ = [
    "CocoError",
    "ImportReport",
    "MarkedImage",
    "coco_document",
    "export_coco",
    "export_masks",
    "import_coco",
    "marked_images",
]
