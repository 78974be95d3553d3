"""The quality gate end to end through ``screen`` with the bundled demo model: a blurred
photograph is never auto-cleared, a black picture is ungradable (not out of distribution),
and OCT scans get their own checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from benchmarks.calibrate_quality import _oct_shift, _oct_weak
from engine.demo import demo_model_path
from engine.images import discover_images
from engine.models import load_model
from engine.screen import ScreenSettings, screen_all
from engine.synth import render_oct

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
REAL_PHOTO = "fullres-fundus/0001_OD_f_1.jpg"  # a 1000 px clinical fundus photograph


@pytest.fixture(scope="module")
def demo_model():
    p = demo_model_path()
    if p is None:
        pytest.skip("demo model not built (make demo-model)")
    return load_model(p, device="cpu")


def _screen(folder: Path, lm) -> dict:  # noqa: ANN001
    res = screen_all(discover_images(folder), [lm], ScreenSettings())
    return {Path(r.path).name: r for r in res}


@pytest.mark.realdata
def test_blurred_real_photograph_is_never_auto_cleared(tmp_path, demo_model):
    src = DATA / REAL_PHOTO
    if not src.is_file():
        pytest.skip(f"real image not available: {REAL_PHOTO}")
    photo = Image.open(src).convert("RGB")
    photo.save(tmp_path / "sharp.jpg", quality=95)
    # Gaussian blur of 6 to 40 px on the 1000 px photograph (3 to 20 px at 512 px)
    for radius in (6, 10, 20, 40):
        blurred = photo.filter(ImageFilter.GaussianBlur(radius))
        blurred.save(tmp_path / f"blur{radius:02d}.jpg", quality=95)
    res = _screen(tmp_path, demo_model)
    assert res["sharp.jpg"].quality_ok, res["sharp.jpg"].quality["reasons"]
    for name, r in res.items():
        if name.startswith("blur"):
            assert r.triage == "ungradable", (name, r.triage, r.triage_reason)
            assert "out of focus" in r.triage_reason or "hazy" in r.triage_reason, name


def test_black_picture_is_ungradable_not_out_of_distribution(tmp_path, demo_model):
    Image.new("RGB", (512, 512)).save(tmp_path / "black.png")
    Image.new("RGB", (512, 512), (3, 2, 2)).save(tmp_path / "nearly-black.jpg")
    for r in _screen(tmp_path, demo_model).values():
        assert r.triage == "ungradable", (r.path, r.triage, r.triage_reason)
        assert r.triage_reason.startswith("image is black or blank")


def test_synthetic_fundus_and_its_blurred_copies(tmp_path, demo_model):
    from engine.synth import synthesize

    synthesize(tmp_path / "src", "fundus", n=4, seed=7, size=512, classes=("normal",))
    folder = tmp_path / "in"
    folder.mkdir()
    for i, p in enumerate(sorted((tmp_path / "src").rglob("*.png"))):
        Image.open(p).save(folder / f"sharp{i}.png")
        Image.open(p).filter(ImageFilter.GaussianBlur(6)).save(folder / f"blurred{i}.png")
    res = _screen(folder, demo_model)
    for name, r in res.items():
        if name.startswith("sharp"):
            assert r.quality_ok, (name, r.quality["reasons"])
        else:
            assert r.triage == "ungradable" and "out of focus" in r.triage_reason, name


def _oct_model(tmp_path: Path):  # noqa: ANN202
    from engine.modelfile import ModelSpec, Preprocessing, save_model_file
    from engine.models import create_network

    spec = ModelSpec(
        arch="resnet10t",
        task="binary",
        labels=["normal", "dme"],
        modality="oct",
        input_size=128,
        preprocessing=Preprocessing.for_modality("oct"),
    )
    path = tmp_path / "oct.safetensors"
    save_model_file(path, spec, create_network(spec).state_dict())
    return load_model(path, device="cpu")


def test_oct_scans_are_checked_by_the_oct_gate(tmp_path):
    lm = _oct_model(tmp_path)
    folder = tmp_path / "scans"
    folder.mkdir()
    img, _ = render_oct(np.random.default_rng(2), "NORMAL", 512)
    scan = Image.fromarray(img)
    rng = np.random.default_rng(0)
    scan.save(folder / "good.png")
    _oct_weak(scan, rng).save(folder / "weak.png")
    _oct_shift(scan, rng, "mirror").save(folder / "mirror.png")
    res = _screen(folder, lm)
    assert res["good.png"].quality_ok, res["good.png"].quality
    assert res["weak.png"].triage == "ungradable"
    assert "weak OCT signal" in res["weak.png"].triage_reason
    assert res["mirror.png"].triage == "ungradable"
    assert "mirror artefact" in res["mirror.png"].triage_reason
