"""The main window: toolbar, welcome page or workspace view, menus, status bar, screening.

The workspace view is a tab widget: "Review" (quick filters over a splitter holding the
worklist and the review page) and "Dashboard". The review and dashboard pages are imported
lazily and replaced by a placeholder when they are not available, so the shell works alone.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QStandardPaths, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from .improve import ImproveController
from .settings import (
    AppSettings,
    SettingsDialog,
    add_screening_fields,
    ask_reviewer,
    open_qsettings,
)
from .style import apply_theme, triage_style
from .welcome import WelcomePage, not_a_device_text
from .workers import FunctionJob, ScreenJob, ScreenRequest, load_worklist_rows
from .worklist import QuickFilterBar, WorklistPanel, group_thousands

META_NAME = "eyetriage-desktop.json"
CHOOSE_MODEL = "__choose__"


def default_data_dir() -> Path:
    """The user data folder (``AppDataLocation``), where workspaces are created."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return Path(base or Path.home() / ".eyetriage")


def format_eta(seconds: float | None) -> str:
    from engine.tasks import format_eta as _fmt

    return _fmt(seconds)


def progress_text(done: int, total: int, rate: float, device: str) -> str:
    """``Screening 1 204 / 1 852 · 41 img/s · CPU · ETA 0:16``."""
    eta = (total - done) / rate if rate > 0 and total else None
    parts = [f"Screening {group_thousands(done)} / {group_thousands(total)}", f"{rate:.0f} img/s"]
    if device:
        parts.append(device)
    parts.append(f"ETA {format_eta(eta)}")
    return " · ".join(parts)


def read_meta(ws_folder: Path) -> dict[str, Any]:
    try:
        return json.loads((ws_folder / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_meta(ws_folder: Path, **values: Any) -> None:
    meta = {**read_meta(ws_folder), **values}
    ws_folder.mkdir(parents=True, exist_ok=True)
    (ws_folder / META_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")


def workspace_for_folder(image_folder: Path, data_dir: Path) -> Path:
    """The workspace for an image folder, in the user data folder (never in the image folder)."""
    image_folder = image_folder.resolve()
    base = data_dir / "workspaces"
    name = image_folder.name or "images"
    for n in range(1, 1000):
        candidate = base / (name if n == 1 else f"{name}-{n}")
        meta = read_meta(candidate)
        if not candidate.exists() or meta.get("image_folder") == str(image_folder):
            return candidate
    raise RuntimeError(f"too many workspaces named {name}")


class ScreeningDialog(QDialog):
    """Choose folder, model, uncertainty method and triage policy before a run."""

    def __init__(
        self,
        parent: QWidget | None,
        settings: AppSettings,
        models: list[tuple[str, str]],
        current_model: str | None,
        image_folder: Path | None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Screen images")
        form = QFormLayout()
        self.folder = QLineEdit(str(image_folder) if image_folder else "")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form.addRow("Image &folder:", row)
        self.model = QComboBox()
        for label, path in models:
            self.model.addItem(label, path)
        if current_model:
            i = self.model.findData(current_model)
            if i >= 0:
                self.model.setCurrentIndex(i)
        form.addRow("&Model:", self.model)
        self.uncertainty, self.policy, self.threshold = add_screening_fields(form, settings)
        self.refer = QCheckBox("Send every finding to review")
        self.refer.setChecked(settings.refer_findings)
        form.addRow("Refer &findings:", self.refer)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        go = buttons.addButton("Screen ▶", QDialogButtonBox.ButtonRole.AcceptRole)
        go.setDefault(True)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        note = QLabel("Images already screened with the same model and settings are skipped.")
        note.setObjectName("notice")
        layout.addWidget(note)
        layout.addWidget(buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Folder of images to screen", self.folder.text()
        )
        if folder:
            self.folder.setText(folder)

    def values(self) -> dict[str, Any]:
        return {
            "image_folder": Path(self.folder.text()) if self.folder.text().strip() else None,
            "model_path": self.model.currentData(),
            "uncertainty": self.uncertainty.currentData(),
            "policy": self.policy.currentData(),
            "threshold": round(self.threshold.value(), 3),
            "refer_findings": self.refer.isChecked(),
        }


class MainWindow(QMainWindow):
    """The EyeTriage window. ``data_dir`` is where workspaces for folders are created.

    ``preload`` imports the page modules (and torch) in the background once the window is
    shown; ``pages=False`` keeps placeholders instead of the review and dashboard pages.
    """

    workspace_opened = Signal(object)
    worklist_loaded = Signal()
    screening_finished = Signal(dict)

    def __init__(
        self,
        settings: AppSettings | None = None,
        data_dir: Path | None = None,
        preload: bool = True,
        pages: bool = True,
    ) -> None:
        super().__init__()
        self._preload = preload and pages
        self._want_pages = pages
        self._pages_ready = False
        self.settings = settings or AppSettings.load()
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self.ws_folder: Path | None = None
        self.image_folder: Path | None = None
        self.model_path: Path | None = None
        self.spec: Any = None
        self.screen_job: ScreenJob | None = None
        self.last_error: str | None = None
        self.last_run: dict | None = None
        self._jobs: set[FunctionJob] = set()
        self._ws: Any = None  # the GUI thread's own Workspace connection (tiny queries only)
        self._shown_id: int | None = None
        self._closing = False
        self.setWindowTitle("EyeTriage")

        self._build_actions()
        self._build_toolbar()
        self._build_central()
        self._build_menus()
        self._build_statusbar()
        self.improver = ImproveController(self)
        self._apply_user_settings()
        self._restore_geometry()
        self._refresh_models()
        self._update_enabled()

    # ------------------------------------------------------------------ building
    def _action(
        self, text: str, key: str | QKeySequence.StandardKey | None, slot: Any, tip: str = ""
    ) -> QAction:
        a = QAction(text, self)
        if key is not None:
            a.setShortcut(QKeySequence(key))
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            a.setToolTip(tip)
            a.setStatusTip(tip)
        a.triggered.connect(slot)
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        self.act_open_folder = self._action(
            "Open folder…", "Ctrl+O", self.choose_folder, "Screen a folder of images"
        )
        self.act_open_ws = self._action(
            "Open workspace…", "Ctrl+Shift+O", self.choose_workspace, "Open a workspace"
        )
        self.act_demo = self._action(
            "Try the demo", "Ctrl+D", self.open_demo, "Demo workspace with synthetic images"
        )
        self.act_screen = self._action(
            "Screen ▶", "F5", lambda: self.start_screening(ask=True), "Screen the images (F5)"
        )
        self.act_cancel = self._action("Cancel screening", None, self.cancel_screening)
        self.act_settings = self._action(
            "Settings…", "Ctrl+,", self.show_settings, "Settings (Ctrl+,)"
        )
        self.act_export_csv = self._action(
            "Export results as CSV…", "Ctrl+E", lambda: self.export_results("csv")
        )
        self.act_export_json = self._action(
            "Export results as JSON…", "Ctrl+Shift+E", lambda: self.export_results("json")
        )
        self.act_report = self._action("Patient report PDF…", "Ctrl+P", self.patient_report)
        self.act_quit = self._action("Quit", QKeySequence.StandardKey.Quit, self.close)
        self.act_about = self._action("About EyeTriage", None, self.show_about)
        self.act_improve = self._action("Improve model…", "Ctrl+I", lambda: None)
        self.act_improve.setEnabled(False)
        self.act_history = self._action(
            "Model history…", "Ctrl+H", self.show_model_history, "Every model version; roll back"
        )

    def _build_toolbar(self) -> None:
        tb = QToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(tb)
        self.toolbar = tb
        self._tool(tb, self.act_open_folder, "Open folder  Ctrl+O")
        self._tool(tb, self.act_screen, "Screen ▶  F5")
        tb.addSeparator()
        tb.addWidget(QLabel(" model: "))
        self.model_box = QComboBox()
        self.model_box.setMinimumContentsLength(22)
        self.model_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.model_box.setToolTip("The model used for screening and explanations")
        self.model_box.activated.connect(self._on_model_box)
        tb.addWidget(self.model_box)
        self.demo_banner = QLabel("Demo — not for clinical use")
        self.demo_banner.setObjectName("demoBanner")
        self.demo_banner.setToolTip("The demo model was trained on synthetic images only")
        self.demo_banner_action = tb.addWidget(self.demo_banner)
        self.demo_banner_action.setVisible(False)
        tb.addSeparator()
        self._tool(tb, self.act_improve, "Improve model")
        spacer = QWidget()
        spacer.setSizePolicy(
            spacer.sizePolicy().horizontalPolicy().Expanding, spacer.sizePolicy().verticalPolicy()
        )
        tb.addWidget(spacer)
        self._tool(tb, self.act_settings, "⚙ Settings  Ctrl+,")

    def _tool(self, tb: QToolBar, action: QAction, text: str) -> QWidget:
        action.setIconText(text)  # the toolbar shows the key; menus show the plain text
        tb.addAction(action)
        return tb.widgetForAction(action)

    def _build_central(self) -> None:
        self.stack = QStackedWidget()
        self.welcome = WelcomePage()
        self.welcome.open_folder.connect(self.choose_folder)
        self.welcome.open_workspace.connect(self.choose_workspace)
        self.welcome.try_demo.connect(self.open_demo)
        self.welcome.open_recent.connect(lambda f: self.open_workspace(Path(f)))
        self.stack.addWidget(self.welcome)

        self.filter_bar = QuickFilterBar()
        self.worklist = WorklistPanel()
        self.filter_bar.changed.connect(self.worklist.set_quick_filter)
        self.worklist.model.counts_changed.connect(self.filter_bar.set_counts)
        self.worklist.image_selected.connect(self._on_image_selected)
        self.worklist.queue_changed.connect(self._on_queue_changed)

        self.review_page: QWidget = self._placeholder(
            "Open a folder or a workspace to review images."
        )
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("reviewSplitter")
        self.splitter.addWidget(self.worklist)
        self.splitter.addWidget(self.review_page)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setSizes([520, 840])
        review_tab = QWidget()
        lay = QVBoxLayout(review_tab)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.filter_bar)
        lay.addWidget(self.splitter, 1)

        self.dashboard_page: QWidget = self._placeholder(
            "The dashboard appears once a workspace is open."
        )
        self.tabs = QTabWidget()
        self.tabs.addTab(review_tab, "Review  (Ctrl+1)")
        self.tabs.addTab(self.dashboard_page, "Dashboard  (Ctrl+2)")
        self.tabs.currentChanged.connect(self._on_tab)
        QShortcut(QKeySequence("Ctrl+1"), self, activated=lambda: self.tabs.setCurrentIndex(0))
        QShortcut(QKeySequence("Ctrl+2"), self, activated=lambda: self.tabs.setCurrentIndex(1))
        self.stack.addWidget(self.tabs)
        self.setCentralWidget(self.stack)

    def _preload_pages(self) -> None:
        """Import the page modules (and torch, which they pull in) off the GUI thread."""
        if self._pages_ready or self._closing:
            return
        job = FunctionJob(_preload_modules, parent=self)
        self._run_job(job)

    def ensure_pages(self) -> None:
        """Swap the placeholders for the real review and dashboard pages (once)."""
        if self._pages_ready or not self._want_pages:
            return
        self._pages_ready = True
        review = self._make_review_page()
        old = self.review_page
        self.splitter.replaceWidget(1, review)
        old.deleteLater()
        self.review_page = review
        dash = self._make_dashboard_page()
        i = self.tabs.indexOf(self.dashboard_page)
        self.tabs.blockSignals(True)
        self.tabs.removeTab(i)
        self.tabs.insertTab(i, dash, "Dashboard  (Ctrl+2)")
        self.tabs.blockSignals(False)
        self.dashboard_page.deleteLater()
        self.dashboard_page = dash
        self._apply_user_settings()
        if not open_qsettings().contains("window/splitter"):
            self.splitter.setSizes([600, max(400, self.width() - 600)])

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if self._preload and not self._pages_ready:
            self._preload = False
            QTimer.singleShot(300, self._preload_pages)

    def _placeholder(self, text: str) -> QLabel:
        label = QLabel(text)
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        label.setWordWrap(True)
        label.setObjectName("notice")
        return label

    def _make_review_page(self) -> QWidget:
        try:
            from .review import ReviewPage  # noqa: PLC0415 - optional page, may be absent

            page = ReviewPage(self)
        except Exception as exc:  # noqa: BLE001 - the shell must work without it
            self._log(f"review page not available: {exc!r}")
            return self._placeholder("The review page is not available in this build.")
        if hasattr(page, "reviewed"):
            page.reviewed.connect(self._on_reviewed)
        if hasattr(page, "current_changed"):
            page.current_changed.connect(self._on_review_current)
        return page

    def _make_dashboard_page(self) -> QWidget:
        try:
            from .dashboard import DashboardPage  # noqa: PLC0415

            return DashboardPage(self)
        except Exception as exc:  # noqa: BLE001
            self._log(f"dashboard not available: {exc!r}")
            return self._placeholder("The dashboard is not available in this build.")

    def _call_page(self, page: QWidget, method: str, *args: Any) -> None:
        fn = getattr(page, method, None)
        if fn is None:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a page failing must not take the shell down
            self._log(f"{type(page).__name__}.{method} failed: {exc!r}")

    def _build_menus(self) -> None:
        mb = self.menuBar()
        file_menu = mb.addMenu("&File")
        for a in (self.act_open_folder, self.act_open_ws, self.act_demo):
            file_menu.addAction(a)
        file_menu.addSeparator()
        file_menu.addAction(self.act_screen)
        file_menu.addSeparator()
        for a in (self.act_export_csv, self.act_export_json, self.act_report):
            file_menu.addAction(a)
        file_menu.addSeparator()
        file_menu.addAction(self.act_settings)
        file_menu.addAction(self.act_quit)
        model_menu = mb.addMenu("&Model")
        model_menu.addAction(self.act_improve)
        model_menu.addAction(self.act_history)
        view = mb.addMenu("&View")
        group = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for key, text in (
            ("light", "Light theme"),
            ("dark", "Dark theme"),
            ("system", "Follow the system"),
        ):
            a = QAction(text, self, checkable=True)
            a.triggered.connect(lambda _=False, k=key: self.set_theme(k))
            group.addAction(a)
            view.addAction(a)
            self.theme_actions[key] = a
        help_menu = mb.addMenu("&Help")
        help_menu.addAction(self.act_about)

    def _build_statusbar(self) -> None:
        sb = self.statusBar()
        self.progress_label = QLabel()
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(220)
        self.progress_bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel  Esc")
        self.cancel_button.setToolTip("Stop screening after the current batch (Esc)")
        self.cancel_button.clicked.connect(self.cancel_screening)
        self.cancel_shortcut = QShortcut(QKeySequence("Esc"), self, activated=self.cancel_screening)
        self.cancel_shortcut.setEnabled(False)
        for w in (self.progress_label, self.progress_bar, self.cancel_button):
            sb.addWidget(w)
            w.hide()
        self.reviewer_button = QPushButton()
        self.reviewer_button.setFlat(True)
        self.reviewer_button.setToolTip("Change the reviewer name")
        self.reviewer_button.clicked.connect(self.change_reviewer)
        sb.addPermanentWidget(self.reviewer_button)

    # ------------------------------------------------------------------ settings
    def _apply_user_settings(self) -> None:
        self.reviewer_button.setText(f"reviewer: {self.settings.reviewer or '(not set)'}")
        self.theme_actions.get(self.settings.theme, self.theme_actions["light"]).setChecked(True)
        self._call_page(self.review_page, "set_reviewer", self.settings.reviewer)
        self._call_page(self.review_page, "set_blind", self.settings.blind_mode)
        self._call_page(self.review_page, "set_auto_advance", self.settings.auto_advance)
        self.welcome.set_recent(self.settings.recent_workspaces or [])

    def save_settings(self) -> None:
        self.settings.save()

    def set_theme(self, theme: str) -> None:
        self.settings.theme = theme
        app = QApplication.instance()
        if isinstance(app, QApplication):
            apply_theme(app, theme)
        self.theme_actions[theme].setChecked(True)
        self.save_settings()

    def show_settings(self) -> None:
        dlg = SettingsDialog(self.settings, self)
        if dlg.exec() == QDialog.DialogCode.Accepted:
            self.apply_settings(dlg.value())

    def apply_settings(self, new: AppSettings) -> None:
        """Take new settings: save them and tell the pages."""
        theme_changed = new.theme != self.settings.theme
        self.settings = new
        self.save_settings()
        self._apply_user_settings()
        if theme_changed:
            self.set_theme(new.theme)

    def change_reviewer(self) -> None:
        name = ask_reviewer(self, self.settings.reviewer)
        if name:
            self.settings.reviewer = name
            self.save_settings()
            self._apply_user_settings()

    def _restore_geometry(self) -> None:
        qs = open_qsettings()
        geo = qs.value("window/geometry")
        if isinstance(geo, QByteArray | bytes):
            self.restoreGeometry(QByteArray(geo))
        else:
            self.resize(1366, 768)
        state = qs.value("window/state")
        if isinstance(state, QByteArray | bytes):
            self.restoreState(QByteArray(state))
        split = qs.value("window/splitter")
        if isinstance(split, QByteArray | bytes):
            self.splitter.restoreState(QByteArray(split))

    def _save_geometry(self) -> None:
        qs = open_qsettings()
        qs.setValue("window/geometry", self.saveGeometry())
        qs.setValue("window/state", self.saveState())
        qs.setValue("window/splitter", self.splitter.saveState())
        qs.sync()

    # ------------------------------------------------------------------ models
    def _model_choices(self) -> list[tuple[str, str]]:
        choices: dict[str, str] = {}
        if self._ws is not None:
            try:
                for m in self._ws.models():
                    p = m.get("path")
                    if p and Path(p).is_file():
                        active = " (active)" if m.get("active") else ""
                        choices[str(Path(p).resolve())] = f"{m.get('name') or Path(p).stem}{active}"
            except Exception as exc:  # noqa: BLE001
                self._log(f"cannot list models: {exc!r}")
        demo = self._demo_model()
        if demo is not None:
            choices.setdefault(str(demo.resolve()), "Demo model (bundled) — not for clinical use")
        for p in (self.settings.last_model, str(self.model_path) if self.model_path else ""):
            if p and Path(p).is_file():
                choices.setdefault(str(Path(p).resolve()), Path(p).stem)
        return [(label, path) for path, label in choices.items()]

    @staticmethod
    def _demo_model() -> Path | None:
        try:
            from engine.demo import demo_model_path
        except ImportError:
            return None
        return demo_model_path()

    def _refresh_models(self) -> None:
        self.model_box.blockSignals(True)
        self.model_box.clear()
        for label, path in self._model_choices():
            self.model_box.addItem(label, path)
        self.model_box.addItem("Choose a model file…", CHOOSE_MODEL)
        if self.model_path is not None:
            i = self.model_box.findData(str(self.model_path))
            if i >= 0:
                self.model_box.setCurrentIndex(i)
        elif self.model_box.count() > 1:
            self.model_box.setCurrentIndex(0)
            self.set_model(Path(self.model_box.itemData(0)))
        self.model_box.blockSignals(False)

    def _on_model_box(self, i: int) -> None:
        data = self.model_box.itemData(i)
        if data == CHOOSE_MODEL:
            path, _ = QFileDialog.getOpenFileName(
                self, "Choose a model file", "", "EyeTriage model (*.safetensors)"
            )
            if path:
                self.set_model(Path(path))
            self._refresh_models()
        elif data:
            self.set_model(Path(data))

    def set_model(self, path: Path | None) -> bool:
        """Use the model at ``path`` (reads only its description, not its weights)."""
        if path is None:
            self.model_path, self.spec = None, None
            self._update_demo_banner()
            return True
        try:
            from engine.modelfile import read_spec

            path = Path(path).resolve()
            spec = read_spec(path)
        except Exception as exc:  # noqa: BLE001
            self.show_error("Cannot use this model", f"{path.name}: {exc}")
            return False
        self.model_path, self.spec = Path(path), spec
        self.settings.last_model = str(path)
        self._update_demo_banner()
        if self.model_box.findData(str(path)) < 0:
            self._refresh_models()
        self.model_box.setCurrentIndex(max(0, self.model_box.findData(str(path))))
        self._call_page(
            self.review_page, "set_workspace", self.ws_folder, self.model_path
        ) if self.ws_folder else None
        self._update_enabled()
        return True

    def _update_demo_banner(self) -> None:
        demo = bool(self.spec is not None and getattr(self.spec, "demo", False))
        self.demo_banner_action.setVisible(demo)
        self.demo_banner.setVisible(demo)

    def demo_banner_shown(self) -> bool:
        return self.demo_banner_action.isVisible()

    # ------------------------------------------------------------------ opening
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Folder of retinal images (it is only read, never changed)"
        )
        if folder:
            self.open_image_folder(Path(folder))

    def choose_workspace(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Workspace folder (contains workspace.sqlite)", str(self.data_dir / "workspaces")
        )
        if folder:
            self.open_workspace(Path(folder))

    def open_image_folder(self, folder: Path, screen: bool = False) -> Path | None:
        """Open (or create) the workspace for an image folder in the user data folder."""
        folder = Path(folder).resolve()
        if not folder.is_dir():
            self.show_error(
                "Cannot open the folder", f"{folder} is not a folder (moved or unplugged?)."
            )
            return None
        if (folder / "workspace.sqlite").is_file():
            return folder if self.open_workspace(folder) else None
        ws = workspace_for_folder(folder, self.data_dir)
        write_meta(ws, image_folder=str(folder))
        if not self.open_workspace(ws, create=True):
            return None
        if not self.is_screening():
            self.statusBar().showMessage(f"Workspace for {folder.name}: {ws}", 8000)
        if screen:
            self.start_screening(ask=False)
        return ws

    def open_workspace(self, folder: Path, create: bool = False) -> bool:
        """Open a workspace folder; the worklist loads in the background."""
        from engine.store import StoreError, Workspace

        folder = Path(folder).resolve()
        if self.screen_job is not None and self.screen_job.is_running():
            self.show_error(
                "Screening is running", "Cancel the current run before opening another workspace."
            )
            return False
        try:
            ws = Workspace.open(folder, create=create)
        except StoreError as exc:
            self.show_error("Cannot open the workspace", str(exc))
            return False
        if self._ws is not None:
            self._ws.close()
        self._ws = ws
        self.ws_folder = folder
        meta = read_meta(folder)
        self.image_folder = Path(meta["image_folder"]) if meta.get("image_folder") else None
        active = ws.active_model()
        if active and active.get("path") and Path(active["path"]).is_file():
            self.set_model(Path(active["path"]))
        self._refresh_models()
        self.settings.remember_workspace(str(folder))
        self.save_settings()
        self.welcome.set_recent(self.settings.recent_workspaces or [])
        self.setWindowTitle(f"EyeTriage — {folder.name}")
        self.ensure_pages()
        self.worklist.model.clear()
        self.worklist.set_thumbnail_dir(ws.cache_dir / "thumbs")
        self._call_page(self.review_page, "set_workspace", folder, self.model_path)
        self._call_page(self.dashboard_page, "set_workspace", folder, self.spec)
        self.stack.setCurrentWidget(self.tabs)
        self._update_enabled()
        self.reload_worklist()
        self.improver.workspace_changed()
        self.workspace_opened.emit(folder)
        if not self.settings.reviewer and not self._closing:
            QTimer.singleShot(0, self._ask_reviewer_once)
        return True

    def _ask_reviewer_once(self) -> None:
        if not self.settings.reviewer:
            self.change_reviewer()

    def reload_worklist(self) -> None:
        """Reload all rows from the store in the background (emits ``worklist_loaded``)."""
        if self.ws_folder is None:
            return
        job = FunctionJob(load_worklist_rows, self.ws_folder, parent=self)
        folder = self.ws_folder
        job.returned.connect(lambda res: self._on_rows_loaded(folder, res))
        job.failed.connect(lambda msg: self.show_error("Cannot read the workspace", msg))
        self._run_job(job)

    def _run_job(self, job: FunctionJob) -> None:
        self._jobs.add(job)
        job.finished.connect(lambda: self._jobs.discard(job))
        job.start()

    def _on_rows_loaded(self, folder: Path, result: dict) -> None:
        if folder != self.ws_folder or self._closing:
            return
        self.worklist.model.set_rows(result["rows"])
        if result.get("spec") is not None and self.spec is None:
            self.spec = result["spec"]
            self._update_demo_banner()
        self.worklist.select_first()
        self.worklist_loaded.emit()

    def open_demo(self) -> None:
        """Create (once) and open the demo workspace, then screen it with the demo model."""
        try:
            from engine.demo import create_demo_workspace
        except ImportError:
            self.show_error(
                "The demo is not available", "This build does not include the demo (engine.demo)."
            )
            return
        target = self.data_dir / "demo"
        self.statusBar().showMessage("Preparing the demo: making synthetic fundus images…")
        job = FunctionJob(create_demo_workspace, target, parent=self)
        job.returned.connect(self._on_demo_ready)
        job.failed.connect(lambda msg: self.show_error("The demo could not be prepared", msg))
        self._run_job(job)

    def _on_demo_ready(self, info: dict) -> None:
        if self._closing:
            return
        ws = Path(info["workspace"])
        write_meta(ws, image_folder=str(info["images"]), demo=True)
        if not self.open_workspace(ws):
            return
        self.set_model(Path(info["model"]))
        self.start_screening(ask=False)

    # ------------------------------------------------------------------ screening
    def start_screening(self, ask: bool = True, **overrides: Any) -> ScreenJob | None:
        """Start a run on the workspace's image folder (``ask`` shows the setup dialog)."""
        if self.ws_folder is None:
            self.show_error("No workspace", "Open a folder of images first (Ctrl+O).")
            return None
        if self.screen_job is not None and self.screen_job.is_running():
            return self.screen_job
        values: dict[str, Any] = {
            "image_folder": self.image_folder,
            "model_path": str(self.model_path) if self.model_path else None,
            "uncertainty": self.settings.uncertainty,
            "policy": self.settings.policy,
            "threshold": self.settings.threshold,
            "refer_findings": self.settings.refer_findings,
        }
        if ask:
            dlg = ScreeningDialog(
                self, self.settings, self._model_choices(), values["model_path"], self.image_folder
            )
            if dlg.exec() != QDialog.DialogCode.Accepted:
                return None
            values.update(dlg.values())
            self.settings.uncertainty = values["uncertainty"]
            self.settings.policy = values["policy"]
            self.settings.threshold = values["threshold"]
            self.settings.refer_findings = values["refer_findings"]
            self.save_settings()
        values.update(overrides)
        if not values.get("model_path"):
            self.show_error(
                "No model chosen",
                "Choose a model in the toolbar (or a model file) before screening.",
            )
            return None
        if Path(values["model_path"]).resolve() != self.model_path and not self.set_model(
            Path(values["model_path"])
        ):
            return None
        folder = values.get("image_folder")
        if folder is None and not values.get("paths"):
            self.show_error("No image folder", "Choose the folder of images to screen.")
            return None
        if folder is not None and Path(folder) != self.image_folder:
            self.image_folder = Path(folder).resolve()
            write_meta(self.ws_folder, image_folder=str(self.image_folder))
        request = ScreenRequest(
            workspace=self.ws_folder,
            model_path=Path(values["model_path"]),
            image_folder=self.image_folder,
            paths=values.get("paths"),
            device=self.settings.device,
            batch_size=values.get("batch_size", self.settings.batch_size),
            uncertainty=values["uncertainty"],
            policy=values["policy"],
            threshold=values["threshold"],
            refer_findings=values["refer_findings"],
            engine=self.settings.engine,
            extra={"actor": self.settings.reviewer or "desktop"},
        )
        job = ScreenJob(request, self)
        job.progress.connect(self._on_progress)
        job.status.connect(self._on_status)
        job.rows.connect(self._on_rows)
        job.done.connect(self._on_done)
        job.failed.connect(self._on_failed)
        job.finished.connect(self._on_job_finished)
        self.screen_job = job
        self.last_run = None
        self.statusBar().clearMessage()  # a temporary message would cover the progress
        self._show_progress(True)
        self.progress_label.setText("Screening: starting…")
        self.progress_bar.setRange(0, 0)
        job.start()
        self._update_enabled()
        return job

    def cancel_screening(self) -> None:
        job = self.screen_job
        if job is not None and job.is_running():
            job.cancel()
            self.progress_label.setText("Cancelling after this batch…")
            self.cancel_button.setEnabled(False)

    def _show_progress(self, on: bool) -> None:
        for w in (self.progress_label, self.progress_bar, self.cancel_button):
            w.setVisible(on)
        self.cancel_button.setEnabled(on)
        self.cancel_shortcut.setEnabled(on)

    def _on_status(self, message: str) -> None:
        if self.screen_job is not None and not self.screen_job.state.cancelled():
            self.progress_label.setText(message)

    def _on_progress(self, done: int, total: int, message: str, rate: float) -> None:
        job = self.screen_job
        if job is None or job.state.cancelled():
            return
        if message == "hashing files":
            self.progress_label.setText(f"Reading {group_thousands(total)} files…")
            self.progress_bar.setRange(0, 0)
            return
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(done)
        device = job.device or {"auto": "", "cpu": "CPU", "cuda": "GPU"}.get(job.request.device, "")
        self.progress_label.setText(progress_text(done, total, rate, device))

    def _on_rows(self, rows: list[dict]) -> None:
        if self._closing:
            return
        self.worklist.model.upsert_rows(rows)
        self.worklist.select_first()

    def _on_done(self, summary: dict) -> None:
        self.last_run = summary
        counts = summary.get("counts") or {}
        parts = [
            f"{triage_style(k).glyph} {n} {triage_style(k).word.lower()}"
            for k, n in counts.items()
            if n
        ]
        word = {"cancelled": "Screening cancelled", "finished": "Screening finished"}.get(
            summary.get("status"), "Screening stopped"
        )
        skipped = summary.get("skipped") or 0
        extra = f" · {skipped} already screened" if skipped else ""
        self.statusBar().showMessage(
            f"{word}: {summary.get('screened', 0)} images"
            + (" — " + ", ".join(parts) if parts else "")
            + extra,
            15000,
        )

    def _on_failed(self, message: str) -> None:
        self.show_error("Screening stopped because of an error", message)

    def _on_job_finished(self) -> None:
        job = self.screen_job
        self._show_progress(False)
        self._update_enabled()
        if self._closing:
            return
        if job is not None and job.summary is not None and job.summary.get("status") == "finished":
            self._activate_model_of(job)
        self.reload_worklist()
        self._refresh_models()
        self.improver.refresh()
        self._call_page(self.dashboard_page, "set_workspace", self.ws_folder, self.spec)
        self.screening_finished.emit(
            dict(job.summary or {"status": "failed", "error": job.error}) if job else {}
        )

    def _activate_model_of(self, job: ScreenJob) -> None:
        """The model the user just screened with becomes the workspace's active model."""
        if self._ws is None or job.run_id is None:
            return
        try:
            run = next((r for r in self._ws.runs() if r["id"] == job.run_id), None)
            active = self._ws.active_model()
            if run and (active is None or active["hash"] != run["model_hash"]):
                self._ws.set_active_model(
                    run["model_hash"], actor=self.settings.reviewer or "desktop"
                )
        except Exception as exc:  # noqa: BLE001
            self._log(f"cannot activate model: {exc!r}")

    def is_screening(self) -> bool:
        return self.screen_job is not None and self.screen_job.is_running()

    def _update_enabled(self) -> None:
        has_ws = self.ws_folder is not None
        running = self.is_screening()
        self.act_screen.setEnabled(has_ws and not running)
        for a in (self.act_export_csv, self.act_export_json, self.act_report):
            a.setEnabled(has_ws)
        self.model_box.setEnabled(not running)
        self.act_history.setEnabled(has_ws)
        self.improver.update_enabled()

    # ------------------------------------------------------------------ pages
    def _on_image_selected(self, image_id: int) -> None:
        if image_id == self._shown_id:
            return
        self._shown_id = image_id
        self._call_page(self.review_page, "show_image", image_id)

    def _on_review_current(self, image_id: int) -> None:
        self._shown_id = image_id
        self.worklist.select_image(image_id)

    def _on_queue_changed(self, ids: list) -> None:
        self._call_page(self.review_page, "set_queue", list(ids))

    def _on_reviewed(self, image_id: int) -> None:
        """A review was saved or undone: refresh that one row from the store."""
        if self._ws is None:
            return
        try:
            review = self._ws.current_review(int(image_id))
        except Exception as exc:  # noqa: BLE001
            self._log(f"cannot read review of {image_id}: {exc!r}")
            return
        self.worklist.model.set_review(int(image_id), review)
        self.improver.schedule_refresh()

    def _on_tab(self, i: int) -> None:
        if self.tabs.widget(i) is self.dashboard_page:
            self._call_page(self.dashboard_page, "refresh")

    # ------------------------------------------------------------------ export / about
    def export_results(self, fmt: str, out: Path | None = None) -> FunctionJob | None:
        """Write the results and reviews as CSV or JSON (in the background)."""
        if self.ws_folder is None:
            return None
        if out is None:
            name, _ = QFileDialog.getSaveFileName(
                self,
                f"Export results as {fmt.upper()}",
                f"{self.ws_folder.name}-results.{fmt}",
                f"{fmt.upper()} (*.{fmt})",
            )
            if not name:
                return None
            out = Path(name)
        job = FunctionJob(_write_export, self.ws_folder, Path(out), fmt, parent=self)
        job.returned.connect(
            lambda n: self.statusBar().showMessage(f"Exported {n} rows to {out}", 10000)
        )
        job.failed.connect(lambda msg: self.show_error("Export failed", msg))
        self._run_job(job)
        return job

    def patient_report(self) -> None:
        """Ask for a patient (or all) and a destination, then write PDF reports in the background."""
        if self.ws_folder is None:
            return
        try:
            from .report import (
                patients_in_workspace,
                write_all_patient_reports,
                write_patient_report,
            )
        except ImportError:
            self.show_error(
                "Reports are not available", "The patient report module is not part of this build."
            )
            return
        from PySide6.QtWidgets import QFileDialog, QInputDialog

        patients = patients_in_workspace(self.ws_folder)
        if not patients:
            self.show_error(
                "No patients to report",
                "No screened image has a patient id (parsed from names like 1221_OD_f_1.jpg).",
            )
            return
        everyone = f"All {len(patients)} patients (one PDF each)"
        choice, ok = QInputDialog.getItem(
            self, "Patient report", "Patient:", [*patients, everyone], 0, False
        )
        if not ok:
            return
        kw = {"spec": self.spec, "model_path": self.model_path, "with_overlays": True}
        if choice == everyone:
            out = QFileDialog.getExistingDirectory(self, "Folder for the patient reports")
            if not out:
                return
            job = FunctionJob(
                write_all_patient_reports, self.ws_folder, Path(out), parent=self, **kw
            )
        else:
            out, _ = QFileDialog.getSaveFileName(
                self, "Save patient report", f"eyetriage-patient-{choice}.pdf", "PDF (*.pdf)"
            )
            if not out:
                return
            job = FunctionJob(
                write_patient_report, self.ws_folder, choice, Path(out), parent=self, **kw
            )
        self.statusBar().showMessage("Writing the patient report (overlays are computed)…")
        job.returned.connect(
            lambda result: self.statusBar().showMessage(
                f"Report written: {result if isinstance(result, Path) else f'{len(result)} files'}",
                10000,
            )
        )
        job.failed.connect(lambda msg: self.show_error("The report could not be written", msg))
        self._run_job(job)

    def about_text(self) -> str:
        def version(dist: str) -> str:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return "not installed"

        from PySide6 import __version__ as pyside_version
        from PySide6.QtCore import qVersion

        lines = [
            f"EyeTriage {version('eyetriage')}",
            f"torch {version('torch')} · Qt {qVersion()} · PySide6 {pyside_version}",
            "",
            not_a_device_text(),
            "",
        ]
        if self.spec is not None:
            from engine.modelcard import DEMO_NOTICE, model_card_text

            sha = ""
            if self._ws is not None:
                try:
                    for m in self._ws.models():
                        if m.get("path") and self.model_path and Path(m["path"]) == self.model_path:
                            sha = m["hash"]
                except Exception:  # noqa: BLE001
                    sha = ""
            lines.append("Active model")
            lines.append(model_card_text(self.spec, sha))
            if getattr(self.spec, "demo", False):
                lines += ["", DEMO_NOTICE]
        else:
            lines.append("No model chosen yet.")
        return "\n".join(lines)

    def show_about(self) -> None:
        dlg = QDialog(self)
        dlg.setWindowTitle("About EyeTriage")
        text = QPlainTextEdit(self.about_text())
        text.setReadOnly(True)
        text.setMinimumSize(640, 420)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(dlg.reject)
        lay = QVBoxLayout(dlg)
        lay.addWidget(text)
        lay.addWidget(buttons)
        dlg.open()

    def show_model_history(self) -> None:
        """Every model version of the workspace; roll back to any (Ctrl+H)."""
        self.improver.open_history()

    # ------------------------------------------------------------------ messages
    def show_error(self, title: str, text: str) -> None:
        """A specific, kind message (window-modal, does not block the event loop)."""
        self.last_error = f"{title}: {text}"
        self._log(self.last_error)
        self.statusBar().showMessage(f"{title}: {text}", 15000)
        if self._closing:
            return
        box = QMessageBox(
            QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, self
        )
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    @staticmethod
    def _log(message: str) -> None:
        from .crash import log

        log.info(message)

    # ------------------------------------------------------------------ closing
    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Cancel running work and wait for it (no thread outlives the window)."""
        self._closing = True
        job = self.screen_job
        if job is not None and job.is_running():
            self.progress_label.setText("Stopping the screening run…")
            job.cancel()
            job.wait(timeout_s)
        self.improver.shutdown()
        self._call_page(self.review_page, "shutdown")
        self.worklist.shutdown()
        for j in list(self._jobs):
            j.wait(timeout_s)
        QThreadPool.globalInstance().waitForDone(int(timeout_s * 1000))
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        if not self._closing:
            self._save_geometry()
            self.save_settings()
            self.shutdown()
        event.accept()


def _preload_modules() -> None:
    import importlib

    for name in ("desktop.review", "desktop.dashboard", "engine.overlay", "engine.models"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the page falls back to a placeholder later
            pass


def _write_export(ws_folder: Path, out: Path, fmt: str) -> int:
    from engine.store import Workspace

    with Workspace.open(ws_folder, create=False) as ws:
        return ws.write_export(out, fmt)
