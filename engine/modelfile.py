"""One model = one ``.safetensors`` file.

The weights are stored as tensors named ``model.<param>``; optional extra tensors (for example
the out-of-distribution statistics, ``ood.<name>``) sit beside them. The full description of
the model (architecture, task, labels, preprocessing, calibration, provenance, metrics) is a
JSON document in the safetensors metadata under the key ``eyetriage``.

Nothing here ever unpickles anything: safetensors holds raw tensors and a JSON header only.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .fileio import atomic_write_bytes
from .safefiles import UnreadableFile, check_regular, read_file, read_head, sha256_and_size

FORMAT_NAME = "eyetriage-model"
FORMAT_VERSION = 1
METADATA_KEY = "eyetriage"
TASKS = ("multiclass", "binary", "multilabel", "ordinal")
MODALITIES = ("fundus", "oct")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelFileError(Exception):
    """A model file that EyeTriage cannot use, with the reason in words."""


@dataclass
class Preprocessing:
    """How an image becomes the model's input; recorded so predictions are reproducible."""

    fov_crop: bool = True  # fundus: crop a square around the circular field of view
    ben_graham: bool = False  # fundus: local-average colour normalisation
    green: bool = False  # fundus: green-channel emphasis
    grayscale: bool = False  # OCT: grey replicated to 3 channels

    @classmethod
    def for_modality(cls, modality: str, **kw: bool) -> Preprocessing:
        if modality == "oct":
            return cls(fov_crop=False, ben_graham=False, green=False, grayscale=True)
        return cls(**kw)


@dataclass
class ModelSpec:
    """Everything needed to rebuild, run and judge a model; derived settings come from here."""

    arch: str
    task: str
    labels: list[str]
    modality: str = "fundus"
    display_names: dict[str, str] = field(default_factory=dict)
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    name: str = ""
    head_dropout: float = 0.2
    temperature: float = 1.0
    negative_label: str | None = None  # the first "no finding" class (older files: the only one)
    negative_labels: list[str] = field(default_factory=list)  # every "no finding" class
    thresholds: dict[str, Any] = field(default_factory=dict)
    conformal: dict[str, Any] | None = None
    referral_curve: list[dict[str, Any]] | None = None
    # calibrated probabilities and labels on held-out images: engine.clearing decides from
    # them whether this model may auto-clear at all
    clearing: dict[str, Any] | None = None
    ood: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    demo: bool = False  # the bundled demo model: never for clinical use

    def __post_init__(self) -> None:
        if isinstance(self.preprocessing, dict):
            self.preprocessing = Preprocessing(**self.preprocessing)
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.negative_labels = list(self.negative_labels or [])
        if self.negative_label and self.negative_label not in self.negative_labels:
            self.negative_labels.insert(0, self.negative_label)
        if self.negative_labels and self.negative_label is None:
            self.negative_label = self.negative_labels[0]
        self.validate()

    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def display(self, label: str) -> str:
        return self.display_names.get(label, label.replace("_", " "))

    def validate(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ModelFileError("model description has no architecture name")
        if self.task not in TASKS:
            raise ModelFileError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.modality not in MODALITIES:
            raise ModelFileError(f"unknown modality {self.modality!r}; expected fundus or oct")
        if len(self.labels) < 2 and self.task != "multilabel":
            raise ModelFileError(f"a {self.task} model needs at least two labels")
        if len(set(self.labels)) != len(self.labels):
            raise ModelFileError("label names must be unique")
        if self.task == "binary" and len(self.labels) != 2:
            raise ModelFileError("a binary model has exactly two labels")
        if not 16 <= int(self.input_size) <= 4096:
            raise ModelFileError(f"input size {self.input_size} is out of range")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelFileError("normalisation needs three means and three positive stds")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ModelFileError("normalisation means and stds must be finite numbers")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ModelFileError("temperature must be a positive finite number")
        if self.ood is not None:
            _check_ood_info(self.ood)
        for neg in self.negative_labels or ([self.negative_label] if self.negative_label else []):
            if neg not in self.labels:
                raise ModelFileError(f"negative label {neg!r} is not a label")

    def to_json(self) -> str:
        d = asdict(self)
        d["format"] = FORMAT_NAME
        d["format_version"] = FORMAT_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFileError(f"model description is not valid JSON ({e.msg})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise ModelFileError("not an EyeTriage model description")
        version = d.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(
                f"model format version {version} is newer than this program understands "
                f"({FORMAT_VERSION}); update EyeTriage"
            )
        known = {f.name for f in fields(cls)}
        missing = {"arch", "task", "labels"} - d.keys()
        if missing:
            raise ModelFileError(f"model description lacks {', '.join(sorted(missing))}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise ModelFileError(f"model description is malformed ({e})") from None


def _check_ood_info(info: Any) -> None:
    """OOD statistics that cannot switch the check off unnoticed (``inf``, NaN, a scale
    <= 0, a negative threshold). A threshold of 0 is kept: it calls every image that differs
    at all from the training images unfamiliar (a degenerate set of one picture gives it)."""
    if not isinstance(info, dict):
        raise ModelFileError("out-of-distribution statistics are malformed")
    for key in ("m_ref", "r_ref", "threshold"):
        value = info.get(key)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        floor_ok = ok and (value >= 0 if key == "threshold" else value > 0)
        if not ok or not math.isfinite(value) or not floor_ok:
            kind = "a finite number >= 0" if key == "threshold" else "a positive finite number"
            raise ModelFileError(
                f"out-of-distribution statistic {key} is {value!r}, not {kind}: refused "
                "(the out-of-distribution check would be silently off)"
            )


def _check_finite(path: Path, tensors: dict[str, Any]) -> None:
    """Refuse weights or statistics holding NaN or infinity (they would only fail later,
    mid-run, or make every score meaningless)."""
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(
                f"{path.name}: tensor {name} holds NaN or infinite values: refused"
            )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a regular file, streamed (special files refused: :mod:`.safefiles`)."""
    try:
        return sha256_and_size(path)[0]
    except UnreadableFile as e:
        raise ModelFileError(str(e)) from None


def save_model_file(
    path: str | Path,
    spec: ModelSpec,
    state_dict: dict[str, Any],
    extra: dict[str, Any] | None = None,
    half: bool = False,
) -> str:
    """Write weights and description atomically; returns the file's sha256.

    ``half`` stores floating-point weights (and extra statistics) as float16, half the size;
    weights are restored to float32 on load.
    """
    import torch
    from safetensors.torch import save

    spec.validate()
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        if half and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[f"model.{k}"] = t
    for k, v in (extra or {}).items():
        t = v.detach().cpu().contiguous()
        tensors[k] = t.to(torch.float16) if half and t.is_floating_point() else t
    data = save(tensors, metadata={METADATA_KEY: spec.to_json()})
    path = Path(path)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_spec(path: str | Path) -> ModelSpec:
    """Read only the description (fast: no tensors are loaded)."""
    path = Path(path)
    header = _read_header(path)
    meta = header.get("__metadata__") or {}
    if METADATA_KEY not in meta:
        raise ModelFileError(f"{path.name}: a safetensors file, but not an EyeTriage model")
    try:
        return ModelSpec.from_json(meta[METADATA_KEY])
    except ModelFileError as e:
        raise ModelFileError(f"{path.name}: {e}") from None


def _read_header(path: Path) -> dict[str, Any]:
    try:
        st = check_regular(path)  # a FIFO or /dev/zero as --model is refused, never opened
        if st.st_size < 8:
            raise ModelFileError(f"{path.name}: too short to be a model file")
        raw = read_head(path, 8)
        n = int.from_bytes(raw, "little")
        if len(raw) < 8 or n <= 1 or n > min(st.st_size - 8, 100 << 20):
            raise ModelFileError(f"{path.name}: not a safetensors model file")
        header = json.loads(read_head(path, 8 + n)[8:])
    except UnreadableFile as e:
        if e.reason == "file not found":
            raise ModelFileError(f"{path}: no such model file") from None
        raise ModelFileError(str(e)) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFileError(f"{path.name}: not a safetensors model file") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path.name}: not a safetensors model file")
    return header


def load_model_file(path: str | Path) -> tuple[ModelSpec, dict[str, Any], dict[str, Any]]:
    """Load (spec, weights state_dict in float32, extra tensors); refuses foreign files."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    spec = read_spec(path)
    try:
        tensors = load(read_file(path))  # the checked regular file's bytes, not a new open
    except UnreadableFile as e:
        raise ModelFileError(str(e)) from None
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path.name}: weights could not be read ({e})") from None
    _check_finite(path, tensors)
    weights: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, t in tensors.items():
        if k.startswith("model."):
            weights[k[len("model.") :]] = t.float() if t.dtype == torch.float16 else t
        else:
            extra[k] = t
    if not weights:
        raise ModelFileError(f"{path.name}: holds no model weights")
    return spec, weights, extra
