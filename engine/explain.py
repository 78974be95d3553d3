"""One call from an image file to an attribution overlay: used by the CLI and the desktop.

The model sees a square crop around the field of view; the map is computed there and then
placed back over the original photograph at the crop's position, so the reader looks at the
real image, not the model's thumbnail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import decode_for_model
from .models import LoadedModel

METHOD_NAMES = {"gradcam": "Grad-CAM", "ig": "Integrated Gradients", "occlusion": "Occlusion"}


@dataclass
class Explanation:
    method: str
    target: int
    target_label: str
    amap: np.ndarray  # signed map at the model's input resolution (S, S)
    crop_box: tuple[float, float, float, float]  # where that square lies on the original
    original_size: tuple[int, int]
    probability: float  # the model's probability for the target (calibrated)

    def map_on_original(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        """The map over the whole original image (zeros outside the crop), at (height, width).

        ``width``/``height`` default to the original size; pass a display size to save memory.
        """
        from .attribution import resize_map

        ow, oh = self.original_size
        w, h = width or ow, height or oh
        sx, sy = w / ow, h / oh
        left, top, right, bottom = self.crop_box
        bw = max(1, round((right - left) * sx))
        bh = max(1, round((bottom - top) * sy))
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
    **kw: object,
) -> Explanation:
    """Attribution for one file; ``target`` defaults to the predicted class.

    With an :class:`engine.attribution.AttributionCache` and the file's hash, a repeated
    request returns the stored map without running the model.
    """
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
    return Explanation(
        method,
        t,
        spec.labels[t],
        np.asarray(attr.map, dtype=np.float32),
        box,
        dec.original_size,
        float(probs[t]),
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
