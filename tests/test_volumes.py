"""OCT volumes as items: discovery, the volume rule, batched screening of every B-scan."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from engine import dicom_synth as W
from engine.data import DatasetError, load_csv_dataset, load_folder_dataset, split_indices
from engine.dicom import clear_cache
from engine.images import FrameRef, open_image
from engine.screen import ScreenResult, ScreenSettings
from engine.triage import TriagePolicy
from engine.volumes import (
    discover_items,
    finding_probability,
    release_open_files,
    roll_up,
    screen_items_all,
)

SPEC = SimpleNamespace(labels=["DME", "NORMAL"], negative_label="NORMAL", task="binary")


@pytest.fixture(autouse=True)
def _fresh_caches():
    release_open_files()
    yield
    release_open_files()
    clear_cache()


def bscans(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.arange(h)[None, :, None]
    band = np.exp(-(((y - h * 0.4 - np.arange(n)[:, None, None] % 5) / 3.0) ** 2))
    return np.clip((band + rng.random((n, h, w)) * 0.2) * 200, 0, 255).astype(np.uint8)


def slice_result(i: int, p_dme: float, triage: str = "auto-cleared", **kw) -> ScreenResult:
    probs = {"DME": p_dme, "NORMAL": 1 - p_dme}
    label = "DME" if p_dme >= 0.5 else "NORMAL"
    return ScreenResult(
        index=i,
        path="vol.dcm",
        label=label,
        display_label=label,
        confidence=max(p_dme, 1 - p_dme),
        probabilities=probs,
        entropy=0.1,
        mutual_info=0.0,
        top_std=0.0,
        triage=triage,
        triage_reason=kw.pop("reason", f"confidence {max(p_dme, 1 - p_dme):.2f}"),
        kind="slice",
        slice_index=i,
        **kw,
    )


def volume_item(n: int):  # noqa: ANN201
    from engine.volumes import Item

    return Item(Path("vol.dcm"), "volume", [FrameRef(Path("vol.dcm"), i) for i in range(n)])


# --------------------------------------------------------------------------- the rule


def test_a_volume_is_referred_when_any_slice_is_and_the_evidence_names_that_slice():
    slices = [slice_result(i, 0.02) for i in range(10)]
    slices[6] = slice_result(6, 0.93, "needs-review", reason="finding 'DME' is always reviewed")
    r = roll_up(volume_item(10), slices, SPEC)
    assert r.kind == "volume" and r.n_slices == 10
    assert r.triage == "needs-review"
    assert r.triage_reason.startswith("slice 7 of 10: finding 'DME' is always reviewed")
    assert r.key_slice == 6
    assert r.probabilities == slices[6].probabilities  # the highest slice probability
    assert r.label == "DME" and r.confidence == slices[6].confidence
    assert len(r.slices) == 10


def test_a_volume_whose_slices_are_all_cleared_is_cleared_and_names_the_most_suspicious():
    slices = [slice_result(i, p) for i, p in enumerate([0.01, 0.05, 0.12, 0.03])]
    r = roll_up(volume_item(4), slices, SPEC)
    assert r.triage == "auto-cleared"
    assert r.key_slice == 2
    assert "all 4 slices cleared" in r.triage_reason and "slice 3" in r.triage_reason
    assert abs(finding_probability(r.probabilities, SPEC) - 0.12) < 1e-9


def test_an_uncertain_slice_refers_even_when_another_slice_is_more_suspicious():
    slices = [slice_result(0, 0.9), slice_result(1, 0.4, "needs-review", reason="confidence 0.60")]
    slices += [slice_result(i, 0.01) for i in range(2, 6)]
    r = roll_up(volume_item(6), slices, SPEC)
    assert r.triage == "needs-review"
    assert r.triage_reason.startswith("slice 2 of 6: confidence 0.60")
    assert "most suspicious slice 1" in r.triage_reason
    assert r.key_slice == 0


def test_out_of_distribution_needs_half_the_slices_fewer_go_to_review():
    ood = dict(ood=True, ood_score=3.0, reason="unlike the training data")
    few = [slice_result(i, 0.01) for i in range(8)]
    few[2] = slice_result(2, 0.01, "out-of-distribution", **ood)
    r = roll_up(volume_item(8), few, SPEC)
    assert r.triage == "needs-review" and not r.ood
    many = [slice_result(i, 0.01, "out-of-distribution", **ood) for i in range(5)]
    many += [slice_result(i, 0.01, ood_score=0.5) for i in range(5, 8)]
    r = roll_up(volume_item(8), many, SPEC)
    assert r.triage == "out-of-distribution" and r.ood
    assert r.triage_reason.startswith("5 of 8 slices unlike the training data")
    assert r.ood_score == 3.0  # the median slice score


def test_unreadable_slices_send_a_volume_to_review_and_all_unreadable_is_an_error():
    slices = [slice_result(i, 0.01) for i in range(4)]
    slices[3] = ScreenResult(3, "vol.dcm", error="page 4 is corrupt", kind="slice", slice_index=3)
    r = roll_up(volume_item(4), slices, SPEC)
    assert r.triage == "needs-review"
    assert "1 of 4 slices could not be read (slice 4: page 4 is corrupt)" in r.triage_reason
    bad = [ScreenResult(i, "vol.dcm", error="pixel data compressed as X") for i in range(3)]
    r = roll_up(volume_item(3), bad, SPEC)
    assert r.triage == "error" and r.error == "pixel data compressed as X (all 3 slices)"


# --------------------------------------------------------------------------- discovery


def test_a_multi_page_tiff_is_one_volume_scaled_alike_across_slices(tmp_path):
    frames = (bscans(6).astype(np.uint16) * 16).astype(np.uint16)  # 12-bit values
    frames[0] //= 20  # a dark edge slice
    pages = [Image.fromarray(f) for f in frames]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    [item] = discover_items(tmp_path)
    assert item.kind == "volume" and item.source == "tiff-volume" and item.n_slices == 6
    dark, _ = open_image(item.slices[0])
    bright, _ = open_image(item.slices[3])
    assert dark.mode == "L" and bright.mode == "L"
    # one scale for the volume: the dark slice stays dark
    assert np.asarray(dark).mean() < np.asarray(bright).mean() / 5
    expected = np.round(frames[3] / 4095 * 255)
    assert np.abs(np.asarray(bright, dtype=np.float64) - expected).max() <= 1


def test_a_folder_marked_by_volume_json_is_one_volume_in_numbered_order(tmp_path):
    vol = tmp_path / "visit" / "oct_OD"
    vol.mkdir(parents=True)
    for i in (1, 2, 10, 11):
        Image.fromarray(bscans(1, seed=i)[0]).save(vol / f"bscan_{i}.png")
    (vol / "volume.json").write_text(
        json.dumps({"patient": "1221", "eye": "OD", "date": "20240502"})
    )
    Image.fromarray(bscans(1)[0]).save(tmp_path / "visit" / "other.png")
    items = discover_items(tmp_path)
    assert [(it.path.name, it.kind) for it in items] == [
        ("oct_OD", "volume"),
        ("other.png", "image"),
    ]
    vol_item = items[0]
    assert [p.name for p in vol_item.slices] == [
        "bscan_1.png",
        "bscan_2.png",
        "bscan_10.png",
        "bscan_11.png",
    ]
    from engine.filefacts import item_facts

    facts = item_facts(vol_item)
    assert (facts["patient"], facts["eye"], facts["date"]) == ("1221", "right", "2024-05-02")
    assert facts["facts_from"] == {
        "patient": "volume.json",
        "eye": "volume.json",
        "date": "volume.json",
    }


def test_a_bad_or_empty_volume_folder_is_an_item_with_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "volume.json").write_text("{}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "volume.json").write_text("{not json")
    Image.fromarray(bscans(1)[0]).save(tmp_path / "broken" / "1.png")
    by_name = {it.path.name: it for it in discover_items(tmp_path)}
    assert "holds no images" in by_name["empty"].error
    assert "volume.json cannot be read" in by_name["broken"].error


def test_dicom_facts_take_precedence_over_the_file_name(tmp_path):
    from engine.filefacts import item_facts

    W.write_volume(tmp_path / "9999_OD_scan.dcm", bscans(3), patient_id="1221", laterality="L")
    W.write_photograph(
        tmp_path / "5_OS_x.dcm",
        np.zeros((16, 16, 3), np.uint8),
        patient_id=None,
        laterality=None,
        date=None,
    )
    Image.fromarray(bscans(1)[0]).save(tmp_path / "7_OD_y.png")
    facts = {it.path.name: item_facts(it) for it in discover_items(tmp_path)}
    f = facts["9999_OD_scan.dcm"]
    assert (f["patient"], f["eye"], f["date"]) == ("1221", "left", "2024-05-02")
    assert f["facts_from"] == {"patient": "dicom", "eye": "dicom", "date": "dicom"}
    # a DICOM file that says nothing about the patient falls back to its name
    f = facts["5_OS_x.dcm"]
    assert (f["patient"], f["eye"]) == ("5", "left") and f["facts_from"]["patient"] == "file name"
    assert facts["7_OD_y.png"]["patient"] == "7"
    assert "patient_name" not in facts["9999_OD_scan.dcm"]


# --------------------------------------------------------------------------- screening


def test_screening_items_gives_one_result_per_item_with_every_slice_screened(tmp_path, tiny_model):
    from engine.models import load_model
    from engine.tasks import TaskState

    W.write_volume(tmp_path / "b_volume.dcm", bscans(49).astype(np.uint16) * 16, bits_stored=12)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(tmp_path / "a_photo.png")
    (tmp_path / "c_empty.jpg").write_bytes(b"")
    items = discover_items(tmp_path)
    lm = load_model(tiny_model, device="cpu")
    seen: list[tuple[int, int]] = []
    state = TaskState(lambda d, t, m: seen.append((d, t)), min_interval=0)
    # a fundus model finds OCT slices unfamiliar: judge by the answers here, not OOD
    policy = TriagePolicy(use_ood=False, use_quality=False)
    settings = ScreenSettings(batch_size=16, quality=False, policy=policy)
    results = screen_items_all(items, [lm], settings, state)
    assert [Path(r.path).name for r in results] == ["a_photo.png", "b_volume.dcm", "c_empty.jpg"]
    assert seen[-1] == (51, 51)  # progress counts B-scans and images, batched together
    photo, vol, empty = results
    assert photo.kind == "image" and photo.slices is None
    assert empty.triage == "error" and "empty" in empty.error
    assert vol.kind == "volume" and vol.n_slices == 49 and len(vol.slices) == 49
    assert [s.slice_index for s in vol.slices] == list(range(49))
    assert all(s.kind == "slice" and s.error is None for s in vol.slices)
    spec = lm.spec
    scores = [finding_probability(s.probabilities, spec) for s in vol.slices]
    if scores[0] is None:  # a model without a normal class: the least confident slice
        scores = [1 - s.confidence for s in vol.slices]
    assert vol.key_slice == int(np.argmax(scores))
    assert vol.probabilities == vol.slices[vol.key_slice].probabilities
    assert f"slice {vol.key_slice + 1}" in vol.triage_reason
    assert vol.facts["patient"] == "P001" and vol.facts["eye"] == "left"


def test_a_volume_label_is_used_for_its_slices_only_when_asked(tmp_path):
    for cls, n in (("DME", 2), ("NORMAL", 2)):
        (tmp_path / cls).mkdir()
        for j in range(n):
            Image.fromarray(bscans(1, seed=j)[0]).save(tmp_path / cls / f"{cls}_{j}.png")
    W.write_volume(tmp_path / "DME" / "vol.dcm", bscans(7), patient_id="1221")
    with pytest.raises(DatasetError, match="volume of 7 B-scans.*--volume-labels volume"):
        load_folder_dataset(tmp_path)
    ds = load_folder_dataset(tmp_path, volume_labels="volume")
    slices = [s for s in ds.samples if s.volume is not None]
    assert len(ds) == 4 + 7 and len(slices) == 7
    assert {s.target for s in slices} == {ds.labels.index("DME")}
    assert {s.group for s in slices} == {"patient:1221"}  # one split for the whole volume
    train, val, test = split_indices(ds, (0.5, 0.25, 0.25), seed=1)
    holding = [part for part in (train, val, test) if any(ds.samples[i].volume for i in part)]
    assert len(holding) == 1


def test_a_csv_can_label_single_slices_of_a_volume(tmp_path):
    W.write_volume(tmp_path / "vol.dcm", bscans(9))
    (tmp_path / "labels.csv").write_text(
        "file,slice,label\nvol.dcm,3,DME\nvol.dcm,4,NORMAL\nvol.dcm,,DME\n"
    )
    with pytest.raises(DatasetError, match="--volume-labels volume"):
        load_csv_dataset(tmp_path, tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("file,slice,label\nvol.dcm,3,DME\nvol.dcm,4,NORMAL\n")
    ds = load_csv_dataset(tmp_path, tmp_path / "labels.csv")
    assert [s.path for s in ds.samples] == [
        FrameRef(tmp_path / "vol.dcm", 2),
        FrameRef(tmp_path / "vol.dcm", 3),
    ]
    (tmp_path / "labels.csv").write_text("file,slice,label\nvol.dcm,30,DME\nvol.dcm,4,NORMAL\n")
    with pytest.raises(DatasetError, match="has 9 slices; slice 30 does not exist"):
        load_csv_dataset(tmp_path, tmp_path / "labels.csv")


def test_slice_source_addresses_frames_and_volume_folder_files(tmp_path):
    from engine.images import ImageError
    from engine.volumes import slice_source

    W.write_volume(tmp_path / "v.dcm", bscans(4))
    assert slice_source(tmp_path / "v.dcm", 2) == FrameRef(tmp_path / "v.dcm", 2)
    folder = tmp_path / "vol"
    folder.mkdir()
    for i in (1, 2, 10):
        Image.fromarray(bscans(1)[0]).save(folder / f"b{i}.png")
    (folder / "volume.json").write_text("{}")
    assert slice_source(folder, 2) == folder / "b10.png"
    with pytest.raises(ImageError, match="has 3 slices; slice 4 does not exist"):
        slice_source(folder, 3)
