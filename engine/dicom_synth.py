"""Write DICOM files from arrays: synthetic photographs and OCT volumes.

Used by the self-test (to prove the bundled decoders work), the benchmarks and the tests, so
all of them exercise the same reader on files shaped like a clinic's: Ophthalmic
Photography with laterality and dates, Secondary Capture, and enhanced multi-frame
Ophthalmic Tomography whose window and laterality sit in functional groups.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
OP_16BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.2"
OPT = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

COMPRESSIONS = {
    "none": "1.2.840.10008.1.2.1",  # explicit VR little endian
    "jpeg": "1.2.840.10008.1.2.4.50",  # JPEG baseline (Pillow encodes, pydicom wraps)
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # lossless (pylibjpeg-openjpeg encodes)
    "rle": "1.2.840.10008.1.2.5",
    "jpegls": "1.2.840.10008.1.2.4.80",  # lossless (needs the pyjpegls encoder)
}


def _base(
    sop_class: str,
    modality: str,
    transfer_syntax: str,
    *,
    patient_id: str | None,
    patient_name: str | None,
    laterality: str | None,
    date: str | None,
    manufacturer: str | None,
    model: str | None,
    seed: str,
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    sop_uid = generate_uid(entropy_srcs=[seed, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.Modality = modality
    ds.StudyTime = "093000"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.AccessionNumber = ""
    if patient_id is not None:
        ds.PatientID = patient_id
    if patient_name is not None:
        ds.PatientName = patient_name
    if date:
        ds.StudyDate = date
        ds.AcquisitionDateTime = date + "093000"
    if laterality:
        ds.ImageLaterality = laterality
    if manufacturer:
        ds.Manufacturer = manufacturer
    if model:
        ds.ManufacturerModelName = model
    return ds


def _encapsulate_jpeg(frames: list[np.ndarray]) -> bytes:
    from PIL import Image
    from pydicom.encaps import encapsulate

    out = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, "JPEG", quality=92, subsampling=2)
        out.append(buf.getvalue())
    return encapsulate(out)


def write_photograph(
    path: str | Path,
    rgb: np.ndarray,
    *,
    compression: str = "none",
    sop_class: str = OP_8BIT,
    patient_id: str | None = "P001",
    patient_name: str | None = "Doe^Jane",
    laterality: str | None = "R",
    date: str | None = "20240502",
    manufacturer: str | None = "EyeTriage synthetic",
    model: str | None = "Fundus camera",
    preamble: bool = True,
) -> Path:
    """An Ophthalmic Photography (or Secondary Capture) file of an RGB or greyscale image.

    ``rgb`` is (H, W, 3) or (H, W) uint8, or uint16 for 16-bit photography.
    """
    path = Path(path)
    arr = np.ascontiguousarray(rgb)
    colour = arr.ndim == 3
    ts = COMPRESSIONS[compression]
    modality = "OP" if sop_class in (OP_8BIT, OP_16BIT) else "OT"
    ds = _base(
        sop_class,
        modality,
        ts,
        patient_id=patient_id,
        patient_name=patient_name,
        laterality=laterality,
        date=date,
        manufacturer=manufacturer,
        model=model,
        seed=str(path.name),
    )
    bits = 16 if arr.dtype == np.uint16 else 8
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if colour:
        ds.PlanarConfiguration = 0
    _set_pixels(ds, arr[None], compression, colour)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def write_volume(
    path: str | Path,
    frames: np.ndarray,
    *,
    compression: str = "none",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    patient_id: str | None = "P001",
    patient_name: str | None = "Doe^Jane",
    laterality: str | None = "L",
    date: str | None = "20240502",
    manufacturer: str | None = "EyeTriage synthetic",
    model: str | None = "OCT scanner",
) -> Path:
    """A multi-frame Ophthalmic Tomography file from (N, H, W) uint8 or uint16 B-scans.

    The laterality and the window (centre, width) are written in the shared functional
    groups, as enhanced multi-frame objects do.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = Path(path)
    arr = np.ascontiguousarray(frames)
    ts = COMPRESSIONS[compression]
    ds = _base(
        OPT,
        "OPT",
        ts,
        patient_id=patient_id,
        patient_name=patient_name,
        laterality=None,
        date=date,
        manufacturer=manufacturer,
        model=model,
        seed=str(path.name),
    )
    bits = 16 if arr.dtype == np.uint16 else 8
    ds.NumberOfFrames = int(arr.shape[0])
    ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = (bits_stored or bits) - 1
    ds.PixelRepresentation = 0
    shared = Dataset()
    if laterality:
        anatomy = Dataset()
        anatomy.FrameLaterality = laterality
        shared.FrameAnatomySequence = Sequence([anatomy])
    if window:
        voi = Dataset()
        voi.WindowCenter = window[0]
        voi.WindowWidth = window[1]
        shared.FrameVOILUTSequence = Sequence([voi])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    _set_pixels(ds, arr, compression, colour=False)
    ds.save_as(path, enforce_file_format=True)
    return path


def _set_pixels(ds, arr: np.ndarray, compression: str, colour: bool) -> None:  # noqa: ANN001
    """``arr`` is (N, H, W[, 3]); one frame files are stored without the frame axis."""
    if compression == "none":
        ds.PixelData = arr.tobytes()
        return
    if compression == "jpeg":
        if arr.dtype != np.uint8:
            raise ValueError("JPEG baseline holds 8-bit images only")
        ds.PixelData = _encapsulate_jpeg(list(arr))
        ds["PixelData"].VR = "OB"
        if colour:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        if len(arr) > 1:
            ds.NumberOfFrames = len(arr)
        return
    from pydicom.uid import UID

    ds.PixelData = arr.tobytes()
    ds.file_meta.TransferSyntaxUID = UID(COMPRESSIONS["none"])
    source = arr if len(arr) > 1 else arr[0]
    ds.compress(UID(COMPRESSIONS[compression]), source, encoding_plugin="")


def write_without_pixels(path: str | Path, patient_id: str = "P001") -> Path:
    """An Encapsulated PDF object: a DICOM file that holds no image."""
    path = Path(path)
    ds = _base(
        ENCAPSULATED_PDF,
        "DOC",
        COMPRESSIONS["none"],
        patient_id=patient_id,
        patient_name=None,
        laterality=None,
        date="20240502",
        manufacturer=None,
        model=None,
        seed=str(path.name),
    )
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_with_transfer_syntax(
    path: str | Path, transfer_syntax: str, payload: bytes = b"\x00" * 64
) -> Path:
    """A single-frame image whose pixel data claims ``transfer_syntax`` (for error paths)."""
    from pydicom.encaps import encapsulate

    path = Path(path)
    ds = _base(
        SECONDARY_CAPTURE,
        "OT",
        transfer_syntax,
        patient_id="P001",
        patient_name=None,
        laterality=None,
        date=None,
        manufacturer=None,
        model=None,
        seed=str(path.name),
    )
    ds.Rows, ds.Columns = 32, 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([payload])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path
