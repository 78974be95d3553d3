"""PIL images to ``QImage``: one conversion for the viewer, the loader and the PDF report.

The ``QImage`` owns its pixels (the PIL buffer may go away), so the result can cross
threads: it is made in workers and shown on the GUI thread.
"""

from __future__ import annotations

from PIL import Image
from PySide6.QtGui import QImage

__all__ = ["pil_to_qimage", "pil_to_qimage_rgba"]


def pil_to_qimage(image: Image.Image) -> QImage:
    """A deep-copied ``QImage`` (RGB32, the format a pixmap takes without conversion)."""
    rgb = image.convert("RGB")
    data = rgb.tobytes("raw", "RGB")
    qimage = QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888)
    return qimage.convertToFormat(QImage.Format.Format_RGB32)  # owns its pixels


def pil_to_qimage_rgba(image: Image.Image) -> QImage:
    """A deep-copied premultiplied ARGB ``QImage`` of an RGB or RGBA PIL image."""
    rgba = image.convert("RGBA")
    data = rgba.tobytes("raw", "RGBA")
    qimage = QImage(data, rgba.width, rgba.height, 4 * rgba.width, QImage.Format.Format_RGBA8888)
    return qimage.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
