"""DICOM files written here with pydicom: photographs, OCT volumes, compression, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine import dicom_synth as W
from engine.dicom import clear_cache, open_dicom_frame, read_info
from engine.images import FrameRef, ImageError, decode_for_model, discover_images, open_image
from engine.volumes import discover_items


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def smooth_rgb(h: int = 240, w: int = 320) -> np.ndarray:
    """A smooth colour gradient with a bright disc: compresses like a photograph."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 120 + 100 * np.sin(x / w * np.pi)
    g = 60 + 80 * (y / h)
    b = 30 + 40 * ((x + y) / (w + h))
    disc = ((x - w * 0.6) ** 2 + (y - h * 0.5) ** 2) < (h * 0.15) ** 2
    rgb = np.stack([r, g, b], -1)
    rgb[disc] = (250, 220, 150)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def oct_frames(n: int = 49, h: int = 64, w: int = 96, top: int = 4095) -> np.ndarray:
    """(n, h, w) uint16 B-scans: a bright band whose depth changes with the slice."""
    rng = np.random.default_rng(0)
    y = np.arange(h)[None, :, None]
    centre = (h * 0.4 + 6 * np.sin(np.arange(n) / 5))[:, None, None]
    band = np.exp(-(((y - centre) / 4.0) ** 2))
    noise = rng.random((n, h, w)) * 0.1
    return np.clip((band + noise) * top * 0.8, 0, top).astype(np.uint16)


def test_single_frame_rgb_photograph_decodes_exactly_with_its_facts(tmp_path):
    rgb = smooth_rgb()
    path = W.write_photograph(
        tmp_path / "photo.dcm",
        rgb,
        patient_id="1221",
        patient_name="Doe^Jane",
        laterality="R",
        date="20240502",
        manufacturer="Acme",
        model="FundusCam 3",
    )
    im, full = open_image(path)
    assert im.mode == "RGB" and full == (320, 240)
    assert np.array_equal(np.asarray(im), rgb)
    info = read_info(path)
    facts = info.facts()
    assert facts["patient"] == "1221" and facts["eye"] == "right"
    assert facts["date"] == "2024-05-02" and facts["dicom_modality"] == "OP"
    assert facts["manufacturer"] == "Acme" and facts["device_model"] == "FundusCam 3"
    assert "patient_name" not in facts  # names are left out unless asked for
    assert info.facts(keep_names=True)["patient_name"] == "Doe, Jane"


def test_jpeg_baseline_photograph_decodes_close_to_the_original_and_drafts(tmp_path):
    rgb = smooth_rgb(480, 640)
    path = W.write_photograph(tmp_path / "jpeg.dcm", rgb, compression="jpeg")
    assert read_info(path).transfer_syntax == "1.2.840.10008.1.2.4.50"
    im, full = open_image(path)
    assert full == (640, 480) and im.size == (640, 480)
    assert np.abs(np.asarray(im, dtype=np.int16) - rgb).mean() < 4
    small, full = open_image(path, min_side=100)  # DCT scaling, like a JPEG file
    assert full == (640, 480) and min(small.size) >= 100 and small.width < 640
    dec = decode_for_model(path, 64, "fundus")
    assert dec.array.shape == (64, 64, 3) and dec.original_size == (640, 480)


@pytest.mark.parametrize("compression", ["jpeg2000", "rle"])
def test_lossless_compressed_photographs_decode_exactly(tmp_path, compression):
    rgb = smooth_rgb(96, 128)
    path = W.write_photograph(tmp_path / f"{compression}.dcm", rgb, compression=compression)
    im, _ = open_image(path)
    assert np.array_equal(np.asarray(im), rgb)


def test_jpeg_ls_volume_decodes_exactly(tmp_path):
    pytest.importorskip("jpeg_ls", reason="pyjpegls encodes the JPEG-LS test file")
    frames = oct_frames(4, 32, 48)
    path = W.write_volume(tmp_path / "ls.dcm", frames, compression="jpegls", bits_stored=12)
    assert read_info(path).transfer_syntax_name.startswith("JPEG-LS")
    im, _ = open_image(FrameRef(path, 2))
    expected = np.round(frames[2] / 4095 * 255)
    assert np.abs(np.asarray(im, dtype=np.float64) - expected).max() <= 1


def test_sixteen_bit_photograph_and_greyscale_scale_by_their_bit_depth(tmp_path):
    rgb16 = (smooth_rgb(64, 64).astype(np.uint16) * 257).astype(np.uint16)
    path = W.write_photograph(tmp_path / "op16.dcm", rgb16, sop_class=W.OP_16BIT)
    im, _ = open_image(path)
    assert im.mode == "RGB"
    assert np.abs(np.asarray(im, dtype=np.int16) - smooth_rgb(64, 64)).max() <= 1
    grey = smooth_rgb(64, 64)[..., 1]
    path = W.write_photograph(tmp_path / "redfree.dcm", grey, sop_class=W.SECONDARY_CAPTURE)
    im, _ = open_image(path)
    assert im.mode == "L" and np.array_equal(np.asarray(im), grey)
    assert read_info(path).sop_class == "Secondary Capture Image"


def test_sixteen_bit_oct_volume_of_49_frames_applies_the_functional_group_window(tmp_path):
    frames = oct_frames(49)
    path = W.write_volume(
        tmp_path / "oct.dcm",
        frames,
        bits_stored=12,
        window=(1500, 2000),
        patient_id="1221",
        laterality="L",
        date="20230917",
    )
    info = read_info(path)
    assert info.frames == 49 and info.eye == "left" and info.date == "2023-09-17"
    assert info.modality == "OPT" and info.sop_class == "Ophthalmic Tomography Image"
    [item] = discover_items(tmp_path)
    assert item.kind == "volume" and item.n_slices == 49 and item.source == "dicom-volume"
    for k in (0, 24, 48):
        im, full = open_image(item.slices[k])
        assert im.mode == "L" and full == (96, 64)
        x = frames[k].astype(np.float64)
        expected = np.clip((x - 1499.5) / 1999 + 0.5, 0, 1) * 255
        assert np.abs(np.asarray(im, dtype=np.float64) - expected).max() <= 1
    with pytest.raises(ImageError, match="a volume"):
        decode_for_model(path, 32, "oct")  # never silently its first frame
    with pytest.raises(ImageError, match="slice 50 does not exist"):
        open_image(FrameRef(path, 49))


def test_rescale_and_monochrome1_without_a_window_use_the_stored_range(tmp_path):
    import pydicom

    frames = oct_frames(2, 16, 16, top=1023)
    path = W.write_volume(tmp_path / "m1.dcm", frames, bits_stored=10)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -100
    ds.save_as(path)
    im, _ = open_image(FrameRef(path, 1))
    expected = 255 - np.round(frames[1] / 1023 * 255)
    assert np.abs(np.asarray(im, dtype=np.float64) - expected).max() <= 1


def test_a_top_level_window_is_applied(tmp_path):
    import pydicom

    grey = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 16).astype(np.uint16)
    path = W.write_photograph(tmp_path / "win.dcm", grey, sop_class=W.SECONDARY_CAPTURE)
    ds = pydicom.dcmread(path)
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.WindowCenter = 2048
    ds.WindowWidth = 1024
    ds.save_as(path)
    im, _ = open_image(path)
    a = np.asarray(im)
    assert a[grey < 1536].max() == 0 and a[grey > 2560].min() == 255
    mid = a[(grey > 1700) & (grey < 2400)]
    assert 0 < mid.min() and mid.max() < 255


def test_missing_pixel_data_is_a_clear_error(tmp_path):
    path = W.write_without_pixels(tmp_path / "report.dcm")
    with pytest.raises(ImageError, match="no pixel data.*Encapsulated PDF"):
        open_image(path)


def test_unsupported_transfer_syntax_names_it_and_says_what_to_do(tmp_path):
    path = W.write_with_transfer_syntax(tmp_path / "video.dcm", "1.2.840.10008.1.2.4.102")
    with pytest.raises(ImageError) as e:
        open_image(path)
    assert "MPEG-4 AVC/H.264" in e.value.reason and "1.2.840.10008.1.2.4.102" in e.value.reason
    assert "export still images" in e.value.reason


def test_a_missing_decoder_plugin_says_what_to_install(tmp_path, monkeypatch):
    import pydicom.pixels

    class Unavailable:
        is_available = False

    path = W.write_photograph(tmp_path / "j2k.dcm", smooth_rgb(32, 32), compression="jpeg2000")
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(ImageError) as e:
        open_dicom_frame(path)
    assert "JPEG 2000" in e.value.reason and "pip install pylibjpeg pylibjpeg-openjpeg" in (
        e.value.reason
    )


def test_truncated_and_fake_dicom_files_are_clear_errors(tmp_path):
    good = W.write_photograph(tmp_path / "good.dcm", smooth_rgb(64, 64)).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(good[: len(good) // 2])
    (tmp_path / "fake.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(ImageError) as e:
        open_image(tmp_path / "cut.dcm")
    assert "cut.dcm" in str(e.value)
    with pytest.raises(ImageError):
        open_image(tmp_path / "fake.dcm")


def test_files_without_extension_are_found_by_the_dicm_preamble(tmp_path):
    W.write_photograph(tmp_path / "IM0001", smooth_rgb(64, 64))
    W.write_photograph(tmp_path / "1.2.840.99.3.17", smooth_rgb(64, 64))
    (tmp_path / "README").write_text("not an image")
    (tmp_path / "LICENSE.0").write_bytes(b"\x00" * 200)
    Image.fromarray(smooth_rgb(64, 64)).save(tmp_path / "photo.jpg")
    names = [p.name for p in discover_images(tmp_path)]
    assert names == ["1.2.840.99.3.17", "IM0001", "photo.jpg"]
    im, _ = open_image(tmp_path / "IM0001")
    assert im.size == (64, 64)


def test_a_dicomdir_folder_gives_its_images_and_skips_the_index(tmp_path):
    from pydicom.fileset import FileSet

    src = tmp_path / "src"
    src.mkdir()
    photo = W.write_photograph(src / "a.dcm", smooth_rgb(64, 64), patient_id="77")
    volume = W.write_volume(src / "b.dcm", oct_frames(5, 32, 48), patient_id="77")
    media = tmp_path / "media"
    media.mkdir()
    fs = FileSet()
    fs.add(photo)
    fs.add(volume)
    fs.write(media)
    assert (media / "DICOMDIR").is_file()
    items = discover_items(media)
    assert sorted(it.kind for it in items) == ["image", "volume"]
    assert all(it.path.name != "DICOMDIR" for it in items)
    assert all(it.info is not None and it.info.patient_id == "77" for it in items)
    vol = next(it for it in items if it.kind == "volume")
    assert vol.n_slices == 5
    im, _ = open_image(vol.slices[4])
    assert im.size == (48, 32)
    with pytest.raises(ImageError, match="DICOMDIR"):
        open_image(media / "DICOMDIR")


def test_deflated_and_palette_colour_files_are_read(tmp_path):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    grey = (np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8)
    path = W.write_photograph(tmp_path / "deflated.dcm", grey, sop_class=W.SECONDARY_CAPTURE)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    assert read_info(path).transfer_syntax == DeflatedExplicitVRLittleEndian
    assert np.array_equal(np.asarray(open_image(path)[0]), grey)

    path = W.write_photograph(tmp_path / "palette.dcm", grey, sop_class=W.SECONDARY_CAPTURE)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    lut = np.arange(256, dtype=np.uint16) * 257  # 16-bit entries
    for colour, values in (("Red", lut), ("Green", lut[::-1].copy()), ("Blue", lut * 0)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(ds, f"{colour}PaletteColorLookupTableData", values.astype("<u2").tobytes())
    ds.save_as(path)
    im, _ = open_image(path)
    a = np.asarray(im)
    assert im.mode == "RGB"
    assert np.abs(a[..., 0].astype(int) - grey).max() <= 1
    assert np.abs(a[..., 1].astype(int) - (255 - grey)).max() <= 1
    assert a[..., 2].max() == 0


def test_uncompressed_ybr_full_is_converted_to_rgb(tmp_path):
    import pydicom
    from pydicom.pixels import convert_color_space

    rgb = smooth_rgb(48, 64)
    path = W.write_photograph(tmp_path / "ybr.dcm", rgb)
    ds = pydicom.dcmread(path)
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(path)
    im, _ = open_image(path)
    assert np.abs(np.asarray(im, dtype=np.int16) - rgb).max() <= 2
