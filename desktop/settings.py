"""User settings, persisted with QSettings ("EyeTriage", "EyeTriage"), and the dialog editing them.

The settings file is always INI format (also on Windows and macOS) so tests can isolate it
with ``QSettings.setPath(IniFormat, UserScope, tmp_path)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.engines import ENGINE_WORDS, ENGINES, installed_engines
from engine.triage import DEFAULT_THRESHOLD

ORG = APP = "EyeTriage"
DEVICES = ("auto", "cpu", "cuda")
UNCERTAINTY_METHODS = ("none", "mc", "tta", "mc-full")
UNCERTAINTY_WORDS = {
    "none": "None (fastest)",
    "mc": "MC dropout (head)",
    "tta": "Test-time augmentation",
    "mc-full": "MC dropout (whole network)",
}
POLICIES = ("threshold", "conformal")
OVERLAY_METHODS = ("none", "gradcam", "ig")
THEMES = ("light", "dark", "system")
MAX_RECENT = 8


def open_qsettings() -> QSettings:
    """The application's settings store (INI file in the user scope)."""
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORG, APP)


def _to_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass
class AppSettings:
    """Everything the user chooses once and expects to find again next time."""

    reviewer: str = ""
    blind_mode: bool = False
    device: str = "auto"
    engine: str = "auto"
    batch_size: int = 32
    threshold: float = DEFAULT_THRESHOLD
    uncertainty: str = "mc"
    policy: str = "threshold"
    refer_findings: bool = False
    # patient names from DICOM files are left out of the workspace unless the user keeps them
    keep_patient_names: bool = False
    overlay_method: str = "gradcam"
    overlay_opacity: int = 40
    auto_advance: bool = True
    theme: str = "light"
    last_workspace: str = ""
    recent_workspaces: list[str] | None = None
    last_model: str = ""

    @classmethod
    def load(cls, qs: QSettings | None = None) -> AppSettings:
        """Read the settings (missing or unreadable values fall back to the defaults)."""
        qs = qs or open_qsettings()
        out = cls()
        for f in fields(cls):
            key = f"settings/{f.name}"
            if not qs.contains(key):
                continue
            raw = qs.value(key)
            default = getattr(out, f.name)
            try:
                if f.name == "recent_workspaces":
                    value = [str(v) for v in (raw if isinstance(raw, list) else [raw]) if v]
                elif isinstance(default, bool):
                    value = _to_bool(raw)
                elif isinstance(default, int):
                    value = int(raw)
                elif isinstance(default, float):
                    value = float(raw)
                else:
                    value = "" if raw is None else str(raw)
            except (TypeError, ValueError):
                continue
            setattr(out, f.name, value)
        out._sanitise()
        return out

    def _sanitise(self) -> None:
        if self.device not in DEVICES:
            self.device = "auto"
        if self.engine not in ENGINES:
            self.engine = "auto"
        if self.uncertainty not in UNCERTAINTY_METHODS:
            self.uncertainty = "mc"
        if self.policy not in POLICIES:
            self.policy = "threshold"
        if self.theme not in THEMES:
            self.theme = "light"
        if self.overlay_method not in OVERLAY_METHODS:
            self.overlay_method = "gradcam"
        self.batch_size = max(1, min(512, self.batch_size))
        self.threshold = max(0.5, min(0.999, self.threshold))
        self.overlay_opacity = max(0, min(100, self.overlay_opacity))

    def save(self, qs: QSettings | None = None) -> None:
        """Write every field and flush to disk."""
        qs = qs or open_qsettings()
        for name, value in asdict(self).items():
            if name == "recent_workspaces":
                value = list(value or [])
            qs.setValue(f"settings/{name}", value)
        qs.sync()

    def remember_workspace(self, folder: str) -> None:
        """Make ``folder`` the last workspace and the first of the recent ones."""
        self.last_workspace = folder
        recent = [w for w in (self.recent_workspaces or []) if w != folder]
        self.recent_workspaces = [folder, *recent][:MAX_RECENT]


def ask_reviewer(parent: QWidget | None, current: str = "") -> str | None:
    """Ask for the reviewer's name (asked once, then remembered by the caller)."""
    name, ok = QInputDialog.getText(
        parent,
        "Who is reviewing?",
        "Your name or initials (saved with every review you make):",
        QLineEdit.EchoMode.Normal,
        current,
    )
    name = name.strip()
    return name if ok and name else None


def add_screening_fields(
    form: QFormLayout, settings: AppSettings
) -> tuple[QComboBox, QComboBox, QDoubleSpinBox]:
    """Uncertainty method, triage policy and threshold rows (settings and the screening dialog)."""
    uncertainty = QComboBox()
    for m in UNCERTAINTY_METHODS:
        uncertainty.addItem(UNCERTAINTY_WORDS[m], m)
    uncertainty.setCurrentIndex(UNCERTAINTY_METHODS.index(settings.uncertainty))
    form.addRow("&Uncertainty:", uncertainty)
    policy = QComboBox()
    policy.addItem("Confidence threshold", "threshold")
    policy.addItem("Conformal set (refer when more than one answer)", "conformal")
    policy.setCurrentIndex(POLICIES.index(settings.policy))
    form.addRow("Triage &policy:", policy)
    threshold = QDoubleSpinBox()
    threshold.setRange(0.5, 0.999)
    threshold.setDecimals(3)
    threshold.setSingleStep(0.01)
    threshold.setValue(settings.threshold)
    threshold.setToolTip("Images below this calibrated confidence go to review")
    form.addRow("Confidence &threshold:", threshold)
    return uncertainty, policy, threshold


class SettingsDialog(QDialog):
    """Edit :class:`AppSettings`; :meth:`value` returns the edited copy."""

    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("EyeTriage settings")
        self._base = settings
        form = QFormLayout()

        self.reviewer = QLineEdit(settings.reviewer)
        self.reviewer.setPlaceholderText("name or initials")
        form.addRow("&Reviewer:", self.reviewer)

        self.blind = QCheckBox("Hide the AI answer and overlay until I decide")
        self.blind.setChecked(settings.blind_mode)
        form.addRow("&Blind mode:", self.blind)

        self.auto_advance = QCheckBox("Go to the next image after a decision")
        self.auto_advance.setChecked(settings.auto_advance)
        form.addRow("&Auto-advance:", self.auto_advance)

        self.device = QComboBox()
        for d, word in zip(DEVICES, ("Automatic", "CPU", "GPU (CUDA)"), strict=True):
            self.device.addItem(word, d)
        self.device.setCurrentIndex(DEVICES.index(settings.device))
        form.addRow("&Device:", self.device)

        self.engine = QComboBox()
        usable = installed_engines()
        for name in ENGINES:
            self.engine.addItem(ENGINE_WORDS[name], name)
            if name not in usable:  # listed, so the choice is known, but not selectable
                self.engine.model().item(self.engine.count() - 1).setEnabled(False)
        self.engine.setCurrentIndex(ENGINES.index(settings.engine))
        self.engine.setToolTip(
            "How the model runs on the CPU (a GPU always uses PyTorch). Automatic measures "
            "the engines once per model type on this computer and keeps the fastest; "
            "ONNX Runtime and OpenVINO run the model at full precision."
        )
        form.addRow("Inference &engine:", self.engine)

        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 512)
        self.batch_size.setValue(settings.batch_size)
        form.addRow("Batch si&ze:", self.batch_size)

        self.uncertainty, self.policy, self.threshold = add_screening_fields(form, settings)

        self.refer_findings = QCheckBox("Review every finding before referral")
        self.refer_findings.setToolTip(
            "A confident finding is normally 'Refer'; with this on it goes to Needs review first."
        )
        self.refer_findings.setChecked(settings.refer_findings)
        form.addRow("Fi&ndings:", self.refer_findings)

        self.keep_names = QCheckBox("Store the patient names DICOM files carry")
        self.keep_names.setChecked(settings.keep_patient_names)
        self.keep_names.setToolTip(
            "Off: only the patient ID, eye and date are kept from a DICOM file. "
            "On: the name is stored in the workspace too (exports can still be de-identified)."
        )
        form.addRow("Patient &names:", self.keep_names)

        self.overlay = QComboBox()
        for m, word in zip(
            OVERLAY_METHODS, ("None", "Grad-CAM", "Integrated Gradients"), strict=True
        ):
            self.overlay.addItem(word, m)
        self.overlay.setCurrentIndex(OVERLAY_METHODS.index(settings.overlay_method))
        form.addRow("Default &overlay:", self.overlay)

        self.opacity = QSlider()
        self.opacity.setOrientation(self.opacity.orientation().Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(settings.overlay_opacity)
        self._opacity_label = QLabel(f"{settings.overlay_opacity}%")
        self.opacity.valueChanged.connect(lambda v: self._opacity_label.setText(f"{v}%"))
        form.addRow("Overlay opacit&y:", self.opacity)
        form.addRow("", self._opacity_label)

        self.theme = QComboBox()
        for t, word in zip(THEMES, ("Light", "Dark", "Follow the system"), strict=True):
            self.theme.addItem(word, t)
        self.theme.setCurrentIndex(THEMES.index(settings.theme))
        form.addRow("T&heme:", self.theme)

        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def value(self) -> AppSettings:
        """The settings as edited in the dialog (a new object)."""
        data = asdict(self._base)
        data.update(
            reviewer=self.reviewer.text().strip(),
            blind_mode=self.blind.isChecked(),
            auto_advance=self.auto_advance.isChecked(),
            device=self.device.currentData(),
            engine=self.engine.currentData(),
            batch_size=self.batch_size.value(),
            uncertainty=self.uncertainty.currentData(),
            policy=self.policy.currentData(),
            threshold=round(self.threshold.value(), 3),
            refer_findings=self.refer_findings.isChecked(),
            keep_patient_names=self.keep_names.isChecked(),
            overlay_method=self.overlay.currentData(),
            overlay_opacity=self.opacity.value(),
            theme=self.theme.currentData(),
        )
        return AppSettings(**data)
