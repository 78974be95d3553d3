"""Behaviour of the synthetic retinal image generator (engine.synth)."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from sklearn.metrics import roc_auc_score

from engine.synth import (
    FUNDUS_CLASSES,
    OCT_CLASSES,
    SynthItem,
    render_fundus,
    render_oct,
    synthesize,
)

NAME = re.compile(r"^(?P<patient>\d{4})_(?P<eye>OD|OI)_(?P<kind>[fo])_(?P<k>\d+)\.png$")


def _read_csv(root: Path) -> list[dict[str, str]]:
    with (root / "labels.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("modality", ["fundus", "oct"])
def test_same_seed_writes_byte_identical_sets(tmp_path: Path, modality: str) -> None:
    a = synthesize(tmp_path / "a", modality, n=6, seed=3, size=96)
    b = synthesize(tmp_path / "b", modality, n=6, seed=3, size=96)
    assert a == b
    files_a, files_b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert files_a.keys() == files_b.keys()
    assert files_a == files_b


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", n=4, seed=1, size=96)
    synthesize(tmp_path / "b", n=4, seed=2, size=96)
    images_a = {v for k, v in _all_files(tmp_path / "a").items() if k.endswith(".png")}
    images_b = {v for k, v in _all_files(tmp_path / "b").items() if k.endswith(".png")}
    assert images_a.isdisjoint(images_b)


def test_render_is_reproducible_from_the_generator_state() -> None:
    one = render_fundus(np.random.default_rng(7), "glaucoma", 96)
    two = render_fundus(np.random.default_rng(7), "glaucoma", 96)
    other = render_fundus(np.random.default_rng(8), "glaucoma", 96)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
    assert not np.array_equal(one[0], other[0])


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("modality", "classes", "kind", "shape"),
    [
        ("fundus", FUNDUS_CLASSES, "f", (96, 96, 3)),
        ("oct", OCT_CLASSES, "o", (38, 96, 3)),
    ],
)
def test_folder_layout_and_labels_csv_match_the_files(
    tmp_path: Path, modality: str, classes: tuple[str, ...], kind: str, shape: tuple[int, ...]
) -> None:
    items = synthesize(tmp_path, modality, n=14, seed=5, size=96)
    rows = _read_csv(tmp_path)
    assert list(rows[0]) == ["file", "label", "patient", "eye", "mask"]
    assert [
        SynthItem(r["file"], r["label"], r["mask"] or None, r["patient"], r["eye"]) for r in rows
    ] == items

    normal = classes[-1]
    listed_masks = set()
    for item in items:
        folder, name = item.file.split("/")
        assert folder == item.label and item.label in classes
        match = NAME.match(name)
        assert match, name
        assert match["patient"] == item.patient and match["kind"] == kind
        assert item.eye == {"OD": "right", "OI": "left"}[match["eye"]]
        with Image.open(tmp_path / item.file) as image:
            assert image.mode == "RGB"
            assert np.asarray(image).shape == shape
        if item.label == normal:
            assert item.mask is None
        else:
            assert item.mask == f"_masks/{name}"
            with Image.open(tmp_path / item.mask) as mask:
                assert mask.size == (shape[1], shape[0])
                assert set(np.unique(np.asarray(mask.convert("L")))) <= {0, 255}
            listed_masks.add(item.mask)

    # Nothing on disk that labels.csv does not list, and no mask inside a class folder.
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png")}
    assert on_disk == {i.file for i in items} | listed_masks
    assert len({i.file for i in items}) == len(items)


def test_patients_have_one_or_two_images_of_a_single_label(tmp_path: Path) -> None:
    items = synthesize(tmp_path, "oct", n=40, seed=11, size=64)
    by_patient: dict[str, list[SynthItem]] = {}
    for item in items:
        by_patient.setdefault(item.patient, []).append(item)
    sizes = Counter(len(group) for group in by_patient.values())
    assert set(sizes) <= {1, 2}
    assert sizes[1] and sizes[2], "expected a mix of single-image and two-image patients"
    for group in by_patient.values():
        assert len({i.label for i in group}) == 1


def test_classes_are_balanced_and_a_subset_can_be_asked_for(tmp_path: Path) -> None:
    items = synthesize(tmp_path / "all", n=10, seed=2, size=64)
    counts = Counter(i.label for i in items)
    assert set(counts) == set(FUNDUS_CLASSES)
    assert max(counts.values()) - min(counts.values()) <= 1

    binary = ("diabetic_retinopathy", "normal")
    items = synthesize(tmp_path / "bin", n=9, seed=2, size=64, classes=binary)
    counts = Counter(i.label for i in items)
    assert set(counts) == set(binary) and sorted(counts.values()) == [4, 5]
    assert sorted(p.name for p in (tmp_path / "bin").iterdir() if p.is_dir()) == [
        "_masks",
        *sorted(binary),
    ]


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("label", FUNDUS_CLASSES)
def test_fundus_masks_mark_findings_inside_the_field_of_view(label: str) -> None:
    for seed in range(4):
        image, mask = render_fundus(np.random.default_rng(seed), label, 128, difficulty=0.9)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert mask.shape == (128, 128) and mask.dtype == bool
        field = image.max(axis=2) > 0
        assert not field[0, 0] and field[64, 64], "black surround, lit centre"
        if label == "normal":
            assert not mask.any()
            continue
        assert mask.any()
        assert field[mask].all(), "finding pixels outside the field of view"
        if label == "cataract":
            assert mask.sum() == field.sum()
        else:
            assert mask.mean() < 0.2, "a local finding should cover a small area"


@pytest.mark.parametrize("label", OCT_CLASSES)
def test_oct_masks_mark_findings(label: str) -> None:
    for seed in range(4):
        image, mask = render_oct(np.random.default_rng(seed), label, 160, difficulty=0.9)
        assert image.shape == (64, 160, 3) and image.dtype == np.uint8
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        assert mask.shape == (64, 160)
        assert mask.any() == (label != "NORMAL")
        assert mask.mean() < 0.25


def test_optic_disc_sits_on_the_side_of_the_eye() -> None:
    # Brightest blue (the pale cup) is right of centre for a right eye, left for a left eye.
    for seed in range(3):
        for eye, sign in (("right", 1), ("left", -1)):
            image, _ = render_fundus(np.random.default_rng(seed), "normal", 128, eye=eye)
            col = np.unravel_index(np.argmax(image[..., 2]), image.shape[:2])[1]
            assert sign * (col - 64) > 15


def test_higher_difficulty_gives_subtler_findings() -> None:
    def mean_area(render, label: str, difficulty: float, size: int) -> float:
        return float(
            np.mean(
                [
                    render(np.random.default_rng(s), label, size, difficulty)[1].sum()
                    for s in range(6)
                ]
            )
        )

    for render, label, size in (
        (render_fundus, "diabetic_retinopathy", 160),
        (render_fundus, "glaucoma", 160),
        (render_oct, "CNV", 160),
        (render_oct, "DME", 160),
        (render_oct, "DRUSEN", 160),
    ):
        easy, hard = mean_area(render, label, 0.0, size), mean_area(render, label, 1.0, size)
        assert hard < easy, f"{label}: finding area {hard} at difficulty 1 vs {easy} at 0"


# --------------------------------------------------------------------------- learnability


def _cup_pixels(image: np.ndarray) -> float:
    """Pale (blue-rich) pixels: mostly the optic cup."""
    return float((image[..., 2] > 120).mean())


def _blur(image: np.ndarray) -> float:
    """Negative mean horizontal gradient inside the field: high for a hazy, blurred eye."""
    green = image[..., 1].astype(np.float32)
    field = image.max(axis=2) > 10
    inner = field[:, 1:] & field[:, :-1]
    return -float(np.abs(np.diff(green, axis=1))[inner].mean())


def _dark_spots(image: np.ndarray) -> float:
    """Pixels much darker than their neighbourhood in the green channel (red lesions)."""
    green = Image.fromarray(image[..., 1])
    local = np.asarray(green.filter(ImageFilter.BoxBlur(3)), np.float32)
    field = image.max(axis=2) > 10
    return float(((image[..., 1] - local < -8) & field).mean())


def _rpe_bumps(image: np.ndarray) -> float:
    """How far the brightest band (RPE) rises above a smooth curve fitted to it."""
    grey = np.asarray(Image.fromarray(image[..., 0]).filter(ImageFilter.BoxBlur(1)), np.float32)
    h, w = grey.shape
    rpe = grey[:, : w - w % 8].reshape(h, -1, 8).mean(axis=2).argmax(axis=0).astype(np.float32)
    rpe = np.median(np.stack([rpe, np.roll(rpe, 1), np.roll(rpe, -1)]), axis=0)[1:-1]
    x = np.arange(len(rpe))
    fit = np.polyval(np.polyfit(x, rpe, 2), x)
    return float(np.percentile(fit - rpe, 90))


def _dark_in_retina(image: np.ndarray) -> float:
    """Share of very dark pixels between the top of the retina and the RPE (fluid)."""
    grey = image[..., 0].astype(np.float32)
    h, w = grey.shape
    grey = grey[:, : w - w % 4].reshape(h, -1, 4).mean(axis=2)
    rpe = grey.argmax(axis=0)
    top = (grey > 0.45 * grey.max()).argmax(axis=0)
    rows = np.arange(h)[:, None]
    inside = (rows > top + 2) & (rows < rpe - 3)
    return float((inside & (grey < 0.12 * grey.max())).sum() / max(int(inside.sum()), 1))


@pytest.mark.parametrize(
    ("render", "label", "normal", "feature", "size"),
    [
        (render_fundus, "glaucoma", "normal", _cup_pixels, 160),
        (render_fundus, "cataract", "normal", _blur, 160),
        (render_fundus, "diabetic_retinopathy", "normal", _dark_spots, 192),
        (render_oct, "DME", "NORMAL", _dark_in_retina, 192),
        (render_oct, "DRUSEN", "NORMAL", _rpe_bumps, 256),
        (render_oct, "CNV", "NORMAL", _rpe_bumps, 256),
    ],
)
def test_classes_are_learnable_from_a_trivial_feature(render, label, normal, feature, size) -> None:
    n = 10
    sick = [feature(render(np.random.default_rng(s), label, size, 0.3)[0]) for s in range(n)]
    well = [feature(render(np.random.default_rng(100 + s), normal, size, 0.3)[0]) for s in range(n)]
    auc = roc_auc_score([1] * n + [0] * n, sick + well)
    assert auc >= 0.8, f"{label} vs {normal}: AUC {auc:.2f} of {feature.__name__}"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ("normal", "retinitis")}, "retinitis"),
        ({"classes": ("CNV",)}, "CNV"),
        ({"classes": ()}, "classes"),
        ({"classes": ("normal", "normal")}, "duplicate"),
        ({"classes": "normal"}, "classes"),
        ({"n": 0}, "n must be"),
        ({"modality": "xray"}, "xray"),
        ({"size": 8}, "size"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_synthesize_arguments_raise_clear_errors(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path / "out", **{"n": 2, "size": 64, **kwargs})
    assert not (tmp_path / "out").exists(), "nothing is written for bad arguments"


def test_invalid_render_arguments_raise_clear_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="'DME'"):
        render_fundus(rng, "DME")
    with pytest.raises(ValueError, match="'glaucoma'"):
        render_oct(rng, "glaucoma")
    with pytest.raises(ValueError, match="eye"):
        render_fundus(rng, "normal", 64, eye="middle")
    with pytest.raises(ValueError, match="difficulty"):
        render_oct(rng, "NORMAL", 64, difficulty=-0.1)


# --------------------------------------------------------------------------- real images

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _real_images(folder: str, count: int) -> list[np.ndarray]:
    paths = sorted((DATA / "mx-dme" / folder).glob("*.jpg"))[::25][:count]
    if not paths:
        pytest.skip(f"real images not available in {DATA / 'mx-dme' / folder}")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _red_green_ratio(image: np.ndarray) -> float:
    field = image[image.max(axis=2) > 20].astype(np.float32)
    return float(field[:, 0].mean() / max(field[:, 1].mean(), 1.0))


@pytest.mark.realdata
def test_synthetic_fundus_colour_is_in_the_range_of_real_photographs() -> None:
    real = [_red_green_ratio(im) for im in _real_images("fundus", 20)]
    synth = [
        _red_green_ratio(render_fundus(np.random.default_rng(s), "normal", 256)[0])
        for s in range(12)
    ]
    low, high = np.percentile(real, [10, 90])
    assert low <= float(np.median(synth)) <= high, (real, synth)


@pytest.mark.realdata
def test_synthetic_oct_brightness_is_in_the_range_of_real_scans() -> None:
    real = [float(im.mean()) for im in _real_images("oct", 20)]
    synth = [float(render_oct(np.random.default_rng(s), "NORMAL", 384)[0].mean()) for s in range(8)]
    low, high = np.percentile(real, [10, 90])
    assert low <= float(np.median(synth)) <= high, (real, synth)
