"""Bring a clinic's existing checkpoint (.pth/.pt/.bin/.ckpt, .safetensors, .npz) into timm's layout.

A ``.pth`` file is a Python pickle, and unpickling runs whatever code the file names. So
pickled checkpoints are read only with ``torch.load(weights_only=True)``, which accepts
tensors and plain containers and refuses anything else *before* running it; such a file is
refused with a clear message. The tensors are then unwrapped (``state_dict``, ``model``,
``module.``, ``backbone.`` …) and mapped onto the named timm architecture by name, or by
order and shape when the names differ (a checkpoint from another implementation of the
same network). A checkpoint whose backbone does not fit is refused; the result is a plain
safetensors file for ``eyetriage train --init-weights``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .modelfile import ModelFileError, atomic_write_bytes

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors", ".npz")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "module")
PREFIXES = ("module.", "model.", "backbone.", "encoder.", "base_model.", "net.")
METADATA_KEY = "eyetriage-weights"


@dataclass
class ImportReport:
    """What was matched and how; recorded in the output file and shown to the user."""

    arch: str
    source: str
    source_sha256: str
    method: str  # "name" or "order and shape"
    matched: int
    missing: list[str] = field(default_factory=list)  # target tensors left new (e.g. the head)
    unexpected: list[str] = field(default_factory=list)  # source tensors not used
    created_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        def few(names: list[str]) -> str:
            if not names:
                return "none"
            more = f" … (+{len(names) - 5})" if len(names) > 5 else ""
            return ", ".join(names[:5]) + more

        return (
            f"{self.source} → {self.arch}: matched {self.matched} tensors by {self.method}; "
            f"missing {len(self.missing)} ({few(self.missing)}); "
            f"unexpected {len(self.unexpected)} ({few(self.unexpected)})"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, flattened to ``name -> tensor``; never a full unpickle."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelFileError(
            f"{path.name}: unknown weights format (expected {', '.join(SUFFIXES)})"
        )
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise ModelFileError(f"{path.name}: not a readable safetensors file ({e})") from None
    elif suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as z:
                obj = {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        except ValueError as e:
            raise ModelFileError(
                f"{path.name}: holds Python objects, not plain arrays; refused ({e})"
            ) from None
        except (OSError, zipfile.BadZipFile) as e:
            raise ModelFileError(f"{path.name}: not a readable .npz file ({e})") from None
    else:
        obj = _safe_torch_load(path)
    tensors = _flatten(_unwrap(obj))
    if not tensors:
        raise ModelFileError(f"{path.name}: holds no tensors")
    return _strip_prefixes(tensors)


def _safe_torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(
            f"{path.name}: refused: the file holds Python objects other than tensors and plain "
            f"containers, and loading it fully could run code ({first[:160]}). Save only the "
            "state_dict (torch.save(model.state_dict(), ...)) or convert it to .safetensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path.name}: not a readable PyTorch checkpoint ({e})") from None


def _unwrap(obj: Any) -> Any:
    """Descend into the usual wrappers (``{"state_dict": …}``, ``{"model": …}``) when present."""
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        inner = next(
            (obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict) and obj[k]),
            None,
        )
        if inner is None:
            break
        obj = inner
    return obj


def _flatten(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _strip_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.``/``backbone.``/… when every name carries it (repeatedly)."""
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if all(k.startswith(p) for k in tensors):
                tensors = {k[len(p) :]: v for k, v in tensors.items()}
                changed = True
    return tensors


def _head_names(net: nn.Module) -> set[str]:
    head = {id(p) for p in net.get_classifier().parameters()}
    return {n for n, p in net.named_parameters() if id(p) in head}


def _comparable(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of real weights, in order: counters such as BatchNorm's num_batches_tracked left out."""
    return [
        n
        for n, t in tensors.items()
        if not n.endswith("num_batches_tracked") and (t.ndim > 0 or t.is_floating_point())
    ]


def map_to_network(
    tensors: dict[str, torch.Tensor], net: nn.Module
) -> tuple[dict[str, torch.Tensor], str, list[str], list[str]]:
    """(mapped state, method, missing, unexpected); raises when the backbone does not fit.

    By name when every backbone tensor of ``net`` has a same-named, same-shaped source
    tensor; otherwise by order and shape when the source, in order, has exactly the
    backbone's shapes (then the classifier too if its shape fits).
    """
    own = net.state_dict()
    head = _head_names(net)
    backbone = [k for k in _comparable(own) if k not in head]
    by_name = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    if all(k in by_name for k in backbone):
        missing = [k for k in own if k not in by_name and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in tensors if k not in by_name]
        return by_name, "name", missing, unexpected
    src_names = _comparable(tensors)
    if len(src_names) >= len(backbone) and all(
        tensors[s].shape == own[t].shape for s, t in zip(src_names, backbone, strict=False)
    ):
        mapped = {t: tensors[s] for s, t in zip(src_names, backbone, strict=False)}
        used = set(src_names[: len(backbone)])
        rest_src = src_names[len(backbone) :]
        rest_own = [k for k in _comparable(own) if k in head]
        if len(rest_src) == len(rest_own) and all(
            tensors[s].shape == own[t].shape for s, t in zip(rest_src, rest_own, strict=True)
        ):
            mapped.update({t: tensors[s] for s, t in zip(rest_src, rest_own, strict=True)})
            used.update(rest_src)
        missing = [k for k in _comparable(own) if k not in mapped]
        unexpected = [k for k in _comparable(tensors) if k not in used]
        return mapped, "order and shape", missing, unexpected
    absent = [k for k in backbone if k not in by_name]
    example = absent[0]
    hint = f"e.g. {example} {tuple(own[example].shape)}" + (
        f" vs the file's {tuple(tensors[example].shape)}"
        if example in tensors
        else " has no counterpart"
    )
    raise ModelFileError(
        f"the checkpoint's backbone does not match this architecture: {len(absent)} of "
        f"{len(backbone)} backbone tensors have no same-named, same-shaped tensor ({hint}), and "
        f"the file's {len(src_names)} tensors do not line up by order and shape either"
    )


def import_weights(
    src: str | Path, arch: str, out: str | Path | None = None, net: nn.Module | None = None
) -> tuple[dict[str, torch.Tensor], ImportReport]:
    """Map ``src`` onto timm's ``arch``; write ``out`` (plain safetensors) when given."""
    import timm

    src = Path(src)
    tensors = read_checkpoint(src)
    if net is None:
        try:
            net = timm.create_model(arch, pretrained=False)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ModelFileError(
                    f"unknown architecture {arch!r} (see timm.list_models())"
                ) from None
            raise
    mapped, method, missing, unexpected = map_to_network(tensors, net)
    try:
        mapped = {k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}
    except RuntimeError as e:
        raise ModelFileError(f"{src.name}: unusable tensor ({e})") from None
    report = ImportReport(
        arch=arch,
        source=src.name,
        source_sha256=_sha256(src),
        method=method,
        matched=len([k for k in mapped if not k.endswith("num_batches_tracked")]),
        missing=missing,
        unexpected=unexpected,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if out is not None:
        write_weights(Path(out), mapped, report.to_dict())
    return mapped, report


def write_weights(path: Path, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """A plain safetensors file of timm-layout tensors, with where they came from as metadata."""
    from safetensors.torch import save

    if path.suffix != ".safetensors":
        raise ModelFileError(f"{path.name}: the output must be a .safetensors file")
    data = save(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={METADATA_KEY: json.dumps(info, sort_keys=True)},
    )
    atomic_write_bytes(path, data)


def read_weights_info(path: str | Path) -> dict[str, Any] | None:
    """The import record of a weights file written by :func:`write_weights`, if any."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001
        return None
    try:
        return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None
    except json.JSONDecodeError:
        return None
