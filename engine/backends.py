"""Inference engines for screening on a CPU: torch, or the backbone exported to ONNX.

Most clinic workstations have no GPU, and on a CPU ONNX Runtime runs the same fp32 backbone
faster than torch. Each model version's backbone (everything up to the pooled features) is
exported once, verified against torch, and cached by model hash; the classifier head stays
in torch (in fp32), so fast MC dropout, the OOD score and conformal sets work on the pooled
features exactly as before. Attribution (Grad-CAM, IG) always uses the torch network: the
exported engine is attached to a copy of the :class:`LoadedModel`, never to the caller's.

``auto`` measures the available engines on a few batches the first time a model
architecture is screened on a machine and remembers the fastest; a GPU keeps torch. A
model whose export is refused or does not reproduce torch falls back to torch, said once
in the log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import io
import json
import logging
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .engines import (
    ENGINE_WORDS,
    ENGINES,
    EXPORTED,
    check_engine,
    engine_cache_dir,
    installed_engines,
    user_cache_dir,
)
from .modelfile import atomic_write_bytes
from .models import LoadedModel, autocast_for, penultimate_and_logits, probabilities

log = logging.getLogger("eyetriage.engine")

# Bump when the exported graph changes (wrapper, opset, exporter): old caches are ignored.
EXPORT_FORMAT = 1
OPSET = 18
CHOICES_FILE = "engine-choice.json"
# An export must reproduce torch fp32 on a probe batch: probabilities to the bound screening
# answers are held to (seen: at most 4e-6 on resnet, efficientnet, mobilenetv3, convnext, vit) ...
PROBE_PROB_TOLERANCE = 1e-4
# ... and pooled features to this, relative to their largest magnitude (they feed the OOD score).
PROBE_FEATURE_TOLERANCE = 1e-4
AUTO_BATCHES = 3  # timed batches per engine when ``auto`` measures (after one warm-up)


class EngineUnavailable(Exception):
    """This engine cannot run this model here; the reason is in words."""


class Backbone(Protocol):
    """Normalised input (N, 3, H, W) float32 -> pooled features (N, D) float32."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------- export


class _BackboneToPooled(nn.Module):
    """The part of a timm network that is exported: input -> pooled pre-logits features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def _cache_prefix(lm: LoadedModel) -> str:
    return f"{lm.sha256}-f{EXPORT_FORMAT}-"


def _cached_file(lm: LoadedModel, folder: Path) -> tuple[Path, bytes] | None:
    """A cached export whose content matches the hash in its name; corrupt ones are removed."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob(f"{_cache_prefix(lm)}*.onnx")):
        try:
            data = path.read_bytes()
        except OSError as e:
            log.warning("cannot read the cached engine file %s (%s): exporting again", path, e)
            continue
        expected = path.stem.rsplit("-", 1)[-1]
        if hashlib.sha256(data).hexdigest()[: len(expected)] == expected:
            return path, data
        log.warning("cached engine file %s is damaged (content does not match): rebuilt", path)
        with contextlib.suppress(OSError):
            path.unlink()
    return None


def export_backbone(lm: LoadedModel, folder: str | os.PathLike[str]) -> tuple[Path, bytes]:
    """The model's backbone as ONNX (up to the pooled features), exported once per version.

    The file is named ``<model sha256>-f<format>-<content hash>.onnx`` and written
    atomically; a file whose content does not match its name is deleted and exported again.
    Returns the path and the file's bytes (so the engine loads exactly what was checked).
    """
    if not lm.sha256:
        raise EngineUnavailable("the model has no file hash to key its exported engine on")
    folder = Path(folder)
    cached = _cached_file(lm, folder)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    data = _export_bytes(lm)
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = folder / f"{_cache_prefix(lm)}{digest}.onnx"
    try:
        atomic_write_bytes(path, data)
    except OSError as e:  # a read-only cache still lets this run use the engine
        log.warning("could not cache the exported engine in %s (%s)", folder, e)
    log.info(
        "exported the %s backbone of model %s to ONNX in %.1f s",
        lm.spec.arch,
        lm.short_hash,
        time.perf_counter() - t0,
    )
    return path, data


def _export_bytes(lm: LoadedModel) -> bytes:
    """Trace the backbone on a CPU in fp32 and serialise it with a dynamic batch size."""
    if lm.device.type != "cpu":
        raise EngineUnavailable(f"the model is on {lm.device.type}; engines run on the CPU")
    size = lm.spec.input_size
    example = torch.zeros(2, 3, size, size)
    wrapper = _BackboneToPooled(lm.net).eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter: not for users
            torch.onnx.export(
                wrapper,
                (example,),
                buf,
                input_names=["image"],
                output_names=["features"],
                dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as e:  # noqa: BLE001 - any exporter failure means "use torch"
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise EngineUnavailable(f"ONNX export of {lm.spec.arch} is not supported ({first})") from e
    return buf.getvalue()


# --------------------------------------------------------------------------- engines


def onnxruntime_threads() -> int:
    """Intra-op threads for ONNX Runtime (``EYETRIAGE_ENGINE_THREADS`` overrides).

    Decoding runs in threads on the same cores; one engine thread per core measured best on
    2 cores (see benchmarks/bench_engines.py).
    """
    env = os.environ.get("EYETRIAGE_ENGINE_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def _spinning() -> str:
    """Busy-waiting engine threads steal the cores decoding needs; off unless asked for."""
    return "1" if os.environ.get("EYETRIAGE_ENGINE_SPIN") == "1" else "0"


class OnnxRuntimeBackbone:
    """The exported backbone in ONNX Runtime's CPU provider (fp32)."""

    name = "onnxruntime"

    def __init__(self, model: bytes, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineUnavailable("onnxruntime is not installed") from e
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or onnxruntime_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only
        so.add_session_config_entry("session.intra_op.allow_spinning", _spinning())
        try:
            self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise EngineUnavailable(f"ONNX Runtime cannot load the exported backbone ({e})") from e
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


def _import_openvino() -> Any:
    """``import openvino`` without its usage telemetry.

    The package's import sends a usage event to Intel through ``openvino_telemetry`` unless
    the user has opted out (no consent file counts as consent). EyeTriage is offline by default,
    so that module is hidden before the first import and OpenVINO falls back to its own
    no-op stub; inference is unaffected.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    # imported by name: an optional extra (about 180 MB) the bundle does not ship
    return importlib.import_module("openvino")


class OpenVinoBackbone:
    """The exported backbone in OpenVINO on the CPU, held to f32 precision.

    OpenVINO would otherwise run bf16 on CPUs that have it, which changes the answers.
    """

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            ov = _import_openvino()
        except ImportError as e:
            raise EngineUnavailable("openvino is not installed") from e
        try:
            core = ov.Core()
            self.compiled = core.compile_model(
                str(path),
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": "f32",
                    "INFERENCE_NUM_THREADS": threads or onnxruntime_threads(),
                    "PERFORMANCE_HINT": "LATENCY",
                },
            )
        except Exception as e:  # noqa: BLE001
            raise EngineUnavailable(f"OpenVINO cannot load the exported backbone ({e})") from e
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            out = self._request.infer({0: x})
            return np.array(out[0], dtype=np.float32, copy=True)


class _Fp32Head(nn.Module):
    """The torch classifier, always in fp32 (also inside an autocast region)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(x.float())


class EngineNet(nn.Module):
    """A timm-like network whose backbone runs in another engine and whose head is torch.

    It offers what screening and uncertainty call (``forward_features``, ``forward_head``,
    ``get_classifier``, ``forward``), so those steps need no change; anything else is looked
    up on the wrapped torch network.
    """

    def __init__(self, net: nn.Module, backbone: Backbone) -> None:
        super().__init__()
        self.torch_net = net
        self.backbone = backbone
        self.engine = backbone.name
        self._head = _Fp32Head(net.get_classifier())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.backbone(arr))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return feats if pre_logits else self._head(feats)

    def get_classifier(self) -> nn.Module:
        return self._head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self.forward_features(x))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("torch_net"), name)


def engine_name(lm: LoadedModel) -> str:
    """The engine a loaded model runs its backbone in (``torch`` unless attached)."""
    return getattr(lm.net, "engine", "torch") if isinstance(lm.net, EngineNet) else "torch"


# --------------------------------------------------------------------------- verification


def _probe(lm: LoadedModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    s = lm.spec.input_size
    return torch.randn(2, 3, s, s, generator=g).contiguous(memory_format=torch.channels_last)


def verify(lm: LoadedModel, engine_lm: LoadedModel) -> tuple[float, float]:
    """Largest probability and relative feature difference between the engine and torch fp32.

    Raises :class:`EngineUnavailable` when the engine does not reproduce torch.
    """
    x = _probe(lm)
    with torch.inference_mode():
        f_ref, z_ref = penultimate_and_logits(lm.net, x)
        f_eng, z_eng = penultimate_and_logits(engine_lm.net, x)
        p_ref = probabilities(lm.spec, z_ref.float())
        p_eng = probabilities(lm.spec, z_eng.float())
    dp = float((p_ref - p_eng).abs().max())
    scale = max(1.0, float(f_ref.abs().max()))
    df = float((f_ref.float() - f_eng).abs().max()) / scale
    if not (dp <= PROBE_PROB_TOLERANCE and df <= PROBE_FEATURE_TOLERANCE):
        raise EngineUnavailable(
            f"the {engine_name(engine_lm)} backbone of {lm.spec.arch} does not reproduce torch "
            f"(largest probability difference {dp:.2g}, feature difference {df:.2g})"
        )
    return dp, df


def _build(lm: LoadedModel, engine: str, folder: Path) -> LoadedModel:
    """A copy of ``lm`` whose backbone runs in ``engine`` (exported, verified)."""
    if lm.device.type != "cpu":
        raise EngineUnavailable(f"{engine} runs on the CPU and the model is on {lm.device.type}")
    path, data = export_backbone(lm, folder)
    backbone: Backbone
    if engine == "onnxruntime":
        backbone = OnnxRuntimeBackbone(data)
    elif engine == "openvino":
        if not path.is_file():  # the cache could not be written: OpenVINO reads from a file
            raise EngineUnavailable("OpenVINO needs the exported file, which could not be saved")
        backbone = OpenVinoBackbone(path)
    else:
        raise EngineUnavailable(f"{engine} is not an exported engine")
    out = dataclasses.replace(lm, net=EngineNet(lm.net, backbone))
    verify(lm, out)
    return out


# --------------------------------------------------------------------------- choosing


_said: set[tuple[str, str]] = set()
_said_lock = threading.Lock()
# (model hash, engine) pairs that failed in this process: not tried again until restart
_unusable: dict[tuple[str, str], str] = {}


def _say_once(key: tuple[str, str], level: int, msg: str, *args: Any) -> None:
    """Log a message once per process and key (a fallback is news once, not every run)."""
    with _said_lock:
        if key in _said:
            return
        _said.add(key)
    log.log(level, msg, *args)


def _try_build(lm: LoadedModel, engine: str, folder: Path, fallback: str) -> LoadedModel | None:
    """``_build``, or None after one log line saying why and what happens instead."""
    key = (lm.sha256, engine)
    if key in _unusable:
        return None
    try:
        return _build(lm, engine, folder)
    except EngineUnavailable as e:
        _unusable[key] = str(e)
        _say_once(key, logging.WARNING, "%s: %s", e, fallback)
        return None


def machine_key() -> str:
    """What identifies this machine for a remembered choice: CPU model, cores, libraries."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    versions = [f"torch {torch.__version__}"]
    for name in EXPORTED:
        spec = importlib.util.find_spec(name)
        if spec is not None:
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions.append(f"{name} {version(name)}")
    return f"{cpu} x{os.cpu_count()} | {', '.join(versions)}"


def _choice_key(lm: LoadedModel, batch_size: int) -> str:
    return f"{machine_key()} | {lm.spec.arch} {lm.spec.input_size}px b{batch_size}"


def _read_choices(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered_choice(lm: LoadedModel, batch_size: int) -> dict[str, Any] | None:
    """The measured choice for this machine and model architecture, if one was made."""
    entry = _read_choices(user_cache_dir() / CHOICES_FILE).get(_choice_key(lm, batch_size))
    return entry if isinstance(entry, dict) and entry.get("engine") in ENGINES else None


def _remember(lm: LoadedModel, batch_size: int, entry: dict[str, Any]) -> None:
    path = user_cache_dir() / CHOICES_FILE
    data = _read_choices(path)
    data[_choice_key(lm, batch_size)] = entry
    try:
        atomic_write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
    except OSError as e:
        log.warning("could not remember the engine choice in %s (%s)", path, e)


def model_rate(
    run: Callable[[torch.Tensor], Any], x: torch.Tensor, batches: int = AUTO_BATCHES
) -> float:
    """Images per second of ``run`` on ``x``: one warm-up call, then the median of ``batches``."""
    run(x)
    times = []
    for _ in range(batches):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return x.shape[0] / float(np.median(times))


def measure(
    lm: LoadedModel,
    candidates: dict[str, LoadedModel],
    batch_size: int,
    amp: bool,
    batches: int = AUTO_BATCHES,
) -> dict[str, float]:
    """Model rate (images/s) of every candidate as screening runs it (torch with its autocast)."""
    size = lm.spec.input_size
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 3, size, size, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    rates = {}
    for name, cand in candidates.items():

        def run(t: torch.Tensor, m: LoadedModel = cand) -> Any:
            with torch.inference_mode(), autocast_for(m.device, amp):
                return penultimate_and_logits(m.net, t)

        rates[name] = round(model_rate(run, x, batches), 2)
    return rates


def prepare(
    lm: LoadedModel,
    engine: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    amp: bool = True,
) -> LoadedModel:
    """``lm`` ready to screen with ``engine``: itself for torch, else a copy on that engine.

    ``auto`` uses the remembered choice for this machine and architecture, or measures the
    engines once; a GPU keeps torch. An engine that cannot run the model falls back to torch
    with one log message. A model already on an engine is returned unchanged.
    """
    check_engine(engine)
    if isinstance(lm.net, EngineNet) or engine == "torch":
        return lm
    folder = Path(cache_dir) if cache_dir is not None else engine_cache_dir()
    if lm.device.type != "cpu":
        if engine != "auto":
            _say_once(
                (lm.sha256, f"{engine}-device"),
                logging.WARNING,
                "%s runs on the CPU; the model is on %s, so it keeps torch",
                ENGINE_WORDS[engine],
                lm.device.type,
            )
        return lm
    if engine == "auto":
        return _prepare_auto(lm, folder, batch_size, amp)
    return _try_build(lm, engine, folder, "screening with torch instead") or lm


def _prepare_auto(lm: LoadedModel, folder: Path, batch_size: int, amp: bool) -> LoadedModel:
    batch = max(1, min(batch_size, 32))
    remembered = remembered_choice(lm, batch)
    if remembered is not None:
        name = remembered["engine"]
        if name == "torch":
            return lm
        built = _try_build(lm, name, folder, "measuring the engines again")
        if built is not None:
            return built
    candidates: dict[str, LoadedModel] = {"torch": lm}
    for name in installed_engines()[2:]:
        built = _try_build(lm, name, folder, "not used")
        if built is not None:
            candidates[name] = built
    if len(candidates) == 1:
        return lm
    failures = {n: _unusable[(lm.sha256, n)] for n in EXPORTED if (lm.sha256, n) in _unusable}
    rates = measure(lm, candidates, batch, amp)
    best = max(rates, key=lambda k: rates[k])
    _remember(
        lm,
        batch,
        {
            "engine": best,
            "images_per_second": rates,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **({"not_usable": failures} if failures else {}),
        },
    )
    log.info(
        "inference engine for %s on this computer: %s (measured %s images/s)",
        lm.spec.arch,
        best,
        ", ".join(f"{k} {v:.1f}" for k, v in rates.items()),
    )
    return candidates[best]
