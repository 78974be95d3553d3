"""The Qt part of ``eyetriage --self-test`` (kept out of ``engine``, which has no Qt).

It starts a ``QApplication`` on the offscreen platform (unless a platform was chosen),
builds a widget and paints it, loads a PNG through the image-format plugins, checks that
QtCharts (the dashboard) imports, and checks that the crash log writes to a file: a
windowed frozen application has no console, so the log is the only trace of a crash.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def check_qt_offscreen() -> str:
    """Create (or reuse) the application and exercise the plugins the bundle ships."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import PySide6
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QImage, QPixmap
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication.instance() or QApplication(["eyetriage-self-test"])
    label = QLabel("EyeTriage self-test")
    label.resize(200, 40)
    pixmap = QPixmap(label.size())
    label.render(pixmap)
    if pixmap.isNull():
        raise RuntimeError("could not render a widget")

    image = QImage(16, 16, QImage.Format.Format_RGB32)
    image.fill(0x336699)
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not image.save(buffer, "PNG"):
        raise RuntimeError("could not encode a PNG")
    buffer.close()
    back = QImage()
    if not back.loadFromData(data, "PNG") or back.size() != image.size():
        raise RuntimeError("could not decode a PNG")
    for fmt in ("jpeg", "tiff"):
        if not _can_round_trip(image, fmt):
            raise RuntimeError(f"no {fmt} image-format plugin")

    import PySide6.QtCharts  # noqa: F401 - the dashboard needs it

    log_note = _check_crash_log()
    label.deleteLater()
    platform = app.platformName()  # type: ignore[union-attr]
    return f"PySide6 {PySide6.__version__}, platform {platform}, {log_note}"


def _can_round_trip(image: object, fmt: str) -> bool:
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QImage

    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    ok = image.save(buffer, fmt.upper())  # type: ignore[attr-defined]
    buffer.close()
    back = QImage()
    return bool(ok and back.loadFromData(data, fmt.upper()))


def _check_crash_log() -> str:
    """Install the crash handler into a temporary folder, log a line, read it back."""
    from . import crash

    if crash.log_path() is not None:  # the application's own handler is in use: leave it
        return "crash log already installed"
    with tempfile.TemporaryDirectory(prefix="eyetriage-log-") as folder:
        path = crash.install_crash_handler(folder, dialogs=False)
        try:
            crash.log.error("self-test: crash log works")
        finally:
            crash.uninstall_crash_handler()
        text = Path(path).read_text(encoding="utf-8")
        if "self-test: crash log works" not in text:
            raise RuntimeError(f"the crash log {path} did not receive the message")
    return "crash log writes"
