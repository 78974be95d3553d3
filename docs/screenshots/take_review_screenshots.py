"""Screenshots of the worklist + review page and the dashboard at 1280x720 and 1920x1080.

Run under a virtual display, e.g. ``xvfb-run -s "-screen 0 1920x1080x24" python
docs/screenshots/take_review_screenshots.py docs/screenshots``. It makes the demo workspace
in a temporary folder, screens it with the demo model, reviews a few images and grabs the
real window.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication


def wait(app: QApplication, until, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not until():
        if time.monotonic() > end:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.02)


def main(out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="eyetriage-shots-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "qs"))
    app = QApplication.instance() or QApplication(sys.argv)
    from desktop.mainwindow import MainWindow
    from desktop.settings import AppSettings
    from desktop.style import apply_theme

    apply_theme(app, "light")
    w = MainWindow(AppSettings(reviewer="dr ana"), data_dir=tmp / "data", preload=False)
    w.resize(1280, 720)
    w.show()
    done: list[dict] = []
    loaded: list[bool] = []
    w.screening_finished.connect(done.append)
    w.open_demo()
    wait(app, lambda: bool(done))
    w.worklist_loaded.connect(lambda: loaded.append(True))
    wait(app, lambda: bool(loaded))  # the reload after the run, so reviews are not raced
    page = w.review_page
    w.filter_bar.set_current("all")
    wait(app, lambda: len(page._queue) > 0)  # noqa: SLF001 - a screenshot helper
    first = w.worklist.proxy.visible_ids()[0]
    w.worklist.select_image(first)
    for _ in range(3):  # a few reviews so progress and the "Reviewed" mark show
        page.press_label(1)
    for size in ((1280, 720), (1920, 1080)):
        w.resize(*size)
        w.tabs.setCurrentIndex(0)
        page.set_overlay_method("gradcam")
        wait(app, page.viewer.overlay_shown)
        wait(app, lambda: not page.is_busy())
        for _ in range(20):
            app.processEvents()
            time.sleep(0.02)
        tag = f"{size[0]}x{size[1]}"
        w.grab().save(str(out / f"review-{tag}.png"))
        w.tabs.setCurrentIndex(1)
        for _ in range(20):
            app.processEvents()
            time.sleep(0.02)
        w.grab().save(str(out / f"dashboard-{tag}.png"))
        w.tabs.setCurrentIndex(0)
        w.settings.blind_mode = True
        w.apply_settings(w.settings)
        page.next_unreviewed()
        for _ in range(20):
            app.processEvents()
            time.sleep(0.02)
        w.grab().save(str(out / f"review-blind-{tag}.png"))
        w.settings.blind_mode = False
        w.apply_settings(w.settings)
        w.worklist.sort_box.setCurrentIndex(0)
        w.worklist.sort_box.activated.emit(0)
    w.show_shortcuts()
    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)
    assert w.shortcut_sheet is not None
    w.shortcut_sheet.grab().save(str(out / "shortcut-sheet.png"))
    w.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
