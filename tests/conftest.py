"""Shared fixtures: synthetic data, a tiny trained model, Qt offscreen, real-data location."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
TINY_ARCH = "resnet10t"  # small, trains in seconds at 64 px on a CPU


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when the real data is not there."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available ({'/'.join(parts)})")
    return p


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Converted starting weights go to a per-run cache, never the user's."""
    old = os.environ.get("EYETRIAGE_CACHE")
    os.environ["EYETRIAGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("EYETRIAGE_CACHE", None)
    else:
        os.environ["EYETRIAGE_CACHE"] = old


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # store-only tests
        yield
        return
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def _user_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("user-cache")


@pytest.fixture(autouse=True)
def isolated_user_cache(monkeypatch, _user_cache) -> Path:
    """Exported engines and remembered engine choices go to a test folder, not ~/.cache."""
    monkeypatch.setenv("EYETRIAGE_CACHE_DIR", str(_user_cache))
    return _user_cache


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a non-daemon thread running (a worker nobody waited for)."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.daemon and t is not threading.main_thread()
    ]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"test left threads running: {still}"


@pytest.fixture(scope="session")
def synth_fundus(tmp_path_factory) -> Path:
    """48 synthetic fundus images (two classes) at 128 px, with masks and labels.csv."""
    from engine.synth import synthesize

    out = tmp_path_factory.mktemp("synth_fundus")
    synthesize(
        out,
        "fundus",
        n=48,
        seed=3,
        size=128,
        classes=("diabetic_retinopathy", "normal"),
        difficulty=0.2,
    )
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, synth_fundus) -> Path:
    """A tiny model trained for two epochs on the synthetic set (quality is not the point)."""
    from engine.data import load_folder_dataset
    from engine.train import TrainConfig, train_model

    out = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    ds = load_folder_dataset(synth_fundus)
    cfg = TrainConfig(
        arch=TINY_ARCH,
        img_size=64,
        epochs=2,
        batch_size=16,
        seed=1,
        workers=2,
        allow_collapsed=True,
    )
    train_model(ds, cfg, out, log=lambda s: None)
    return out


@pytest.fixture(scope="session")
def ray_local(_user_cache):
    """One local Ray for the whole session (2 CPUs, no dashboard); skips without the extra.

    Its workers get the test user cache too (exported engines, remembered engine choices).
    """
    ray = pytest.importorskip("ray", reason="the cluster extra (ray) is not installed")
    pytest.importorskip("ray.data", reason="the cluster extra (ray[data]) is not installed")
    import logging

    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": {"EYETRIAGE_CACHE_DIR": str(_user_cache)}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def second_model(tmp_path_factory, tiny_model) -> Path:
    """Another model version (same weights, another name, so another file hash)."""
    from engine.modelfile import load_model_file, save_model_file

    spec, weights, extra = load_model_file(tiny_model)
    spec.name = "tiny second version"
    out = tmp_path_factory.mktemp("model2") / "tiny2.safetensors"
    save_model_file(out, spec, weights, extra)
    return out
