"""``make bench``: every speed figure in one run on this machine; also written to latest.json."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUITES = [
    "bench_screen",
    "bench_engines",
    "bench_versus",
    "bench_uncertainty",
    "bench_attribution",
    "bench_gui",
    "bench_improve",
    "bench_volume",
    "bench_slice_switch",
    "bench_enhance",
    "bench_ray",
]


def main() -> int:
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for name in SUITES:
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
        except ImportError as e:
            print(f"[{name}] not available: {e}")
            continue
        t = time.monotonic()
        r = mod.run()
        results.update(r)
        if hasattr(mod, "print_table"):
            mod.print_table(r)
        else:
            for k, v in r.items():
                print(f"  {k:<40} {v:.3f}" if isinstance(v, float) else f"  {k:<40} {v}")
        print(f"[{name}] {time.monotonic() - t:.0f} s\n")
    out = ROOT / "benchmarks" / "latest.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"figures written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
