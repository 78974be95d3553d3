"""Attribution maps, their faithfulness measures and their on-disk cache."""

from __future__ import annotations

import functools
import gc
import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

from engine.attribution import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    METHODS,
    Attribution,
    AttributionCache,
    attribution_mode,
    default_gradcam_layers,
    explain,
    feature_stages,
    find_target_layer,
    gradcam,
    integrated_gradients,
    make_baseline,
    occlusion,
    resolve_layer,
)
from engine.explain import DEFAULT_DISPLAY, RAW, display_map, explain_file, ig_options
from engine.faithfulness import (
    deletion_auc,
    deletion_curve,
    insertion_auc,
    mass_in_mask,
    pointing_game,
)
from engine.models import load_model

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)

ARCHITECTURES = {
    # name: (timm kwargs, expected default Grad-CAM layer)
    "resnet18": ({}, "layer4"),
    "efficientnet_b0": ({}, "bn2"),
    "mobilenetv3_small_050": ({}, "blocks.5"),
    "convnext_atto": ({}, "stages.3"),
    "vit_tiny_patch16_224": ({"img_size": 64}, "blocks.11.norm1"),
}


@functools.cache
def timm_model(name: str) -> nn.Module:
    """A randomly initialised 3-class timm model (shared; tests must not change it)."""
    torch.manual_seed(0)
    kwargs, _ = ARCHITECTURES.get(name, ({}, None))
    return timm.create_model(name, pretrained=False, num_classes=3, **kwargs).eval()


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def random_image(size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return normalised(torch.rand(1, 3, size, size, generator=gen))


def module_name(model: nn.Module, layer: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is layer)


def hooks_left(model: nn.Module) -> list[str]:
    return [
        f"{module_name(model, m) or '<root>'}.{d}"
        for m in model.modules()
        for d in HOOK_DICTS
        if getattr(m, d, None)
    ]


class TinyCNN(nn.Module):
    """A small CNN with BatchNorm and Dropout so train/eval state matters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x).mean(dim=(2, 3))))


PATCH = (slice(8, 16), slice(16, 24))  # rows, cols of the "lesion" in a 32x32 image


class PatchModel(nn.Module):
    """Hand-weighted: the class-0 logit grows with the mean brightness of one known patch."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, size, size)
        mask[..., PATCH[0], PATCH[1]] = 1.0
        self.register_buffer("mask", mask)
        self.gain = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.mean(dim=1, keepdim=True) * self.mask).sum(dim=(1, 2, 3)) / self.mask.sum()
        return torch.stack([self.gain * (s - 1.0), torch.zeros_like(s)], dim=1)


def patch_image(size: int = 32, seed: int = 0) -> torch.Tensor:
    """Dark noisy background with a bright patch where PatchModel looks."""
    gen = torch.Generator().manual_seed(seed)
    pixels = 0.05 + 0.05 * torch.rand(1, 3, size, size, generator=gen)
    pixels[..., PATCH[0], PATCH[1]] = 0.9
    return normalised(pixels)


def patch_mask(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[PATCH] = True
    return mask


# --------------------------------------------------------------------------- maps


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_gradcam_gives_a_finite_input_sized_map_on_the_expected_layer(name: str) -> None:
    model = timm_model(name)
    assert module_name(model, find_target_layer(model)) == ARCHITECTURES[name][1]
    attr = gradcam(model, random_image(64), target=1)
    assert attr.map.shape == (64, 64)
    assert attr.map.dtype == np.float32
    assert np.isfinite(attr.map).all()
    assert np.abs(attr.map).max() > 0
    assert (attr.method, attr.target) == ("gradcam", 1)


def test_vit_gradcam_map_follows_the_token_grid() -> None:
    model = timm_model("vit_tiny_patch16_224")
    amap = gradcam(model, random_image(64, seed=3), target=0).map
    # 4x4 patch tokens upsampled: neighbouring patches differ, so the map is not flat
    assert np.ptp(amap) > 0
    assert np.unique(amap[::16, ::16]).size > 1


def test_user_named_layer_is_used() -> None:
    model = timm_model("resnet18")
    x = random_image(64, seed=1)
    by_name = gradcam(model, x, 0, layer="layer3").map
    by_module = gradcam(model, x, 0, layer=model.layer3).map
    default = gradcam(model, x, 0).map
    np.testing.assert_allclose(by_name, by_module, rtol=1e-5, atol=1e-8)
    assert not np.allclose(by_name, default)
    assert resolve_layer(model, "layer4.1.conv2") is model.layer4[1].conv2


def test_a_coarse_last_stage_gives_way_to_a_finer_one_and_layers_can_be_blended() -> None:
    model = timm_model("resnet18")
    # 224 px: layer4 is 7x7, fine enough on its own
    assert feature_stages(model, (224, 224))[-1] == ("layer4", (7, 7))
    assert default_gradcam_layers(model, (224, 224)) == ["layer4"]
    # 128 px: layer4 is 4x4, so the 8x8 layer3 is used instead
    assert default_gradcam_layers(model, (128, 128)) == ["layer3"]
    x = random_image(128, seed=5)
    parts = [gradcam(model, x, 0, layer=name).map for name in ("layer3", "layer4")]
    np.testing.assert_allclose(gradcam(model, x, 0).map, parts[0], atol=1e-6)
    np.testing.assert_allclose(gradcam(model, x, 0, layer="last").map, parts[1], atol=1e-6)
    blend = gradcam(model, x, 0, layer="layer3+layer4").map
    expected = sum(p / np.abs(p).max() for p in parts) / 2
    np.testing.assert_allclose(blend, expected, rtol=1e-4, atol=1e-6)


def test_wrong_layer_name_lists_candidates() -> None:
    model = timm_model("resnet18")
    with pytest.raises(ValueError, match=r"no layer named 'layer5'.*layer4.*Available layers"):
        gradcam(model, random_image(64), 0, layer="layer5")


def test_bad_input_is_rejected_with_a_clear_message() -> None:
    model = timm_model("resnet18")
    x = random_image(32)
    with pytest.raises(ValueError, match="shape"):
        gradcam(model, x[0], 0)
    with pytest.raises(ValueError, match="NaN"):
        gradcam(model, x * float("nan"), 0)
    with pytest.raises(ValueError, match="target 7 is out of range: model has 3 outputs"):
        integrated_gradients(model, x, 7, n_steps=4)
    with pytest.raises(ValueError, match="unknown baseline 'white'"):
        integrated_gradients(model, x, 0, baseline="white")
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        explain(model, x, 0, "lime")
    with pytest.raises(ValueError, match="window"):
        occlusion(model, x, 0, window=64)


@pytest.mark.parametrize("method", METHODS)
def test_explain_dispatches_to_each_method(method: str) -> None:
    model = TinyCNN().eval()
    kw = {"n_steps": 4} if method == "ig" else {}
    attr = explain(model, random_image(16), 2, method, **kw)
    assert attr.method == method
    assert attr.map.shape == (16, 16)
    assert np.isfinite(attr.map).all()


def test_positive_and_negative_parts_are_kept_apart_and_resizable() -> None:
    attr = Attribution("ig", 0, np.array([[1.0, -2.0], [0.0, 3.0]], dtype=np.float32))
    np.testing.assert_array_equal(attr.positive(), [[1, 0], [0, 3]])
    np.testing.assert_array_equal(attr.negative(), [[0, 2], [0, 0]])
    big = attr.resized(width=8, height=6)
    assert big.shape == (6, 8)
    assert big.min() < 0 < big.max()
    with pytest.raises(ValueError, match="2-D"):
        Attribution("ig", 0, np.zeros((2, 2, 3)))


# --------------------------------------------------------------------------- model state


@pytest.mark.parametrize("method", METHODS)
def test_model_state_flags_and_hooks_are_restored(method: str) -> None:
    model = TinyCNN()
    model.train()
    model.features[1].eval()  # a caller-chosen mixed state
    model.features[0].weight.requires_grad_(False)
    user_hook = model.head.register_forward_hook(lambda *_: None)
    training = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    running_mean = model.features[1].running_mean.clone()

    kw = {"n_steps": 4} if method == "ig" else {}
    explain(model, random_image(16), 1, method, **kw)

    assert {n: m.training for n, m in model.named_modules()} == training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model.features[1].running_mean, running_mean)
    assert hooks_left(model) == ["head._forward_hooks"]  # only the caller's own hook
    user_hook.remove()


def test_hooks_and_state_are_restored_after_an_error() -> None:
    model = timm_model("resnet18")
    model.train()
    model.fc.weight.requires_grad_(False)
    try:
        with pytest.raises(ValueError, match="out of range"):
            gradcam(model, random_image(32), target=5)

        def fail_inside() -> None:
            with attribution_mode(model):
                model.layer2.register_forward_hook(lambda *_: None)
                model.layer3.register_full_backward_hook(lambda *_: None)
                assert not model.training
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            fail_inside()
        assert hooks_left(model) == []
        assert model.training and all(m.training for m in model.modules())
        assert not model.fc.weight.requires_grad
        assert all(p.requires_grad for n, p in model.named_parameters() if n != "fc.weight")
    finally:
        model.eval()
        model.fc.weight.requires_grad_(True)


def test_repeated_gradcam_does_not_grow_memory() -> None:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = random_image(16)

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance() pokes deprecated torch objects
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    for _ in range(20):  # warm-up: caches, lazy imports, the default-layer lookup
        gradcam(model, x, 0)
    tensors_before = live_tensors()
    tracemalloc.start()
    try:
        for _ in range(100):
            gradcam(model, x, 0)
        gc.collect()
        mem_before = tracemalloc.get_traced_memory()[0]
        for _ in range(400):
            gradcam(model, x, 0)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - mem_before
    finally:
        tracemalloc.stop()
    assert growth < 100_000, f"Python memory grew by {growth} bytes over 400 calls"
    assert live_tensors() - tensors_before <= 5
    assert hooks_left(model) == []


def test_attributions_from_two_threads_on_one_model_do_not_interfere() -> None:
    torch.manual_seed(0)
    model = TinyCNN().train()
    x = random_image(16)
    expected = {
        m: explain(model, x, 0, m, **({"n_steps": 4} if m == "ig" else {})).map for m in METHODS
    }
    errors: list[BaseException] = []

    def work(method: str) -> None:
        try:
            kw = {"n_steps": 4} if method == "ig" else {}
            for _ in range(15):
                np.testing.assert_allclose(
                    explain(model, x, 0, method, **kw).map, expected[method], rtol=1e-4, atol=1e-7
                )
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(m,)) for m in METHODS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert hooks_left(model) == []
    assert model.training


def test_gradcam_matches_pytorch_grad_cam() -> None:
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    x = torch.randn(1, 3, 224, 224)
    target = int(model(x).argmax())
    ours = gradcam(model, x, target, layer="layer4")
    with grad_cam.GradCAM(model=model, target_layers=[model.layer4]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
    assert ref.shape == ours.map.shape
    raw_positive = ours.positive()
    assert 0.1 < (raw_positive > 0).mean() < 0.95, "want a map with both signs"

    # pytorch_grad_cam clips negatives before upsampling, we after; at the centres of the
    # 7x7 feature cells both equal the clipped cell value. Compare there, min-max scaled.
    def cell_centres(a: np.ndarray) -> np.ndarray:
        small = Image.fromarray(a.astype(np.float32), mode="F").resize(
            (7, 7), Image.Resampling.NEAREST
        )
        v = np.asarray(small).ravel()
        return (v - v.min()) / (v.max() - v.min())

    r = np.corrcoef(cell_centres(raw_positive), cell_centres(ref))[0, 1]
    assert r >= 0.99, f"Pearson r = {r:.4f}"


# --------------------------------------------------------------------------- IG, occlusion


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_integrated_gradients_sum_to_the_logit_change(baseline: str) -> None:
    model = timm_model("resnet18")
    x = random_image(64, seed=2)
    attr = integrated_gradients(model, x, 1, baseline=baseline, n_steps=32)
    with torch.no_grad():
        change = float(model(x)[0, 1] - model(make_baseline(x, baseline))[0, 1])
    error = abs(float(attr.map.sum()) - change)
    # small next to the map's own magnitude (random nets cancel a lot: |change| is tiny)
    assert error <= 0.02 * float(np.abs(attr.map).sum())
    assert attr.convergence_delta == pytest.approx(error, rel=0.05, abs=1e-5)


def test_noise_averaged_ig_is_repeatable_and_still_finds_the_patch() -> None:
    model, x = PatchModel(), patch_image()
    first = integrated_gradients(model, x, 0, n_steps=8, noise_samples=4, noise=0.1).map
    again = integrated_gradients(model, x, 0, n_steps=8, noise_samples=4, noise=0.1).map
    plain = integrated_gradients(model, x, 0, n_steps=8).map
    np.testing.assert_array_equal(first, again)  # seeded: the same image gives the same map
    assert not np.allclose(first, plain)  # the noise did change the map
    assert pointing_game(first, patch_mask(), tolerance_px=0)
    assert mass_in_mask(first, patch_mask()) > 0.99
    with pytest.raises(ValueError, match="noise"):
        integrated_gradients(model, x, 0, noise_samples=2, noise=0.0)


def test_black_baseline_is_black_and_blur_baseline_removes_detail() -> None:
    x = random_image(32, seed=4)
    black = make_baseline(x, "black")
    pixels = black * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = pixels + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(pixels, torch.zeros_like(pixels), atol=1e-6)
    blur = make_baseline(x, "blur")
    assert blur.shape == x.shape
    assert blur.std() < 0.25 * x.std()
    assert torch.allclose(blur.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.1)


@pytest.mark.parametrize("method", ["ig", "occlusion"])
def test_attribution_points_at_the_patch_the_model_uses(method: str) -> None:
    model = PatchModel()
    amap = explain(model, patch_image(), 0, method).map
    assert pointing_game(amap, patch_mask(), tolerance_px=0)
    assert mass_in_mask(amap, patch_mask()) > (0.99 if method == "ig" else 0.5)


# --------------------------------------------------------------------------- faithfulness


def test_deletion_curve_falls_faster_for_the_true_attribution_than_for_a_random_map() -> None:
    model, x = PatchModel(), patch_image()
    true_map = integrated_gradients(model, x, 0).map
    random_map = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    curve = deletion_curve(model, x, true_map, 0, steps=20)
    with torch.no_grad():
        p0 = float(torch.softmax(model(x), dim=1)[0, 0])
    assert curve.shape == (21,)
    assert curve[0] == pytest.approx(p0, abs=1e-6)
    assert curve[2] < 0.5 * p0  # the patch (6 % of pixels) is gone after 10 %
    assert deletion_auc(model, x, true_map, 0) < deletion_auc(model, x, random_map, 0) - 0.2


def test_insertion_auc_is_higher_for_the_true_attribution() -> None:
    model, x = PatchModel(), patch_image()
    true_map = patch_mask().astype(np.float32)
    random_map = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    good = insertion_auc(model, x, true_map, 0, baseline="black", steps=10)
    bad = insertion_auc(model, x, random_map, 0, baseline="black", steps=10)
    assert good > bad + 0.2


def test_multilabel_curves_use_sigmoid_probabilities() -> None:
    model, x = PatchModel(), patch_image()
    curve = deletion_curve(model, x, patch_mask().astype(float), 1, steps=4, task="multilabel")
    np.testing.assert_allclose(curve, 0.5, atol=1e-6)  # logit 1 is always 0 -> sigmoid 0.5
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        deletion_curve(model, x, patch_mask().astype(float), 0, task="regression")


def test_pointing_game_on_hand_made_maps() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:10, 5:10] = True
    amap = np.zeros((20, 20), dtype=np.float32)
    amap[7, 7] = 1.0
    assert pointing_game(amap, mask)
    amap[7, 7], amap[7, 12] = 0.0, 1.0  # 3 px right of the mask edge
    assert pointing_game(amap, mask, tolerance_px=3)
    assert not pointing_game(amap, mask, tolerance_px=2)
    assert not pointing_game(np.ones((20, 20)), mask)  # a flat map points nowhere
    with pytest.raises(ValueError, match="mask is empty"):
        pointing_game(amap, np.zeros((20, 20), dtype=bool))


def test_mass_in_mask_counts_only_supporting_attribution() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2] = True
    amap = np.zeros((4, 4), dtype=np.float32)
    amap[0, 0], amap[3, 3] = 2.0, 2.0
    assert mass_in_mask(amap, mask) == pytest.approx(0.5)
    amap[1, 1] = -100.0  # opposing evidence does not count
    assert mass_in_mask(amap, mask) == pytest.approx(0.5)
    amap[2, 2] = 4.0
    assert mass_in_mask(amap, mask) == pytest.approx(0.25)
    assert mass_in_mask(-np.abs(amap), mask) == 0.0


# --------------------------------------------------------------------------- cache


def test_cache_round_trip_survives_a_new_session(tmp_path: Path) -> None:
    amap = np.random.default_rng(0).normal(size=(24, 32)).astype(np.float32) * 1e5
    attr = Attribution("ig", 2, amap, convergence_delta=0.01)
    key = ("img-abc", "model-1", "ig", 2, "baseline=black;steps=32")
    AttributionCache(tmp_path).put(key, attr)

    fresh = AttributionCache(tmp_path)  # empty memory: reads the .npz
    got = fresh.get(key)
    assert got is not None
    assert (got.method, got.target, got.convergence_delta) == ("ig", 2, 0.01)
    assert got.map.dtype == np.float32 and got.map.shape == (24, 32)
    np.testing.assert_allclose(got.map, amap, atol=1e-3 * np.abs(amap).max())
    assert fresh.path_for(key).suffix == ".npz"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_cache_keys_are_kept_apart(tmp_path: Path) -> None:
    cache = AttributionCache(tmp_path, memory_items=2)
    base = ("img", "model", "gradcam", 0, "layer=layer4")
    variants = [
        ("img2", "model", "gradcam", 0, "layer=layer4"),
        ("img", "model2", "gradcam", 0, "layer=layer4"),
        ("img", "model", "ig", 0, "layer=layer4"),
        ("img", "model", "gradcam", 1, "layer=layer4"),
        ("img", "model", "gradcam", 0, "layer=layer3"),
    ]
    cache.put(base, Attribution("gradcam", 0, np.full((4, 4), 1.0)))
    for key in variants:
        assert cache.get(key) is None
    for i, key in enumerate(variants):
        cache.put(key, Attribution(key[2], key[3], np.full((4, 4), float(i + 2))))
    assert len(cache._memory) == 2  # the in-memory LRU stays bounded
    assert cache.get(base).map[0, 0] == pytest.approx(1.0)
    for i, key in enumerate(variants):
        assert cache.get(key).map[0, 0] == pytest.approx(float(i + 2))
    with pytest.raises(ValueError, match="cache key"):
        cache.get(("img", "model"))


def test_unreadable_cache_entry_is_a_miss(tmp_path: Path) -> None:
    cache = AttributionCache(tmp_path, memory_items=0)
    key = ("img", "model", "occlusion", 0, "")
    cache.put(key, Attribution("occlusion", 0, np.ones((3, 3))))
    cache.path_for(key).write_bytes(b"not an npz file")
    assert cache.get(key) is None


# --------------------------------------------------------------------------- display step


def test_ig_step_budget_is_shared_by_the_noisy_copies() -> None:
    assert ig_options({"n_steps": 32}) == {"n_steps": 32, "noise_samples": 0}  # plain IG
    assert ig_options({"n_steps": 32, "noise_samples": 4}) == {"n_steps": 8, "noise_samples": 4}
    assert ig_options({"n_steps": 16, "noise_samples": 4, "internal_batch_size": 8}) == {
        "n_steps": 4,
        "noise_samples": 4,
        "internal_batch_size": 8,
    }
    assert ig_options({"n_steps": 8, "noise_samples": 4})["n_steps"] == 4  # at least 4 per copy


def test_explanation_shows_the_display_map_and_keeps_the_raw_one(
    synth_fundus: Path, tiny_model: Path
) -> None:
    lm = load_model(tiny_model, device="cpu")
    img = next((synth_fundus / "diabetic_retinopathy").glob("*.png"))
    exp = explain_file(lm, img, "ig", n_steps=8)
    assert exp.masked and exp.mask is not None and exp.mask.shape == exp.amap.shape
    assert exp.display == DEFAULT_DISPLAY["ig"]
    assert not exp.amap[~exp.mask].any()  # nothing outside the field of view
    assert np.abs(exp.raw_amap[~exp.mask]).max() > 0  # though the raw method put some there
    raw = explain_file(lm, img, "ig", n_steps=8, display=RAW)
    assert not raw.masked
    np.testing.assert_array_equal(raw.amap, exp.raw_amap)
    np.testing.assert_allclose(exp.amap, display_map(raw.amap, exp.display, exp.mask), atol=1e-6)
    on_original = exp.map_on_original()
    assert on_original.shape == Image.open(img).size[::-1]
