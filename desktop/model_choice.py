"""The toolbar's model choice: which model file screens and explains, and the demo banner.

Only the model's description is read here (never its weights). The choices are the
workspace's registered versions whose files exist, the bundled demo model, the last model
used and any file the user picks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QComboBox, QFileDialog, QLabel, QToolBar

from .shell import Shell

CHOOSE_MODEL = "__choose__"

__all__ = ["CHOOSE_MODEL", "ModelChooser"]


class ModelChooser(QObject):
    """The model combo box and the "Demo — not for clinical use" banner.

    ``registered`` returns the workspace's model rows (``[]`` without a workspace).
    ``changed`` is emitted after :meth:`set_model` switched to another model.
    """

    changed = Signal()

    def __init__(
        self, shell: Shell, registered: Callable[[], list[dict]], parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.shell = shell
        self.registered = registered
        self.path: Path | None = None
        self.spec: Any = None
        self.box = QComboBox()
        self.box.setMinimumContentsLength(22)
        self.box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.box.setToolTip("The model used for screening and explanations")
        self.box.activated.connect(self._on_box)
        self.banner = QLabel("Demo — not for clinical use")
        self.banner.setObjectName("demoBanner")
        self.banner.setToolTip("The demo model was trained on synthetic images only")
        self._banner_action: Any = None

    def add_to(self, toolbar: QToolBar) -> None:
        """Put the label, the combo box and the (hidden) demo banner on ``toolbar``."""
        toolbar.addWidget(QLabel(" model: "))
        toolbar.addWidget(self.box)
        self._banner_action = toolbar.addWidget(self.banner)
        self._banner_action.setVisible(False)

    def choices(self) -> list[tuple[str, str]]:
        """``(label, path)`` of every model that can be chosen now."""
        choices: dict[str, str] = {}
        for m in self.registered():
            p = m.get("path")
            if p and Path(p).is_file():
                active = " (active)" if m.get("active") else ""
                choices[str(Path(p).resolve())] = f"{m.get('name') or Path(p).stem}{active}"
        from engine.demo import demo_model_path

        demo = demo_model_path()
        if demo is not None:
            choices.setdefault(str(demo.resolve()), "Demo model (bundled) — not for clinical use")
        for p in (self.shell.settings.last_model, str(self.path) if self.path else ""):
            if p and Path(p).is_file():
                choices.setdefault(str(Path(p).resolve()), Path(p).stem)
        return [(label, path) for path, label in choices.items()]

    def refresh(self) -> None:
        """Rebuild the list; without a model yet, the first choice is taken."""
        self.box.blockSignals(True)
        self.box.clear()
        for label, path in self.choices():
            self.box.addItem(label, path)
        self.box.addItem("Choose a model file…", CHOOSE_MODEL)
        if self.path is not None:
            i = self.box.findData(str(self.path))
            if i >= 0:
                self.box.setCurrentIndex(i)
        elif self.box.count() > 1:
            self.box.setCurrentIndex(0)
            self.set_model(Path(self.box.itemData(0)))
        self.box.blockSignals(False)

    def _on_box(self, i: int) -> None:
        data = self.box.itemData(i)
        if data == CHOOSE_MODEL:
            path, _ = QFileDialog.getOpenFileName(
                self.shell.window_widget(),
                "Choose a model file",
                "",
                "EyeTriage model (*.safetensors)",
            )
            if path:
                self.set_model(Path(path))
            self.refresh()
        elif data:
            self.set_model(Path(data))

    def set_model(self, path: Path | None) -> bool:
        """Use the model at ``path``; False (and the user is told why) if it is unusable."""
        if path is None:
            self.path, self.spec = None, None
            self._update_banner()
            self.changed.emit()
            return True
        from engine.modelfile import ModelFileError, read_spec

        path = Path(path).resolve()
        try:
            spec = read_spec(path)
        except (ModelFileError, OSError, ValueError) as exc:
            self.shell.show_error("Cannot use this model", f"{path.name}: {exc}")
            return False
        self.path, self.spec = path, spec
        self.shell.settings.last_model = str(path)
        self._update_banner()
        if self.box.findData(str(path)) < 0:
            self.refresh()
        self.box.setCurrentIndex(max(0, self.box.findData(str(path))))
        self.changed.emit()
        return True

    def take_spec(self, spec: Any) -> None:
        """Use ``spec`` for display when no model file could be read yet."""
        if self.spec is None and spec is not None:
            self.spec = spec
            self._update_banner()

    def _update_banner(self) -> None:
        demo = bool(self.spec is not None and getattr(self.spec, "demo", False))
        if self._banner_action is not None:
            self._banner_action.setVisible(demo)
        self.banner.setVisible(demo)

    def banner_shown(self) -> bool:
        return self._banner_action is not None and self._banner_action.isVisible()
