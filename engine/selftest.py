"""``eyetriage --self-test``: prove an installation (or a frozen bundle) works, headless.

Each step exercises one thing that breaks in a badly packaged application: torchvision's
compiled operators, the demo model and timm, screening into a workspace through ONNX Runtime
(export, engine, same answers as torch), screening in a child process as the desktop does
(``--worker screen``: in a bundle, the executable itself), Grad-CAM (captum),
reviewing and exporting, the fine-tuning libraries and their version checks, the DICOM
decoders (found by entry point, easily lost in a bundle), and Qt offscreen. Everything runs
on synthetic images in a temporary folder that is removed
afterwards. One line per step is printed; the exit code is 0 only when every step passed.

The Qt step lives in :mod:`desktop.selftest_gui` and is imported by name, only when the
desktop package is installed, so the engine itself stays free of Qt.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

OK, FAIL, SKIP = "ok", "failed", "skipped"
MARKS = {OK: "✓", FAIL: "✗", SKIP: "-"}
ASCII_MARKS = {OK: "OK  ", FAIL: "FAIL", SKIP: "SKIP"}
N_IMAGES = 6
IMAGE_SIZE = 256
SEED = 7
GUI_MODULE = "desktop.selftest_gui"


class StepSkipped(Exception):
    """Raised by a step that cannot run here and is not a failure (e.g. no desktop package)."""


@dataclass
class StepResult:
    """The outcome of one self-test step."""

    name: str
    status: str  # OK, FAIL or SKIP (printed as MARKS)
    seconds: float
    detail: str = ""

    def line(self, marks: dict[str, str] = MARKS) -> str:
        text = f"{marks[self.status]} {self.name:<34} {self.seconds:6.2f} s"
        return f"{text}  {self.detail}" if self.detail else text


def marks_for(stream: TextIO) -> dict[str, str]:
    """✓/✗ when the stream can print them (a C-locale console may not), else OK/FAIL."""
    encoding = getattr(stream, "encoding", None)
    if encoding is None:  # an in-memory text stream holds any character
        return MARKS
    try:
        "".join(MARKS.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_MARKS
    return MARKS


@dataclass
class SelfTest:
    """Runs the steps in order; a step whose prerequisite failed is reported as failed too."""

    device: str = "cpu"
    out: TextIO = field(default_factory=lambda: sys.stdout)
    verbose: bool = False
    results: list[StepResult] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str, fn: Callable[[], str], needs: Sequence[str] = ()) -> bool:
        """Run ``fn`` as step ``name``; print its line; True when it passed (or was skipped)."""
        missing = [n for n in needs if n not in self.state]
        start = time.perf_counter()
        if missing:
            result = StepResult(name, FAIL, 0.0, f"not run: needs {', '.join(missing)}")
        else:
            try:
                detail = fn()
                result = StepResult(name, OK, time.perf_counter() - start, detail)
            except StepSkipped as e:
                result = StepResult(name, SKIP, time.perf_counter() - start, f"skipped: {e}")
            except Exception as e:  # noqa: BLE001 - every failure becomes a report line
                first = (str(e).splitlines() or [""])[0]
                result = StepResult(
                    name, FAIL, time.perf_counter() - start, f"{type(e).__name__}: {first}"
                )
                if self.verbose:
                    traceback.print_exc(file=self.out)
        self.results.append(result)
        print(result.line(marks_for(self.out)), file=self.out, flush=True)
        return result.status != FAIL

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.results if r.status == FAIL]


# --------------------------------------------------------------------------- the steps


def check_torchvision_ops() -> str:
    """torchvision's compiled operators are registered (a frozen app may miss them)."""
    import torch
    import torchvision
    import torchvision.ops

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = torchvision.ops.nms(boxes, scores, 0.5).tolist()
    if keep != [0, 2]:
        raise RuntimeError(f"torchvision.ops.nms returned {keep}, expected [0, 2]")
    return f"torch {torch.__version__}, torchvision {torchvision.__version__}"


def _load_demo_model(st: SelfTest, model: str | None) -> str:
    from .demo import demo_model_path
    from .models import load_model

    path = Path(model) if model else demo_model_path()
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"demo model not found ({path or 'resources/demo-model.safetensors'})"
        )
    lm = load_model(path, device=st.device)
    st.state["model"] = lm
    return f"{lm.spec.arch} {lm.spec.input_size} px on {lm.device}, {lm.short_hash}"


def _synthesise(st: SelfTest, root: Path) -> str:
    from .synth import synthesize

    items = synthesize(root / "images", "fundus", n=N_IMAGES, seed=SEED, size=IMAGE_SIZE)
    paths = [root / "images" / it.file for it in items]
    if len(paths) != N_IMAGES or not all(p.is_file() for p in paths):
        raise RuntimeError(f"expected {N_IMAGES} images, found {sum(p.is_file() for p in paths)}")
    st.state["images"] = paths
    return f"{len(paths)} fundus images, {IMAGE_SIZE} px"


def _screen(st: SelfTest, root: Path) -> str:
    """Screen into a workspace through ONNX Runtime (the CPU engine most clinics run), and
    check its answers against torch at full precision; a GPU keeps torch."""
    from .backends import engine_name, prepare
    from .engines import engine_cache_dir
    from .screen import ScreenSettings, screen_all
    from .workspace_screen import screen_into_workspace

    lm = st.state["model"]
    folder = root / "workspace"
    engine = "onnxruntime" if lm.device.type == "cpu" else "torch"
    settings = ScreenSettings(
        batch_size=N_IMAGES, device=st.device, engine=engine, engine_cache=engine_cache_dir(folder)
    )
    on_engine = prepare(lm, engine, settings.engine_cache, N_IMAGES, settings.amp)
    if engine_name(on_engine) != engine:
        raise RuntimeError(f"the {engine} engine could not run the model (see the log)")
    report = screen_into_workspace(folder, st.state["images"], [on_engine], settings)
    if report.get("status") != "finished" or report.get("screened") != N_IMAGES:
        raise RuntimeError(
            f"screening {report.get('status')}: {report.get('screened')} of {N_IMAGES} images"
        )
    st.state["workspace"] = folder
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report["counts"].items()))
    detail = f"{N_IMAGES} images screened with {engine} ({counts})"
    if engine != "torch":
        reference = ScreenSettings(batch_size=N_IMAGES, engine="torch", amp=False)
        ref = screen_all(st.state["images"], [lm], reference)
        got = screen_all(st.state["images"], [on_engine], settings)
        diff = max(
            abs(a.probabilities[k] - b.probabilities[k])
            for a, b in zip(ref, got, strict=True)
            for k in a.probabilities
        )
        if diff > 1e-4 or [r.triage for r in ref] != [r.triage for r in got]:
            raise RuntimeError(f"{engine} answers differ from torch fp32 (largest {diff:.2g})")
        detail += f", same answers as torch fp32 (largest difference {diff:.1g})"
    return detail


def _screen_in_child(st: SelfTest, root: Path) -> str:
    """Screen as the desktop does, in a child process (``--worker screen``: in a bundle, the
    executable itself), and check that it stored every image."""
    from .screen_task import ScreenProcess, ScreenRequest

    lm = st.state["model"]
    request = ScreenRequest(
        workspace=root / "workspace-child",
        model_path=Path(lm.path),
        paths=list(st.state["images"]),
        device=st.device,
        batch_size=N_IMAGES,
        uncertainty="none",
        engine="torch",  # the engines were checked above; this checks the process
    )
    proc = ScreenProcess(request)
    proc.start()
    if not proc.join(300):
        proc.cancel()
        raise RuntimeError("the screening process did not finish within 5 minutes")
    kind, value = proc.outcome()
    if kind != "done":
        raise RuntimeError(str(value))
    if value.get("status") != "finished" or value.get("screened") != N_IMAGES:
        raise RuntimeError(
            f"screening process {value.get('status')}: {value.get('screened')} of {N_IMAGES}"
        )
    command = " ".join([Path(proc.command()[0]).name, *proc.command()[1:]])
    return f"{N_IMAGES} images screened by `{command}`"


def _explain(st: SelfTest) -> str:
    import numpy as np

    from .explain import explain_file

    lm = st.state["model"]
    exp = explain_file(lm, st.state["images"][0], "gradcam")
    amap = exp.map_on_original()
    size = lm.spec.input_size
    if exp.amap.shape != (size, size) or not np.isfinite(amap).all():
        raise RuntimeError(f"bad Grad-CAM map: shape {exp.amap.shape}")
    if not np.abs(exp.amap).max() > 0:
        raise RuntimeError("Grad-CAM map is all zeros")
    return f"{exp.target_label} p={exp.probability:.2f}, map {amap.shape[1]}x{amap.shape[0]}"


def _review_and_export(st: SelfTest, root: Path) -> str:
    import csv
    import json

    from .store import Workspace

    folder = st.state["workspace"]
    with Workspace.open(folder, create=False) as ws:
        preds = ws.latest_predictions()
        if len(preds) != N_IMAGES:
            raise RuntimeError(f"workspace holds {len(preds)} predictions, expected {N_IMAGES}")
        first = preds[0]
        label = first.get("label") or st.state["model"].spec.labels[0]
        ws.add_review(first["image_id"], "self-test", [label], "confirm", prediction_id=first["id"])
        ws.write_export(root / "export.csv", "csv")
        ws.write_export(root / "export.json", "json")
    # read back from disk with a fresh connection
    with Workspace.open(folder, create=False) as ws:
        review = ws.current_review(first["image_id"])
        if review is None or review["reviewer"] != "self-test":
            raise RuntimeError("the review was not read back from the workspace")
    with (root / "export.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    data = json.loads((root / "export.json").read_text(encoding="utf-8"))
    if len(rows) != N_IMAGES or len(data) != N_IMAGES:
        raise RuntimeError(
            f"export has {len(rows)} CSV / {len(data)} JSON rows, expected {N_IMAGES}"
        )
    if sum(1 for r in data if r.get("reviewer") == "self-test") != 1:
        raise RuntimeError("the review is missing from the export")
    return f"1 review, CSV + JSON export of {len(rows)} rows read back"


def check_dicom_decoders(root: Path) -> str:
    """Write DICOM files and read them back: every bundled decoder, and an OCT volume."""
    import numpy as np

    from . import dicom_synth as W
    from .dicom import environment_summary
    from .images import FrameRef, open_image

    folder = root / "dicom"
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([x * 2, y * 3, (x + y)], -1).astype(np.uint8)
    for compression in ("none", "rle", "jpeg2000"):
        path = W.write_photograph(folder / f"{compression}.dcm", rgb, compression=compression)
        got = np.asarray(open_image(path)[0])
        if not np.array_equal(got, rgb):
            raise RuntimeError(f"{compression} DICOM photograph decoded with wrong pixels")
    path = W.write_photograph(folder / "jpeg.dcm", rgb, compression="jpeg")
    diff = np.abs(np.asarray(open_image(path)[0], dtype=np.int16) - rgb).mean()
    if diff > 8:
        raise RuntimeError(f"JPEG baseline DICOM decoded far from the original ({diff:.1f})")
    frames = (np.arange(5 * 32 * 48).reshape(5, 32, 48) % 4096).astype(np.uint16)
    path = W.write_volume(folder / "oct.dcm", frames, bits_stored=12, window=(2048, 4096))
    im, _ = open_image(FrameRef(path, 4))
    if im.size != (48, 32):
        raise RuntimeError(f"OCT slice has size {im.size}, expected 48x32")
    missing = [name for name, ok in environment_summary().items() if not ok]
    if missing:
        raise RuntimeError(f"no decoder for: {', '.join(missing)}")
    import pydicom

    return f"pydicom {pydicom.__version__}; JPEG, JPEG-LS, JPEG 2000, RLE decoders present"


def check_finetune_libraries() -> str:
    """peft injects a LoRA adapter and trains one step (its imports check versions)."""
    import peft
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    net = inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"]), net)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    loss = net(torch.randn(4, 8)).pow(2).mean()
    loss.backward()
    opt.step()
    adapter = get_peft_model_state_dict(net)
    if not adapter:
        raise RuntimeError("the LoRA adapter has no weights")
    return f"peft {peft.__version__}, LoRA adapter with {len(adapter)} tensors"


def _gui() -> str:
    if importlib.util.find_spec("desktop") is None:
        raise StepSkipped("the desktop package is not installed")
    module = importlib.import_module(GUI_MODULE)
    return str(module.check_qt_offscreen())


# --------------------------------------------------------------------------- entry


def run(
    device: str = "cpu",
    model: str | None = None,
    gui: bool = True,
    keep: bool = False,
    out: TextIO | None = None,
    verbose: bool = False,
) -> SelfTest:
    """Run every step and return the results (nothing is raised)."""
    st = SelfTest(device=device, out=out or sys.stdout, verbose=verbose)
    root = Path(tempfile.mkdtemp(prefix="eyetriage-selftest-"))
    try:
        st.step("torchvision compiled ops (nms)", check_torchvision_ops)
        st.step("demo model (timm)", lambda: _load_demo_model(st, model))
        st.step("synthesise demo images", lambda: _synthesise(st, root))
        st.step("screen into workspace", lambda: _screen(st, root), needs=("model", "images"))
        st.step(
            "screening process (--worker screen)",
            lambda: _screen_in_child(st, root),
            needs=("model", "images"),
        )
        st.step("Grad-CAM (captum)", lambda: _explain(st), needs=("model", "images"))
        st.step(
            "review + export, read back",
            lambda: _review_and_export(st, root),
            needs=("model", "workspace"),
        )
        st.step("fine-tuning libraries (peft)", check_finetune_libraries)
        st.step("DICOM decoders (pydicom, pylibjpeg)", lambda: check_dicom_decoders(root))
        if gui:
            st.step("Qt offscreen (PySide6)", _gui)
    finally:
        st.state.clear()
        if keep:
            print(f"  kept {root}", file=st.out)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return st


def main(argv: Sequence[str] | None = None) -> int:
    """``eyetriage --self-test [--device D] [--model FILE] [--no-gui] [--keep] [-v]``."""
    p = argparse.ArgumentParser(
        prog="eyetriage --self-test",
        description="Check this installation headless: screen synthetic images with the demo "
        "model, compute a Grad-CAM, write and read a temporary workspace, start Qt offscreen.",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--model", help="a model file to use instead of the bundled demo model")
    p.add_argument("--no-gui", action="store_true", help="skip the Qt check")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))

    from . import __version__

    frozen = " (frozen bundle)" if getattr(sys, "frozen", False) else ""
    print(f"EyeTriage {__version__} self-test{frozen}", flush=True)
    start = time.perf_counter()
    st = run(args.device, args.model, not args.no_gui, args.keep, verbose=args.verbose)
    total = time.perf_counter() - start
    if st.failed:
        names = ", ".join(r.name for r in st.failed)
        print(f"FAILED ({len(st.failed)} of {len(st.results)} steps, {total:.1f} s): {names}")
        return 1
    print(f"all {len(st.results)} checks passed in {total:.1f} s")
    return 0
