"""A deterministic corpus of bad and odd input files, written at test time.

Each kind is one file (or link, pipe, device link) in a folder, with the reason its row
must give: ``expect`` is a phrase of the error reason, or ``None`` for a file that is odd
but a usable image and must be screened (any triage but ``error``). Nothing binary is
committed; everything is generated from a fixed seed.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Kind:
    name: str  # the file name written (str; may hold surrogate-escaped bytes)
    expect: str | None  # phrase of the reason, or None: must be screened
    make: Callable[[Path], None]


def _rgb(seed: int, w: int = 96, h: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a)


def _save(im: Image.Image, fmt: str, **kw) -> Callable[[Path], None]:
    return lambda p: im.save(p, fmt, **kw)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_declaring(w: int, h: int) -> bytes:
    """A PNG whose header claims w×h pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _bad_crc_png() -> bytes:
    data = bytearray(_encoded(_rgb(5), "PNG"))
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF
    return bytes(data)


def _exif_rotated_jpeg() -> bytes:
    im = _rgb(6, 120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    return _encoded(im, "JPEG", exif=exif.tobytes())


def _multipage_tiff(p: Path) -> None:
    _rgb(7).save(p, "TIFF", save_all=True, append_images=[_rgb(8)])


def _fifo(p: Path) -> None:
    os.mkfifo(p)


def _link(target: str) -> Callable[[Path], None]:
    return lambda p: os.symlink(target, p)


def _self_loop(p: Path) -> None:
    os.symlink(p.name, p)


def kinds() -> list[Kind]:
    """Every kind of the corpus (at least 40), in a fixed order."""
    good_png = _encoded(_rgb(1), "PNG")
    good_jpg = _encoded(_rgb(2), "JPEG", quality=90)
    grey16 = Image.fromarray(np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7)
    out = [
        # unusable files: each with its own reason
        Kind("empty.jpg", "empty", _bytes(b"")),
        Kind("empty.tif", "empty", _bytes(b"")),
        Kind("truncated.png", "truncated", _bytes(good_png[: len(good_png) // 2])),
        Kind("truncated.jpg", "truncated", _bytes(good_jpg[: len(good_jpg) // 2])),
        Kind("notes.tif", "not an image", _bytes(b"hello, this is a text file\n")),
        Kind("page.jpg", "not an image", _bytes(b"<html><body>login</body></html>")),
        Kind("noise.png", "not an image", _bytes(np.random.default_rng(9).bytes(4096))),
        Kind("zeros.png", "not an image", _bytes(b"\x00" * 1024)),
        Kind("signature_only.png", "not an image", _bytes(b"\x89PNG\r\n\x1a\n")),
        Kind("bad_checksum.png", "checksum", _bytes(_bad_crc_png())),
        Kind("bomb.png", "decompression bomb", _bytes(_png_declaring(50_000, 50_000))),
        Kind("strip.png", "too narrow", _save(Image.new("RGB", (4000, 10), (90, 40, 20)), "PNG")),
        Kind("tiny.png", "too small", _save(Image.new("RGB", (4, 4)), "PNG")),
        Kind("pipe.png", "named pipe", _fifo),
        Kind("zero.jpg", "character device", _link("/dev/zero")),
        Kind("urandom.jpg", "character device", _link("/dev/urandom")),
        Kind("null.png", "character device", _link("/dev/null")),
        Kind("broken_link.png", "broken symbolic link", _link("no_such_file.png")),
        Kind("loop.jpg", "loop", _self_loop),
        # odd but usable: must be screened, never dropped
        Kind(os.fsdecode(b"caf\xe9.png"), None, _bytes(good_png)),
        Kind('=HYPERLINK("http:evil.example","click").jpg', None, _bytes(good_jpg)),
        Kind("@SUM(1+1).png", None, _bytes(good_png)),
        Kind("+plus.png", None, _bytes(good_png)),
        Kind("-minus.png", None, _bytes(good_png)),
        Kind("new\nline.png", None, _bytes(good_png)),
        Kind('comma, "quote".png', None, _bytes(good_png)),
        Kind("x" * 200 + ".png", None, _bytes(good_png)),
        Kind("üñí眼底.png", None, _bytes(good_png)),
        Kind("UPPER.JPG", None, _bytes(good_jpg)),
        Kind("grey16.png", None, _save(grey16, "PNG")),
        Kind("rgba.png", None, _save(_rgb(3).convert("RGBA"), "PNG")),
        Kind("palette.png", None, _save(_rgb(4).convert("P"), "PNG")),
        Kind("one_bit.bmp", None, _save(_rgb(10).convert("1"), "BMP")),
        Kind("cmyk.jpg", None, _save(_rgb(11).convert("CMYK"), "JPEG")),
        Kind("grey.jpg", None, _save(_rgb(12).convert("L"), "JPEG")),
        Kind("exif_rotated.jpg", None, _bytes(_exif_rotated_jpeg())),
        Kind("pages.tif", None, _multipage_tiff),
        Kind(
            "float.tif",
            None,
            _save(
                Image.fromarray(np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96)),
                "TIFF",
            ),
        ),
        Kind("bmp_named.png", None, _save(_rgb(13), "BMP")),
        Kind("png_named.jpg", None, _bytes(good_png)),
        Kind("gif_named.png", None, _save(_rgb(14).convert("P"), "GIF")),
        Kind("black.png", None, _save(Image.new("RGB", (96, 96)), "PNG")),
        Kind("trailing_bytes.jpg", None, _bytes(good_jpg + b"garbage after the end")),
        Kind("copy_of_good.png", None, _bytes(good_png)),
        Kind("link_to_good.png", None, _link("grey16.png")),
    ]
    return out


def write_corpus(folder: Path) -> list[Kind]:
    """Write every kind into ``folder``; returns the kinds (skips none silently: a kind
    the platform cannot make raises)."""
    folder.mkdir(parents=True, exist_ok=True)
    made = kinds()
    for kind in made:
        kind.make(folder / kind.name)
    return made
