"""Screenshots of the worklist + review page and the dashboard at 1280x720 and 1920x1080.

Run under a virtual display, e.g. ``xvfb-run -s "-screen 0 1920x1080x24" python
docs/screenshots/take_review_screenshots.py docs/screenshots``. It makes the demo workspace
in a temporary folder, screens it with the demo model, reviews a few images and grabs the
real window. With ``--grading FOLDER`` (a folder of full-resolution fundus photographs) it
takes the grading and enhancement screenshots instead (:func:`grading_shots`).
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


# --------------------------------------------------------------------------- grading

# A real photograph with moderate non-proliferative DR (mx-dme, graded NPDR by a retina
# specialist) and where its lesions are, in full-resolution pixels (read off the image).
DR_PHOTO = "2043_OD_f_1.jpg"
DARK_PHOTO = "2003_OD_f_1.jpg"
LESION_MARKS = (
    ("hard_exudate", "polygon", [(396, 470), (424, 472), (427, 493), (396, 493)]),
    ("hard_exudate", "box", [(429, 442), (443, 461)]),
    ("hard_exudate", "box", [(380, 422), (394, 432)]),
    ("haemorrhage", "box", [(319, 483), (333, 498)]),
    ("haemorrhage", "box", [(349, 505), (362, 519)]),
    ("haemorrhage", "box", [(599, 277), (615, 293)]),
    ("haemorrhage", "box", [(599, 303), (615, 321)]),
    ("microaneurysm", "point", [(472, 285)]),
    ("microaneurysm", "point", [(622, 340)]),
    ("microaneurysm", "point", [(310, 315)]),
    (
        "cotton_wool_spot",
        "freehand",
        [(648, 268), (668, 263), (683, 279), (686, 304), (671, 313), (655, 301), (647, 285)],
    ),
)


def settle(app: QApplication, rounds: int = 25) -> None:
    for _ in range(rounds):
        app.processEvents()
        time.sleep(0.02)


def grading_shots(out: Path, data: Path) -> None:
    """Grading a real DR photograph in ICDR terms with lesion marks, and the enhanced view
    (red-free + CLAHE) of a dark photograph, at 1280x720 and 1920x1080.

    ``data`` is the folder of the full-resolution fundus photographs; they are copied to a
    temporary folder (never into the repository) and screened with the demo model, whose
    answers on real photographs mean nothing (the window says "Demo").
    """
    import shutil

    from PySide6.QtCore import QRectF, Qt

    tmp = Path(tempfile.mkdtemp(prefix="eyetriage-grading-shots-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp / "qs"))
    app = QApplication.instance() or QApplication(sys.argv)
    from desktop.mainwindow import MainWindow
    from desktop.settings import AppSettings
    from desktop.style import apply_theme
    from engine.enhance import Enhancement

    clinic = tmp / "clinic"
    clinic.mkdir()
    for name in (DR_PHOTO, DARK_PHOTO):
        shutil.copy(data / name, clinic / name)
    apply_theme(app, "light")
    w = MainWindow(AppSettings(reviewer="dr ana"), data_dir=tmp / "data", preload=False)
    w.resize(1280, 720)
    w.show()
    w.set_model(Path(__file__).resolve().parents[2] / "resources" / "demo-model.safetensors")
    done: list[dict] = []
    w.screening_finished.connect(done.append)
    w.open_image_folder(clinic, screen=True)
    wait(app, lambda: bool(done))
    settle(app)
    page = w.review_page
    w.filter_bar.set_current("all")
    wait(app, lambda: len(page._queue) == 2)  # noqa: SLF001 - a screenshot helper
    ws = page._ws  # noqa: SLF001
    ids = {Path(ws.image(i)["path"]).name: i for i in page._queue}  # noqa: SLF001
    page.set_overlay_method("none")
    w.worklist.select_image(ids[DR_PHOTO])
    wait(app, lambda: page.current_image_id() == ids[DR_PHOTO] and page.viewer.has_image())
    page.choose_scheme("icdr")
    for question, value in (("dr", "R2"), ("maculopathy", "M1"), ("quality", "gradable")):
        page.answer(question, value)
    for lesion, kind, points in LESION_MARKS:
        ws.add_mark(ids[DR_PHOTO], lesion, kind, points, "dr ana")
    page.marks.reload()
    page.marks_panel.update_count()
    page.marks.set_marking(True)
    page.marks.set_lesion("hard_exudate")
    for size in ((1280, 720), (1920, 1080)):
        w.resize(*size)
        settle(app)
        page.viewer._fit_mode = False  # noqa: SLF001 - frame the posterior pole
        page.viewer.fitInView(QRectF(250, 220, 500, 360), Qt.AspectRatioMode.KeepAspectRatio)
        area = page.grading.parentWidget().parentWidget().parentWidget()
        area.ensureWidgetVisible(page.marks_panel, 0, 0)  # type: ignore[attr-defined]
        settle(app)
        w.grab().save(str(out / f"grading-marks-{size[0]}x{size[1]}.png"))
    page.marks.set_marking(False)
    w.worklist.select_image(ids[DARK_PHOTO])
    wait(app, lambda: page.current_image_id() == ids[DARK_PHOTO] and page.viewer.has_image())
    page.enhancer.set_enhancement(Enhancement(green=True, clahe=True, contrast=10))
    wait(app, page.enhancer.is_current)
    for size in ((1280, 720), (1920, 1080)):
        w.resize(*size)
        settle(app)
        page.viewer.fit()
        settle(app)
        wait(app, page.enhancer.is_current)
        w.grab().save(str(out / f"enhanced-red-free-clahe-{size[0]}x{size[1]}.png"))
    page.enhancer.reset()
    wait(app, page.enhancer.is_current)
    w.close()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    if len(sys.argv) > 3 and sys.argv[2] == "--grading":
        grading_shots(target, Path(sys.argv[3]))
    else:
        main(target)
