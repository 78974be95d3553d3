"""CPU inference engines: same answers as torch fp32, cached exports, auto choice, fall-back."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from engine import backends
from engine.backends import EngineNet, engine_name, prepare
from engine.engines import ENGINES, engine_cache_dir, installed_engines
from engine.modelfile import ModelSpec, save_model_file
from engine.models import create_network, load_model
from engine.screen import ScreenSettings, screen_all

from .conftest import shared_data

HAS_OPENVINO = "openvino" in installed_engines()
FAMILIES = ["resnet10t", "test_efficientnet", "mobilenetv3_small_050", "test_convnext", "test_vit"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    from engine.synth import synthesize

    out = tmp_path_factory.mktemp("engine_images")
    items = synthesize(out, "fundus", n=8, seed=11, size=160)
    return [out / it.file for it in items]


def random_model(folder: Path, arch: str, size: int = 64) -> Path:
    """A random-weight model whose head is sharpened, so probabilities are far from uniform
    and a backbone that drifts shows up in them."""
    spec = ModelSpec(arch=arch, task="multiclass", labels=["a", "b", "c"], input_size=size)
    torch.manual_seed(0)
    net = create_network(spec).eval()
    with torch.no_grad():
        net.get_classifier().weight.mul_(40.0)
    path = folder / f"{arch}.safetensors"
    save_model_file(path, spec, net.state_dict())
    return path


def answers(lm, paths, engine: str, cache: Path, amp: bool = False, **kw):  # noqa: ANN001, ANN201
    settings = ScreenSettings(batch_size=4, engine=engine, engine_cache=cache, amp=amp, **kw)
    return screen_all(paths, [lm], settings)


def largest_difference(a, b) -> float:  # noqa: ANN001
    return max(
        abs(x.probabilities[k] - y.probabilities[k])
        for x, y in zip(a, b, strict=True)
        for k in x.probabilities
    )


@pytest.mark.parametrize("arch", FAMILIES)
def test_each_architecture_family_gives_torch_fp32_answers_on_onnxruntime(tmp_path, images, arch):
    lm = load_model(random_model(tmp_path, arch), device="cpu")
    ref = answers(lm, images, "torch", tmp_path / "c")
    got = answers(lm, images, "onnxruntime", tmp_path / "c")
    spread = max(max(r.probabilities.values()) for r in ref)
    assert spread > 0.6, "the test model must not answer uniformly"
    assert largest_difference(ref, got) <= 1e-4
    assert [r.triage for r in got] == [r.triage for r in ref]
    assert [r.label for r in got] == [r.label for r in ref]
    assert engine_name(prepare(lm, "onnxruntime", tmp_path / "c")) == "onnxruntime"


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
@pytest.mark.parametrize("arch", ["resnet10t", "test_vit"])
def test_openvino_gives_torch_fp32_answers(tmp_path, images, arch):
    lm = load_model(random_model(tmp_path, arch), device="cpu")
    ref = answers(lm, images, "torch", tmp_path / "c")
    got = answers(lm, images, "openvino", tmp_path / "c")
    assert engine_name(prepare(lm, "openvino", tmp_path / "c")) == "openvino"
    assert largest_difference(ref, got) <= 1e-4
    assert [r.triage for r in got] == [r.triage for r in ref]
    assert sys.modules.get("openvino_telemetry") is None  # offline: no usage events sent


def test_trained_model_keeps_uncertainty_ood_and_conformal_on_the_engine(tmp_path, synth_fundus):
    from engine.demo import demo_model_path

    lm = load_model(demo_model_path(), device="cpu")  # trained, with OOD and conformal fitted
    assert lm.spec.ood and lm.spec.conformal  # the steps this test is about are present
    paths = sorted(synth_fundus.rglob("*.png"))[:12]
    for method in ("none", "mc", "tta"):
        torch.manual_seed(3)
        a = answers(lm, paths, "torch", tmp_path, uncertainty=method)
        torch.manual_seed(3)
        b = answers(lm, paths, "onnxruntime", tmp_path, uncertainty=method)
        assert largest_difference(a, b) <= 1e-4, method
        assert [r.triage for r in a] == [r.triage for r in b], method
        assert [r.conformal_set for r in a] == [r.conformal_set for r in b], method
        for x, y in zip(a, b, strict=True):
            assert x.ood_score == pytest.approx(y.ood_score, rel=1e-3, abs=1e-3)
            assert x.ood == y.ood
            assert x.mutual_info == pytest.approx(y.mutual_info, abs=1e-4)


@pytest.mark.realdata
def test_real_data_model_answers_match_torch_fp32(tmp_path):
    from engine.data import load_folder_dataset
    from engine.train import TrainConfig, train_model

    root = shared_data("eye-diseases-4")
    subset = tmp_path / "subset"
    for cls in ("cataract", "normal"):
        (subset / cls).mkdir(parents=True)
        for p in sorted((root / cls).iterdir())[:24]:
            (subset / cls / p.name).symlink_to(p.resolve())
    model = tmp_path / "real.safetensors"
    cfg = TrainConfig(arch="resnet10t", img_size=64, epochs=1, batch_size=16, seed=1, workers=2)
    train_model(load_folder_dataset(subset), cfg, model, log=lambda s: None)
    lm = load_model(model, device="cpu")
    paths = sorted((root / "glaucoma").iterdir())[:16] + sorted((root / "normal").iterdir())[-16:]
    ref = answers(lm, paths, "torch", tmp_path / "c")
    got = answers(lm, paths, "onnxruntime", tmp_path / "c")
    assert not any(r.error for r in ref)
    assert largest_difference(ref, got) <= 1e-4
    assert [r.triage for r in got] == [r.triage for r in ref]


def test_export_is_cached_by_model_hash_and_reused(tmp_path, tiny_model, caplog):
    lm = load_model(tiny_model, device="cpu")
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="eyetriage.engine")
    prepare(lm, "onnxruntime", cache)
    files = list(cache.glob("*.onnx"))
    assert len(files) == 1 and files[0].name.startswith(lm.sha256)
    assert sum("exported" in r.getMessage() for r in caplog.records) == 1
    stamp = files[0].stat().st_mtime_ns
    again = prepare(lm, "onnxruntime", cache)
    assert engine_name(again) == "onnxruntime"
    assert list(cache.glob("*.onnx")) == files and files[0].stat().st_mtime_ns == stamp
    assert sum("exported" in r.getMessage() for r in caplog.records) == 1
    assert not list(cache.glob(".*.tmp"))  # written atomically, nothing half-written left


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_cached_export_is_rebuilt_not_trusted(
    tmp_path, tiny_model, images, damage, caplog
):
    lm = load_model(tiny_model, device="cpu")
    cache = tmp_path / "cache"
    prepare(lm, "onnxruntime", cache)
    (path,) = cache.glob("*.onnx")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # one byte inside the weights: still loads, wrong answers
    path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="eyetriage.engine")
    again = prepare(lm, "onnxruntime", cache)
    assert engine_name(again) == "onnxruntime"
    assert any("damaged" in r.getMessage() for r in caplog.records)
    (rebuilt,) = cache.glob("*.onnx")
    assert rebuilt.read_bytes() != bytes(data)
    ref = answers(lm, images, "torch", cache)
    assert largest_difference(ref, answers(lm, images, "onnxruntime", cache)) <= 1e-4


def test_unsupported_export_falls_back_to_torch_said_once(
    tmp_path, tiny_model, images, caplog, monkeypatch
):
    def refuse(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("Exporting the operator 'aten::made_up' to ONNX is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    monkeypatch.setattr(backends, "_unusable", {})
    monkeypatch.setattr(backends, "_said", set())
    lm = load_model(tiny_model, device="cpu")
    caplog.set_level(logging.WARNING, logger="eyetriage.engine")
    first = answers(lm, images, "onnxruntime", tmp_path)
    second = answers(lm, images, "onnxruntime", tmp_path)
    ref = answers(lm, images, "torch", tmp_path)
    assert first == second == ref  # screened with torch, same answers
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said
    assert "resnet10t" in said[0] and "not supported" in said[0] and "torch" in said[0]


def test_an_engine_that_does_not_reproduce_torch_is_not_used(
    tmp_path, tiny_model, monkeypatch, caplog
):
    real = backends.OnnxRuntimeBackbone.__call__
    monkeypatch.setattr(
        backends.OnnxRuntimeBackbone, "__call__", lambda self, x: real(self, x) * 1.01
    )
    monkeypatch.setattr(backends, "_unusable", {})
    lm = load_model(tiny_model, device="cpu")
    caplog.set_level(logging.WARNING, logger="eyetriage.engine")
    assert prepare(lm, "onnxruntime", tmp_path) is lm
    assert any("does not reproduce torch" in r.getMessage() for r in caplog.records)


def test_auto_measures_once_remembers_and_follows_the_memory(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("EYETRIAGE_CACHE_DIR", str(tmp_path / "user"))
    lm = load_model(tiny_model, device="cpu")
    chosen = prepare(lm, "auto", tmp_path / "c", batch_size=8)
    memory = json.loads((tmp_path / "user" / backends.CHOICES_FILE).read_text())
    (entry,) = memory.values()
    assert set(entry["images_per_second"]) == set(installed_engines()[1:])
    assert entry["engine"] == engine_name(chosen)
    assert entry["engine"] == max(entry["images_per_second"], key=entry["images_per_second"].get)

    def no_measuring(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("auto measured again")

    monkeypatch.setattr(backends, "measure", no_measuring)
    assert engine_name(prepare(lm, "auto", tmp_path / "c", batch_size=8)) == entry["engine"]
    for name in ("torch", "onnxruntime"):  # the remembered choice decides
        entry["engine"] = name
        (tmp_path / "user" / backends.CHOICES_FILE).write_text(json.dumps(memory))
        assert engine_name(prepare(lm, "auto", tmp_path / "c", batch_size=8)) == name


def test_a_gpu_model_keeps_torch(tmp_path, tiny_model):
    lm = load_model(tiny_model, device="cpu")
    on_gpu = dataclasses.replace(lm, device=torch.device("cuda"))  # never run: only decided
    for engine in ENGINES:
        assert prepare(on_gpu, engine, tmp_path) is on_gpu
    assert not list(tmp_path.rglob("*.onnx"))


def test_screening_leaves_the_callers_model_on_torch_for_attribution(tmp_path, tiny_model, images):
    from engine.explain import explain_file

    lm = load_model(tiny_model, device="cpu")
    net = lm.net
    answers(lm, images[:2], "onnxruntime", tmp_path)
    assert lm.net is net and not isinstance(lm.net, EngineNet)
    exp = explain_file(lm, images[0], "gradcam")
    assert exp.amap.shape == (lm.spec.input_size, lm.spec.input_size)


def test_full_network_mc_dropout_stays_on_torch(tmp_path, tiny_model, images):
    from engine.screen import attach_engine

    lm = load_model(tiny_model, device="cpu")
    settings = ScreenSettings(engine="onnxruntime", engine_cache=tmp_path, uncertainty="mc-full")
    assert attach_engine([lm], settings) == [lm]
    settings = ScreenSettings(engine="onnxruntime", engine_cache=tmp_path, uncertainty="mc")
    assert engine_name(attach_engine([lm], settings)[0]) == "onnxruntime"


def test_unknown_engine_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="onnxruntime"):
        ScreenSettings(engine="tensorrt")


def test_cache_lives_in_the_workspace_or_the_user_cache(tmp_path, isolated_user_cache):
    assert engine_cache_dir(tmp_path / "W") == tmp_path / "W" / "cache" / "onnx"
    assert engine_cache_dir(None) == isolated_user_cache / "onnx"


def test_cli_screen_engine_option_and_cache_places(
    capsys, tmp_path, synth_fundus, tiny_model, isolated_user_cache
):
    from engine.cli import main

    folder = synth_fundus / "normal"
    code = main(
        [
            "screen",
            str(folder),
            "--model",
            str(tiny_model),
            "--engine",
            "onnxruntime",
            "--out",
            str(tmp_path / "r.csv"),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "cpu, onnxruntime" in out
    sha = load_model(tiny_model, device="cpu").sha256
    assert list((isolated_user_cache / "onnx").glob(f"{sha}-*.onnx"))
    ws = tmp_path / "W"
    code = main(
        [
            "screen",
            str(folder),
            "--model",
            str(tiny_model),
            "--engine",
            "onnxruntime",
            "--workspace",
            str(ws),
            "--quiet",
        ]
    )
    assert code == 0 and "cpu, onnxruntime" in capsys.readouterr().out
    assert list((ws / "cache" / "onnx").glob(f"{sha}-*.onnx"))
    code = main(
        [
            "screen",
            str(folder),
            "--model",
            str(tiny_model),
            "--engine",
            "torch",
            "--out",
            str(tmp_path / "t.csv"),
            "--quiet",
        ]
    )
    assert code == 0 and "cpu, torch" in capsys.readouterr().out
