"""Build timm networks from a :class:`ModelSpec`, pick the device, run them fast."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .modelfile import ModelFileError, ModelSpec, file_sha256, load_model_file


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if requested in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return torch.device(requested)


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX), where autocast pays."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on capable CPUs; fp16 autocast on CUDA; otherwise nothing."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def create_network(spec: ModelSpec, pretrained: bool = False) -> nn.Module:
    """A timm network with the spec's output count and head dropout (for MC dropout).

    The architecture is resolved from the local library only: a source prefix such as
    ``hf-hub:`` (downloads a config) or ``local-dir:`` (reads one from any folder) is
    refused unless the user asked for downloads (``pretrained``). Offline by default.
    """
    import timm

    if ":" in spec.arch and not pretrained:
        source = spec.arch.split(":", 1)[0]
        raise ModelFileError(
            f"architecture {spec.arch!r} names an outside source ({source}:); EyeTriage builds "
            "architectures from its installed library only and does not download: refused"
        )

    try:
        return timm.create_model(
            spec.arch,
            pretrained=pretrained,
            num_classes=spec.num_outputs,
            drop_rate=spec.head_dropout,
            **_size_kwargs(spec),
        )
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ModelFileError(
                f"unknown architecture {spec.arch!r} (see timm.list_models())"
            ) from None
        raise


def _size_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """Transformers fix their input size at construction; CNNs do not take the argument."""
    name = spec.arch.lower()
    if any(t in name for t in ("vit", "deit", "swin", "beit", "eva", "maxvit", "mvit")):
        return {"img_size": spec.input_size}
    return {}


def load_init_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Start from a local checkpoint (timm safetensors or an EyeTriage model).

    Only safetensors files are accepted (never pickles). Tensors whose shape does not match
    (typically the classifier of a different task) are skipped; their names are returned.
    """
    from safetensors.torch import load

    from .safefiles import read_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(
            f"{path.name}: initial weights must be a .safetensors file "
            "(pickled .pth/.bin checkpoints are refused for safety)"
        )
    try:
        tensors = load(read_file(path))  # regular files only: a FIFO is refused, not opened
    except Exception as e:  # noqa: BLE001
        raise ModelFileError(f"{path.name}: could not read weights ({e})") from None
    tensors = {k[len("model.") :] if k.startswith("model.") else k: v for k, v in tensors.items()}
    own = model.state_dict()
    usable = {k: v.float() for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ModelFileError(f"{path.name}: no tensor matches the {type(model).__name__} layout")
    model.load_state_dict(usable, strict=False)
    return sorted(k for k in own if k not in usable and not k.endswith("num_batches_tracked"))


@dataclass
class LoadedModel:
    """A model ready to run: description, network on its device, and identity."""

    spec: ModelSpec
    net: nn.Module
    device: torch.device
    path: Path | None = None
    sha256: str = ""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def normalise(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """(N,H,W,3) uint8 -> normalised float (N,3,H,W), channels-last, on the device."""
        x = batch_uint8.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1) * 255.0
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last)


def load_model(path: str | Path, device: str = "auto") -> LoadedModel:
    """Load an EyeTriage model file for inference (eval mode, channels-last).

    A LoRA adapter version is joined with its base model (found by hash in the workspace
    or beside the adapter file) and merged.
    """
    path = Path(path)
    spec, weights, extra = load_model_file(path)
    if (spec.provenance or {}).get("lora"):
        from .lora import join_with_base

        net = join_with_base(
            spec, weights, extra, path, lambda base: load_model(base, device="cpu").net
        )
    else:
        net = create_network(spec)
        try:
            net.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise ModelFileError(f"{path.name}: weights do not fit {spec.arch} ({first})") from None
    dev = pick_device(device)
    net = net.to(dev).to(memory_format=torch.channels_last).eval()
    return LoadedModel(spec, net, dev, path, file_sha256(path), extra)


def probabilities(
    spec: ModelSpec, logits: torch.Tensor, temperature: float | None = None
) -> torch.Tensor:
    """Calibrated probabilities: softmax over classes, sigmoid per label for multi-label."""
    t = spec.temperature if temperature is None else temperature
    z = logits.float() / t
    if spec.task == "multilabel":
        return torch.sigmoid(z)
    return torch.softmax(z, dim=1)


def penultimate_and_logits(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features before the classifier, and logits, from one backbone pass.

    timm models apply their head dropout before ``pre_logits`` is returned, so in eval mode
    ``classifier(pre)`` equals the full forward; fast MC dropout re-samples dropout on ``pre``.
    """
    feats = net.forward_features(x)
    pre = net.forward_head(feats, pre_logits=True)
    return pre, net.get_classifier()(pre)
