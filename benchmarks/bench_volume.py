"""OCT volumes: a 128-slice volume screened against the same frames given as PNG files.

The goal is that screening a volume costs no more per B-scan than screening its frames as
separate images (at least 0.9× the B-scan rate). One run, efficientnet_b0 with random
weights (speed does not depend on them) as an OCT model at 224 px; the frames are 128 real
macular B-scans from ../shared/data/mx-dme/oct (768×313 JPEGs; synthetic B-scans when the
real data is absent), written as:

- ``png``: 128 greyscale PNG files (the baseline);
- ``dicom_8bit``: one uncompressed Ophthalmic Tomography file, 8 bits per pixel;
- ``dicom_16bit``: the same at 16 bits (12 stored) with a window in the functional groups;
- ``dicom_j2k``: JPEG 2000 lossless (decoded by pylibjpeg-openjpeg);
- ``tiff``: one multi-page TIFF.

Each variant is screened ``REPS`` times, alternating with the PNG baseline, and the median
rate is reported; on a shared machine the ratios are more trustworthy than the rates.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OCT = REPO / ".." / "shared" / "data" / "mx-dme" / "oct"
N_SLICES = 128
REPS = 3


def make_oct_model(tmp: Path, arch: str = "efficientnet_b0", size: int = 224):  # noqa: ANN201
    from engine.modelfile import ModelSpec, Preprocessing, save_model_file
    from engine.models import create_network, load_model

    spec = ModelSpec(
        arch=arch,
        task="multiclass",
        labels=["CNV", "DME", "DRUSEN", "NORMAL"],
        input_size=size,
        modality="oct",
        preprocessing=Preprocessing.for_modality("oct"),
        negative_label="NORMAL",
    )
    net = create_network(spec)
    path = tmp / f"{arch}-oct.safetensors"
    save_model_file(path, spec, net.state_dict())
    return load_model(path, device="cpu")


def frames() -> tuple[np.ndarray, str]:
    """(128, H, W) uint8 B-scans and where they came from."""
    if OCT.is_dir():
        files = sorted(OCT.glob("*.jpg"))[:N_SLICES]
        if len(files) == N_SLICES:
            arr = [np.asarray(Image.open(p).convert("L").resize((768, 313))) for p in files]
            return np.stack(arr), f"{N_SLICES} real B-scans (mx-dme/oct, 768×313)"
    from engine.synth import render_oct

    arr = [
        render_oct(np.random.default_rng(i), "NORMAL" if i % 3 else "DME", 768, 0.5)[0][..., 0]
        for i in range(N_SLICES)
    ]
    return np.stack(arr), f"{N_SLICES} synthetic B-scans (real data absent)"


def write_variants(vol: np.ndarray, tmp: Path) -> dict:
    from engine import dicom_synth as W
    from engine.volumes import discover_items, image_item

    pngs = tmp / "png"
    pngs.mkdir()
    for i, f in enumerate(vol):
        Image.fromarray(f).save(pngs / f"bscan_{i + 1:03d}.png", compress_level=6)
    W.write_volume(tmp / "oct8.dcm", vol)
    W.write_volume(
        tmp / "oct16.dcm", vol.astype(np.uint16) * 16, bits_stored=12, window=(2048, 4096)
    )
    W.write_volume(tmp / "octj2k.dcm", vol, compression="jpeg2000")
    pages = [Image.fromarray(f) for f in vol]
    pages[0].save(tmp / "oct.tif", save_all=True, append_images=pages[1:])
    png_items = [image_item(p) for p in sorted(pngs.glob("*.png"))]
    return {
        "png": png_items,
        "dicom_8bit": discover_items(tmp / "oct8.dcm"),
        "dicom_16bit": discover_items(tmp / "oct16.dcm"),
        "dicom_j2k": discover_items(tmp / "octj2k.dcm"),
        "tiff": discover_items(tmp / "oct.tif"),
    }


def screen_rate(lm, items) -> float:  # noqa: ANN001
    """B-scans per second through engine.volumes.screen_items (caches emptied first)."""
    from engine.screen import ScreenSettings
    from engine.volumes import count_slices, release_open_files, screen_items_all

    release_open_files()
    t = time.perf_counter()
    res = screen_items_all(items, [lm], ScreenSettings(batch_size=32))
    dt = time.perf_counter() - t
    assert not any(r.error for r in res), [r.error for r in res if r.error][:2]
    return count_slices(items) / dt


def decode_ms(lm, items) -> float:  # noqa: ANN001
    """Milliseconds per B-scan to decode into the model's input, on one thread."""
    from engine.inference import model_decoder
    from engine.volumes import expand, release_open_files

    release_open_files()
    decode = model_decoder(lm)
    flat, _ = expand(items)
    t = time.perf_counter()
    for src in flat:
        decode(src)
    return 1000 * (time.perf_counter() - t) / len(flat)


def run() -> dict:
    torch.set_num_threads(os.cpu_count() or 2)
    out: dict = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lm = make_oct_model(tmp)
        vol, source = frames()
        out["volume_source"] = source
        variants = write_variants(vol, tmp)
        screen_rate(lm, variants["png"][:16])  # warm-up
        for name, items in variants.items():
            out[f"volume_{name}_decode_ms"] = statistics.median(
                decode_ms(lm, items) for _ in range(REPS)
            )
        rates: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(REPS):
            for name in ("dicom_8bit", "dicom_16bit", "dicom_j2k", "tiff"):
                rates["png"].append(screen_rate(lm, variants["png"]))
                rates[name].append(screen_rate(lm, variants[name]))
    png = statistics.median(rates["png"])
    out["volume_png_bscans_per_s"] = png
    for name in ("dicom_8bit", "dicom_16bit", "dicom_j2k", "tiff"):
        r = statistics.median(rates[name])
        out[f"volume_{name}_bscans_per_s"] = r
        out[f"volume_{name}_ratio_to_png"] = r / png
    return out


def print_table(r: dict) -> None:
    print(
        f"OCT volume screening ({r['volume_source']}; efficientnet_b0 224 px, {r['threads']} threads)"
    )
    png = r["volume_png_bscans_per_s"]
    print(
        f"  128 PNG files (baseline)        {png:7.1f} B-scans/s"
        f"  (decode {r['volume_png_decode_ms']:.1f} ms per B-scan, one thread)"
    )
    for name, label in (
        ("dicom_8bit", "DICOM OCT, 8-bit"),
        ("dicom_16bit", "DICOM OCT, 16-bit + window"),
        ("dicom_j2k", "DICOM OCT, JPEG 2000"),
        ("tiff", "multi-page TIFF"),
    ):
        rate = r[f"volume_{name}_bscans_per_s"]
        print(
            f"  {label:<32}{rate:7.1f} B-scans/s  ({rate / png:.2f}× the PNG rate;"
            f" decode {r[f'volume_{name}_decode_ms']:.1f} ms)"
        )


if __name__ == "__main__":
    print_table(run())
