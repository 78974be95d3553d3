"""PyInstaller hook for onnxruntime: the CPU inference engine and the exporter that feeds it.

``engine.backends`` exports each model's backbone with ``torch.onnx.export`` (the
TorchScript exporter, which serialises through ``onnx``) and runs it in ONNX Runtime. Both
load parts of themselves lazily, and ONNX Runtime ``dlopen()``s its provider bridge
(``libonnxruntime_providers_shared``), so static analysis misses them. The hook runs one
real export and inference in an isolated build-time interpreter and turns every module of
torch.onnx, onnx and onnxruntime it loaded into a hidden import, and collects the
package's shared libraries.
"""

from __future__ import annotations

from PyInstaller.utils.hooks import collect_dynamic_libs, copy_metadata, isolated

PREFIXES = ("onnxruntime", "onnx", "torch.onnx", "torch.jit")


@isolated.decorate
def _loaded_modules(prefixes: tuple[str, ...]) -> list[str]:
    import io
    import sys

    import onnxruntime
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.zeros(2, 3, 16, 16),),
        buf,
        input_names=["image"],
        output_names=["features"],
        dynamic_axes={"image": {0: "batch"}},
        opset_version=18,
        dynamo=False,
    )
    session = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    session.run(None, {"image": torch.zeros(1, 3, 16, 16).numpy()})
    return sorted(m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in prefixes))


hiddenimports = _loaded_modules(PREFIXES)
binaries = collect_dynamic_libs("onnxruntime")
datas = []
for _dist in ("onnxruntime", "onnx"):
    try:
        datas += copy_metadata(_dist)
    except Exception:  # noqa: BLE001 - a missing optional distribution is fine
        pass
