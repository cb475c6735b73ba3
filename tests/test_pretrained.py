"""Offline loading of published timm backbones (the hybrid's EfficientNet, DINOv2) and CLIP (open_clip)
checkpoints, on tiny configs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fsspec
import open_clip
import pytest
import timm
import torch
from safetensors.torch import save as save_safetensors_bytes
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from detector.factory import create_detector
from detector.hybrid import HYBRID_CONFIGS
from detector.pretrained import load_clip_checkpoint, load_dinov2_checkpoint

# DINOv2 trains at 518 px = 37x37 patches of 14; the tiny stand-in trains at 70 px = 5x5.
TRAINED_IMG = 70
TINY_VIT = dict(embed_dim=64, depth=2, num_heads=2)
TINY_GIANT_VIT = dict(embed_dim=48, depth=2, num_heads=2)  # SwiGLU hidden size must stay even
TINY_CLIP = dict(
    embed_dim=32,
    vision_cfg={"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
)


def dinov2(seed: int, img_size: int = TRAINED_IMG, name: str = "vit_small_patch14_dinov2",
           num_classes: int = 0, **overrides: object) -> nn.Module:
    torch.manual_seed(seed)
    kwargs = {**TINY_VIT, **overrides}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=img_size, **kwargs).eval()


def clip(seed: int, **overrides: object) -> nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model("ViT-B-32", pretrained=None, **{**TINY_CLIP, **overrides}).eval()


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_safetensors(state: dict[str, torch.Tensor], path: Path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


def save_torch(checkpoint: object, path: Path) -> str:
    torch.save(checkpoint, path)
    return str(path)


def images(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def clip_features(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(3))
    return model.encode_image(images(64)), model.encode_text(tokens)


# --- The hybrid's backbone ---------------------------------------------------------------------


def test_hybrid_starts_from_a_published_backbone_checkpoint(tmp_path: Path) -> None:
    # A timm checkpoint as published: the same architecture with its ImageNet classifier.
    torch.manual_seed(0)
    published = timm.create_model(HYBRID_CONFIGS["hybrid_tiny"].backbone, pretrained=False, num_classes=1000)
    saved = state_of(published)
    assert "classifier.weight" in saved
    model, info = create_detector("hybrid_tiny", backbone_weights=save_safetensors(saved, tmp_path / "b0.safetensors"))
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert info.source.endswith("b0.safetensors") and not info.trained


def test_hybrid_backbone_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = save_safetensors(state_of(dinov2(seed=0)), tmp_path / "vit.safetensors")
    with pytest.raises(ValueError, match=r"vit\.safetensors"):
        create_detector("hybrid_tiny", backbone_weights=path)


# --- DINOv2 -------------------------------------------------------------------------------------


def test_dinov2_pos_embed_is_resampled_to_the_backbone_grid(tmp_path: Path) -> None:
    saved = state_of(dinov2(seed=0))
    backbone = dinov2(seed=1, img_size=56)
    load_dinov2_checkpoint(backbone, save_safetensors(saved, tmp_path / "model.safetensors"))
    assert backbone.pos_embed.shape == (1, 1 + 4 * 4, 64)
    expected = resample_abs_pos_embed(saved["pos_embed"], new_size=[4, 4], old_size=[5, 5], num_prefix_tokens=1)
    torch.testing.assert_close(backbone.pos_embed.detach(), expected)


def test_dinov2_resampled_load_keeps_every_other_tensor_and_runs(tmp_path: Path) -> None:
    saved = state_of(dinov2(seed=0))
    backbone = dinov2(seed=1, img_size=56)
    load_dinov2_checkpoint(backbone, save_safetensors(saved, tmp_path / "model.safetensors"))
    loaded = backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items() if k != "pos_embed")
    with torch.no_grad():
        assert backbone(images(56)).shape == (2, 64)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_dinov2_same_size_load_reproduces_outputs(tmp_path: Path, filename: str) -> None:
    source = dinov2(seed=0)
    path = tmp_path / filename
    save = save_safetensors if path.suffix == ".safetensors" else save_torch
    saved = save(state_of(source), path)
    backbone = dinov2(seed=1)
    load_dinov2_checkpoint(backbone, saved)
    with torch.no_grad():
        assert torch.equal(backbone(images(TRAINED_IMG)), source(images(TRAINED_IMG)))


def test_dinov2_loads_meta_key_names(tmp_path: Path) -> None:
    # Meta's giant checkpoints: a mask_token and SwiGLU weights named w12/w3 instead of fc1/fc2.
    source = dinov2(seed=0, name="vit_giant_patch14_dinov2", **TINY_GIANT_VIT)
    meta = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3"): v for k, v in state_of(source).items()}
    meta["mask_token"] = torch.zeros(1, 48)
    backbone = dinov2(seed=1, name="vit_giant_patch14_dinov2", **TINY_GIANT_VIT)
    load_dinov2_checkpoint(backbone, save_safetensors(meta, tmp_path / "dinov2_vitg14.safetensors"))
    with torch.no_grad():
        assert torch.equal(backbone(images(TRAINED_IMG)), source(images(TRAINED_IMG)))


def test_dinov2_loads_meta_register_checkpoint(tmp_path: Path) -> None:
    # Meta keeps the class token's position in pos_embed and calls the registers register_tokens.
    source = dinov2(seed=0, name="vit_small_patch14_reg4_dinov2")
    with torch.no_grad():
        source.cls_token.normal_()  # its init scale (1e-6) would drown in the rounding of - cls_pos + cls_pos
    timm_state = state_of(source)
    cls_pos = torch.randn(1, 1, 64)
    meta = {k: v for k, v in timm_state.items() if k not in ("cls_token", "reg_token", "pos_embed")}
    meta.update(cls_token=timm_state["cls_token"] - cls_pos, register_tokens=timm_state["reg_token"],
                pos_embed=torch.cat([cls_pos, timm_state["pos_embed"]], dim=1), mask_token=torch.zeros(1, 64))
    backbone = dinov2(seed=1, name="vit_small_patch14_reg4_dinov2")
    load_dinov2_checkpoint(backbone, save_torch(meta, tmp_path / "dinov2_vits14_reg4.pth"))
    with torch.no_grad():
        torch.testing.assert_close(backbone(images(TRAINED_IMG)), source(images(TRAINED_IMG)))


def test_dinov2_drops_head_absent_from_a_headless_backbone(tmp_path: Path) -> None:
    saved = state_of(dinov2(seed=0, num_classes=10))
    assert "head.weight" in saved
    backbone = dinov2(seed=1)
    load_dinov2_checkpoint(backbone, save_safetensors(saved, tmp_path / "model.safetensors"))
    assert torch.equal(backbone.state_dict()["norm.weight"], saved["norm.weight"])


@pytest.mark.parametrize("corrupt, named", [
    (lambda s: {**s, "blocks.0.attn.extra": torch.zeros(1)}, "unexpected"),
    (lambda s: {k: v for k, v in s.items() if k != "norm.bias"}, "missing"),
    (lambda s: {**s, "norm.weight": torch.ones(32)}, "wrong shape"),
])
def test_dinov2_mismatch_raises_value_error_naming_the_file(tmp_path: Path, corrupt, named: str) -> None:
    path = save_safetensors(corrupt(state_of(dinov2(seed=0))), tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=f"bad.safetensors.*{named}"):
        load_dinov2_checkpoint(dinov2(seed=1), path)


# --- CLIP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipFormat:
    filename: str
    wrap: bool  # {"state_dict": {"module." + key: ...}}, as DDP training saves it


CLIP_FORMATS = [ClipFormat("open_clip_model.safetensors", False), ClipFormat("open_clip_pytorch_model.bin", False),
                ClipFormat("epoch_32.pt", True)]


def save_clip(state: dict[str, torch.Tensor], fmt: ClipFormat, directory: Path) -> str:
    path = directory / fmt.filename
    if path.suffix == ".safetensors":
        return save_safetensors(state, path)
    return save_torch({"state_dict": {"module." + k: v for k, v in state.items()}} if fmt.wrap else state, path)


@pytest.mark.parametrize("fmt", CLIP_FORMATS, ids=lambda f: f.filename)
def test_clip_checkpoint_reproduces_features(tmp_path: Path, fmt: ClipFormat) -> None:
    source = clip(seed=0)
    model = clip(seed=1)
    load_clip_checkpoint(model, save_clip(state_of(source), fmt, tmp_path))
    for got, want in zip(clip_features(model), clip_features(source)):
        assert torch.equal(got, want)


def test_clip_checkpoint_loads_into_custom_text_clip(tmp_path: Path) -> None:
    source = clip(seed=0)
    model = clip(seed=1, force_custom_text=True)
    load_clip_checkpoint(model, save_clip(state_of(source), CLIP_FORMATS[0], tmp_path))
    for got, want in zip(clip_features(model), clip_features(source)):
        assert torch.equal(got, want)


def test_clip_visual_pos_embed_is_resized_to_the_model_grid(tmp_path: Path) -> None:
    model = clip(seed=1, vision_cfg={**TINY_CLIP["vision_cfg"], "image_size": 48})
    load_clip_checkpoint(model, save_clip(state_of(clip(seed=0)), CLIP_FORMATS[0], tmp_path))
    assert model.visual.positional_embedding.shape == (1 + 3 * 3, 64)


def test_clip_mismatch_raises_value_error_naming_the_file(tmp_path: Path) -> None:
    path = save_clip(state_of(clip(seed=0)), CLIP_FORMATS[1], tmp_path)
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model\.bin.*wrong shape"):
        load_clip_checkpoint(clip(seed=1, embed_dim=16), path)


class NotATensor:
    pass


def test_torch_file_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path = save_torch({"state_dict": state_of(clip(seed=0)), "config": NotATensor()}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"ckpt\.pt"):
        load_clip_checkpoint(clip(seed=1), path)


def test_file_that_is_no_checkpoint_raises_value_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "open_clip_pytorch_model.bin"
    path.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model\.bin"):
        load_clip_checkpoint(clip(seed=0), str(path))


# --- Sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize("load, model", [(load_dinov2_checkpoint, dinov2), (load_clip_checkpoint, clip)])
def test_missing_file_raises_file_not_found_with_the_path(tmp_path: Path, load, model) -> None:
    missing = str(tmp_path / "nowhere" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=f"weights not found: {missing}"):
        load(model(seed=0), missing)


def test_checkpoint_is_read_through_fsspec_urls() -> None:
    source = dinov2(seed=0)
    url = "memory://fakescan-test-pretrained/model.safetensors"
    with fsspec.open(url, "wb") as f:
        f.write(save_safetensors_bytes({k: v.contiguous() for k, v in state_of(source).items()}))
    try:
        backbone = dinov2(seed=1)
        load_dinov2_checkpoint(backbone, url)
        assert torch.equal(backbone.state_dict()["pos_embed"], source.state_dict()["pos_embed"])
    finally:
        fsspec.filesystem("memory").rm(url)
