"""Lesion marks out and back in: COCO JSON and mask PNGs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.coco import CocoError, coco_document, export_coco, export_masks, import_coco
from engine.schemes import preset
from engine.store import Workspace


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _workspace(folder: Path, images_dir: Path) -> Workspace:
    ws = Workspace.open(folder)
    ws.set_scheme(preset("icdr"), "lead")
    ws.add_image(images_dir / "eye1.png", sha("eye1"), 10, 200, 100, "fundus")
    ws.add_image(images_dir / "sub" / "eye2.png", sha("eye2"), 10, 300, 300, "fundus")
    ws.add_image(images_dir / "scan.dcm", sha("scan"), 10, 64, 32, "oct", kind="volume", n_slices=3)
    return ws


def _draw(ws: Workspace) -> None:
    ws.add_mark(1, "microaneurysm", "point", [(12.25, 30.5)], "ana")
    ws.add_mark(1, "haemorrhage", "box", [(40, 10), (80, 50)], "ana")
    ws.add_mark(2, "hard_exudate", "polygon", [(10, 10), (100, 20), (60, 90)], "ben")
    ws.add_mark(
        2, "cotton_wool_spot", "freehand", [(150, 150), (170, 150), (170, 170), (150, 171)], "ben"
    )
    ws.add_mark(3, "subretinal_fluid", "box", [(5, 5), (40, 20)], "ana", slice_index=1)
    gone = ws.add_mark(1, "drusen", "point", [(5, 5)], "ana")
    ws.delete_mark(gone, "ana")  # deleted marks are not exported


def _key(m):
    return (m.uid, m.lesion, m.kind, m.points, m.reviewer, m.created_at, m.slice_index)


def test_coco_round_trip_into_a_fresh_workspace_gives_the_same_marks(tmp_path):
    with _workspace(tmp_path / "a", tmp_path / "clinic") as ws:
        _draw(ws)
        counts = export_coco(ws, tmp_path / "marks.json")
        before = sorted(_key(m) for m in ws.all_marks())
    assert counts["annotations"] == 5
    doc = json.loads((tmp_path / "marks.json").read_text())
    assert {c["name"] for c in doc["categories"]} >= {"microaneurysm", "subretinal_fluid"}
    names = {im["file_name"] for im in doc["images"]}
    assert names == {"eye1.png", "sub/eye2.png", "scan.dcm"}
    point = next(a for a in doc["annotations"] if a["attributes"]["kind"] == "point")
    assert point["keypoints"] == [12.25, 30.5, 2] and point["bbox"] == [12.25, 30.5, 0, 0]
    box = next(
        a for a in doc["annotations"] if a["attributes"]["kind"] == "box" and a["image_id"] == 1
    )
    assert box["bbox"] == [40, 10, 40, 40] and box["area"] == 1600 and box["iscrowd"] == 0
    assert box["segmentation"] == [[40, 10, 80, 10, 80, 50, 40, 50]]
    oct_image = next(im for im in doc["images"] if im["slice_index"] == 1)
    assert oct_image["sha256"] == sha("scan") and oct_image["width"] == 64
    # another workspace, the same files elsewhere: matched by sha256
    with _workspace(tmp_path / "b", tmp_path / "elsewhere") as fresh:
        report = import_coco(fresh, tmp_path / "marks.json", "importer")
        assert report.added == 5 and report.duplicates == 0 and not report.refused
        assert sorted(_key(m) for m in fresh.all_marks()) == before
        again = import_coco(fresh, tmp_path / "marks.json", "importer")
        assert again.added == 0 and again.duplicates == 5
        assert len(fresh.all_marks()) == 5
        assert fresh.audit_log()[-1]["actor"] == "importer"


def test_import_matches_by_file_name_and_refuses_bad_annotations_one_by_one(tmp_path):
    doc = {
        "images": [
            {"id": 7, "file_name": "x/eye1.png", "width": 200, "height": 100},
            {"id": 8, "file_name": "unknown.png", "width": 10, "height": 10},
        ],
        "categories": [
            {"id": 1, "name": "Haemorrhage"},
            {"id": 2, "name": "tumour"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 500, 1, 1, 50]]},
            {"id": 3, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 2, 2]]},
            {"id": 4, "image_id": 7, "category_id": 2, "bbox": [1, 1, 2, 2]},
            {"id": 5, "image_id": 8, "category_id": 1, "bbox": [1, 1, 2, 2]},
            {
                "id": 6,
                "image_id": 7,
                "category_id": 1,
                "keypoints": [50, 50, 2],
                "segmentation": [],
            },
        ],
    }
    (tmp_path / "in.json").write_text(json.dumps(doc))
    with _workspace(tmp_path / "w", tmp_path / "clinic") as ws:
        report = import_coco(ws, tmp_path / "in.json", "ana")
        assert report.added == 2
        assert report.unknown_categories == {"tumour": 1}
        assert report.unmatched_images == ["unknown.png"]
        assert len(report.refused) == 2
        assert "annotation 2 on eye1.png" in report.refused[0] and "outside" in report.refused[0]
        assert "at least 3 points" in report.refused[1]
        kinds = sorted((m.kind, m.reviewer) for m in ws.marks(1))
        assert kinds == [("box", "ana"), ("point", "ana")]
        text = "\n".join(report.lines())
        assert "tumour (1)" in text and "unknown.png" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "in.json is not valid JSON"), ("[1, 2]", "in.json is not COCO JSON")],
)
def test_a_bad_coco_file_is_one_clear_line_naming_it(tmp_path, content, message):
    (tmp_path / "in.json").write_text(content)
    with _workspace(tmp_path / "w", tmp_path / "clinic") as ws:
        with pytest.raises(CocoError, match=message):
            import_coco(ws, tmp_path / "in.json", "ana")


def test_masks_are_one_png_per_image_and_lesion_and_never_beside_the_sources(tmp_path):
    clinic = tmp_path / "clinic"
    with _workspace(tmp_path / "w", clinic) as ws:
        _draw(ws)
        n = export_masks(ws, tmp_path / "masks")
        files = sorted(p.name for p in (tmp_path / "masks").iterdir())
        assert n == len(files) == 8  # per item: all + one per lesion type present
        assert "eye1__all.png" in files and "eye1__haemorrhage.png" in files
        assert "scan__s001__subretinal_fluid.png" in files
        assert "eye1__drusen.png" not in files  # deleted
        mask = np.asarray(Image.open(tmp_path / "masks" / "eye1__haemorrhage.png"))
        assert mask.shape == (100, 200) and mask[30, 60] == 255 and mask[30, 20] == 0
        everything = np.asarray(Image.open(tmp_path / "masks" / "eye1__all.png"))
        assert everything[30, 12] == 255 and everything[30, 60] == 255
        with pytest.raises(CocoError, match="source images"):
            export_masks(ws, clinic)


def test_an_image_stored_without_its_size_takes_it_from_the_file(tmp_path):
    from engine.coco import marked_images

    photo = tmp_path / "clinic" / "old.png"
    photo.parent.mkdir()
    Image.new("RGB", (40, 30), (90, 20, 10)).save(photo)
    with Workspace.open(tmp_path / "w") as ws:
        ws.set_scheme(preset("icdr"), "lead")
        image = ws.add_image(photo, sha("old"), 10)
        ws.add_mark(image, "drusen", "box", [(5, 5), (15, 10)], "ana")
        assert export_masks(ws, tmp_path / "masks") == 2
        doc = coco_document(ws)
    mask = np.asarray(Image.open(tmp_path / "masks" / "old__drusen.png"))
    assert mask.shape == (30, 40) and mask[7, 10] == 255
    assert (doc["images"][0]["width"], doc["images"][0]["height"]) == (40, 30)
    (marked,), problems = marked_images(tmp_path / "w")
    assert (marked.width, marked.height) == (40, 30) and not problems
