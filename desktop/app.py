"""Start the desktop application: ``eyetriage [FOLDER|WORKSPACE] [--demo]``.

The window is shown before anything heavy is imported (torch, timm and captum load later,
inside the workers), so it appears fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

APP_NAME = "EyeTriage"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eyetriage gui", description="EyeTriage desktop workstation")
    p.add_argument(
        "path",
        nargs="?",
        help="a folder of images, or a workspace folder",
    )
    p.add_argument(
        "--demo", action="store_true", help="open the demo workspace (synthetic images, demo model)"
    )
    return p.parse_args(argv)


def _make_app(argv: list[str]):  # noqa: ANN202 - QApplication
    from PySide6.QtCore import QCoreApplication, Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
            Qt.HighDpiScaleFactorRoundingPolicy.PassThrough
        )
        QCoreApplication.setOrganizationName(APP_NAME)
        QCoreApplication.setApplicationName(APP_NAME)
        app = QApplication([sys.argv[0] if sys.argv else "eyetriage", *argv])
    app.setApplicationDisplayName(APP_NAME)
    return app


def run_app(argv: list[str]) -> int:
    """Parse arguments, create the application and window, open what was asked; the exit code."""
    args = parse_args(list(argv))
    app = _make_app([])

    from .crash import install_crash_handler
    from .mainwindow import MainWindow
    from .settings import AppSettings
    from .style import apply_theme

    install_crash_handler()
    settings = AppSettings.load()
    apply_theme(app, settings.theme)
    window = MainWindow(settings)
    window.show()

    def open_requested() -> None:
        if args.demo:
            window.open_demo()
        elif args.path:
            from engine.store import is_workspace

            target = Path(args.path).expanduser()
            if is_workspace(target):
                window.open_workspace(target)
            elif target.is_dir():
                window.open_image_folder(target)
            else:
                window.show_error(
                    "Cannot open", f"{target} is not a folder of images or a workspace."
                )

    from PySide6.QtCore import QTimer

    QTimer.singleShot(0, open_requested)
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(run_app(sys.argv[1:]))
