"""The modality is taken from the data, contradictions are refused, evaluate/screen warn alike."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from engine.cli import main
from engine.data import DatasetError, load_csv_dataset, load_folder_dataset
from engine.modality import evidence_from_images, mismatch_warning, resolve_modality
from tests.conftest import TINY_ARCH


@pytest.fixture(scope="module")
def synth_oct(tmp_path_factory) -> Path:
    from engine.synth import synthesize

    out = tmp_path_factory.mktemp("synth_oct")
    synthesize(out, "oct", n=16, seed=4, size=96, classes=("NORMAL", "DME"), difficulty=0.2)
    return out


def _csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _mixed_csv(tmp_path: Path, fundus: Path, oct_: Path) -> Path:
    rows = [
        {"file": str(p), "label": p.parent.name, "modality": "fundus"}
        for p in sorted(fundus.glob("*/*.png"))[::4]
    ] + [
        {"file": str(p), "label": p.parent.name, "modality": "OCT"}
        for p in sorted(oct_.glob("*/*.png"))[::2]
    ]
    return _csv(tmp_path / "mixed.csv", rows)


def test_images_tell_fundus_from_oct(synth_fundus, synth_oct):
    fundus = evidence_from_images(sorted(synth_fundus.glob("*/*.png")))
    oct_ = evidence_from_images(sorted(synth_oct.glob("*/*.png")))
    assert fundus.modality == "fundus" and oct_.modality == "oct"
    warn: list[str] = []
    assert resolve_modality(None, load_folder_dataset(synth_oct), warn)[0] == "oct"
    assert resolve_modality(None, load_folder_dataset(synth_fundus), warn)[0] == "fundus"
    assert warn == []


def test_the_csv_modality_column_decides_and_a_contradiction_is_refused(
    tmp_path, synth_fundus, synth_oct
):
    csv_path = _mixed_csv(tmp_path, synth_fundus, synth_oct)
    # the sheet names the synthetic sets by absolute path, outside tmp_path: allowed here
    ds = load_csv_dataset(
        tmp_path, csv_path, label_cols=["label"], filters=["modality=OCT"], allow_outside=True
    )
    assert resolve_modality(None, ds, [])[0] == "oct"
    with pytest.raises(DatasetError, match="contradicts the CSV's modality column"):
        resolve_modality("fundus", ds, [])


def test_rows_of_both_kinds_are_refused(tmp_path, synth_fundus, synth_oct):
    csv_path = _mixed_csv(tmp_path, synth_fundus, synth_oct)
    ds = load_csv_dataset(
        tmp_path, csv_path, label_cols=["label"], task="multiclass", allow_outside=True
    )
    with pytest.raises(DatasetError, match="mix image kinds"):
        resolve_modality(None, ds, [])


def test_a_declared_modality_the_images_contradict_is_warned_about(synth_oct):
    warn: list[str] = []
    got, how = resolve_modality("fundus", load_folder_dataset(synth_oct), warn)
    assert got == "fundus" and how == "--modality"
    assert len(warn) == 1 and "look like oct" in warn[0]


def test_training_on_oct_rows_without_modality_makes_an_oct_model(capsys, tmp_path, synth_oct):
    out = tmp_path / "oct.safetensors"
    code = main(
        [
            "train", str(synth_oct), "--arch", TINY_ARCH, "--img-size", "32", "--epochs", "1",
            "--allow-collapsed", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    text = capsys.readouterr()[0]
    assert code == 0 and "modality: oct (from the images" in text
    from engine.modelfile import read_spec

    spec = read_spec(out)
    assert spec.modality == "oct" and spec.preprocessing.grayscale
    assert not spec.preprocessing.fov_crop


def test_evaluate_and_screen_warn_alike_when_the_images_are_of_the_other_kind(
    capsys, tmp_path, tiny_model, synth_oct
):
    # tiny_model is a fundus model; give it OCT scans laid out with its own label names
    data = tmp_path / "oct-as-fundus"
    for src, label in (("NORMAL", "normal"), ("DME", "diabetic_retinopathy")):
        shutil.copytree(synth_oct / src, data / label)
    assert mismatch_warning("fundus", sorted(data.glob("*/*.png"))) is not None
    assert main(["evaluate", str(tiny_model), str(data), "--quiet"]) == 0
    err = capsys.readouterr()[1]
    assert "this is a fundus model but the images look like oct" in err
    code = main(
        ["screen", str(data), "--model", str(tiny_model), "--out", str(tmp_path / "r.csv"),
         "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr()[1]
    assert code == 0 and "this is a fundus model but the images look like oct" in err
    assert mismatch_warning("fundus", sorted((tmp_path / "none").glob("*"))) is None
