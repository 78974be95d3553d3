"""``screen --backend ray``: the command-line options of cluster screening and its backend."""

from __future__ import annotations

import argparse
import sys
from typing import Any

RAY_OPTIONS = ("ray_address", "model_workers", "gpus_per_worker", "cpus_per_worker")


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """``--backend`` and the Ray options of ``screen``."""
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="where to screen: this machine (default) or Ray (needs eyetriage[cluster])",
    )
    g = p.add_argument_group("Ray (with --backend ray; see docs/scale.md)")
    g.add_argument(
        "--ray-address",
        help="auto (the cluster this machine joined with `ray start`) or ray://HOST:PORT; "
        "default: start a local Ray on this machine",
    )
    g.add_argument("--model-workers", type=int, help="model workers (actors), default 1")
    g.add_argument("--gpus-per-worker", type=float, help="GPUs per model worker, default 0")
    g.add_argument(
        "--cpus-per-worker",
        type=float,
        help="CPUs (and torch threads) per model worker, default 1 (fewer on a small machine)",
    )


def make_backend(args: argparse.Namespace) -> Any:
    """The Ray backend the options ask for, or None for this machine.

    Ray options without ``--backend ray`` are a usage error; a missing Ray raises
    :class:`engine.cluster.ClusterError` with what to install.
    """
    given = [f"--{o.replace('_', '-')}" for o in RAY_OPTIONS if getattr(args, o) is not None]
    if args.backend != "ray":
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --backend ray")
        return None
    from .cluster import RayBackend, RayOptions

    options = RayOptions(
        address=args.ray_address,
        model_workers=args.model_workers or 1,
        gpus_per_worker=args.gpus_per_worker or 0.0,
        cpus_per_worker=args.cpus_per_worker,
    )
    return RayBackend(options)


def start_backend(backend: Any, quiet: bool) -> None:
    """Start (or join) Ray before the run, and say how long a local start took."""
    backend.start()
    if backend.startup_seconds is not None and not quiet:
        where = backend.options.address or "a local Ray"
        print(f"started {where} in {backend.startup_seconds:.1f} s", file=sys.stderr)
