"""LoRA adapters (the ``peft`` library) on timm networks, and adapter-only model files.

A LoRA version of a model stores only the low-rank adapter tensors (``lora.*``), the
retrained classifier (``model.<classifier>``) and the out-of-distribution statistics; its
description names the base model by hash (``provenance["lora"]["base"]``). Loading finds the
base file, rebuilds it, injects the adapters, loads their weights and merges them into the
base weights, so inference runs at the base network's speed.

Targets: the attention ``qkv`` and ``proj`` Linear layers of vision transformers, and the
1x1 convolutions (plus hidden Linear layers) of CNNs such as EfficientNet. A network with
none of these (e.g. a plain ResNet with 3x3 convolutions only) gets a clear error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .modelfile import ModelFileError, ModelSpec, file_sha256

LORA_PREFIX = "lora."
DEFAULT_RANK = 8
DEFAULT_ALPHA = 16
_VIT_TARGET = re.compile(r"(^|\.)attn\.(qkv|proj)$")


class LoraError(ValueError):
    """LoRA cannot be used on this network; the message says why."""


def _classifier_names(net: nn.Module) -> set[str]:
    head = net.get_classifier()
    return {n for n, m in net.named_modules() if m is head or _is_within(m, head)}


def _is_within(module: nn.Module, root: nn.Module) -> bool:
    return any(module is m for m in root.modules())


def lora_targets(net: nn.Module) -> list[str]:
    """Module names LoRA adapts: attention qkv/proj (ViTs), else 1x1 convs and hidden Linears."""
    names = [
        n for n, m in net.named_modules() if isinstance(m, nn.Linear) and _VIT_TARGET.search(n)
    ]
    if names:
        return names
    skip = _classifier_names(net)
    for n, m in net.named_modules():
        if n in skip:
            continue
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1:
            names.append(n)
        elif isinstance(m, nn.Linear):
            names.append(n)
    return names


def lora_settings(net: nn.Module, arch: str, rank: int = DEFAULT_RANK) -> dict[str, Any]:
    """The adapter configuration recorded in a model file (targets, rank, alpha)."""
    targets = lora_targets(net)
    if not targets:
        raise LoraError(
            f"LoRA needs attention (qkv/proj) or 1x1-convolution layers; {arch} has none. "
            "Use the 'head' or 'full' strategy, or a ViT / EfficientNet model"
        )
    return {"rank": rank, "alpha": DEFAULT_ALPHA, "targets": targets}


def inject(net: nn.Module, settings: dict[str, Any]) -> nn.Module:
    """Add trainable LoRA adapters in place; the base stays frozen, the classifier trains."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(
        r=int(settings["rank"]),
        lora_alpha=int(settings["alpha"]),
        target_modules=list(settings["targets"]),
        lora_dropout=0.0,
        bias="none",
    )
    net = inject_adapter_in_model(cfg, net)
    for p in net.get_classifier().parameters():
        p.requires_grad = True
    return net


def adapter_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights of an injected network, named ``lora.<module>.lora_A.weight``."""
    from peft import get_peft_model_state_dict

    return {
        LORA_PREFIX + k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(net).items()
    }


def classifier_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The classifier's parameters under their full names in the network's state dict."""
    head_ids = {id(t) for t in net.get_classifier().state_dict(keep_vars=True).values()}
    return {
        k: v.detach().cpu()
        for k, v in net.state_dict(keep_vars=True).items()
        if id(v) in head_ids and "lora_" not in k
    }


def merge(net: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and remove the LoRA wrappers (in place)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(net.named_modules()):
        if isinstance(module, LoraLayer) and name:
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, child, module.get_base_layer())
    for p in net.parameters():
        p.requires_grad = True
    return net


def find_base(base_hash: str, adapter_path: Path, search: Sequence[Path] = ()) -> Path:
    """The base model file with sha256 ``base_hash``.

    Looks in the workspace the adapter sits in (``<ws>/models/``: the ``models`` table),
    then beside the adapter file, then in ``search``. Raises :class:`ModelFileError`.
    """
    candidates: list[Path] = []
    from .store import registered_model_path

    registered = registered_model_path(adapter_path.parent.parent, base_hash)
    if registered is not None:
        candidates.append(registered)
    folders = [adapter_path.parent, *(Path(s) for s in search)]
    for folder in folders:
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        # files named after their hash first, then the rest
        files.sort(key=lambda p: base_hash[:12] not in p.name)
        candidates += [f for f in files if f.resolve() != adapter_path.resolve()]
    seen: set[Path] = set()
    for c in candidates:
        c = c.resolve()
        if c in seen or not c.is_file():
            continue
        seen.add(c)
        if file_sha256(c) == base_hash:
            return c
    raise ModelFileError(
        f"{adapter_path.name}: a LoRA adapter whose base model (sha256 {base_hash[:12]}) is "
        "missing; put the base model file beside the adapter or register it in the workspace"
    )


def join_with_base(
    spec: ModelSpec,
    weights: dict[str, torch.Tensor],
    extra: dict[str, torch.Tensor],
    path: Path,
    load_base: Callable[[Path], nn.Module],
) -> nn.Module:
    """Rebuild an adapter version: base network + adapters + classifier, merged."""
    from peft import set_peft_model_state_dict

    info = spec.provenance["lora"]
    base_hash = info.get("base")
    if not isinstance(base_hash, str) or len(base_hash) != 64:
        raise ModelFileError(f"{path.name}: LoRA adapter without a valid base model hash")
    base_path = find_base(base_hash, path)
    net = load_base(base_path)
    try:
        net = inject(net, info)
        adapters = {k[len(LORA_PREFIX) :]: v for k, v in extra.items() if k.startswith(LORA_PREFIX)}
        result = set_peft_model_state_dict(net, adapters)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected or not adapters:
            raise ModelFileError(
                f"{path.name}: adapter tensors do not fit the base model {base_path.name}"
            )
        missing = net.load_state_dict(weights, strict=False).unexpected_keys
        if missing:
            raise ModelFileError(f"{path.name}: classifier does not fit {spec.arch}")
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelFileError(
            f"{path.name}: adapter does not fit base {base_path.name} ({str(e).splitlines()[0]})"
        ) from None
    for k in [k for k in extra if k.startswith(LORA_PREFIX)]:
        del extra[k]
    return merge(net)
