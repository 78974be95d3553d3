"""Improve model: fine-tune on the reviewers' corrections in a child process, then compare.

* :class:`ImproveRun` runs the engine's worker command with :class:`QProcess` (the same
  executable with a worker sub-command, so it also works in the frozen app) and turns its
  JSON lines into signals. The child starts its own session on POSIX, so Cancel kills the
  whole process group (data-loader children included) with one ``killpg``; on Windows
  ``taskkill /T`` ends the tree. No Python thread is involved: stdout is read on the GUI
  thread as it arrives, a line at a time, and the process is always reaped by Qt.
* :class:`ImproveDialog` chooses the strategy and shows progress; if the child dies without
  a result it says why, and nothing in the workspace changes.
* :class:`CompareDialog` shows old vs new on the audit set and the images whose answer
  changed; Accept/Keep call the engine, which audits both.
* :class:`ImproveController` owns the toolbar button's state and the dialogs for the
  main window.

``engine.improve`` is imported inside functions, so this module imports without torch.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QObject,
    QProcess,
    QProcessEnvironment,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QCloseEvent, QColor, QImage, QImageReader, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from shiboken6 import isValid

from .style import current_is_dark

MIN_NEW_REVIEWS = 20  # new reviews needed before Improve is offered (engine default too)
STDERR_TAIL = 4000  # characters of the child's stderr kept for the error message
THUMB_H = 44  # thumbnail height in the changed-images list
MAX_THUMBS = 60  # thumbnails are made for the first rows only (cheap, in the background)

STRATEGIES: list[tuple[str, str, str]] = [
    (
        "head",
        "Head only — fast, hard to overfit",
        "Keeps the image features and retrains only the last layer. Best for a few dozen "
        "corrections; takes seconds to a few minutes on a CPU.",
    ),
    (
        "full",
        "Full fine-tuning",
        "Adjusts every layer. Can learn more from many reviews, but is slower and can "
        "overfit when there are only a few.",
    ),
    (
        "lora",
        "LoRA adapters — vision transformers",
        "Trains small adapters beside a large backbone (vision transformers). The new "
        "version stores only the adapter (a few MB) and the base model's hash.",
    ),
]

# key, word, higher is better, percent (else a plain number)
METRICS: list[tuple[str, str, bool, bool]] = [
    ("accuracy", "Accuracy — answers that match the reviewers", True, True),
    ("balanced_accuracy", "Balanced accuracy — mean of per-class accuracy", True, True),
    ("sensitivity", "Sensitivity — referable cases found", True, True),
    ("specificity", "Specificity — non-referable cases cleared", True, True),
    ("qwk", "Agreement on the grade (quadratic weighted kappa)", True, False),
    ("ece", "Calibration error (ECE) — confidence vs correctness", False, True),
    ("review_workload", "Review workload — images sent to review", False, True),
]
_JOBS: set[QObject] = set()  # background jobs kept alive until they have finished
SAME_EPS = 0.0005  # differences smaller than this read "no change"
VERDICT_PTS = 1.0  # balanced-accuracy change (points) needed to call a model better or worse
BIG_DROP_PTS = 5.0  # a drop this large in another measure is named in the verdict
GOOD = ("#2e7d4f", "#6fcf97")  # light, dark
BAD = ("#b3261e", "#f28b82")


# --------------------------------------------------------------------------- plain helpers
def format_eta(seconds: float | None) -> str:
    """``0:45`` (or ``--:--`` when unknown)."""
    from engine.tasks import format_eta as _fmt

    return _fmt(seconds)


def button_state(status: dict | None, has_workspace: bool, busy: bool) -> tuple[bool, str, str]:
    """Enabled, toolbar text and tooltip of the Improve button from ``review_status``."""
    if not has_workspace:
        return (
            False,
            "Improve model",
            "Open a workspace and review images first: the reviewers' corrections teach a "
            "later version of the model (Ctrl+I).",
        )
    if status is None:
        return False, "Improve model", "Counting the reviews…"
    if status.get("error"):
        return False, "Improve model", f"Cannot count the reviews: {status['error']}"
    new = int(status.get("new_reviews") or 0)
    need = int(status.get("min_new_reviews") or MIN_NEW_REVIEWS)
    text = f"Improve model ({new} new)"
    if status.get("active_model") is None:
        return False, "Improve model", "Screen the images first: there is no active model yet."
    if busy:
        return False, text, "Wait until screening has finished, then improve the model."
    if not status.get("enough"):
        word = "review" if new == 1 else "reviews"
        return False, text, f"{new} new {word}; {need} needed to improve the model."
    return (
        True,
        text,
        f"Fine-tune the model on {new} new reviews and compare it with the current one "
        "before switching (Ctrl+I).",
    )


def progress_text(event: dict, epochs: int) -> str:
    """``epoch 2/5 · loss 0.41 · ETA 0:45`` from a progress event."""
    parts = []
    if event.get("epoch") is not None:
        parts.append(f"epoch {event['epoch']}/{event.get('epochs') or epochs}")
    if event.get("loss") is not None:
        parts.append(f"loss {float(event['loss']):.2f}")
    if event.get("eta_s") is not None:
        parts.append(f"ETA {format_eta(float(event['eta_s']))}")
    if not parts and event.get("message"):
        parts.append(str(event["message"]))
    return " · ".join(parts) or "working…"


def crash_message(exit_code: int, crashed: bool, stderr_tail: str) -> str:
    """Why the child ended without a result, in words."""
    if crashed:
        head = (
            "The improvement process stopped unexpectedly (it crashed or was ended by the "
            "system, for example when the computer ran out of memory)."
        )
    else:
        head = f"The improvement process ended with exit code {exit_code} before it finished."
    last = [ln for ln in stderr_tail.strip().splitlines() if ln.strip()]
    tail = f"\n\nIts last message: {last[-1].strip()}" if last else ""
    return f"{head}{tail}\n\nNothing was changed: the current model stays active."


def metric_change(key: str, before: Any, after: Any) -> tuple[str, int]:
    """Text and direction (+1 better, -1 worse, 0 same) of a metric's change."""
    higher, percent = next(((h, p) for k, _, h, p in METRICS if k == key), (True, True))
    if before is None or after is None:
        return "—", 0
    d = float(after) - float(before)
    if abs(d) < SAME_EPS:
        return "= no change", 0
    better = (d > 0) == higher
    amount = f"{d * 100:+.1f} pts" if percent else f"{d:+.2f}"
    return (f"▲ {amount} better" if better else f"▼ {amount} worse"), (1 if better else -1)


def format_metric(key: str, value: Any) -> str:
    """A metric value with its unit (``—`` when not applicable)."""
    percent = next((p for k, _, _, p in METRICS if k == key), True)
    if value is None:
        return "—"
    return f"{float(value) * 100:.1f} %" if percent else f"{float(value):.2f}"


def verdict(result: dict) -> tuple[str, int]:
    """One sentence about the new model, and whether to recommend it (+1), not (-1), or
    neither (0).

    Balanced accuracy decides (a change under :data:`VERDICT_PTS` points reads "about the
    same"); a large drop in another measure is named and withholds the recommendation.
    """
    before, after = result.get("before") or {}, result.get("after") or {}
    key = "balanced_accuracy" if before.get("balanced_accuracy") is not None else "accuracy"
    name = "balanced accuracy" if key == "balanced_accuracy" else "accuracy"
    b, a = before.get(key), after.get(key)
    if b is None or a is None:
        return "The audit set is too small to compare the models.", 0
    d = float(a) - float(b)
    amount = f"{d * 100:+.1f} pts"
    drops = []
    for k, word, _higher, percent in METRICS:
        if k == key or k in ("ece", "review_workload") or not percent:
            continue
        bk, ak = before.get(k), after.get(k)
        if bk is not None and ak is not None and (float(ak) - float(bk)) * 100 <= -BIG_DROP_PTS:
            drops.append(f"{word.split(' —')[0].lower()} {(float(ak) - float(bk)) * 100:+.1f} pts")
    watch = f" But watch: {', '.join(drops)}." if drops else ""
    if d * 100 >= VERDICT_PTS:
        text = f"▲ The new model is better on the audit set ({name} {amount}).{watch}"
        return text, 0 if drops else 1
    if d * 100 <= -VERDICT_PTS:
        return (
            f"▼ The new model is worse on the audit set ({name} {amount}). "
            "Keeping the current model is recommended.",
            -1,
        )
    return f"= The two models score about the same {name} ({amount}).{watch}", -1 if drops else 0


def positive_label(metrics: dict) -> str | None:
    """The referable (second) class of a binary model, named in sensitivity/specificity."""
    labels = metrics.get("labels") or []
    return str(labels[1]) if metrics.get("task") == "binary" and len(labels) == 2 else None


def compare_summary(result: dict, n: Any) -> str:
    """The compare dialog's opening lines: audit set, training, self-learning, warnings."""
    strategy = next((w for k, w, _ in STRATEGIES if k == result.get("strategy")), "?")
    lines = [
        f"Audit set: {n} reviewed images, never used for training. The new version learned "
        f"from {result.get('n_train', '?')} images ({strategy.split(' —')[0].lower()}, "
        f"{result.get('epochs_run', '?')} epochs, took {format_eta(result.get('seconds'))})."
    ]
    sl = result.get("self_learning") or {}
    if result.get("pseudo_labels"):
        helped = sl.get("helped")
        verdict_word = (
            "" if helped is None else (" It helped." if helped else " It did not help here.")
        )
        lines.append(
            f"Self-learning added {result['pseudo_labels']} confident unreviewed images."
            + verdict_word
        )
    for w in result.get("warnings") or []:
        lines.append(f"⚠ {w}")
    return "\n".join(lines)


def short_hash(h: str | None) -> str:
    return (h or "")[:8]


def display_label(label: Any) -> str:
    if label is None:
        return "—"
    if isinstance(label, list | tuple):
        return ", ".join(display_label(x) for x in label) or "—"
    return str(label).replace("_", " ")


def fetch_status(ws_folder: Path) -> dict:
    """``engine.improve.review_status`` (run in a worker)."""
    from engine.improve import review_status

    return dict(review_status(ws_folder, min_new_reviews=MIN_NEW_REVIEWS))


def load_thumbnails(paths: list[str], height: int = THUMB_H * 2) -> list[QImage | None]:
    """Small images for the changed-images list (QImage is safe off the GUI thread)."""
    out: list[QImage | None] = []
    for p in paths:
        reader = QImageReader(p)
        size = reader.size()
        if size.isValid() and size.height() > 0:
            reader.setScaledSize(QSize(max(1, size.width() * height // size.height()), height))
        img = reader.read()
        out.append(None if img.isNull() else img)
    return out


def kill_process_tree(pid: int, own_session: bool) -> None:
    """Kill ``pid`` and its children (its process group on POSIX, ``taskkill /T`` on Windows)."""
    if pid <= 0:
        return
    if sys.platform == "win32":
        QProcess.startDetached("taskkill", ["/T", "/F", "/PID", str(pid)])
        return
    try:
        if own_session or os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- the child
class ImproveRun(QObject):
    """One improvement run in a child process, reporting its JSON lines as signals.

    ``progress(dict)`` / ``log(str)`` while it runs; then exactly one of ``succeeded(result)``,
    ``failed(message)`` or ``cancelled()``; then always ``ended()``.
    """

    progress = Signal(dict)
    log = Signal(str)
    succeeded = Signal(dict)
    failed = Signal(str)
    cancelled = Signal()
    ended = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.proc: QProcess | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self.pid = 0
        self._own_session = False
        self._buf = b""
        self._stderr = ""
        self._cancel = False
        self._running = False
        self._ws_folder: Path | None = None
        self._started_at = 0.0

    def command(self, ws_folder: Path, config: dict) -> list[str]:
        """The worker command line (from the engine, so the frozen app uses itself)."""
        import engine.improve as improve

        return list(
            improve.worker_command(["improve", str(ws_folder), "--config", json.dumps(config)])
        )

    def start(self, ws_folder: Path, config: dict) -> None:
        """Start the child (returns at once)."""
        cmd = self.command(Path(ws_folder), config)
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        if not getattr(sys, "frozen", False):  # the child imports this source tree
            root = str(Path(__file__).resolve().parents[1])
            old = env.value("PYTHONPATH", "")
            env.insert("PYTHONPATH", os.pathsep.join(filter(None, [root, old])))
        proc.setProcessEnvironment(env)
        if sys.platform != "win32" and hasattr(proc, "setUnixProcessParameters"):
            proc.setUnixProcessParameters(QProcess.UnixProcessFlag.CreateNewSession)
            self._own_session = True
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_error)
        self.proc = proc
        self._running = True
        self._ws_folder = Path(ws_folder)
        self._started_at = time.time()
        proc.start(cmd[0], cmd[1:])
        self.pid = int(proc.processId() or 0)

    def is_running(self) -> bool:
        return self._running

    def cancel(self) -> None:
        """Kill the child and everything it started; ``cancelled`` follows."""
        if not self._running or self.proc is None:
            return
        self._cancel = True
        pid = int(self.proc.processId() or self.pid)
        kill_process_tree(pid, self._own_session)
        self.proc.kill()

    def wait(self, msecs: int = 30_000) -> bool:
        """Block until the child has ended (used when the window closes)."""
        if self.proc is None or not self._running:
            return True
        return self.proc.waitForFinished(msecs)

    # ---- reading
    def _read_stdout(self) -> None:
        if self.proc is None:
            return
        self._buf += bytes(self.proc.readAllStandardOutput().data())
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").strip())

    def _read_stderr(self) -> None:
        if self.proc is None:
            return
        text = bytes(self.proc.readAllStandardError().data()).decode("utf-8", "replace")
        self._stderr = (self._stderr + text)[-STDERR_TAIL:]
        for ln in text.splitlines():
            if ln.strip():
                self.log.emit(ln.rstrip())

    def _line(self, line: str) -> None:
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            self.log.emit(line)
            return
        kind = event.get("event")
        if kind == "progress":
            self.progress.emit(event)
        elif kind == "log":
            self.log.emit(str(event.get("message", "")))
        elif kind == "done":
            self.result = dict(event.get("result") or {})
        elif kind == "error":
            self.error = str(event.get("message") or "unknown error")
            self.log.emit(f"error: {self.error}")

    # ---- ending
    def _clean_temporary_files(self) -> None:
        """Remove half-written model files a killed child left (``models/.*.tmp``)."""
        if self._ws_folder is None:
            return
        try:
            from engine.improve import MODELS_DIR
        except ImportError:
            MODELS_DIR = "models"  # noqa: N806
        folder = self._ws_folder / MODELS_DIR
        if not folder.is_dir():
            return
        for p in folder.glob(".*.tmp"):
            try:
                if p.stat().st_mtime >= self._started_at - 1:
                    p.unlink()
            except OSError:
                pass

    def _on_error(self, err: QProcess.ProcessError) -> None:
        if err == QProcess.ProcessError.FailedToStart and self._running:
            program = self.proc.program() if self.proc is not None else "?"
            self.error = (
                f"The improvement process could not be started ({program}). "
                "Check that EyeTriage is installed completely."
            )
            self._finish(-1, False)

    def _on_finished(self, exit_code: int, status: QProcess.ExitStatus) -> None:
        self._read_stdout()
        self._read_stderr()
        if self._buf.strip():
            self._line(self._buf.decode("utf-8", "replace").strip())
            self._buf = b""
        self._finish(exit_code, status == QProcess.ExitStatus.CrashExit)

    def _finish(self, exit_code: int, crashed: bool) -> None:
        if not self._running:
            return
        self._running = False
        if self.result is None or self._cancel:
            self._clean_temporary_files()
        if self._cancel:
            self.cancelled.emit()
        elif self.result is not None:
            self.succeeded.emit(self.result)
        elif self.error is not None:
            self.failed.emit(
                f"{self.error}\n\nNothing was changed: the current model stays active."
            )
        else:
            self.failed.emit(crash_message(exit_code, crashed, self._stderr))
        self.ended.emit()


# --------------------------------------------------------------------------- dialogs
class ImproveDialog(QDialog):
    """Choose how to fine-tune, run it in a child process, report progress or why it failed.

    ``result_ready(result)`` is emitted when the child delivered a new model version.
    """

    result_ready = Signal(dict)

    def __init__(self, ws_folder: Path, status: dict | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Improve the model")
        self.ws_folder = Path(ws_folder)
        self.status = status or {}
        self.run: ImproveRun | None = None
        self.outcome = ""  # "", "running", "done", "failed", "cancelled"
        self.message = ""

        title = QLabel("Learn from the reviewers' decisions")
        font = title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.25)
        title.setFont(font)
        self.summary = QLabel(self._summary_text())
        self.summary.setWordWrap(True)

        form = QFormLayout()
        self.strategy = QComboBox()
        for key, word, _ in STRATEGIES:
            self.strategy.addItem(word, key)
        self.strategy.currentIndexChanged.connect(self._explain_strategy)
        form.addRow("&Strategy:", self.strategy)
        self.strategy_note = QLabel()
        self.strategy_note.setObjectName("notice")
        self.strategy_note.setWordWrap(True)
        form.addRow("", self.strategy_note)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100)
        self.epochs.setValue(5)
        self.epochs.setSuffix(" epochs")
        self.epochs.setToolTip("Passes over the training images (early stopping may end sooner)")
        form.addRow("&Epochs:", self.epochs)
        self.weight = QDoubleSpinBox()
        self.weight.setRange(1.0, 10.0)
        self.weight.setSingleStep(0.5)
        self.weight.setDecimals(1)
        self.weight.setValue(2.0)
        self.weight.setSuffix(" ×")
        self.weight.setToolTip("How much more an image counts when a reviewer corrected the AI")
        form.addRow("&Corrected-image weight:", self.weight)
        self.self_learning = QCheckBox(
            "Self-learning: also learn from unreviewed images the model is very sure about "
            "(at a lower weight)"
        )
        form.addRow("", self.self_learning)
        self.training_data = QCheckBox(
            "Also use the model's original training data (when available)"
        )
        form.addRow("", self.training_data)
        self.options = QWidget()
        self.options.setLayout(form)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress_label = QLabel("Not started.")
        self.progress_label.setWordWrap(True)
        self.details_button = QToolButton()
        self.details_button.setText("Details ▸")
        self.details_button.setCheckable(True)
        self.details_button.toggled.connect(self._toggle_details)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setMaximumBlockCount(2000)
        self.details.setMinimumHeight(120)
        self.details.hide()

        self.start_button = QPushButton("Start  Ctrl+Enter")
        self.start_button.setDefault(True)
        self.start_button.setShortcut(QKeySequence("Ctrl+Return"))
        self.start_button.clicked.connect(self.start)
        self.close_button = QPushButton("Close  Esc")
        self.close_button.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addWidget(self.details_button)
        buttons.addStretch(1)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.close_button)

        lay = QVBoxLayout(self)
        lay.addWidget(title)
        lay.addWidget(self.summary)
        lay.addWidget(self.options)
        lay.addWidget(self.progress)
        lay.addWidget(self.progress_label)
        lay.addWidget(self.details, 1)
        lay.addLayout(buttons)
        self._explain_strategy()
        self.resize(640, 420)

    def _summary_text(self) -> str:
        s = self.status
        new, total = s.get("new_reviews"), s.get("reviewed_total")
        train, audit = s.get("train_n"), s.get("audit_n")
        lines = []
        if new is not None:
            lines.append(
                f"{new} new reviews since the active model was made; {total} reviewed images in all."
            )
        if train is not None and audit is not None:
            lines.append(
                f"{train} images to learn from · {audit} kept aside as the audit set "
                "(never trained on) to compare old and new."
            )
        lines.append(
            "The current model stays active until you have compared the two and accepted "
            "the new one."
        )
        return "\n".join(lines)

    def _explain_strategy(self) -> None:
        self.strategy_note.setText(STRATEGIES[self.strategy.currentIndex()][2])

    def _toggle_details(self, on: bool) -> None:
        self.details.setVisible(on)
        self.details_button.setText("Details ▾" if on else "Details ▸")

    def config(self) -> dict:
        """The chosen settings as the engine's ``ImproveConfig`` dictionary."""
        from engine.improve import ImproveConfig

        cfg = ImproveConfig(
            epochs=self.epochs.value(),
            strategy=self.strategy.currentData(),
            corrected_weight=round(self.weight.value(), 2),
            self_learning=self.self_learning.isChecked(),
            include_training_data=self.training_data.isChecked(),
            min_new_reviews=int(self.status.get("min_new_reviews") or MIN_NEW_REVIEWS),
        )
        return cfg.to_dict()

    def set_options(
        self,
        strategy: str = "head",
        epochs: int = 5,
        corrected_weight: float = 2.0,
        self_learning: bool = False,
    ) -> None:
        """Set the choices (used by scripts and tests)."""
        self.strategy.setCurrentIndex(max(0, self.strategy.findData(strategy)))
        self.epochs.setValue(epochs)
        self.weight.setValue(corrected_weight)
        self.self_learning.setChecked(self_learning)

    # ---- running
    def is_running(self) -> bool:
        return self.run is not None and self.run.is_running()

    def start(self) -> None:
        """Start the child process with the chosen settings."""
        if self.is_running():
            return
        try:
            config = self.config()
        except Exception as exc:  # noqa: BLE001 - the engine part may be missing in a build
            self._fail(f"Improving is not available: {exc}")
            return
        run = ImproveRun(self)
        run.progress.connect(self._on_progress)
        run.log.connect(self.details.appendPlainText)
        run.succeeded.connect(self._on_succeeded)
        run.failed.connect(self._fail)
        run.cancelled.connect(self._on_cancelled)
        run.ended.connect(self._on_ended)
        self.run = run
        self.outcome, self.message = "running", ""
        self.options.setEnabled(False)
        self.start_button.setEnabled(False)
        self.close_button.setText("Cancel  Esc")
        self.close_button.setToolTip("Stop the improvement now; nothing will change")
        self.progress.setRange(0, 0)
        self.progress_label.setText("Starting: loading the model and the reviewed images…")
        self.details.appendPlainText(
            f"strategy {config.get('strategy')} · {config.get('epochs')} epochs"
        )
        run.start(self.ws_folder, config)

    def cancel(self) -> None:
        """Kill the run (the whole process tree)."""
        if self.is_running() and self.run is not None:
            self.progress_label.setText("Cancelling…")
            self.close_button.setEnabled(False)
            self.run.cancel()

    def _on_progress(self, event: dict) -> None:
        done, total = event.get("done"), event.get("total")
        if isinstance(done, int | float) and isinstance(total, int | float) and total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(1.0, float(done) / float(total))))
        self.progress_label.setText(progress_text(event, self.epochs.value()))

    def _on_succeeded(self, result: dict) -> None:
        self.outcome = "done"
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        secs = result.get("seconds")
        took = f" in {format_eta(float(secs))}" if secs is not None else ""
        self.message = f"Finished{took}: compare the new version with the current model."
        self.progress_label.setText(self.message)
        self.result_ready.emit(result)

    def _fail(self, message: str) -> None:
        self.outcome, self.message = "failed", message
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label.setText("✕ " + message)
        self._idle()

    def _on_cancelled(self) -> None:
        self.outcome = "cancelled"
        self.message = "Cancelled. Nothing was changed: the current model stays active."
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress_label.setText(self.message)
        self._idle()

    def _idle(self) -> None:
        self.options.setEnabled(True)
        self.start_button.setEnabled(True)
        self.start_button.setText("Try again  Ctrl+Enter")
        self.close_button.setEnabled(True)
        self.close_button.setText("Close  Esc")
        self.close_button.setToolTip("")

    def _on_ended(self) -> None:
        if self.outcome == "done":
            self.accept()

    # ---- closing
    def reject(self) -> None:  # Esc and the Close/Cancel button
        if self.is_running():
            self.cancel()
            return
        super().reject()

    def shutdown(self, msecs: int = 30_000) -> None:
        """Kill a running child and wait for it (the window is closing)."""
        if self.is_running() and self.run is not None:
            self.run.cancel()
            self.run.wait(msecs)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        if self.is_running():
            self.cancel()
            event.ignore()
            return
        super().closeEvent(event)


class CompareDialog(QDialog):
    """Old vs new model on the audit set, the images whose answer changed, Accept or Keep.

    ``decided(str)`` carries "accepted" or "rejected" after the engine recorded the choice;
    ``error(str)`` when it could not.
    """

    decided = Signal(str)
    error = Signal(str)

    def __init__(
        self, ws_folder: Path, result: dict, actor: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare the models on the audit set")
        self.ws_folder = Path(ws_folder)
        self.result = result
        self.actor = actor or "desktop"
        self.decision = ""
        self._thumb_job: Any = None
        before, after = result.get("before") or {}, result.get("after") or {}
        dark = current_is_dark()

        n = after.get("n", before.get("n"))
        self.head = QLabel(compare_summary(result, n))
        self.head.setWordWrap(True)
        text, direction = verdict(result)
        self.verdict = QLabel(text)
        self.verdict.setWordWrap(True)
        colour = "" if not direction else f" color: {(GOOD if direction > 0 else BAD)[int(dark)]};"
        self.verdict.setStyleSheet(f"font-weight: 600;{colour}")
        self.direction = direction

        self.metrics = QTableWidget(0, 4)
        self.metrics.setHorizontalHeaderLabels(["Measure", "Current model", "New model", "Change"])
        self.metrics.verticalHeader().hide()
        self.metrics.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.metrics.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.metrics.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.metric_rows: dict[str, tuple[str, str, str]] = {}
        positive = positive_label(before)
        for key, word, _, _ in METRICS:
            if positive and key in ("sensitivity", "specificity"):
                found = "found" if key == "sensitivity" else "correctly not called"
                word = f"{key.capitalize()} — {display_label(positive)} cases {found}"
            b, a = before.get(key), after.get(key)
            if b is None and a is None:
                continue
            change, d = metric_change(key, b, a)
            r = self.metrics.rowCount()
            self.metrics.insertRow(r)
            cells = [word, format_metric(key, b), format_metric(key, a), change]
            for c, value in enumerate(cells):
                item = QTableWidgetItem(value)
                if c in (1, 2):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                if c == 3 and d:
                    item.setForeground(QColor((GOOD if d > 0 else BAD)[int(dark)]))
                self.metrics.setItem(r, c, item)
            self.metric_rows[key] = (cells[1], cells[2], change)
        hh = self.metrics.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in (1, 2, 3):
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.metrics.setMinimumHeight(
            self.metrics.horizontalHeader().height()
            + sum(self.metrics.rowHeight(r) for r in range(self.metrics.rowCount()))
            + 6
        )

        changed = list(result.get("changed") or [])
        fixed = sum(
            1 for c in changed if c.get("truth") is not None and c.get("after") == c.get("truth")
        )
        broke = sum(
            1 for c in changed if c.get("truth") is not None and c.get("before") == c.get("truth")
        )
        self.changed_label = QLabel(
            f"{len(changed)} audit images changed their answer: "
            f"✓ {fixed} now right, ✕ {broke} now wrong."
            if changed
            else "No audit image changed its answer."
        )
        self.changed = QTableWidget(len(changed), 4)
        self.changed.setHorizontalHeaderLabels(
            ["File", "Before → after", "Reviewer's answer", "Result"]
        )
        self.changed.verticalHeader().hide()
        self.changed.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.changed.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.changed.setIconSize(QSize(THUMB_H, THUMB_H))
        for r, c in enumerate(changed):
            path = str(c.get("path") or "")
            name = QTableWidgetItem(Path(path).name or str(c.get("image_id")))
            name.setToolTip(path)
            self.changed.setItem(r, 0, name)
            self.changed.setItem(
                r,
                1,
                QTableWidgetItem(
                    f"{display_label(c.get('before'))} → {display_label(c.get('after'))}"
                ),
            )
            self.changed.setItem(r, 2, QTableWidgetItem(display_label(c.get("truth"))))
            truth = c.get("truth")
            if truth is not None and c.get("after") == truth:
                res, d = "✓ now right", 1
            elif truth is not None and c.get("before") == truth:
                res, d = "✕ now wrong", -1
            else:
                res, d = "· still wrong", 0
            item = QTableWidgetItem(res)
            if d:
                item.setForeground(QColor((GOOD if d > 0 else BAD)[int(dark)]))
            self.changed.setItem(r, 3, item)
            self.changed.setRowHeight(r, THUMB_H + 6)
        ch = self.changed.horizontalHeader()
        ch.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2, 3):
            ch.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)

        self.accept_button = QPushButton(
            ("Accept new model" if direction >= 0 else "Accept anyway") + "  Ctrl+Enter"
        )
        self.accept_button.setShortcut(QKeySequence("Ctrl+Return"))
        self.accept_button.setToolTip(
            "Make the new version active and re-screen the worklist in the background"
        )
        self.accept_button.clicked.connect(self.accept_new)
        self.keep_button = QPushButton("Keep current model  Esc")
        self.keep_button.setToolTip("Discard the new version (it stays listed in Model history)")
        self.keep_button.clicked.connect(self.reject)
        (self.accept_button if direction > 0 else self.keep_button).setDefault(True)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.keep_button)
        buttons.addWidget(self.accept_button)

        lay = QVBoxLayout(self)
        lay.addWidget(self.head)
        lay.addWidget(self.verdict)
        lay.addWidget(self.metrics)
        lay.addWidget(self.changed_label)
        lay.addWidget(self.changed, 1)
        lay.addLayout(buttons)
        self.resize(820, 640)
        if changed:
            self._load_thumbnails(changed[:MAX_THUMBS])

    def _load_thumbnails(self, rows: list[dict]) -> None:
        """Make the thumbnails in the background; the job outlives the dialog if need be."""
        from .workers import FunctionJob

        paths = [str(c.get("path") or "") for c in rows]
        job = FunctionJob(load_thumbnails, paths)  # no parent: it may end after the dialog
        _JOBS.add(job)
        job.finished.connect(lambda: _JOBS.discard(job))
        job.returned.connect(lambda images, d=self: isValid(d) and d._set_thumbnails(images))
        self._thumb_job = job
        job.start()

    def _set_thumbnails(self, images: list[QImage | None]) -> None:
        for r, img in enumerate(images):
            item = self.changed.item(r, 0)
            if img is not None and item is not None:
                item.setIcon(QPixmap.fromImage(img))

    def metric_texts(self) -> dict[str, tuple[str, str, str]]:
        """Shown text per metric key: (current, new, change)."""
        return dict(self.metric_rows)

    def accept_new(self) -> None:
        """Make the new version active (engine ``accept``, audited)."""
        from engine.improve import accept

        try:
            accept(self.ws_folder, self.result["model"], self.actor)
        except Exception as exc:  # noqa: BLE001 - say it, change nothing else
            self.error.emit(f"The new model could not be made active: {exc}")
            return
        self.decision = "accepted"
        self._finish_thumbs()
        self.decided.emit("accepted")
        super().accept()

    def reject(self) -> None:  # Keep current model, Esc, window close
        if self.decision:
            super().reject()
            return
        from engine.improve import reject

        try:
            reject(self.ws_folder, self.result["model"], self.actor)
        except Exception as exc:  # noqa: BLE001
            self.error.emit(f"The new version could not be discarded: {exc}")
        self.decision = "rejected"
        self._finish_thumbs()
        self.decided.emit("rejected")
        super().reject()

    def _finish_thumbs(self) -> None:
        if self._thumb_job is not None:
            self._thumb_job.wait(10)


# --------------------------------------------------------------------------- controller
class ImproveController(QObject):
    """The main window's Improve button, Improve/Compare dialogs and Model history.

    It only uses the window's public surface: ``ws_folder``, ``settings``, ``act_improve``,
    ``is_screening()``, ``set_model()``, ``start_screening()``, ``reload_worklist()``,
    ``show_error()`` and ``_run_job()``.
    """

    status_changed = Signal(dict)
    model_switched = Signal(str)  # the path of the model that became active

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.w = window
        self.status: dict | None = None
        self.dialog: ImproveDialog | None = None
        self.compare: CompareDialog | None = None
        self.history: QDialog | None = None
        self.last_result: dict | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(400)
        self._timer.timeout.connect(self.refresh)
        window.act_improve.triggered.connect(self.open_improve)
        self.update_enabled()

    # ---- the button
    def schedule_refresh(self) -> None:
        """Recount soon (many reviews in a row cost one query)."""
        self._timer.start()

    def refresh(self) -> None:
        """Recount the new reviews in the background."""
        folder = self.w.ws_folder
        if folder is None:
            self.status = None
            self.update_enabled()
            return
        from .workers import FunctionJob

        job = FunctionJob(fetch_status, folder, parent=self.w)
        job.returned.connect(lambda s: self._on_status(folder, s))
        job.failed.connect(lambda msg: self._on_status(folder, {"error": msg}))
        self.w._run_job(job)

    def _on_status(self, folder: Path, status: dict) -> None:
        if folder != self.w.ws_folder:
            return
        self.status = status
        self.update_enabled()
        self.status_changed.emit(status)

    def workspace_changed(self) -> None:
        self.status = None
        self.update_enabled()
        self.refresh()

    def update_enabled(self) -> None:
        enabled, text, tip = button_state(
            self.status, self.w.ws_folder is not None, self.w.is_screening()
        )
        a = self.w.act_improve
        a.setEnabled(enabled and not self.busy())
        a.setIconText(f"{text}  Ctrl+I")
        a.setText("Improve model…")
        a.setToolTip(tip)
        a.setStatusTip(tip)

    def busy(self) -> bool:
        return (self.dialog is not None and self.dialog.isVisible()) or (
            self.compare is not None and self.compare.isVisible()
        )

    # ---- improve → compare → accept
    def open_improve(self) -> ImproveDialog | None:
        """Show the Improve dialog (window-modal, does not block the event loop)."""
        if self.w.ws_folder is None or self.w.is_screening():
            return None
        dlg = ImproveDialog(self.w.ws_folder, self.status, self.w)
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.result_ready.connect(self._on_result)
        dlg.finished.connect(lambda _=0: self._dialog_closed(dlg))
        self.dialog = dlg
        dlg.open()
        self.update_enabled()
        return dlg

    def _dialog_closed(self, dlg: ImproveDialog) -> None:
        if self.dialog is dlg:
            self.dialog = None
        self.update_enabled()

    def _on_result(self, result: dict) -> None:
        self.last_result = result
        QTimer.singleShot(0, lambda: self.open_compare(result))

    def open_compare(self, result: dict) -> CompareDialog:
        """Show old vs new; Accept or Keep goes to the engine."""
        actor = self.w.settings.reviewer or "desktop"
        dlg = CompareDialog(self.w.ws_folder, result, actor, self.w)
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.decided.connect(lambda d: self._on_decided(d, result))
        dlg.error.connect(lambda msg: self.w.show_error("Model not changed", msg))
        dlg.finished.connect(lambda _=0: self._compare_closed(dlg))
        self.compare = dlg
        dlg.open()
        self.update_enabled()
        return dlg

    def _compare_closed(self, dlg: CompareDialog) -> None:
        if self.compare is dlg:
            self.compare = None
        self.update_enabled()

    def _on_decided(self, decision: str, result: dict) -> None:
        if decision == "accepted":
            path = result.get("model_path") or model_path_for(self.w.ws_folder, result["model"])
            self.switch_to(path, f"New model version {short_hash(result['model'])} is active")
        else:
            self.w.statusBar().showMessage(
                "Kept the current model; the new version was discarded.", 10000
            )
            self.refresh()

    def switch_to(self, path: str | None, message: str) -> None:
        """Use the model now active in the store and re-screen the worklist in the background."""
        if not path or not Path(path).is_file():
            self.w.show_error(
                "Model file missing",
                f"The model became active, but its file is missing ({path}). "
                "Choose it again in the toolbar.",
            )
            self.refresh()
            return
        if self.w.set_model(Path(path)):
            self.w.reload_worklist()
            self.w.start_screening(ask=False)
            self.w.statusBar().showMessage(f"{message}; re-screening in the background…", 15000)
            self.model_switched.emit(str(path))
        self.refresh()

    # ---- history
    def open_history(self) -> QDialog | None:
        """Show every model version (also before any improvement was made)."""
        if self.w.ws_folder is None:
            self.w.show_error("No workspace", "Open a workspace to see its model versions.")
            return None
        from .history import ModelHistoryDialog

        dlg = ModelHistoryDialog(
            self.w.ws_folder, self.w.settings.reviewer or "desktop", self.w.is_screening, self.w
        )
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.rolled_back.connect(
            lambda h, p: self.switch_to(p, f"Rolled back to model version {short_hash(h)}")
        )
        dlg.error.connect(lambda msg: self.w.show_error("Model not changed", msg))
        self.history = dlg
        dlg.open()
        return dlg

    def shutdown(self) -> None:
        """Kill a running improvement (the window is closing)."""
        self._timer.stop()
        if self.dialog is not None:
            self.dialog.shutdown()


def model_path_for(ws_folder: Path | None, model_hash: str) -> str | None:
    """The file of a registered model version (from the store)."""
    if ws_folder is None:
        return None
    from engine.store import Workspace

    with Workspace.open(ws_folder, create=False) as ws:
        for m in ws.models():
            if m.get("hash") == model_hash:
                return m.get("path")
    return None


__all__: list[str] = [
    "MIN_NEW_REVIEWS",
    "CompareDialog",
    "ImproveController",
    "ImproveDialog",
    "ImproveRun",
    "button_state",
    "crash_message",
    "kill_process_tree",
    "metric_change",
    "progress_text",
]
