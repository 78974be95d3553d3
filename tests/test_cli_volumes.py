"""The command line on clinic files: DICOM photographs and OCT volumes next to JPEGs."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import dicom_synth as W
from engine.cli import main
from engine.volumes import release_open_files

from .conftest import TINY_ARCH


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def bscans(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.arange(48)[None, :, None]
    band = np.exp(-(((y - 20 - np.arange(n)[:, None, None] % 4) / 3.0) ** 2))
    return np.clip((band + rng.random((n, 48, 64)) * 0.2) * 200, 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _close_volumes():
    yield
    release_open_files()


@pytest.fixture
def mixed_clinic(tmp_path, synth_fundus) -> Path:
    """JPEG/PNG photographs, a DICOM photograph, a DICOM OCT volume, a TIFF volume, junk."""
    folder = tmp_path / "clinic"
    folder.mkdir()
    pngs = sorted((synth_fundus / "normal").glob("*.png"))[:2]
    for p in pngs:
        shutil.copy(p, folder / p.name)
    rgb = np.asarray(Image.open(pngs[0]).convert("RGB"))
    W.write_photograph(
        folder / "IM0001", rgb, patient_id="1221", laterality="R", compression="jpeg"
    )
    W.write_volume(folder / "0000_OS_oct.dcm", bscans(12), patient_id="1221", laterality="L")
    pages = [Image.fromarray(f) for f in bscans(5, seed=3)]
    pages[0].save(folder / "scan.tif", save_all=True, append_images=pages[1:])
    W.write_with_transfer_syntax(folder / "video.dcm", "1.2.840.10008.1.2.4.102")
    return folder


def test_screen_csv_has_one_row_per_item_and_lists_slices_when_asked(
    capsys, tmp_path, mixed_clinic, tiny_model
):
    out = tmp_path / "results.csv"
    code, stdout, _ = run(
        capsys, "screen", mixed_clinic, "--model", tiny_model, "--out", out, "--slices"
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    items = [r for r in rows if r["kind"] != "slice"]
    assert len(items) == 6  # two PNGs, IM0001, the DICOM volume, the TIFF volume, video.dcm
    by_name = {Path(r["path"]).name: r for r in items}
    vol = by_name["0000_OS_oct.dcm"]
    assert vol["kind"] == "volume" and vol["slices"] == "12"
    assert 1 <= int(vol["key_slice"]) <= 12
    # the file's patient and eye win over the name's (0000, OS)
    assert (vol["patient"], vol["eye"], vol["date"]) == ("1221", "left", "2024-05-02")
    photo = by_name["IM0001"]
    assert photo["kind"] == "image" and (photo["patient"], photo["eye"]) == ("1221", "right")
    assert not photo["error"]
    assert by_name["scan.tif"]["kind"] == "volume" and by_name["scan.tif"]["slices"] == "5"
    video = by_name["video.dcm"]
    assert video["triage"] == "error" and "MPEG-4" in video["error"]
    vol_slices = [r for r in rows if r["kind"] == "slice" and r["path"].endswith("0000_OS_oct.dcm")]
    assert [int(r["slice"]) for r in vol_slices] == list(range(1, 13))
    assert all(r["patient"] == "1221" for r in vol_slices)
    key = vol_slices[int(vol["key_slice"]) - 1]
    assert key["p_normal"] == vol["p_normal"]
    assert "patient_name" not in rows[0]
    assert "2 volumes" in stdout


def test_patient_names_are_kept_only_with_the_flag(capsys, tmp_path, mixed_clinic, tiny_model):
    out = tmp_path / "named.csv"
    code, _, _ = run(
        capsys, "screen", mixed_clinic, "--model", tiny_model, "--out", out, "--patient-names"
    )
    assert code == 0
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert rows["IM0001"]["patient_name"] == "Doe, Jane"


def test_screen_into_a_workspace_stores_volumes_slices_and_what_the_files_say(
    capsys, tmp_path, mixed_clinic, tiny_model
):
    from engine.store import Workspace

    folder_volume = mixed_clinic / "visit"
    folder_volume.mkdir()
    (folder_volume / "volume.json").write_text('{"patient": "77", "eye": "OD", "date": "20240601"}')
    for i, frame in enumerate(bscans(4, seed=5), start=1):
        Image.fromarray(frame).save(folder_volume / f"b{i}.png")
    ws_dir = tmp_path / "ws"
    code, stdout, stderr = run(
        capsys, "screen", mixed_clinic, "--model", tiny_model, "--workspace", ws_dir
    )
    assert code == 0, stderr
    assert "3 volumes" in stdout
    with Workspace.open(ws_dir, create=False) as ws:
        items = {Path(i["path"]).name: i for i in ws.images()}
        records = {Path(r["path"]).name: r for r in ws.latest_predictions()}
        assert len(items) == 7  # two PNGs, IM0001, three volumes, video.dcm
        vol = items["0000_OS_oct.dcm"]
        assert (vol["kind"], vol["n_slices"]) == ("volume", 12)
        # the file's patient, eye and date win over the name's (0000, OS)
        assert (vol["patient"], vol["eye"], vol["acquired"]) == ("1221", "left", "2024-05-02")
        assert vol["facts"]["facts_from"] == {"patient": "dicom", "eye": "dicom", "date": "dicom"}
        assert vol["facts"]["manufacturer"] == "EyeTriage synthetic"
        assert vol["patient_name"] is None and "patient_name" not in vol["facts"]
        record = records["0000_OS_oct.dcm"]
        slices = ws.slice_predictions(record["id"])
        assert [s["slice"] for s in slices] == list(range(1, 13))
        key = slices[record["key_slice"] - 1]
        assert key["probabilities"] == record["probabilities"]
        # the key slice is the one most likely to show a finding
        assert key["finding"] == max(s["finding"] for s in slices)
        assert record["triage"] == "out-of-distribution"  # B-scans shown to a fundus model
        assert re.search(r"\b\d+ of 12 slices", record["triage_reason"])  # the rule, in words
        visit = items["visit"]
        assert (visit["kind"], visit["n_slices"], visit["patient"], visit["eye"]) == (
            "volume",
            4,
            "77",
            "right",
        )
        assert visit["acquired"] == "2024-06-01"
        assert visit["facts"]["facts_from"]["patient"] == "volume.json"
        assert len(ws.slice_predictions(records["visit"]["id"])) == 4
        assert (items["scan.tif"]["kind"], items["scan.tif"]["n_slices"]) == ("volume", 5)
        photo = items["IM0001"]
        assert (photo["kind"], photo["patient"], photo["eye"]) == ("image", "1221", "right")
        assert ws.slice_predictions(records["IM0001"]["id"]) == []
        assert records["video.dcm"]["triage"] == "error"
        assert "MPEG-4" in records["video.dcm"]["error"]
    # the same folder again: every item, volumes included, is already done
    code, stdout, _ = run(
        capsys, "screen", mixed_clinic, "--model", tiny_model, "--workspace", ws_dir
    )
    assert code == 0
    assert "6 images already screened" in stdout  # video.dcm failed, so it is tried again


def test_a_workspace_keeps_patient_names_only_with_the_flag(
    capsys, tmp_path, mixed_clinic, tiny_model
):
    from engine.store import Workspace

    for flag, expected in (((), None), (("--patient-names",), "Doe, Jane")):
        ws_dir = tmp_path / f"ws{len(flag)}"
        code, _, _ = run(
            capsys, "screen", mixed_clinic, "--model", tiny_model, "--workspace", ws_dir, *flag
        )
        assert code == 0
        with Workspace.open(ws_dir, create=False) as ws:
            names = {Path(i["path"]).name: i["patient_name"] for i in ws.images()}
        assert names["IM0001"] == names["0000_OS_oct.dcm"] == expected
        assert names["scan.tif"] is None  # no name in a TIFF


def test_explain_a_volume_writes_the_key_slice_or_every_slice(
    capsys, tmp_path, mixed_clinic, tiny_model
):
    vol = mixed_clinic / "0000_OS_oct.dcm"
    code, out, _ = run(capsys, "explain", vol, "--model", tiny_model, "--out", tmp_path / "key")
    assert code == 0
    written = sorted(p.name for p in (tmp_path / "key").glob("*.png"))
    assert len(written) == 1 and written[0].startswith("0000_OS_oct_slice0")
    assert "slice" in out
    code, _, _ = run(
        capsys, "explain", vol, "--model", tiny_model, "--out", tmp_path / "all", "--slice", "all"
    )
    assert code == 0
    assert len(list((tmp_path / "all").glob("*.png"))) == 12
    code, _, _ = run(
        capsys, "explain", vol, "--model", tiny_model, "--out", tmp_path / "one", "--slice", "3"
    )
    assert [p.name for p in (tmp_path / "one").glob("*.png")] == [
        "0000_OS_oct_slice003_gradcam.png"
    ]


def _volume_set(root: Path) -> Path:
    """Class folders holding a few B-scan images and one labelled volume each."""
    for k, cls in enumerate(("DME", "NORMAL")):
        (root / cls).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(bscans(1, seed=10 * k + j)[0]).save(root / cls / f"{k}{j}_b.png")
        W.write_volume(root / cls / f"vol{k}.dcm", bscans(6, seed=k), patient_id=f"V{k}")
    return root


def test_train_and_evaluate_with_volume_labels(capsys, tmp_path):
    data = _volume_set(tmp_path / "data")
    model = tmp_path / "m.safetensors"
    common = ["--modality", "oct", "--img-size", "32", "--epochs", "1", "--batch-size", "8"]
    code, _, err = run(capsys, "train", data, "--arch", TINY_ARCH, "--out", model, *common)
    assert code == 1 and "--volume-labels volume" in err
    code, out, _ = run(
        capsys,
        "train",
        data,
        "--arch",
        TINY_ARCH,
        "--out",
        model,
        "--volume-labels",
        "volume",
        "--split",
        "0.5,0.25,0.25",
        "--quiet",
        "--allow-collapsed",  # a dozen B-scans: the volume labels are the point, not the model
        *common,
    )
    assert code == 0 and model.is_file()
    assert "on 18 images" in out  # 6 images + 2 volumes of 6 B-scans
    code, out, _ = run(capsys, "evaluate", model, data, "--volume-labels", "volume", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["n"] == 8 and result["n_volumes"] == 2  # 6 images + 2 volumes
    code, out, _ = run(capsys, "evaluate", model, data, "--volume-labels", "volume")
    assert "8 items (volumes scored by their most suspicious B-scan)" in out
