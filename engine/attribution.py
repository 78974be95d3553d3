"""Attribution maps: where a classifier looked when it produced one output.

Three methods, all computed with captum on a plain ``nn.Module`` that maps a normalised
``(N, 3, H, W)`` tensor to logits ``(N, C)``:

* ``gradcam`` - Grad-CAM on a convolutional feature map (or a vision transformer's token
  grid), signed and upsampled to the input size. Cheap: one forward and one backward.
* ``ig`` - Integrated Gradients from a black or heavily blurred baseline, summed over
  colour channels. Fine-grained, about ``n_steps`` forward/backward passes.
* ``occlusion`` - the drop of the target logit when a black square slides over the image.
  Model-agnostic, forward passes only.

Every map is signed: positive values support the target output, negative values speak
against it. The caller's model is left exactly as it was (train/eval flags,
``requires_grad`` flags, hooks), even when an attribution fails half-way.

Why one module of about 740 lines: the three methods share target selection, layer
choice, smoothing and the retina mask that the display relies on; each method alone is
short.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from captum.attr import (
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
)
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from .fileio import atomic_file
from .overlay import resize_map

log = logging.getLogger(__name__)

METHODS = ("gradcam", "ig", "occlusion")
GRADCAM_MIN_CELLS = 7  # a Grad-CAM grid coarser than this (cells a side) gets a finer stage
BASELINES = ("black", "blur")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@dataclass
class Attribution:
    """A signed attribution map for one image and one model output.

    ``map`` is float32 ``(H, W)`` at the resolution of the tensor the model saw; positive
    values support ``target``, negative values oppose it. ``convergence_delta`` is the
    Integrated Gradients approximation error (``None`` for other methods).
    """

    method: str
    target: int
    map: np.ndarray
    convergence_delta: float | None = None

    def __post_init__(self) -> None:
        amap = np.asarray(self.map, dtype=np.float32)
        if amap.ndim != 2:
            raise ValueError(f"attribution map must be 2-D (H, W), got shape {amap.shape}")
        self.map = amap

    def positive(self) -> np.ndarray:
        """The supporting evidence only (negative values set to 0)."""
        return np.maximum(self.map, 0.0)

    def negative(self) -> np.ndarray:
        """The opposing evidence only, as magnitudes >= 0 (positive values set to 0)."""
        return np.maximum(-self.map, 0.0)

    def resized(self, width: int, height: int) -> np.ndarray:
        """The signed map resized (bilinear) to ``width`` x ``height``, e.g. the original image."""
        return resize_map(self.map, width, height)


# --------------------------------------------------------------------------- model state


_model_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_model_locks_lock = threading.Lock()


@contextmanager
def attribution_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with frozen parameters for the duration of an attribution.

    On exit (also after an exception) every module's train/eval flag and every parameter's
    ``requires_grad`` flag are restored, and any hook registered on the model's modules
    while inside the block is removed. Parameters are frozen because attributions need
    gradients with respect to inputs and activations only; this saves time and memory and
    never touches ``.grad``. Attributions on the same model from several threads take turns
    (a per-model lock), so one never sees or removes another's hooks.
    """
    with _model_locks_lock:
        lock = _model_locks.setdefault(model, threading.RLock())
    with lock:
        yield from _attribution_mode(model)


def _attribution_mode(model: nn.Module) -> Iterator[nn.Module]:
    modules = list(model.modules())
    training = [(m, m.training) for m in modules]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    hooks_before = [(m, {name: set(getattr(m, name, {})) for name in _HOOK_DICTS}) for m in modules]
    try:
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, before in hooks_before:
            for name, ids in before.items():
                hooks = getattr(m, name, None)
                if hooks:
                    for hook_id in [k for k in hooks if k not in ids]:
                        del hooks[hook_id]
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, flag in training:
            m.training = flag


# --------------------------------------------------------------------------- target layers


_layer_cache: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()
_layer_cache_lock = threading.Lock()


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` with dotted name ``name`` (e.g. ``"layer4"``, ``"stages.3"``)."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    shallow = [n for n in names if n.count(".") <= 1]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    listing = ", ".join(shallow[:40]) + (" ..." if len(shallow) > 40 else "")
    raise ValueError(f"model has no layer named {name!r}.{hint} Available layers: {listing}")


def _is_vit(model: nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return (
        isinstance(blocks, nn.Sequential | nn.ModuleList)
        and len(blocks) > 0
        and hasattr(blocks[-1], "norm1")
        and hasattr(model, "patch_embed")
    )


def _example_input(model: nn.Module) -> torch.Tensor:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros((1, *size), device=device, dtype=dtype)


def _last_feature_map_layer(model: nn.Module) -> nn.Module:
    """Run one dry forward pass and return the last module producing a spatial 4-D map."""
    names = {m: n for n, m in model.named_modules() if n}
    records: list[tuple[str, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            return
        if output.shape[-1] * output.shape[-2] <= 1:
            return  # pooled, not a feature map
        if inputs and isinstance(inputs[0], torch.Tensor) and output is inputs[0]:
            return  # identity-like (nn.Identity, in-place no-ops)
        records.append((names[module], output))

    with attribution_mode(model), torch.no_grad():
        for m in names:
            m.register_forward_hook(hook)
        model(_example_input(model))
    if not records:
        raise ValueError(
            "could not find a layer producing a 4-D feature map; pass layer='<name>' "
            "(see model.named_modules())"
        )
    final = records[-1][1]
    producers = [n for n, out in records if out is final]
    # Prefer timm's own name for the last stage (layer4, stages.3, blocks.5) when it
    # produces the final map; otherwise the outermost module producing it (e.g. bn2).
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info:
        last_stage = feature_info[-1].get("module") if isinstance(feature_info[-1], dict) else None
        if last_stage in producers:
            return resolve_layer(model, last_stage)
    return resolve_layer(model, producers[-1])


def find_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM should look at when the user names none.

    CNNs: the last module producing the spatial feature map before global pooling
    (resnet18 -> ``layer4``, efficientnet_b0 -> ``bn2``, convnext -> ``stages[-1]``,
    mobilenetv3 -> ``blocks[-1]``), found with one dry forward pass and cached per model.
    Vision transformers: the last block's ``norm1`` (its tokens are reshaped to a grid).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with _layer_cache_lock:
        cached = _layer_cache.get(model)
    if cached is not None and any(m is cached for m in model.modules()):
        return cached
    layer = model.blocks[-1].norm1 if _is_vit(model) else _last_feature_map_layer(model)
    with _layer_cache_lock:
        _layer_cache[model] = layer
    return layer


_stage_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], list]] = (
    weakref.WeakKeyDictionary()
)


def feature_stages(
    model: nn.Module, size: tuple[int, int] | None = None
) -> list[tuple[str, tuple[int, int]]]:
    """The model's convolutional stages, shallow to deep: ``(layer name, (h, w) grid)``.

    From timm's ``feature_info`` when the model has it (resnet ``layer1..4``, efficientnet
    ``blocks.N``, convnext ``stages.N``), else every module whose output changes the
    spatial resolution; found with one dry forward pass at input ``size`` (default: the
    model's own input size) and cached. The last entry is the layer
    :func:`find_target_layer` picks.
    """
    example = _example_input(model)
    if size is not None:
        example = example.new_zeros((1, example.shape[1], int(size[0]), int(size[1])))
    key = (int(example.shape[-2]), int(example.shape[-1]))
    with _layer_cache_lock:
        cached = _stage_cache.get(model, {}).get(key)
    if cached is not None:
        return list(cached)
    names = {m: n for n, m in model.named_modules() if n}
    shapes: dict[str, tuple[int, int]] = {}

    def hook(module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            shapes[names[module]] = (int(output.shape[-2]), int(output.shape[-1]))

    with attribution_mode(model), torch.no_grad():
        for m in names:
            m.register_forward_hook(hook)
        model(example)
    last = find_target_layer(model)
    last_name = names[last]
    stages: list[tuple[str, tuple[int, int]]] = []
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and all(isinstance(i, dict) for i in info):
        for entry in info:
            name = entry.get("module")
            if name in shapes and name != last_name:
                stages.append((name, shapes[name]))
    else:
        previous = None
        for name, hw in shapes.items():
            if name.count(".") <= 1 and hw != previous and name != last_name:
                stages.append((name, hw))
                previous = hw
    if last_name in shapes:
        stages = [st for st in stages if st[1] != shapes[last_name]]
        stages.append((last_name, shapes[last_name]))
    with _layer_cache_lock:
        _stage_cache.setdefault(model, {})[key] = list(stages)
    return stages


def default_gradcam_layers(
    model: nn.Module, size: tuple[int, int] | None = None, min_cells: int = GRADCAM_MIN_CELLS
) -> list[str]:
    """The Grad-CAM layer used when none is named, for inputs of ``size``: the last stage
    when its grid has at least ``min_cells`` cells a side, else the deepest stage that has.

    Chosen by measurement (``explain-eval --compare``, demo model, 4x4 last grid at 128
    px): the finer stage alone had lower deletion and higher insertion AUC than the last
    stage or a blend of the two. A blend stays available as ``layer="a+b"``.
    """
    stages = feature_stages(model, size)
    if not stages:
        return []
    last_name, (h, w) = stages[-1]
    if min(h, w) >= min_cells:
        return [last_name]
    finer = [name for name, (sh, sw) in stages[:-1] if min(sh, sw) >= min_cells]
    return [finer[-1]] if finer else [last_name]


def _token_grid_shape(model: nn.Module, n_tokens: int) -> tuple[int, int]:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and int(grid[0]) * int(grid[1]) == n_tokens:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ValueError(
            f"cannot reshape {n_tokens} patch tokens to a grid; pass a convolutional layer"
        )
    return side, side


# --------------------------------------------------------------------------- helpers


def check_input_tensor(
    x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> None:
    """Raise a clear error unless ``x`` is one finite normalised image ``(1, C, H, W)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(
            f"x must have shape (1, C, H, W) (one normalised image), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if mean is not None and std is not None:
        if len(mean) != x.shape[1] or len(std) != x.shape[1]:
            raise ValueError(
                f"mean/std have {len(mean)}/{len(std)} values but x has {x.shape[1]} channels"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {tuple(std)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")


def check_target(target: int) -> int:
    """Validate an output index (upper bound is checked once the model's outputs are known)."""
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise TypeError(f"target must be an int output index, got {type(target).__name__}")
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    return int(target)


def _logits_fn(model: nn.Module, target: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``model`` so a wrong output shape or out-of-range target gives a clear error."""

    def forward(inp: torch.Tensor) -> torch.Tensor:
        out = model(inp)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model must return logits of shape (N, C), got {shape}")
        if target >= out.shape[1]:
            raise ValueError(f"target {target} is out of range: model has {out.shape[1]} outputs")
        return out

    return forward


def _prepare(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A private copy of ``x`` on the model's device, usable by autograd."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    with torch.inference_mode(False):
        return x.detach().to(device).clone()


def pixel_value(
    value: float, like: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """A ``(1, C, 1, 1)`` tensor holding the normalised form of pixel ``value`` (0 = black)."""
    m = torch.as_tensor(mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return (value - m) / s


def make_baseline(
    x: torch.Tensor,
    kind: str,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """A reference image shaped like ``x``: ``"black"`` (black pixels, normalised) or
    ``"blur"`` (a heavily Gaussian-blurred copy: keeps colour, removes detail)."""
    if kind == "black":
        return pixel_value(0.0, x, mean, std).expand_as(x).clone()
    if kind == "blur":
        h, w = x.shape[-2:]
        sigma = max(h, w) / 12.0
        kernel = min(2 * round(3 * sigma) + 1, 2 * min(h, w) - 1)
        kernel = max(kernel - (1 - kernel % 2), 1)  # odd, reflect padding < size
        with torch.no_grad():
            return gaussian_blur(x.detach(), [kernel, kernel], [sigma, sigma])
    raise ValueError(f"unknown baseline {kind!r}; expected one of {BASELINES}")


def _to_map(attr: torch.Tensor) -> np.ndarray:
    return attr.detach().float().cpu().numpy().reshape(attr.shape[-2:]).astype(np.float32)


# --------------------------------------------------------------------------- methods


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    layer: nn.Module | str | Sequence[nn.Module | str] | None = None,
) -> Attribution:
    """Signed Grad-CAM for output ``target``, bilinearly upsampled to the input size.

    ``layer`` is a module, a dotted name, ``"last"`` (:func:`find_target_layer`), several
    of these (a blend: each layer's map scaled to a peak magnitude of 1, then averaged), or
    ``None`` for :func:`default_gradcam_layers` (the last stage, or a finer one when the
    last grid is coarser than :data:`GRADCAM_MIN_CELLS` cells a side).
    For a vision transformer layer producing tokens ``(N, T, C)``, the prefix (class,
    register) tokens are dropped and the patch tokens reshaped to ``(N, C, h, w)``.
    """
    check_input_tensor(x)
    target = check_target(target)
    if layer is None:
        layers: list[nn.Module | str] = (
            [find_target_layer(model)]
            if _is_vit(model)
            else list(default_gradcam_layers(model, tuple(x.shape[-2:])))
        )
    elif isinstance(layer, str) and "+" in layer:
        layers = [part.strip() for part in layer.split("+") if part.strip()]
    elif isinstance(layer, str | nn.Module):
        layers = [layer]
    elif isinstance(layer, Sequence):
        layers = list(layer)
    else:
        raise TypeError(
            f"layer must be an nn.Module, a layer name or None, got {type(layer).__name__}"
        )
    if not layers:
        layers = [find_target_layer(model)]
    if len(layers) == 1:
        return _gradcam_one(model, x, target, layers[0])
    total = np.zeros(tuple(x.shape[-2:]), dtype=np.float32)
    for one in layers:
        amap = _gradcam_one(model, x, target, one).map
        peak = float(np.abs(amap).max())
        if peak > 0:
            total += amap / peak
    return Attribution("gradcam", target, total / len(layers))


def _gradcam_one(
    model: nn.Module, x: torch.Tensor, target: int, layer: nn.Module | str
) -> Attribution:
    if isinstance(layer, str) and layer == "last":
        module = find_target_layer(model)
    elif isinstance(layer, str):
        module = resolve_layer(model, layer)
    elif isinstance(layer, nn.Module):
        module = layer
        if not any(m is module for m in model.modules()):
            raise ValueError("layer is not a sub-module of model")
    else:
        raise TypeError(
            f"layer must be an nn.Module, a layer name or None, got {type(layer).__name__}"
        )

    probe = nn.Identity()  # captum watches this; our hook routes the layer output through it
    n_prefix = int(getattr(model, "num_prefix_tokens", 1 if _is_vit(model) else 0))

    def route(_module: nn.Module, _inputs: tuple, output: object) -> object:
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer output is a {type(output).__name__}, not a tensor")
        if output.ndim == 4:
            return probe(output)
        if output.ndim == 3:  # tokens (N, T, C)
            n, t, c = output.shape
            h, w = _token_grid_shape(model, t - n_prefix)
            grid = output[:, n_prefix:].transpose(1, 2).reshape(n, c, h, w)
            tokens = probe(grid).flatten(2).transpose(1, 2)
            return torch.cat([output[:, :n_prefix], tokens], dim=1)
        raise ValueError(
            f"Grad-CAM needs a layer producing a (N, C, H, W) map or (N, T, C) tokens; "
            f"the chosen layer produced shape {tuple(output.shape)}"
        )

    xi = _prepare(model, x)
    with attribution_mode(model), torch.enable_grad():
        module.register_forward_hook(route)
        cam = LayerGradCam(_logits_fn(model, target), probe)
        attr = cam.attribute(xi, target=target, relu_attributions=False)
        attr = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return Attribution("gradcam", target, _to_map(attr))


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    baseline: str = "black",
    n_steps: int = 32,
    internal_batch_size: int = 8,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    bf16: bool = False,
    noise_samples: int = 0,
    noise: float = 0.1,
) -> Attribution:
    """Integrated Gradients from a ``"black"`` or ``"blur"`` baseline, summed over channels.

    ``internal_batch_size`` bounds memory (how many interpolated images go through the model
    at once). The map's sum approximates ``logit(x) - logit(baseline)`` for the target; the
    remaining error is stored in ``convergence_delta``. ``bf16`` runs the model under
    bfloat16 autocast: about twice as fast on CPUs with native bf16 (AVX512-BF16/AMX), slower
    elsewhere; the map stays very close (see ``benchmarks/bench_attribution.py``).

    ``noise_samples`` > 0 averages the maps of that many noisy copies of the image
    (SmoothGrad through captum's ``NoiseTunnel``; Gaussian noise of ``noise`` times the
    pixel range, seeded so the same image gives the same map). It costs
    ``noise_samples * n_steps`` passes, so fewer steps per copy keep the time of plain IG.
    """
    check_input_tensor(x, mean, std)
    target = check_target(target)
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    if noise_samples < 0:
        raise ValueError(f"noise_samples must be >= 0, got {noise_samples}")
    if noise_samples and not 0.0 < noise <= 1.0:
        raise ValueError(f"noise must be in (0, 1] (a share of the pixel range), got {noise}")
    xi = _prepare(model, x)
    base = make_baseline(xi, baseline, mean, std)
    autocast = torch.autocast(xi.device.type, dtype=torch.bfloat16, enabled=bf16)
    with attribution_mode(model), torch.enable_grad(), autocast:
        ig = IntegratedGradients(_logits_fn(model, target))
        if noise_samples:
            stdev = float(noise / (sum(std) / len(std)))  # pixel-range share -> normalised
            devices = [xi.device] if xi.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                attr, delta = NoiseTunnel(ig).attribute(
                    xi,
                    nt_type="smoothgrad",
                    nt_samples=noise_samples,
                    nt_samples_batch_size=noise_samples,
                    stdevs=stdev,
                    baselines=base,
                    target=target,
                    n_steps=n_steps,
                    internal_batch_size=internal_batch_size,
                    return_convergence_delta=True,
                )
        else:
            attr, delta = ig.attribute(
                xi,
                baselines=base,
                target=target,
                n_steps=n_steps,
                internal_batch_size=internal_batch_size,
                return_convergence_delta=True,
            )
    return Attribution("ig", target, _to_map(attr.float().sum(dim=1)), float(delta.abs().max()))


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    window: int | None = None,
    stride: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    perturbations_per_eval: int = 16,
) -> Attribution:
    """Occlusion: how much the target logit drops when a black square covers each pixel.

    ``window`` defaults to about 1/8 of the image side, ``stride`` to half the window.
    ``perturbations_per_eval`` occluded copies go through the model per batch.
    """
    check_input_tensor(x, mean, std)
    target = check_target(target)
    h, w = x.shape[-2:]
    window = max(1, round(min(h, w) / 8)) if window is None else int(window)
    stride = max(1, window // 2) if stride is None else int(stride)
    if not 1 <= window <= min(h, w):
        raise ValueError(f"window must be between 1 and {min(h, w)} pixels, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and the window ({window}), got {stride}")
    if perturbations_per_eval < 1:
        raise ValueError(f"perturbations_per_eval must be >= 1, got {perturbations_per_eval}")
    xi = _prepare(model, x)
    base = pixel_value(0.0, xi, mean, std).expand_as(xi).contiguous()
    c = xi.shape[1]
    with attribution_mode(model), torch.no_grad():
        occ = Occlusion(_logits_fn(model, target))
        attr = occ.attribute(
            xi,
            sliding_window_shapes=(c, window, window),
            strides=(c, stride, stride),
            baselines=base,
            target=target,
            perturbations_per_eval=perturbations_per_eval,
        )
    return Attribution("occlusion", target, _to_map(attr.mean(dim=1)))


def explain(
    model: nn.Module, x: torch.Tensor, target: int, method: str, **kw: object
) -> Attribution:
    """Compute an attribution with ``method`` (one of :data:`METHODS`)."""
    funcs: dict[str, Callable[..., Attribution]] = {
        "gradcam": gradcam,
        "ig": integrated_gradients,
        "occlusion": occlusion,
    }
    if method not in funcs:
        raise ValueError(f"unknown attribution method {method!r}; expected one of {METHODS}")
    return funcs[method](model, x, target, **kw)


# --------------------------------------------------------------------------- cache

CacheKey = tuple[str, str, str, int, str]


class AttributionCache:
    """Attribution maps on disk (compressed ``.npz``, float16) with a small in-memory LRU.

    Key: ``(image_hash, model_hash, method, target, extra)`` where ``extra`` encodes the
    remaining settings (layer, baseline, steps...). Writes are atomic, so a crash never
    leaves a half-written entry; unreadable entries count as misses.
    """

    def __init__(self, folder: str | os.PathLike[str], memory_items: int = 32) -> None:
        if memory_items < 0:
            raise ValueError(f"memory_items must be >= 0, got {memory_items}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.memory_items = memory_items
        self._memory: OrderedDict[str, Attribution] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key_text(key: CacheKey) -> str:
        if not isinstance(key, tuple) or len(key) != 5:
            raise ValueError(
                "cache key must be a tuple (image_hash, model_hash, method, target, extra), "
                f"got {key!r}"
            )
        image_hash, model_hash, method, target, extra = key
        return "\x1f".join(
            [str(image_hash), str(model_hash), str(method), str(int(target)), str(extra)]
        )

    def path_for(self, key: CacheKey) -> Path:
        """Where the entry for ``key`` lives on disk."""
        digest = hashlib.sha256(self._key_text(key).encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest[2:40]}.npz"

    def _remember(self, text: str, item: Attribution) -> None:
        if self.memory_items == 0:
            return
        with self._lock:
            self._memory[text] = item
            self._memory.move_to_end(text)
            while len(self._memory) > self.memory_items:
                self._memory.popitem(last=False)

    @staticmethod
    def _copy(item: Attribution) -> Attribution:
        return Attribution(item.method, item.target, item.map.copy(), item.convergence_delta)

    def get(self, key: CacheKey) -> Attribution | None:
        """The cached attribution for ``key``, or ``None``."""
        text = self._key_text(key)
        with self._lock:
            item = self._memory.get(text)
            if item is not None:
                self._memory.move_to_end(text)
                return self._copy(item)
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != text:
                    return None  # hash collision: treat as a miss
                amap = data["map"].astype(np.float32) * np.float32(data["scale"])
                delta = float(data["delta"])
                item = Attribution(
                    str(data["method"]),
                    int(data["target"]),
                    amap,
                    None if math.isnan(delta) else delta,
                )
        except (OSError, KeyError, ValueError) as exc:
            log.warning("ignoring unreadable attribution cache entry %s: %s", path, exc)
            return None
        self._remember(text, item)
        return self._copy(item)

    def put(self, key: CacheKey, attribution: Attribution) -> None:
        """Store ``attribution`` under ``key`` (overwrites an existing entry atomically)."""
        text = self._key_text(key)
        amap = np.asarray(attribution.map, dtype=np.float32)
        if not np.isfinite(amap).all():
            raise ValueError("refusing to cache an attribution map with NaN or infinite values")
        scale = float(np.abs(amap).max()) or 1.0  # float16 keeps relative precision
        path = self.path_for(key)
        with atomic_file(path, "wb") as fh:
            np.savez_compressed(
                fh,
                map=(amap / scale).astype(np.float16),
                scale=np.float32(scale),
                method=np.str_(attribution.method),
                target=np.int64(attribution.target),
                delta=np.float64(
                    np.nan
                    if attribution.convergence_delta is None
                    else attribution.convergence_delta
                ),
                key=np.str_(text),
            )
        self._remember(text, self._copy(attribution))
