"""Model files: one safetensors file with the full description; foreign files refused."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from engine.modelfile import (
    ModelFileError,
    ModelSpec,
    load_model_file,
    read_spec,
    save_model_file,
)


def _spec(**kw) -> ModelSpec:
    base = dict(arch="resnet10t", task="multiclass", labels=["a", "b", "c"], input_size=64)
    base.update(kw)
    return ModelSpec(**base)


def test_round_trip_keeps_weights_and_description(tmp_path):
    spec = _spec(temperature=1.7, provenance={"seed": 3}, metrics={"test": {"accuracy": 0.5}})
    sd = {"w": torch.randn(4, 3), "n": torch.tensor([5])}
    sha = save_model_file(tmp_path / "m.safetensors", spec, sd, extra={"ood.mean": torch.ones(3)})
    spec2, sd2, extra = load_model_file(tmp_path / "m.safetensors")
    assert spec2 == spec
    assert torch.equal(sd2["w"], sd["w"]) and torch.equal(sd2["n"], sd["n"])
    assert torch.equal(extra["ood.mean"], torch.ones(3))
    assert len(sha) == 64


def test_half_precision_halves_size_and_loads_as_float32(tmp_path):
    sd = {"w": torch.randn(256, 256)}
    save_model_file(tmp_path / "f.safetensors", _spec(), sd)
    save_model_file(tmp_path / "h.safetensors", _spec(), sd, half=True)
    full, half = (
        (tmp_path / "f.safetensors").stat().st_size,
        (tmp_path / "h.safetensors").stat().st_size,
    )
    assert half < 0.6 * full
    _, sd2, _ = load_model_file(tmp_path / "h.safetensors")
    assert sd2["w"].dtype == torch.float32
    assert torch.allclose(sd2["w"], sd["w"], atol=1e-2)


def test_description_is_readable_json_in_the_metadata(tmp_path):
    save_model_file(tmp_path / "m.safetensors", _spec(), {"w": torch.zeros(1)})
    raw = (tmp_path / "m.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    desc = json.loads(header["__metadata__"]["eyetriage"])
    for key in (
        "arch",
        "task",
        "labels",
        "modality",
        "input_size",
        "mean",
        "std",
        "preprocessing",
        "temperature",
        "provenance",
        "metrics",
    ):
        assert key in desc


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "too short"),
        (b"not a model at all, just text", "not a safetensors"),
        (b"\x80\x04\x95" + b"\x00" * 64, "not a safetensors"),  # a pickle stream
    ],
)
def test_foreign_files_are_refused_with_a_reason(tmp_path, content, reason):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match=reason):
        read_spec(p)


def test_plain_safetensors_without_description_is_refused(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    with pytest.raises(ModelFileError, match="not an EyeTriage model"):
        load_model_file(p)


def test_torch_pickle_checkpoint_is_never_loaded(tmp_path):
    p = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, p)
    with pytest.raises(ModelFileError):
        load_model_file(p)


def test_newer_format_version_is_refused(tmp_path):
    from safetensors.torch import save_file

    d = json.loads(_spec().to_json())
    d["format_version"] = 99
    p = tmp_path / "new.safetensors"
    save_file({"model.w": torch.zeros(1)}, str(p), metadata={"eyetriage": json.dumps(d)})
    with pytest.raises(ModelFileError, match="newer"):
        read_spec(p)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"task": "regression"}, "unknown task"),
        ({"labels": ["a", "a"]}, "unique"),
        ({"task": "binary", "labels": ["a", "b", "c"]}, "exactly two"),
        ({"modality": "xray"}, "modality"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_invalid_descriptions_are_rejected(kw, msg):
    with pytest.raises(ModelFileError, match=msg):
        _spec(**kw)


def test_missing_file_gives_a_clear_message(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        read_spec(tmp_path / "nope.safetensors")
