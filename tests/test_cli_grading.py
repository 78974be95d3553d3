"""``eyetriage scheme``, ``grade`` and ``marks``, and what the review export gains from them."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from engine.cli import main
from engine.store import Workspace


def _workspace(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "ws"
    image = tmp_path / "clinic" / "eye.png"
    with Workspace.open(folder) as ws:
        ws.add_image(image, hashlib.sha256(b"eye").hexdigest(), 10, 200, 100, "fundus")
        ws.add_image(tmp_path / "clinic" / "=cmd.png", hashlib.sha256(b"x").hexdigest(), 10, 50, 50)
    return folder, image


def test_scheme_preset_grade_marks_and_export_from_the_shell(tmp_path, capsys):
    ws, image = _workspace(tmp_path)
    assert main(["scheme", str(ws), "--preset", "icdr", "--show"]) == 0
    out = capsys.readouterr().out
    assert "scheme 'icdr' is now" in out and "R2 moderate NPDR (referable)" in out
    assert "[A]" in out and "microaneurysm" in out
    argv = ["grade", str(ws), str(image), "--question", "dr", "--answer", "R3"]
    assert main([*argv, "--reviewer", "ana"]) == 0
    assert "now: dr=R3" in capsys.readouterr().out
    assert (
        main(
            [
                "grade",
                str(ws),
                str(image),
                "--question",
                "maculopathy",
                "--answer",
                "M1",
                "--reviewer",
                "ana",
            ]
        )
        == 0
    )
    capsys.readouterr()
    with Workspace.open(ws) as w:
        w.add_mark(1, "haemorrhage", "box", [(10, 10), (30, 30)], "ana")
        w.add_mark(1, "microaneurysm", "point", [(50, 50)], "ana")
    assert main(["export", str(ws), "--out", str(tmp_path / "e.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "e.csv").open(encoding="utf-8")))
    eye = next(r for r in rows if r["path"].endswith("eye.png"))
    assert eye["grade_dr"] == "R3" and eye["grade_maculopathy"] == "M1"
    assert eye["grade_quality"] == "" and eye["marks"] == "2"
    other = next(r for r in rows if r["path"].endswith("cmd.png"))
    assert other["marks"] == "0"
    assert main(["marks", str(ws), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "eye.png: haemorrhage box (10,10) (30,30) by ana" in listing and "2 marks" in listing
    coco = tmp_path / "m.json"
    assert main(["marks", str(ws), "--export-coco", str(coco)]) == 0
    assert len(json.loads(coco.read_text())["annotations"]) == 2
    assert main(["marks", str(ws), "--import-coco", str(coco), "--reviewer", "ben"]) == 0
    assert "added 0 marks; 2 already present" in capsys.readouterr().out
    assert main(["marks", str(ws), "--export-masks", str(tmp_path / "masks")]) == 0
    assert (tmp_path / "masks" / "eye__haemorrhage.png").is_file()


def test_grade_refuses_a_value_the_scheme_lacks_with_one_line(tmp_path, capsys):
    ws, image = _workspace(tmp_path)
    main(["scheme", str(ws), "--preset", "icdr"])
    capsys.readouterr()
    code = main(
        ["grade", str(ws), str(image), "--question", "dr", "--answer", "R7", "--reviewer", "ana"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "'R7' is not an answer to 'dr'" in err
    code = main(
        [
            "grade",
            str(ws),
            str(image),
            "--question",
            "dr",
            "--answer",
            "R1",
            "--answer",
            "R2",
            "--reviewer",
            "ana",
        ]
    )
    assert code == 1 and "takes one answer" in capsys.readouterr().err


def test_scheme_from_a_file_and_bad_files_are_named(tmp_path, capsys):
    ws, _ = _workspace(tmp_path)
    good = {
        "name": "amd",
        "questions": [
            {
                "key": "amd",
                "title": "AMD stage",
                "options": [
                    {"value": "none", "hotkey": "1"},
                    {"value": "early", "hotkey": "2", "disease": True},
                ],
            }
        ],
        "lesion_types": [{"key": "drusen", "label": "Drusen", "hotkey": "D", "colour": "#e69f00"}],
    }
    (tmp_path / "amd.json").write_text(json.dumps(good))
    assert main(["scheme", str(ws), "--file", str(tmp_path / "amd.json"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert shown["name"] == "amd" and shown["questions"][0]["options"][1]["disease"] is True
    bad = dict(good, lesion_types=[{"key": "drusen", "hotkey": "U", "colour": "#e69f00"}])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["scheme", str(ws), "--file", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and "review page's key to ungradable" in err
    (tmp_path / "broken.json").write_text("{")
    assert main(["scheme", str(ws), "--file", str(tmp_path / "broken.json")]) == 1
    assert "broken.json: the scheme is not valid JSON" in capsys.readouterr().err
    with Workspace.open(ws) as w:
        assert w.scheme().name == "amd"  # the bad files changed nothing


def test_marks_import_without_reviewer_and_a_bad_coco_file_are_one_line(tmp_path, capsys):
    ws, _ = _workspace(tmp_path)
    (tmp_path / "in.json").write_text("nope")
    assert main(["marks", str(ws), "--import-coco", str(tmp_path / "in.json")]) == 1
    assert "needs --reviewer" in capsys.readouterr().err
    argv = ["marks", str(ws), "--import-coco", str(tmp_path / "in.json"), "--reviewer", "a"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "in.json is not valid JSON" in err[0]
