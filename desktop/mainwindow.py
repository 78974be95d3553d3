"""The main window: toolbar, welcome page or workspace view, menus, status bar.

The window wires its parts together; the work is done by its controllers and pages:

* :class:`~desktop.workspaces.WorkspaceRegistry`: which workspace belongs to a folder,
  the recent list;
* :class:`~desktop.model_choice.ModelChooser`: the toolbar's model choice and demo banner;
* :class:`~desktop.screening_control.ScreeningController`: the setup dialog, the run and
  its progress;
* :class:`~desktop.export_control.ExportController`: CSV/JSON export and patient reports;
* :class:`~desktop.improve.ImproveController`: Improve model and Model history;
* :class:`~desktop.workspace_view.WorkspaceView`: the Review and Dashboard tabs, whose
  pages the window reaches only through :class:`~desktop.pages.ReviewView` and
  :class:`~desktop.pages.DashboardView` (placeholders until a workspace is open, or
  always with ``pages=False``).

Controllers see the window as a :class:`~desktop.shell.Shell`. The module is a little over
600 lines because it is the one place where these parts meet (opening a workspace touches
all of them); each part's own logic lives in its module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, Qt, QThreadPool, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QFileDialog,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QWidget,
)

from .about import about_text, show_about
from .export_control import ExportController
from .improve import ImproveController
from .model_choice import ModelChooser
from .pages import DashboardView, ReviewView, preload_page_modules
from .screening_control import ScreeningController
from .settings import AppSettings, SettingsDialog, ask_reviewer, open_qsettings
from .shortcut_sheet import ShortcutSheet
from .shortcuts import PageShortcuts
from .style import apply_theme
from .welcome import WelcomePage
from .window_menus import THEME_MENU, add_action, build_menus, build_toolbar
from .workers import FunctionJob, ScreenJob, load_worklist_rows
from .workspace_view import WorkspaceView, worklist_width
from .workspaces import WorkspaceRegistry, workspace_name

FIRST_IMAGE_DELAY_MS = 250  # see _on_rows


class MainWindow(QMainWindow):
    """The EyeTriage window. ``data_dir`` is where workspaces for folders are created.

    ``preload`` imports the page modules in the background once the window is shown and,
    once a workspace is open, keeps a spare screening process ready (it loads torch in its
    own interpreter, so a run starts without that wait); ``pages=False`` keeps placeholders
    instead of the review and dashboard pages.
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
        self._spare_screener = preload
        self._want_pages = pages
        self.settings = settings or AppSettings.load()
        self.registry = WorkspaceRegistry(data_dir)
        self.data_dir = self.registry.data_dir
        self.ws_folder: Path | None = None
        self.image_folder: Path | None = None
        self.last_error: str | None = None
        self.last_activation: dict | None = None  # the engine's decision after the last run
        self._jobs: set[FunctionJob] = set()
        self._ws: Any = None  # the GUI thread's own Workspace connection (tiny queries only)
        self._shown_id: int | None = None
        self._closing = False
        self.setWindowTitle("EyeTriage")

        self.exports = ExportController(self, self)
        self.models = ModelChooser(self, self._registered_models, self)
        self.models.changed.connect(self._on_model_changed)
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

    # ------------------------------------------------------------------ the shell surface
    def window_widget(self) -> QWidget:
        return self

    def run_job(self, job: FunctionJob) -> None:
        """Start a background job and keep a reference until it has finished."""
        self._jobs.add(job)
        job.finished.connect(lambda: self._jobs.discard(job))
        job.start()

    _run_job = run_job  # the name Improve model's controller uses

    @property
    def screen_job(self) -> ScreenJob | None:
        return self.screening.job

    @property
    def last_run(self) -> dict | None:
        return self.screening.last_run

    # ------------------------------------------------------------------ building
    def _action(
        self, text: str, key: str | QKeySequence.StandardKey | None, slot: Any, tip: str = ""
    ) -> QAction:
        return add_action(self, text, key, slot, tip)

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
            "Export results as CSV…", "Ctrl+E", lambda: self.exports.export_results("csv")
        )
        self.act_export_json = self._action(
            "Export results as JSON…", "Ctrl+Shift+E", lambda: self.exports.export_results("json")
        )
        self.act_export_deid = self._action(
            "Export de-identified results as CSV…",
            None,
            lambda: self.exports.export_results("csv", deidentify=True),
        )
        self.act_report = self._action(
            "Patient report PDF…", "Ctrl+P", lambda: self.exports.patient_report()
        )
        self.act_quit = self._action("Quit", QKeySequence.StandardKey.Quit, self.close)
        self.act_about = self._action("About EyeTriage", None, self.show_about)
        self.act_shortcuts = self._action(
            "Keyboard shortcuts", "F1", self.show_shortcuts, "Every key on one page (F1 or ?)"
        )
        # "?" as well, except while a text field has the focus (there it types a "?")
        self._help_keys = PageShortcuts(self, [(["?"], self.show_shortcuts)])
        self.shortcut_sheet: ShortcutSheet | None = None
        self.act_improve = self._action("Improve model…", "Ctrl+I", lambda: None)
        self.act_improve.setEnabled(False)
        self.act_history = self._action(
            "Model history…", "Ctrl+H", self.show_model_history, "Every model version; roll back"
        )

    def _build_toolbar(self) -> None:
        self.toolbar = build_toolbar(
            self,
            [
                (self.act_open_folder, "Open folder  Ctrl+O"),
                (self.act_screen, "Screen ▶  F5"),
                None,
                self.models.add_to,
                None,
                (self.act_improve, "Improve model"),
                (self.act_settings, "⚙ Settings  Ctrl+,"),
            ],
        )
        self.model_box = self.models.box

    def _build_central(self) -> None:
        self.stack = QStackedWidget()
        self.welcome = WelcomePage()
        self.welcome.open_folder.connect(self.choose_folder)
        self.welcome.open_workspace.connect(self.choose_workspace)
        self.welcome.try_demo.connect(self.open_demo)
        self.welcome.open_recent.connect(lambda f: self.open_workspace(Path(f)))
        self.stack.addWidget(self.welcome)

        self.tabs = WorkspaceView()
        self.filter_bar, self.worklist = self.tabs.filter_bar, self.tabs.worklist
        self.splitter = self.tabs.splitter
        self._splitter_moved = open_qsettings().contains("window/splitter")
        self.splitter.splitterMoved.connect(lambda *_: setattr(self, "_splitter_moved", True))
        self.worklist.image_selected.connect(self._on_image_selected)
        self.worklist.queue_changed.connect(self._on_queue_changed)
        self.tabs.currentChanged.connect(self._on_tab)
        QShortcut(QKeySequence("Ctrl+1"), self, activated=lambda: self.tabs.setCurrentIndex(0))
        QShortcut(QKeySequence("Ctrl+2"), self, activated=lambda: self.tabs.setCurrentIndex(1))
        self.stack.addWidget(self.tabs)
        self.setCentralWidget(self.stack)

    @property
    def review_page(self) -> ReviewView:
        return self.tabs.review_page

    @property
    def dashboard_page(self) -> DashboardView:
        return self.tabs.dashboard_page

    def _preload_pages(self) -> None:
        """Import the page modules (and torch, which they pull in) off the GUI thread."""
        if self.tabs.pages_installed or self._closing:
            return
        self.run_job(FunctionJob(preload_page_modules, parent=self))

    def ensure_pages(self) -> None:
        """Swap the placeholders for the real review and dashboard pages (once)."""
        if self.tabs.pages_installed or not self._want_pages:
            return
        self.tabs.install_pages(self)
        self.review_page.reviewed.connect(self._on_reviewed)
        self.review_page.current_changed.connect(self._on_review_current)
        self._apply_user_settings()
        if not open_qsettings().contains("window/splitter"):
            self._fit_splitter()

    def _fit_splitter(self) -> None:
        left = worklist_width(self.width())
        self.splitter.setSizes([left, max(400, self.width() - left)])

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if not self._splitter_moved:
            self._fit_splitter()  # until the reader drags it, the worklist follows the window

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if self._preload and not self.tabs.pages_installed:
            self._preload = False
            QTimer.singleShot(300, self._preload_pages)

    def _build_menus(self) -> None:
        self.theme_actions = build_menus(
            self,
            [
                (
                    "&File",
                    [
                        *(self.act_open_folder, self.act_open_ws, self.act_demo, None),
                        *(self.act_screen, None),
                        *(self.act_export_csv, self.act_export_json, self.act_export_deid),
                        *(self.act_report, None),
                        *(self.act_settings, self.act_quit),
                    ],
                ),
                ("&Model", [self.act_improve, self.act_history]),
                ("&View", THEME_MENU),
                ("&Help", [self.act_shortcuts, self.act_about]),
            ],
            self.set_theme,
        )

    def _build_statusbar(self) -> None:
        sb = self.statusBar()
        self.screening = ScreeningController(self, self)
        self.screening.rows.connect(self._on_rows)
        self.screening.running_changed.connect(lambda _running: self._update_enabled())
        self.screening.ended.connect(self._on_screening_ended)
        # the progress widgets, by their old names (tests and the Improve controller use them)
        self.progress_label = self.screening.progress_label
        self.progress_bar = self.screening.progress_bar
        self.cancel_button = self.screening.cancel_button
        self.reviewer_button = QPushButton()
        self.reviewer_button.setFlat(True)
        self.reviewer_button.setToolTip("Change the reviewer name")
        self.reviewer_button.clicked.connect(self.change_reviewer)
        sb.addPermanentWidget(self.reviewer_button)

    # ------------------------------------------------------------------ settings
    def _apply_user_settings(self) -> None:
        self.reviewer_button.setText(f"reviewer: {self.settings.reviewer or '(not set)'}")
        self.theme_actions.get(self.settings.theme, self.theme_actions["light"]).setChecked(True)
        self.review_page.set_reviewer(self.settings.reviewer)
        self.review_page.set_blind(self.settings.blind_mode)
        self.worklist.set_blind(self.settings.blind_mode, self.settings.reviewer)
        self.filter_bar.set_blind(self.settings.blind_mode)
        self._update_dashboard_blind()
        self.review_page.set_auto_advance(self.settings.auto_advance)
        self.welcome.set_recent(self.registry.recent(self.settings))

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
    @property
    def model_path(self) -> Path | None:
        """The model file used for screening and explanations."""
        return self.models.path

    @property
    def spec(self) -> Any:
        """The chosen model's description (:class:`engine.modelfile.ModelSpec`)."""
        return self.models.spec

    def _registered_models(self) -> list[dict]:
        return [] if self._ws is None else self._ws.models()

    def model_choices(self) -> list[tuple[str, str]]:
        return self.models.choices()

    def _refresh_models(self) -> None:
        self.models.refresh()

    def set_model(self, path: Path | None) -> bool:
        """Use the model at ``path`` (reads only its description, not its weights)."""
        return self.models.set_model(path)

    def _on_model_changed(self) -> None:
        if self.ws_folder is not None:
            self.review_page.set_workspace(self.ws_folder, self.model_path)
            self._shown_id = None  # the page starts afresh: show the selected image again
            current = self.worklist.current_image()
            if current is not None:
                self._on_image_selected(current)
        self._update_enabled()

    def demo_banner_shown(self) -> bool:
        return self.models.banner_shown()

    # ------------------------------------------------------------------ opening
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Folder of retinal images (it is only read, never changed)"
        )
        if folder:
            self.open_image_folder(Path(folder))

    def choose_workspace(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Workspace folder", str(self.registry.workspaces_dir)
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
        ws, existing = self.registry.workspace_for(folder)
        if existing:
            return ws if self.open_workspace(ws) else None
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
        if self.is_screening():
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
        self.worklist.model.clear()  # no row of the previous workspace may be shown
        self._shown_id = None
        self.image_folder = self.registry.image_folder(folder)
        active = ws.active_model()
        if active and active.get("path") and Path(active["path"]).is_file():
            self.set_model(Path(active["path"]))
        self._refresh_models()
        self.welcome.set_recent(self.registry.remember(self.settings, folder))
        self.setWindowTitle(f"EyeTriage — {workspace_name(folder)}")
        self.ensure_pages()
        self.worklist.set_thumbnail_dir(ws.cache_dir / "thumbs")
        self.review_page.set_workspace(folder, self.model_path)
        self.dashboard_page.set_workspace(folder, self.spec)
        self.stack.setCurrentWidget(self.tabs)
        self._update_enabled()
        self.reload_worklist()
        self.improver.workspace_changed()
        if self._spare_screener:
            self.screening.keep_spare = True
            self.screening.prepare_spare()
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
        self.run_job(job)

    def _on_rows_loaded(self, folder: Path, result: dict) -> None:
        if folder != self.ws_folder or self._closing:
            return
        spec = result.get("spec")
        if spec is not None:
            self.worklist.model.display_name = spec.display
        current = self.worklist.current_image()  # the image the reader has open stays open
        # the model holds only this workspace's rows (cleared when another opens)
        self.worklist.model.refresh_rows(result["rows"])
        self._update_dashboard_blind()
        self.models.take_spec(spec)
        if not self.worklist.view.currentIndex().isValid():  # the list was rebuilt
            if current is None or not self.worklist.select_image(current):
                self.worklist.select_first()
        self.worklist_loaded.emit()

    def open_demo(self) -> None:
        """Create (once) and open the demo workspace, then screen it with the demo model."""
        from engine.demo import create_demo_workspace

        self.statusBar().showMessage("Preparing the demo: making synthetic fundus images…")
        job = FunctionJob(create_demo_workspace, self.registry.demo_dir, parent=self)
        job.returned.connect(self._on_demo_ready)
        job.failed.connect(lambda msg: self.show_error("The demo could not be prepared", msg))
        self.run_job(job)

    def _on_demo_ready(self, info: dict) -> None:
        if self._closing:
            return
        ws = Path(info["workspace"])
        self.registry.set_image_folder(ws, Path(info["images"]), demo=True)
        if not self.open_workspace(ws):
            return
        self.set_model(Path(info["model"]))
        self.start_screening(ask=False)

    # ------------------------------------------------------------------ screening
    def start_screening(self, ask: bool = True, **overrides: Any) -> ScreenJob | None:
        """Start a run on the workspace's image folder (``ask`` shows the setup dialog)."""
        self.last_activation = None
        return self.screening.start_screening(ask, **overrides)

    def set_image_folder(self, folder: Path) -> None:
        """Screen ``folder`` from now on (remembered with the workspace)."""
        self.image_folder = Path(folder).resolve()
        if self.ws_folder is not None:
            self.registry.set_image_folder(self.ws_folder, self.image_folder)

    def cancel_screening(self) -> None:
        self.screening.cancel()

    def is_screening(self) -> bool:
        return self.screening.is_running()

    def _on_rows(self, rows: list[dict]) -> None:
        if self._closing:
            return
        self.worklist.model.upsert_rows(rows)
        if not self.worklist.view.currentIndex().isValid():
            # the first image opens a moment later, after the first rows are drawn and the
            # next chunks have come in (a zero timer would run in the same pass): opening it
            # among them held the window for tens of milliseconds, and a key press waits for
            # the whole pass. bench_gui, 16 alternated runs each: 250 ms after the first
            # rows, longest pause median 44.5 ms, 13 runs within 50 ms; 20 ms after, median
            # 50.5 ms, 8 runs
            QTimer.singleShot(FIRST_IMAGE_DELAY_MS, self.worklist.select_first)

    def _on_screening_ended(self, summary: dict) -> None:
        """Show what the store now holds; say so when the active model did not change."""
        activation = summary.get("activation") or None
        self.last_activation = activation
        if activation and not activation.get("activated") and self._ws is not None:
            active = self._ws.active_model()  # the toolbar follows what the worklist shows
            if active and active.get("path") and Path(active["path"]).is_file():
                self.set_model(Path(active["path"]))
            if summary.get("status") == "finished":
                self._inform("Active model unchanged", activation["message"])
        self.reload_worklist()
        # the rest in the next turn of the event loop: no single turn does it all, and the
        # window can paint and take the reader's keys in between
        QTimer.singleShot(0, self, lambda: self._after_screening(summary))

    def _after_screening(self, summary: dict) -> None:
        if self._closing:  # the window closed in between: start no more background work
            return
        self._refresh_models()
        self.improver.refresh()
        if self.tabs.dashboard_shown():  # otherwise it is read when its tab is shown
            self.dashboard_page.set_workspace(self.ws_folder, self.spec)
        self.screening_finished.emit(summary)

    def _update_enabled(self) -> None:
        has_ws = self.ws_folder is not None
        running = self.is_screening()
        self.act_screen.setEnabled(has_ws and not running)
        for a in (self.act_export_csv, self.act_export_json, self.act_export_deid, self.act_report):
            a.setEnabled(has_ws)
        self.model_box.setEnabled(not running)
        self.act_history.setEnabled(has_ws)
        self.improver.update_enabled()

    # ------------------------------------------------------------------ pages
    def _on_image_selected(self, image_id: int) -> None:
        if image_id == self._shown_id:
            return
        self._shown_id = image_id
        self.review_page.show_image(image_id)

    def _on_review_current(self, image_id: int) -> None:
        self._shown_id = image_id
        self.worklist.select_image(image_id)

    def _on_queue_changed(self, ids: list) -> None:
        self.review_page.set_queue(list(ids), self.worklist.model.reviewed_ids(ids))
        if self._shown_id is not None and self._shown_id not in set(ids):
            # the image on screen is no longer in the list (another filter or a search): a
            # decision key must never act on an image the reader cannot see in the list
            if ids:
                self.worklist.select_image(int(ids[0]))
                self._on_image_selected(int(ids[0]))
            else:
                self._shown_id = None
                self.review_page.clear_image("No image in this list.\nChoose another filter.")

    def _update_dashboard_blind(self) -> None:
        """Blind mode keeps the dashboard (the AI's answers in aggregate) hidden until the
        reader has labelled every screened image."""
        self.dashboard_page.set_blind(self.settings.blind_mode, self.worklist.model.unread_count())

    def _on_reviewed(self, image_id: int) -> None:
        """A review was saved or undone: refresh that one row from the store."""
        if self._ws is None:
            return
        self.worklist.model.set_review(int(image_id), self._ws.current_review(int(image_id)))
        self._update_dashboard_blind()
        self.improver.schedule_refresh()

    def _on_tab(self, _index: int) -> None:
        if self.tabs.dashboard_shown():
            self._update_dashboard_blind()
            # the workspace and its active model as they are now (the dashboard is not read
            # while it is hidden, e.g. when a screening run ends)
            self.dashboard_page.set_workspace(self.ws_folder, self.spec)

    # ------------------------------------------------------------------ export / about
    def export_results(
        self, fmt: str, out: Path | None = None, deidentify: bool = False
    ) -> FunctionJob | None:
        """Write the results and reviews as CSV or JSON (in the background)."""
        return self.exports.export_results(fmt, out, deidentify)

    def patient_report(self) -> FunctionJob | None:
        """Ask for a patient (or all) and a destination, then write PDF reports."""
        return self.exports.patient_report()

    def about_text(self) -> str:
        model_hash = next(
            (
                m["hash"]
                for m in self._registered_models()
                if m.get("path") and self.model_path and Path(m["path"]) == self.model_path
            ),
            "",
        )
        return about_text(self.spec, model_hash)

    def current_patient(self) -> str | None:
        """The patient of the image on screen, for the patient report's first choice."""
        image_id = self._shown_id if self._shown_id is not None else self.worklist.current_image()
        if image_id is None:
            return None
        row = self.worklist.model.row_of(int(image_id))
        return None if row is None else self.worklist.model.row(row).get("patient")

    def show_about(self) -> None:
        show_about(self, self.about_text())

    def show_shortcuts(self) -> None:
        """The keyboard shortcut sheet (F1 or ?); pressing either again closes it."""
        if self.shortcut_sheet is None:
            self.shortcut_sheet = ShortcutSheet(self)
        if self.shortcut_sheet.isVisible():
            self.shortcut_sheet.close()
            return
        self.shortcut_sheet.show()
        self.shortcut_sheet.raise_()
        self.shortcut_sheet.activateWindow()

    def show_model_history(self) -> None:
        """Every model version of the workspace; roll back to any (Ctrl+H)."""
        self.improver.open_history()

    # ------------------------------------------------------------------ messages
    def show_error(self, title: str, text: str) -> None:
        """A specific, kind message (window-modal, does not block the event loop)."""
        self.last_error = f"{title}: {text}"
        self._message(QMessageBox.Icon.Warning, title, text)

    def _inform(self, title: str, text: str) -> None:
        """Something the user should know that is not an error (same presentation)."""
        self._message(QMessageBox.Icon.Information, title, text)

    def _message(self, icon: QMessageBox.Icon, title: str, text: str) -> None:
        self._log(f"{title}: {text}")
        self.statusBar().showMessage(f"{title}: {text}", 15000)
        if self._closing:
            return
        box = QMessageBox(icon, title, text, QMessageBox.StandardButton.Ok, self)
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
        self.screening.shutdown(timeout_s)
        self.improver.shutdown()
        self.review_page.shutdown()
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
