"""Finding and decoding images: every mode, orientation, draft speed path, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.images import ImageError, decode_for_model, discover_images, open_image, to_rgb
from engine.modelfile import Preprocessing


def fundus_like(
    size: int = 400, cx: float = 0.5, cy: float = 0.5, r: float = 0.4, w: int | None = None
) -> Image.Image:
    """An orange disc on black, slightly textured, like a fundus photograph."""
    w = w or size
    im = Image.new("RGB", (w, size))
    d = ImageDraw.Draw(im)
    x, y, rr = cx * w, cy * size, r * size
    d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=(200, 90, 40))
    d.ellipse([x - rr * 0.2, y - rr * 0.2, x, y], fill=(250, 220, 150))
    return im


def test_discovery_is_recursive_sorted_and_skips_hidden_and_aux(tmp_path):
    for rel in [
        "b/2.png",
        "a/1.JPG",
        "a/sub/3.tif",
        ".hidden/4.png",
        "_masks/5.png",
        "a/.6.png",
        "a/notes.txt",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in discover_images(tmp_path)]
    assert found == ["a/1.JPG", "a/sub/3.tif", "b/2.png"]


def test_discovery_of_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        discover_images(tmp_path / "nope")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "I;16", "I", "F", "LA"])
def test_every_mode_becomes_rgb(mode):
    base = fundus_like(64)
    if mode == "I;16":
        a = np.asarray(base.convert("L")).astype(np.uint16) * 257
        im = Image.fromarray(a)
        assert im.mode == "I;16"
    elif mode == "I":
        im = base.convert("L").convert("I")
    elif mode == "F":
        im = base.convert("L").convert("F")
    else:
        im = base.convert(mode)
    out = to_rgb(im)
    assert out.mode == "RGB" and out.size == (64, 64)
    arr = np.asarray(out)
    # the bright disc stays brighter than the black border in every mode
    assert arr[32, 32].mean() > arr[1, 1].mean() + 40


def test_sixteen_bit_scaling_keeps_full_range():
    a = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(a)))
    assert out.max() >= 254 and out.min() == 0


def test_transparent_pixels_become_black():
    im = Image.new("RGBA", (16, 16), (255, 255, 255, 0))
    assert np.asarray(to_rgb(im)).max() == 0


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (60, 30), (255, 0, 0))
    ImageDraw.Draw(im).rectangle([0, 0, 9, 29], fill=(0, 0, 255))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    out, full = open_image(p)
    assert out.size == (30, 60) and full == (30, 60)
    assert np.asarray(out)[2, 15, 2] > 150  # the blue strip is now on top


def test_jpeg_draft_decodes_large_files_at_reduced_scale(tmp_path):
    p = tmp_path / "big.jpg"
    fundus_like(2400).save(p, quality=90)
    im, full = open_image(p, min_side=300)
    assert full == (2400, 2400)
    assert 300 <= im.width <= 600  # 1/4 or 1/8 scale, never the full 2400 px


def test_fundus_decode_crops_to_the_field_of_view(tmp_path):
    p = tmp_path / "offcentre.png"
    fundus_like(400, cx=0.35, cy=0.5, r=0.3, w=600).save(p)
    d = decode_for_model(p, 64, "fundus", Preprocessing())
    assert d.array.shape == (64, 64, 3) and d.array.dtype == np.uint8
    assert d.fov_found
    # after the crop the disc fills the frame: corners black, centre bright, edges of the disc near the border
    a = d.array.astype(int).sum(2)
    assert a[32, 32] > 200 and a[0, 0] < 30
    assert a[32, 3] > 150 and a[32, 60] > 150


def test_oct_decode_is_grey_replicated(tmp_path):
    p = tmp_path / "oct.png"
    Image.fromarray((np.random.default_rng(0).random((40, 100)) * 255).astype(np.uint8)).save(p)
    d = decode_for_model(p, 32, "oct")
    assert d.array.shape == (32, 32, 3)
    assert np.array_equal(d.array[..., 0], d.array[..., 1]) and np.array_equal(
        d.array[..., 1], d.array[..., 2]
    )


def test_ben_graham_and_green_options_change_the_input(tmp_path):
    p = tmp_path / "f.png"
    fundus_like(200).save(p)
    plain = decode_for_model(p, 64, "fundus", Preprocessing()).array
    bg = decode_for_model(p, 64, "fundus", Preprocessing(ben_graham=True)).array
    gr = decode_for_model(p, 64, "fundus", Preprocessing(green=True)).array
    assert not np.array_equal(plain, bg) and not np.array_equal(plain, gr)


def _bad_files(tmp_path):
    good = tmp_path / "good.jpg"
    fundus_like(200).save(good, quality=90)
    data = good.read_bytes()
    files = {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (data[: len(data) // 3], "truncated"),
        "text.png": (b"this is not an image\n" * 10, "not an image"),
        "garbage.tif": (bytes(range(256)) * 4, "not an image"),
    }
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
    return {name: reason for name, (_, reason) in files.items()}


def test_bad_files_raise_specific_reasons(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(ImageError, match=reason) as e:
            decode_for_model(tmp_path / name, 64, "fundus")
        assert name in str(e.value)


def test_missing_and_folder_paths_are_reported(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        decode_for_model(tmp_path / "gone.jpg", 64)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match="folder"):
        decode_for_model(tmp_path / "dir.jpg", 64)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    Image.new("L", (400, 400)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too large"):
        decode_for_model(p, 64, "oct")


def test_bad_files_leave_no_file_handle_open(tmp_path):
    """A long batch of truncated files must not leave their files open (each would hold a
    handle until the garbage collector found it)."""
    import gc
    import warnings

    good = tmp_path / "good.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    data = good.read_bytes()
    reasons = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        for i in range(5):
            bad = tmp_path / f"truncated{i}.png"
            bad.write_bytes(data[: len(data) // 2])
            try:
                open_image(bad)
            except ImageError as e:
                reasons.append(e.reason)
        gc.collect()
    assert reasons == ["file is truncated (incomplete download or copy?)"] * 5
    # only this test's files count (collecting garbage may also report other tests' leftovers)
    leaks = [
        str(w.message)
        for w in seen
        if issubclass(w.category, ResourceWarning) and "truncated" in str(w.message)
    ]
    assert leaks == []
