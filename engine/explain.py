"""One call from an image file to an attribution overlay: used by the CLI and the desktop.

The model sees a square crop around the field of view; the map is computed there and then
placed back over the original photograph at the crop's position, so the reader looks at the
real image, not the model's thumbnail.

Between the raw map and the picture sits the display step (:class:`Display`): smoothing at
the scale of the findings and no colour outside the retina (the fundus field of view, the
tissue band of an OCT scan). Its defaults per method are the ones that kept the map at
least as faithful as the raw method on the synthetic finding masks
(``eyetriage explain-eval --compare``); the raw map stays available for checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import decode_for_model
from .models import LoadedModel

METHOD_NAMES = {"gradcam": "Grad-CAM", "ig": "Integrated Gradients", "occlusion": "Occlusion"}


@dataclass(frozen=True)
class Display:
    """How a raw attribution map becomes the map a reader sees.

    ``smooth``: Gaussian smoothing with sigma as a share of the model's input side (0 =
    none); ``mask``: no attribution outside the retina (fundus field of view, OCT tissue
    band; nothing is masked when neither is found).
    """

    smooth: float = 0.0
    mask: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.smooth <= 0.25:
            raise ValueError(f"smooth must be in [0, 0.25] of the image side, got {self.smooth}")

    def key(self) -> str:
        return f"smooth={self.smooth:g},mask={int(self.mask)}"


RAW = Display(smooth=0.0, mask=False)
DEFAULT_DISPLAY = {
    "gradcam": Display(smooth=0.0, mask=True),
    "ig": Display(smooth=0.02, mask=True),
    "occlusion": Display(smooth=0.0, mask=True),
}
# Integrated Gradients noise averaging (SmoothGrad) is off by default: on the synthetic
# finding masks it lowered the pointing game and mass in mask, while smoothing the plain map
# improved deletion and insertion (explain-eval --compare). ``noise_samples=k`` turns it on,
# the caller's step budget then shared between the k copies (same cost as plain IG).
IG_NOISE_SAMPLES = 0
IG_MIN_STEPS_PER_SAMPLE = 4


def retina_mask(array: np.ndarray, modality: str) -> np.ndarray | None:
    """Where the model's input shows retina (``True``), or ``None`` when that is unknown."""
    from .overlay import fundus_field_mask, oct_retina_mask

    return oct_retina_mask(array) if modality == "oct" else fundus_field_mask(array)


def display_map(raw: np.ndarray, display: Display, mask: np.ndarray | None) -> np.ndarray:
    """Apply ``display`` to a raw map at the model's input resolution."""
    from .overlay import smooth_map

    amap = np.asarray(raw, dtype=np.float32)
    if display.smooth > 0:
        amap = smooth_map(amap, display.smooth * max(amap.shape))
    if display.mask and mask is not None:
        amap = np.where(mask, amap, 0.0).astype(np.float32)
    return amap


def ig_options(kw: dict[str, object]) -> dict[str, object]:
    """Integrated Gradients options for reading: noise averaging within the step budget.

    ``n_steps`` (default 32) is the total number of model passes; with ``noise_samples``
    noisy copies (default :data:`IG_NOISE_SAMPLES`, 0 = plain IG) each gets
    ``n_steps / copies`` of them (at least :data:`IG_MIN_STEPS_PER_SAMPLE`).
    """
    out = dict(kw)
    budget = int(out.pop("n_steps", 32))  # type: ignore[call-overload]
    samples = int(out.pop("noise_samples", IG_NOISE_SAMPLES))  # type: ignore[call-overload]
    if samples <= 1:
        return {**out, "n_steps": budget, "noise_samples": 0}
    steps = max(IG_MIN_STEPS_PER_SAMPLE, budget // samples)
    return {**out, "n_steps": steps, "noise_samples": samples}


@dataclass
class Explanation:
    method: str
    target: int
    target_label: str
    amap: np.ndarray  # the map to show, at the model's input resolution (S, S)
    crop_box: tuple[float, float, float, float]  # where that square lies on the original
    original_size: tuple[int, int]
    probability: float  # the model's probability for the target (calibrated)
    raw_amap: np.ndarray | None = None  # the method's own map before the display step
    mask: np.ndarray | None = None  # (S, S) True = retina; None = not found / not used
    display: Display = field(default_factory=Display)

    @property
    def masked(self) -> bool:
        """True when colour outside the retina was removed (say so in the legend)."""
        return self.display.mask and self.mask is not None

    def map_on_original(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """The map over the whole original image (zeros outside the crop), at (height, width).

        ``width``/``height`` default to the original size; pass a display size to save memory.
        """
        from .overlay import resize_map

        ow, oh = self.original_size
        w, h = width or ow, height or oh
        sx, sy = w / ow, h / oh
        left, top, right, bottom = self.crop_box
        bw = max(1, round((right - left) * sx))
        bh = max(1, round((bottom - top) * sy))
        if self.masked and self.raw_amap is not None:
            # the mask is resized on its own (soft edge): no staircase along the retina border
            shown = display_map(self.raw_amap, Display(self.display.smooth, False), None)
            soft = resize_map(np.asarray(self.mask, dtype=np.float32), bw, bh)
            inner = resize_map(shown, bw, bh) * np.clip(2.0 * soft - 0.5, 0.0, 1.0)
        else:
            inner = resize_map(self.amap, bw, bh)
        out = np.zeros((h, w), dtype=np.float32)
        x0, y0 = round(left * sx), round(top * sy)
        xs, ys = max(0, x0), max(0, y0)
        xe, ye = min(w, x0 + bw), min(h, y0 + bh)
        if xe > xs and ye > ys:
            out[ys:ye, xs:xe] = inner[ys - y0 : ye - y0, xs - x0 : xe - x0]
        return out


def explain_file(
    lm: LoadedModel,
    path: str | Path,
    method: str = "gradcam",
    target: int | str | None = None,
    cache: object | None = None,
    image_sha256: str | None = None,
    display: Display | None = None,
    **kw: object,
) -> Explanation:
    """Attribution for one file; ``target`` defaults to the predicted class.

    ``display`` defaults to :data:`DEFAULT_DISPLAY` for the method (pass :data:`RAW` for
    the method's own map). For ``"ig"``, ``n_steps`` is the pass budget shared by the
    noise-averaged copies (:func:`ig_options`). With an
    :class:`engine.attribution.AttributionCache` and the file's hash, a repeated request
    returns the stored raw map without running the model.
    """
    if method == "ig":
        kw = ig_options(kw)
    display = DEFAULT_DISPLAY.get(method, Display()) if display is None else display
    from .attribution import Attribution, explain

    spec = lm.spec
    dec = decode_for_model(path, spec.input_size, spec.modality, spec.preprocessing)
    x = lm.normalise(torch.from_numpy(np.array(dec.array[None])))
    with torch.no_grad():
        logits = lm.net(x).float()
    probs = (
        torch.sigmoid(logits / spec.temperature)
        if spec.task == "multilabel"
        else torch.softmax(logits / spec.temperature, 1)
    )[0]
    if target is None:
        t = int(probs.argmax())
    elif isinstance(target, str):
        if target not in spec.labels:
            raise ValueError(
                f"unknown target label {target!r}; the model knows {', '.join(spec.labels)}"
            )
        t = spec.labels.index(target)
    else:
        t = int(target)
    key = None
    attr: Attribution | None = None
    if cache is not None and image_sha256:
        extra = ",".join(f"{k}={v}" for k, v in sorted(kw.items()))
        key = (image_sha256, lm.sha256, method, t, extra)
        attr = cache.get(key)  # type: ignore[attr-defined]
    if attr is None:
        if method in ("ig", "occlusion"):
            kw = {"mean": spec.mean, "std": spec.std, **kw}
        attr = explain(lm.net, x.float().contiguous(), t, method, **kw)
        if key is not None:
            cache.put(key, attr)  # type: ignore[attr-defined]
    box = dec.crop_box or (0.0, 0.0, float(dec.original_size[0]), float(dec.original_size[1]))
    raw = np.asarray(attr.map, dtype=np.float32)
    mask = retina_mask(dec.array, spec.modality) if display.mask else None
    return Explanation(
        method,
        t,
        spec.labels[t],
        display_map(raw, display, mask),
        box,
        dec.original_size,
        float(probs[t]),
        raw_amap=raw,
        mask=mask,
        display=display,
    )


def render_explanation(
    original: Image.Image,
    exp: Explanation,
    alpha: float = 0.45,
    contour_top_pct: float | None = 10.0,
) -> Image.Image:
    """Overlay on the (possibly reduced) original: warm supports the answer, cool opposes it."""
    from .overlay import render_overlay

    amap = exp.map_on_original(original.width, original.height)
    return render_overlay(original, amap, alpha=alpha, contour_top_pct=contour_top_pct)
