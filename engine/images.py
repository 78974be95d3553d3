"""Find image files and decode them fast into model-ready arrays.

Decoding is the bottleneck of CPU screening (see the performance notes), so JPEGs are
decoded with DCT scaling ("draft" mode) straight to the smallest size that still leaves
enough pixels inside the fundus field of view, which is found on that same cheap decode.
Source files are only ever opened for reading.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .modelfile import Preprocessing
from .safefiles import UnreadableFile, check_regular, path_text, read_file

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic"})
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
ASSUMED_MIN_FOV_FRACTION = 0.6  # the FOV spans at least this share of the short side
ANALYSIS_SIZE = 384  # largest side of the crop kept for the quality gate
GATE_MIN_SIDE = 320  # short side the draft must reach when the quality gate is on

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image
# Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that. Between the two, a JPEG
# from a large fundus camera is still read cheaply at reduced size (draft), so open_image
# checks the size it would actually decode instead; a static filter, because
# warnings.catch_warnings is not safe in the decoding threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageError(Exception):
    """A file that could not be turned into an image, with the reason in words."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path_text(path)}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class FrameRef:
    """One 2-D frame inside a multi-frame file: a B-scan of a DICOM or TIFF OCT volume."""

    path: Path
    frame: int  # 0-based position in the file

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return f"{self.path} [slice {self.frame + 1}]"

    @property
    def name(self) -> str:
        return f"{self.path.name} [slice {self.frame + 1}]"


Source = Path | FrameRef  # what the decoders accept: a file, or one frame of a file


def is_hidden(name: str) -> bool:
    """Hidden files and folders, and auxiliary folders such as ``_masks``, are skipped."""
    return name.startswith((".", "_"))


def is_image_name(name: str) -> bool:
    """A name that is an image by its extension (photographs, TIFF, DICOM)."""
    suffix = Path(name).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS


def is_image_file(path: Path) -> bool:
    """An image by its extension, or a DICOM file without one (found by its DICM preamble).

    DICOM media often name files ``IM0001`` or by their UID (``1.2.840...3.17``); those are
    probed; the ``DICOMDIR`` index itself is not an image.
    """
    if path.name.startswith("."):
        return False
    if is_image_name(path.name):
        return True
    from .dicom import has_dicm_preamble, may_be_dicom_name

    return may_be_dicom_name(path.name) and has_dicm_preamble(path)


def discover_images(root: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``root`` (or ``root`` itself), in a stable, sorted order.

    DICOM files are found by extension or by their DICM preamble. Hidden entries and
    folders starting with ``_`` are skipped; symlinked folders are not followed (no loops).
    Inside a folder every candidate name is kept, special files and broken links included,
    so each one ends with its own reason in the results; a single ``root`` that is not a
    readable regular file is refused here (:class:`engine.safefiles.UnreadableFile`).
    """
    root = Path(root)
    if not root.is_dir():
        if not os.path.lexists(root):
            raise FileNotFoundError(f"{path_text(root)}: no such file or folder")
        check_regular(root)  # a single special file is refused here, with its reason
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d)) if recursive else []
        for name in filenames:
            if is_image_file(Path(dirpath) / name):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


@dataclass
class Decoded:
    """A model-ready image and what was learnt while decoding it."""

    array: np.ndarray  # (size, size, 3) uint8, preprocessed
    original_size: tuple[int, int]  # (width, height) after EXIF orientation
    # for the quality gate: the OCT scan as the model sees it (an array), or the fundus crop
    # at <= ANALYSIS_SIZE px (a PIL image: the gate works on one, and converting it to an
    # array and back cost 0.3 ms a photograph)
    analysis: np.ndarray | Image.Image | None = None
    fov_found: bool | None = None  # fundus only
    fov_coverage: float | None = None
    quality: dict | None = None  # filled by the screener's quality gate (fundus)
    # where the model's input came from, in full-resolution pixel coordinates of the oriented
    # original (left, top, right, bottom); may extend beyond the image (black padding)
    crop_box: tuple[float, float, float, float] | None = None
    analysis_fov: object | None = None  # fundus.FOV in ``analysis`` pixels (fundus only)
    fov_visible: float | None = None  # share of the FOV disc inside the picture (fundus only)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited over black.

    16-bit and 32-bit greyscale (common for OCT and some fundus cameras) are scaled by their
    bit depth, not per image, so brightness stays comparable across files.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float32)
        top = float(a.max()) if a.size else 0.0
        depth = 8 if top <= 255 else 12 if top <= 4095 else 16
        scale = 255.0 / (2**depth - 1)
        return Image.fromarray(np.clip(a * scale, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if a.size else (0.0, 1.0)
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.nan_to_num(a).astype(np.uint8)).convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode == "1":
        return im.convert("L").convert("RGB")
    return im.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV


def open_image(
    path: str | Source, min_side: int | None = None, longest: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Open, draft-decode to at least ``min_side`` on the short side (or to about ``longest``
    on the long side, for display), orient by EXIF, load.

    ``path`` may be a photograph, a DICOM file (its first frame) or a :class:`FrameRef` to one
    slice of a volume. Returns the image and the full-resolution (width, height) after
    orientation; ``image.info["frames"]`` says how many frames the file holds. Raises
    :class:`ImageError` with a specific reason for every way a file can be bad.
    """
    if isinstance(path, FrameRef):
        from .volumes import open_frame

        return open_frame(path, min_side)
    path = Path(path)
    try:
        # regular files only (a FIFO or a link to /dev/zero would never end), read under
        # the stall deadline; the bytes are decoded from memory, so nothing reopens the path
        data = read_file(path)
    except UnreadableFile as e:
        raise ImageError(path, e.reason) from None
    if not data:
        raise ImageError(path, "file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in DICOM_EXTENSIONS or (suffix not in IMAGE_EXTENSIONS and _has_preamble(path)):
        return _open_dicom(path, min_side)
    frames = 1
    try:
        im = Image.open(io.BytesIO(data))  # twice Pillow's pixel limit raises a bomb error
        if im.format == "TIFF" and getattr(im, "n_frames", 1) > 1:
            im.seek(0)  # a multi-page TIFF shown as one image: its first page
        w, h = im.size
        _check_shape(path, w, h)
        if im.format == "PNG":
            Image.open(io.BytesIO(data)).verify()  # checksums: a damaged PNG is refused
        orientation = im.getexif().get(0x0112, 1)
        full = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        if im.format == "JPEG" and (min_side or longest):
            s = min_side / max(1, min(w, h)) if min_side else longest / max(w, h)
            im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
        if im.width * im.height > Image.MAX_IMAGE_PIXELS:  # what would really be decoded
            raise ImageError(
                path,
                f"image too large to decode safely ({w}×{h} px, {w * h / 1e6:.0f} megapixels; "
                f"the limit is {Image.MAX_IMAGE_PIXELS / 1e6:.0f} for formats that cannot be "
                "read at reduced size)",
            )
        im = ImageOps.exif_transpose(im)  # loads the pixel data
        im.load()
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except UnidentifiedImageError:
        if _has_preamble(path):  # a DICOM file with a photograph's extension
            return _open_dicom(path, min_side)
        raise ImageError(path, "not an image, or a format EyeTriage cannot read") from None
    except Image.DecompressionBombError as e:
        raise ImageError(
            path, f"image too large, refused as a possible decompression bomb ({e})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        text = str(e)
        if "truncated" in text.lower() or isinstance(e, EOFError):
            reason = "file is truncated (incomplete download or copy?)"
        else:
            reason = f"file is corrupt or unreadable ({text or type(e).__name__})"
        raise ImageError(path, reason) from None
    if im.width < 8 or im.height < 8:
        raise ImageError(path, f"image is too small ({im.width}×{im.height} px)")
    im.info["frames"] = frames
    return im, full


def _has_preamble(path: Path) -> bool:
    from .dicom import has_dicm_preamble

    return has_dicm_preamble(path)


def _open_dicom(path: Path, min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    from .dicom import open_dicom_frame

    im, full, frames = open_dicom_frame(path, 0, min_side)
    if im.width < 8 or im.height < 8:
        raise ImageError(path, f"image is too small ({im.width}×{im.height} px)")
    im.info["frames"] = frames
    return im, full


MAX_ASPECT = 10  # retinal photographs are near square; OCT B-scans and montages up to ~4:1


def _check_shape(path: Path, w: int, h: int) -> None:
    """Refuse, with the size in words, images no retinal camera or OCT makes."""
    if min(w, h) < 8:
        raise ImageError(path, f"image is too small ({w}×{h} px)")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageError(
            path,
            f"image is {w}×{h} px, a {max(w, h) / min(w, h):.0f}:1 strip: too narrow to be "
            "a fundus photograph or an OCT scan",
        )


def decode_for_model(
    path: str | Source,
    size: int,
    modality: str = "fundus",
    prep: Preprocessing | None = None,
    want_analysis: bool = False,
) -> Decoded:
    """Decode one file (or one slice of a volume) into a (size, size, 3) uint8 array.

    A multi-frame file given as a whole is refused: its slices are screened one by one
    (see :mod:`engine.volumes`), never silently as its first frame.
    """
    prep = prep or Preprocessing.for_modality(modality)
    path = path if isinstance(path, FrameRef) else Path(path)
    if modality == "oct" or prep.grayscale:
        im, orig = open_image(path, min_side=size)
        _refuse_volume(path, im)
        colour = to_rgb(im)
        # a circular fundus field of view on an "OCT" input means a fundus photograph was
        # given to an OCT model: the screener reports it as out of distribution
        fundus_like = _find_fov(colour).found
        rgb = colour.convert("L").resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        arr = np.repeat(np.asarray(rgb)[:, :, None], 3, axis=2)
        box = (0.0, 0.0, float(orig[0]), float(orig[1]))
        return Decoded(
            arr, orig, arr if want_analysis else None, fov_found=fundus_like, crop_box=box
        )
    return _decode_fundus(path, size, prep, want_analysis)


def _refuse_volume(path: Source, im: Image.Image) -> None:
    frames = im.info.get("frames", 1)
    if not isinstance(path, FrameRef) and frames > 1:
        raise ImageError(
            path, f"holds {frames} frames (a volume): screen it as a volume, slice by slice"
        )


def load_display_image(path: str | Source, longest: int | None = None) -> Image.Image:
    """The original image, oriented, as RGB, reduced to ``longest`` pixels if larger (for
    showing it; the model's input comes from :func:`decode_for_model`)."""
    im, _ = open_image(path, min_side=None, longest=longest)
    rgb = to_rgb(im)
    return _fit(rgb, longest) if longest else rgb


def _decode_fundus(path: Source, size: int, prep: Preprocessing, want_analysis: bool) -> Decoded:
    from . import fundus

    need = size
    # the quality gate judges focus on a copy whose field of view is ~376 px across; it
    # accepts a draft a little smaller (it resamples), but not a thumbnail: for models of
    # 192 px or more this asks for nothing beyond what the model needs
    min_side = max(need / ASSUMED_MIN_FOV_FRACTION, GATE_MIN_SIDE if want_analysis else 0)
    im, (full_w, full_h) = open_image(path, min_side=math.ceil(min_side))
    _refuse_volume(path, im)
    rgb = to_rgb(im)
    fov = _find_fov(rgb) if prep.fov_crop else None
    if fov is not None and fov.found:
        if 2 * fov.r < need and rgb.width < full_w:  # FOV smaller than assumed: decode larger
            scale = need / (2 * fov.r)
            im, _ = open_image(path, min_side=math.ceil(min(rgb.size) * scale))
            rgb = to_rgb(im)
            fov = _find_fov(rgb)
        box = fundus.square_crop_box(fov, rgb.width, rgb.height)
        crop = fundus.crop_square(rgb, box)
    else:
        crop = _pad_square(rgb)
        side = max(rgb.size)
        box = ((rgb.width - side) // 2, (rgb.height - side) // 2, 0, 0)
        box = (box[0], box[1], box[0] + side, box[1] + side)
    k = full_w / rgb.width  # drafted pixels -> full-resolution pixels
    full_box = tuple(float(v) * k for v in box)
    analysis = analysis_fov = visible = None
    if want_analysis:
        analysis = small = _fit(crop, ANALYSIS_SIZE)
        if fov is not None and fov.found:
            shrink = small.width / crop.width  # the crop is centred on the FOV
            analysis_fov = fundus.FOV(
                small.width / 2, small.height / 2, fov.r * shrink, True, fov.coverage, fov.aspect
            )
            visible = fundus.visible_share(fov, rgb.width, rgb.height)
    arr = np.asarray(crop.resize((size, size), Image.BILINEAR, reducing_gap=2.0))
    if prep.ben_graham or prep.green:
        inner = None
        if fov is not None and fov.found:  # the crop is centred on the FOV with a 2% margin
            r = size / 2 / 1.02
            inner = fundus.FOV(size / 2, size / 2, r, True, math.pi * r * r / size**2)
        if prep.ben_graham:
            arr = fundus.ben_graham(arr, fov=inner)
        if prep.green:
            arr = fundus.green_emphasis(arr)
    return Decoded(
        np.ascontiguousarray(arr),
        (full_w, full_h),
        analysis,
        None if fov is None else fov.found,
        None if fov is None else fov.coverage,
        crop_box=full_box,  # type: ignore[arg-type]
        analysis_fov=analysis_fov,
        fov_visible=visible,
    )


def _find_fov(rgb: Image.Image, target: int = 256):  # noqa: ANN202 - fundus.FOV
    """Locate the field of view on a cheap ~256 px reduction, in ``rgb`` pixel coordinates."""
    from . import fundus

    factor = max(1, max(rgb.size) // target)
    small = rgb.reduce(factor) if factor > 1 else rgb
    return fundus.find_fov(np.asarray(small)).scaled(rgb.width / small.width)


def _pad_square(im: Image.Image) -> Image.Image:
    side = max(im.size)
    if im.width == im.height:
        return im
    canvas = Image.new("RGB", (side, side))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas


def _fit(im: Image.Image, longest: int) -> Image.Image:
    if max(im.size) <= longest:
        return im
    s = longest / max(im.size)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)
