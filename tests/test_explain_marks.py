"""``explain-eval --marks``: attribution measured against graders' marks, not synthetic masks.

The graders here are simulated from the synthetic set's known finding masks: point marks
placed over the planted lesions, and the same marks mirrored left-right (same number, same
size, elsewhere on the retina). A map that follows the lesions must score the first above
the second.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from engine.cli import main
from engine.coco import export_coco
from engine.schemes import preset
from engine.store import Workspace, sha256_file


def _lesion_points(mask: np.ndarray, step: int = 3) -> list[tuple[float, float]]:
    """Point marks on the finding, one per ``step`` × ``step`` cell it touches."""
    ys, xs = np.nonzero(mask)
    cells = {
        (int(y) // step, int(x) // step): (float(x) + 0.5, float(y) + 0.5)
        for y, x in zip(ys, xs, strict=True)
    }
    return list(cells.values())


def _marked_workspace(folder: Path, synth: Path, mirrored: bool, limit: int = 8) -> Path:
    rows = list(csv.DictReader((synth / "labels.csv").open(encoding="utf-8")))
    rows = [r for r in rows if r["mask"]][:limit]
    assert rows, "the synthetic set has images with finding masks"
    with Workspace.open(folder) as ws:
        ws.set_scheme(preset("icdr"), "lead")
        for r in rows:
            path = synth / r["file"]
            with Image.open(path) as im:
                width, height = im.size
            image_id = ws.add_image(path, sha256_file(path), 1, width, height, "fundus")
            mask = np.asarray(Image.open(synth / r["mask"]).convert("L")) > 127
            points = _lesion_points(mask)
            if mirrored:
                points = [(width - x, y) for x, y in points]
            ws.add_marks(
                [
                    {"image_id": image_id, "lesion": "haemorrhage", "kind": "point", "points": [p]}
                    for p in points
                ],
                "grader",
            )
    return folder


def _eval(capsys, model: Path, source: Path, *extra: str) -> dict:
    argv = ["explain-eval", str(model), "--marks", str(source), "--json", *extra]
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_marks_over_the_finding_score_above_marks_placed_elsewhere(
    capsys, tmp_path, synth_fundus, tiny_model
):
    over = _marked_workspace(tmp_path / "over", synth_fundus, mirrored=False)
    elsewhere = _marked_workspace(tmp_path / "elsewhere", synth_fundus, mirrored=True)
    good = _eval(capsys, tiny_model, over, "--steps", "8")
    bad = _eval(capsys, tiny_model, elsewhere, "--steps", "8")
    assert good["n"] == bad["n"] == 8
    assert set(good["methods"]) == {"gradcam", "ig"}
    for method in ("gradcam", "ig"):
        g = good["methods"][method]
        assert g["n"] == 8
        lo, hi = g["pointing_game_ci95"]
        assert 0 <= lo <= g["pointing_game"] <= hi <= 1
        mlo, mhi = g["mass_in_mask_ci95"]
        assert mlo <= g["mass_in_mask"] <= mhi
    # Integrated Gradients of the tiny model does follow the planted lesions (about 0.6 of
    # its mass on the marks, 0.2 on the mirrored ones); its Grad-CAM, on a 2-epoch model
    # with a coarse last layer, does not, so only IG's gap can show the measure works.
    ig_good, ig_bad = good["methods"]["ig"], bad["methods"]["ig"]
    assert ig_good["mass_in_mask"] > ig_bad["mass_in_mask"] + 0.1, (ig_good, ig_bad)
    # the marks were at the planted lesions: more mass than their area alone would give
    assert ig_good["mass_in_mask"] > good["mean_mask_area"]


def test_a_coco_file_gives_the_same_measure_as_its_workspace(
    capsys, tmp_path, synth_fundus, tiny_model
):
    over = _marked_workspace(tmp_path / "over", synth_fundus, mirrored=False, limit=3)
    with Workspace.open(over) as ws:
        export_coco(ws, tmp_path / "marks.json")
    from_ws = _eval(capsys, tiny_model, over, "--method", "gradcam")
    from_coco = _eval(capsys, tiny_model, tmp_path / "marks.json", "--method", "gradcam")
    assert from_ws["n"] == from_coco["n"] == 3
    assert from_ws["methods"] == {
        "gradcam": {
            **from_coco["methods"]["gradcam"],
            "seconds_per_image": from_ws["methods"]["gradcam"]["seconds_per_image"],
        }
    }


def test_marks_source_without_marks_is_one_clear_line(capsys, tmp_path, tiny_model):
    with Workspace.open(tmp_path / "empty"):
        pass
    assert main(["explain-eval", str(tiny_model), "--marks", str(tmp_path / "empty")]) == 1
    assert "no image with a mark" in capsys.readouterr().out
