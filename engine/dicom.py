"""Read DICOM files: ophthalmic photographs, secondary captures and OCT volumes.

pydicom parses the files; the pylibjpeg plugins (libjpeg, openjpeg, rle) decode compressed
pixel data (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE). Every frame is
turned into 8-bit RGB or greyscale the way a DICOM viewer would show it: the modality LUT
(rescale) and the VOI LUT (window) are applied where the file carries them, including the
per-frame and shared functional groups of enhanced multi-frame objects such as Ophthalmic
Tomography, and MONOCHROME1 is inverted. What the file says about the patient, the eye, the
date and the device is read into :class:`DicomInfo`; the patient's name only leaves this
module when the caller asks for it.

Files are opened read-only. A multi-frame file that is being screened slice by slice is kept
parsed in a small cache so each slice does not re-read the whole file.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import ImageError
from .naming import normalise_date, normalise_eye

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
PREAMBLE_LENGTH = 128
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index, not an image
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
CACHE_BYTES = 768 * 2**20  # parsed multi-frame files kept in memory while being screened

# Storage classes an ophthalmic workstation meets, in words.
SOP_CLASS_NAMES = {
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": "Ophthalmic Photography 8 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": "Ophthalmic Photography 16 Bit Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.4": "Ophthalmic Tomography Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.7": "Ophthalmic Optical Coherence Tomography B-scan Volume Analysis",
    "1.2.840.10008.5.1.4.1.1.77.1.5.8": "Ophthalmic Optical Coherence Tomography En Face Image",
    "1.2.840.10008.5.1.4.1.1.77.1.5.5": "Wide Field Ophthalmic Photography Stereographic Projection",
    "1.2.840.10008.5.1.4.1.1.77.1.5.6": "Wide Field Ophthalmic Photography 3D Coordinates",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.78.1": "Lensometry Measurements",
    "1.2.840.10008.5.1.4.1.1.80.1": "Ophthalmic Visual Field Static Perimetry Measurements",
    "1.2.840.10008.5.1.4.1.1.81.1": "Ophthalmic Thickness Map",
    MEDIA_STORAGE_DIRECTORY: "Media Storage Directory (DICOMDIR)",
}

# What to install (or do) when pixel data uses a transfer syntax that cannot be decoded here.
_PLUGIN_ADVICE = {
    "libjpeg": "install pylibjpeg and pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg)",
    "openjpeg": "install pylibjpeg and pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg)",
    "rle": "install pylibjpeg and pylibjpeg-rle (pip install pylibjpeg pylibjpeg-rle)",
}
_NEEDS_PLUGIN = {
    "1.2.840.10008.1.2.4.50": "libjpeg",
    "1.2.840.10008.1.2.4.51": "libjpeg",
    "1.2.840.10008.1.2.4.57": "libjpeg",
    "1.2.840.10008.1.2.4.70": "libjpeg",
    "1.2.840.10008.1.2.4.80": "libjpeg",
    "1.2.840.10008.1.2.4.81": "libjpeg",
    "1.2.840.10008.1.2.4.90": "openjpeg",
    "1.2.840.10008.1.2.4.91": "openjpeg",
    "1.2.840.10008.1.2.4.201": "openjpeg",
    "1.2.840.10008.1.2.4.202": "openjpeg",
    "1.2.840.10008.1.2.4.203": "openjpeg",
    "1.2.840.10008.1.2.5": "rle",
}


@dataclass
class DicomInfo:
    """What a DICOM file's header says, read without its pixel data."""

    path: Path
    sop_class_uid: str
    sop_class: str
    modality: str | None
    frames: int
    rows: int | None
    columns: int | None
    samples_per_pixel: int
    photometric: str | None
    bits_stored: int | None
    transfer_syntax: str
    transfer_syntax_name: str
    has_pixels: bool
    patient_id: str | None
    patient_name: str | None
    eye: str | None  # "right", "left" or None
    date: str | None  # ISO date of acquisition (else content, series or study date)
    manufacturer: str | None
    model: str | None
    study_uid: str | None
    series_uid: str | None

    @property
    def is_directory(self) -> bool:
        return self.sop_class_uid == MEDIA_STORAGE_DIRECTORY

    def facts(self, keep_names: bool = False) -> dict[str, Any]:
        """Patient, eye, date and device as plain values; the name only when asked for."""
        out: dict[str, Any] = {
            "patient": self.patient_id,
            "eye": self.eye,
            "date": self.date,
            "dicom_modality": self.modality,
            "manufacturer": self.manufacturer,
            "device_model": self.model,
            "sop_class": self.sop_class,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
        }
        if keep_names:
            out["patient_name"] = self.patient_name
        return out


# --------------------------------------------------------------------------- detection


def has_dicm_preamble(path: str | Path) -> bool:
    """True when bytes 128-131 are ``DICM`` (a DICOM Part 10 file, whatever its name)."""
    from .safefiles import read_head

    try:
        head = read_head(path, PREAMBLE_LENGTH + 4)  # a FIFO or a device is refused, not read
    except OSError:
        return False
    return len(head) == PREAMBLE_LENGTH + 4 and head[PREAMBLE_LENGTH:] == b"DICM"


def may_be_dicom_name(name: str) -> bool:
    """Names worth probing for the DICM preamble: no extension, or a UID-style numeric one."""
    if name.upper() == "DICOMDIR":
        return False
    suffix = Path(name).suffix
    return suffix == "" or suffix[1:].isdigit()


def is_dicom_path(path: str | Path) -> bool:
    """A ``.dcm``/``.dicom`` file, or any file that starts with the DICM preamble."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicm_preamble(path)


# --------------------------------------------------------------------------- header


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


def _first_item(ds: Any, keyword: str) -> Any:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _group_value(ds: Any, group: str, keyword: str, index: int | None = None) -> Any:
    """A value from a functional group macro: per-frame item ``index`` first, then shared."""
    sources = []
    if index is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame and index < len(per_frame):
            sources.append(per_frame[index])
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    if shared is not None:
        sources.append(shared)
    for src in sources:
        item = _first_item(src, group)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _eye(ds: Any) -> str | None:
    for value in (
        ds.get("ImageLaterality"),
        ds.get("Laterality"),
        _group_value(ds, "FrameAnatomySequence", "FrameLaterality", 0),
    ):
        eye = normalise_eye(_text(value))
        if eye:
            return eye
    return None


def _date(ds: Any) -> str | None:
    frame_dt = _group_value(ds, "FrameContentSequence", "FrameAcquisitionDateTime", 0)
    for value in (
        ds.get("AcquisitionDateTime"),
        frame_dt,
        ds.get("AcquisitionDate"),
        ds.get("ContentDate"),
        ds.get("SeriesDate"),
        ds.get("StudyDate"),
    ):
        iso = normalise_date(value)
        if iso:
            return iso
    return None


def _person_name(value: Any) -> str | None:
    if value is None:
        return None
    family = _text(getattr(value, "family_name", None))
    given = _text(getattr(value, "given_name", None))
    if family and given:
        return f"{family}, {given}"
    return family or given or _text(value)


def transfer_syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "unknown transfer syntax")


def _read(path: Path, header_only: bool = False) -> Any:
    """pydicom's dataset, or :class:`ImageError` saying why the file cannot be used."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except OSError as e:
        raise ImageError(path, f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise ImageError(path, "file is empty (0 bytes)")
    force = path.suffix.lower() in DICOM_SUFFIXES  # an old file may lack the preamble
    try:
        return pydicom.dcmread(path, defer_size=4096 if header_only else None, force=force)
    except InvalidDicomError:
        raise ImageError(path, "not a DICOM file (no DICM preamble)") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except Exception as e:  # noqa: BLE001 - a damaged file can fail anywhere in the parser
        text = str(e) or type(e).__name__
        if isinstance(e, EOFError) or "end of file" in text.lower():
            reason = "DICOM file is truncated (incomplete download or copy?)"
        else:
            reason = f"DICOM file is corrupt or unreadable ({text})"
        raise ImageError(path, reason) from None


def info_from_dataset(path: Path, ds: Any) -> DicomInfo:
    meta = getattr(ds, "file_meta", None)
    ts = _text(meta.get("TransferSyntaxUID")) if meta is not None else None
    ts = ts or "1.2.840.10008.1.2"  # no meta header: implicit VR little endian by default
    sop = _text(ds.get("SOPClassUID")) or (
        _text(meta.get("MediaStorageSOPClassUID")) if meta is not None else None
    )
    sop = sop or ""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    has_pixels = any(k in ds for k in PIXEL_KEYWORDS)
    return DicomInfo(
        path=path,
        sop_class_uid=sop,
        sop_class=SOP_CLASS_NAMES.get(sop, sop or "unknown storage class"),
        modality=_text(ds.get("Modality")),
        frames=max(1, frames),
        rows=ds.get("Rows"),
        columns=ds.get("Columns"),
        samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
        photometric=_text(ds.get("PhotometricInterpretation")),
        bits_stored=ds.get("BitsStored"),
        transfer_syntax=ts,
        transfer_syntax_name=transfer_syntax_name(ts),
        has_pixels=has_pixels,
        patient_id=_text(ds.get("PatientID")),
        patient_name=_person_name(ds.get("PatientName")),
        eye=_eye(ds),
        date=_date(ds),
        manufacturer=_text(ds.get("Manufacturer")),
        model=_text(ds.get("ManufacturerModelName")),
        study_uid=_text(ds.get("StudyInstanceUID")),
        series_uid=_text(ds.get("SeriesInstanceUID")),
    )


def read_info(path: str | Path) -> DicomInfo:
    """The header of one DICOM file; large values (the pixel data) are skipped, not read."""
    path = Path(path)
    return info_from_dataset(path, _read(path, header_only=True))


# --------------------------------------------------------------------------- pixels


@dataclass
class _Parsed:
    """A fully read file, its header facts and whether its pixels can be decoded here."""

    ds: Any
    info: DicomInfo
    problem: str | None  # the reason the pixels cannot be decoded, or None
    luts: dict[tuple, np.ndarray] = field(default_factory=dict)


def _parse(path: Path) -> _Parsed:
    ds = _read(path)
    info = info_from_dataset(path, ds)
    try:
        _check_decodable(path, ds, info)
        problem = None
    except ImageError as e:
        problem = e.reason
    return _Parsed(ds, info, problem)


class _DatasetCache:
    """Parsed multi-frame files, least recently used first out, bounded by their size.

    A single-frame file is read and returned without being kept.
    """

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.items: OrderedDict[tuple, tuple[_Parsed, int]] = OrderedDict()
        self.lock = threading.Lock()
        self.loading: dict[tuple, threading.Lock] = {}

    def get(self, path: Path) -> _Parsed:
        try:
            st = path.stat()
        except OSError:
            return _parse(path)  # reports the reason
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
                return hit[0]
            gate = self.loading.setdefault(key, threading.Lock())
        try:
            with gate:  # one thread parses a volume while the others wait for it
                with self.lock:
                    hit = self.items.get(key)
                    if hit is not None:
                        return hit[0]
                parsed = _parse(path)
                if parsed.info.frames <= 1:
                    return parsed
                parsed.ds.walk(lambda _ds, _elem: None)  # parse every element: threads share it
                with self.lock:
                    self.items[key] = (parsed, st.st_size)
                    total = sum(size for _, size in self.items.values())
                    while len(self.items) > 1 and total > self.budget:
                        _, (_, size) = self.items.popitem(last=False)
                        total -= size
                return parsed
        finally:
            with self.lock:
                self.loading.pop(key, None)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_CACHE = _DatasetCache()


def clear_cache() -> None:
    """Forget parsed multi-frame files (tests, or after a volume has been screened)."""
    _CACHE.clear()


def _check_decodable(path: Path, ds: Any, info: DicomInfo) -> None:
    if info.is_directory:
        raise ImageError(path, "is a DICOMDIR (an index of other files), not an image")
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise ImageError(path, f"DICOM file has no pixel data ({info.sop_class}, not an image)")
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise ImageError(path, "DICOM float pixel data is not supported")
    from pydicom.pixels import get_decoder

    ts, name = info.transfer_syntax, info.transfer_syntax_name
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageError(
            path,
            f"pixel data is compressed as {name} ({ts}), which EyeTriage cannot decode; "
            f"{unsupported_advice(ts)}",
        ) from None
    except ValueError:
        raise ImageError(path, f"unknown transfer syntax {ts}: not a valid DICOM file") from None
    if not decoder.is_available:
        plugin = _NEEDS_PLUGIN.get(ts)
        advice = _PLUGIN_ADVICE.get(plugin or "", "install a pydicom decoder plugin for it")
        raise ImageError(
            path, f"pixel data is compressed as {name} ({ts}) and no decoder is installed: {advice}"
        )


def unsupported_advice(ts: str) -> str:
    """What to do with a transfer syntax no installed plugin decodes."""
    if ts.startswith("1.2.840.10008.1.2.4.10") or ts.startswith("1.2.840.10008.1.2.7"):
        return "it is video; export still images (or an uncompressed copy) from the device"
    if ts in ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"):
        return (
            "JPEG 2000 Part 2 multi-component is not supported; export the images uncompressed "
            "or as JPEG 2000 (Part 1) from the device"
        )
    if ts.startswith("1.2.840.10008.1.2.4.20") or ts.startswith("1.2.840.10008.1.2.4.94"):
        return "the pixels live on a JPIP server, not in the file; retrieve the full image first"
    return "export the images uncompressed (or as JPEG/JPEG 2000) from the device"


def open_dicom_frame(
    path: str | Path, index: int = 0, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int], int]:
    """Frame ``index`` as an 8-bit RGB or L image, its (width, height) and the frame count.

    A JPEG-baseline colour frame is decoded by Pillow with DCT scaling (draft mode) down to
    ``min_side``, like a JPEG file; everything else goes through pydicom's decoders.
    """
    path = Path(path)
    parsed = _CACHE.get(path)
    ds, info = parsed.ds, parsed.info
    if parsed.problem is not None:
        raise ImageError(path, parsed.problem)
    if not 0 <= index < info.frames:
        raise ImageError(path, f"has {info.frames} frame(s); slice {index + 1} does not exist")
    if min_side and _draft_ok(ds, info):
        im = _jpeg_frame_draft(path, ds, info, index, min_side)
        if im is not None:
            return im, (int(info.columns or im.width), int(info.rows or im.height)), info.frames
    arr = _native_frame(ds, info, index)
    if arr is None:
        arr = _decode(path, ds, index)
    out = to_display(arr, ds, index, info, parsed.luts)
    im = Image.fromarray(out, "RGB" if out.ndim == 3 else "L")
    return im, (im.width, im.height), info.frames


_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _native_frame(ds: Any, info: DicomInfo, index: int) -> np.ndarray | None:
    """A view of one uncompressed little-endian frame, without a copy; None otherwise."""
    allocated = int(ds.get("BitsAllocated") or 0)
    spp = info.samples_per_pixel
    if (
        info.transfer_syntax not in _NATIVE_LE
        or allocated not in (8, 16)
        or spp not in (1, 3)
        or (
            spp == 3 and (int(ds.get("PlanarConfiguration") or 0) != 0 or info.photometric != "RGB")
        )
        or not info.rows
        or not info.columns
    ):
        return None
    data = ds.PixelData
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    dtype = np.dtype(("<i" if signed else "<u") + str(allocated // 8))
    count = int(info.rows) * int(info.columns) * spp
    offset = index * count * dtype.itemsize
    if offset + count * dtype.itemsize > len(data):
        return None  # let pydicom say what is wrong
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    shape = (int(info.rows), int(info.columns)) + ((3,) if spp == 3 else ())
    return arr.reshape(shape)


def _draft_ok(ds: Any, info: DicomInfo) -> bool:
    return (
        info.transfer_syntax == JPEG_BASELINE
        and info.samples_per_pixel == 3
        and (info.photometric or "").startswith("YBR_FULL")
        and int(ds.get("BitsAllocated") or 8) == 8
    )


def _jpeg_frame_draft(
    path: Path, ds: Any, info: DicomInfo, index: int, min_side: int
) -> Image.Image | None:
    from pydicom.encaps import get_frame

    try:
        data = get_frame(ds.PixelData, index, number_of_frames=info.frames)
        im = Image.open(io.BytesIO(data))
        if im.format != "JPEG":
            return None
        w, h = im.size
        s = min_side / max(1, min(w, h))
        if s < 1:
            im.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
        im.load()
    except Exception:  # noqa: BLE001 - fall back to pydicom's own decoder
        return None
    return im.convert("RGB") if im.mode != "RGB" else im


def _decode(path: Path, ds: Any, index: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(ds, index=index)
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this DICOM frame") from None
    except Exception as e:  # noqa: BLE001 - decoder plugins raise many types
        raise ImageError(
            path, f"DICOM pixel data could not be decoded ({type(e).__name__}: {e})"
        ) from None


def _value(ds: Any, keyword: str, index: int, group: str) -> Any:
    """Top-level value, else the functional group's value for this frame."""
    if keyword in ds:
        return ds.get(keyword)
    return _group_value(ds, group, keyword, index)


def _first_number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if (
            isinstance(value, list | tuple)
            or hasattr(value, "__getitem__")
            and not isinstance(value, str | bytes)
        ):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def to_display(
    arr: np.ndarray,
    ds: Any,
    index: int,
    info: DicomInfo,
    luts: dict[tuple, np.ndarray] | None = None,
) -> np.ndarray:
    """Decoded stored values to 8-bit display values (H, W) or (H, W, 3).

    Integer pixels go through one lookup table that composes the rescale, the window (or
    the full stored range) and the MONOCHROME1 inversion: one gather per pixel.
    """
    photometric = (info.photometric or "").upper()
    bits = int(info.bits_stored or ds.get("BitsAllocated") or 8)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        top = 255 if rgb.dtype == np.uint8 else 65535
        return _to_uint8(rgb.astype(np.float32) / top)
    colour = arr.ndim == 3 and arr.shape[-1] >= 3
    if colour:
        arr = arr[..., :3]
    if (
        arr.dtype == np.uint8
        and bits == 8
        and photometric != "MONOCHROME1"
        and (colour or not _has_transform(ds, index))
    ):
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        return _float_display(arr, ds, index, bits, signed, photometric, colour)
    key = _lut_key(arr.dtype, ds, index, bits, signed, photometric, colour)
    lut = None if luts is None or key is None else luts.get(key)
    if lut is None:
        lut = _build_lut(arr.dtype, ds, index, bits, signed, photometric, colour)
        if luts is not None and key is not None:
            luts[key] = lut
    unsigned = arr if arr.dtype.kind == "u" else arr.view(arr.dtype.str.replace("i", "u"))
    return np.ascontiguousarray(lut[unsigned])


def _lut_key(
    dtype: np.dtype, ds: Any, index: int, bits: int, signed: bool, photometric: str, colour: bool
) -> tuple | None:
    """What the lookup table depends on (None: do not reuse it, e.g. a VOI LUT sequence)."""
    if ds.get("VOILUTSequence"):
        return None
    parts = [
        _value(ds, k, index, g)
        for k, g in (
            ("RescaleSlope", "PixelValueTransformationSequence"),
            ("RescaleIntercept", "PixelValueTransformationSequence"),
            ("WindowCenter", "FrameVOILUTSequence"),
            ("WindowWidth", "FrameVOILUTSequence"),
            ("VOILUTFunction", "FrameVOILUTSequence"),
        )
    ]
    return (
        dtype.str,
        bits,
        signed,
        photometric,
        colour,
        *(_first_number(p) if not isinstance(p, str) else p for p in parts),
    )


def _build_lut(
    dtype: np.dtype, ds: Any, index: int, bits: int, signed: bool, photometric: str, colour: bool
) -> np.ndarray:
    """uint8 display value for every raw value of ``dtype`` (unused high bits masked)."""
    raw = np.arange(2 ** (8 * dtype.itemsize), dtype=np.int64)
    stored = raw & (2**bits - 1)
    if signed:  # sign-extend from the highest stored bit
        stored = np.where(stored >= 2 ** (bits - 1), stored - 2**bits, stored)
    return _float_display(stored.astype(np.float64), ds, index, bits, signed, photometric, colour)


def _has_transform(ds: Any, index: int) -> bool:
    """Whether a rescale or a window applies to this frame."""
    return any(
        v is not None
        for v in (
            _value(ds, "RescaleSlope", index, "PixelValueTransformationSequence"),
            _value(ds, "RescaleIntercept", index, "PixelValueTransformationSequence"),
            _value(ds, "WindowCenter", index, "FrameVOILUTSequence"),
        )
    ) or bool(ds.get("VOILUTSequence"))


def _float_display(
    x: np.ndarray, ds: Any, index: int, bits: int, signed: bool, photometric: str, colour: bool
) -> np.ndarray:
    """Stored values (any shape) to uint8 display values."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    x = np.clip(x, lo, hi)
    if colour:
        return _to_uint8((x - lo) / (hi - lo))
    slope = _first_number(_value(ds, "RescaleSlope", index, "PixelValueTransformationSequence"))
    intercept = _first_number(
        _value(ds, "RescaleIntercept", index, "PixelValueTransformationSequence")
    )
    if slope is not None or intercept is not None:
        s, b = slope if slope is not None else 1.0, intercept or 0.0
        x = x * s + b
        lo, hi = sorted((lo * s + b, hi * s + b))
    unit = _voi(x, ds, index)
    if unit is None:  # no window in the file: the full range of the stored bits
        unit = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return _to_uint8(unit)


def _voi(x: np.ndarray, ds: Any, index: int) -> np.ndarray | None:
    """Apply the VOI LUT or window to 0..1; None when the file defines neither."""
    lut_seq = ds.get("VOILUTSequence")
    if lut_seq:
        item = lut_seq[0]
        desc = [int(v) for v in item.LUTDescriptor]
        n = desc[0] or 65536
        first = desc[1]
        depth = desc[2] if len(desc) > 2 else 16
        data = item.LUTData
        if isinstance(data, bytes | bytearray):
            lut = np.frombuffer(data, dtype="<u2" if depth > 8 else np.uint8).astype(np.float64)
        else:
            lut = np.asarray(data, dtype=np.float64).reshape(-1)
        idx = np.clip(np.round(x) - first, 0, min(n, len(lut)) - 1).astype(np.int64)
        top = float(lut.max()) or 1.0
        return lut[idx] / top
    centre = _first_number(_value(ds, "WindowCenter", index, "FrameVOILUTSequence"))
    width = _first_number(_value(ds, "WindowWidth", index, "FrameVOILUTSequence"))
    if centre is None or width is None or width <= 0:
        return None
    fn = str(_value(ds, "VOILUTFunction", index, "FrameVOILUTSequence") or "LINEAR").upper()
    if fn == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if fn == "LINEAR_EXACT":
        return np.clip((x - centre) / width + 0.5, 0.0, 1.0)
    if width < 1:
        return (x > centre - 0.5).astype(np.float64)
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.nan_to_num(unit) * 255.0 + 0.5, 0, 255).astype(np.uint8))


def frame_count(path: str | Path) -> int:
    """How many frames the file holds (1 for a photograph, tens to hundreds for OCT)."""
    return read_info(path).frames


def environment_summary() -> dict[str, Any]:
    """Which compressed transfer syntaxes this installation decodes (self-test, support)."""
    from pydicom.pixels import get_decoder

    out: dict[str, Any] = {}
    for uid in sorted(_NEEDS_PLUGIN):
        try:
            out[transfer_syntax_name(uid)] = get_decoder(uid).is_available
        except NotImplementedError:
            out[transfer_syntax_name(uid)] = False
    return out
