"""The multi-stream ensemble detector (seed 000): a shared DINOv2 backbone, three streams.

- Global Texture: the whole frame → backbone → a shallow CNN over the patch-token map.
- Localized Facial: the face crop → the same backbone → a deeper CNN.
- Hybrid Semantic Fusion: the face's DINOv2 tokens, CLIP's image embedding of the face and
  CLIP's text embeddings of two prompts → a small transformer fusion block.

Each stream gives one logit (fake > 0). The streams share one backbone, as the paper's do;
CLIP is frozen. The model takes pixels in [0, 1] and normalises inside, like the hybrid.
Calibration and voting live in ``detector.voting``; this module only computes logits.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import open_clip
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from detector.hybrid import IMAGENET_MEAN, IMAGENET_STD

STREAMS = ("texture", "facial", "fusion")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EnsembleConfig:
    name: str = "ensemble_giant"
    backbone: str = "vit_giant_patch14_dinov2"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # timm overrides (tiny configs)
    img_size: int = 224  # faces and frames alike
    clip_model: str = "ViT-L-14"
    clip_kwargs: dict[str, Any] = field(default_factory=dict)  # open_clip overrides (tiny configs)
    prompts: tuple[str, str] = ("a photo of a real face", "a photo of a synthetic face")
    texture_channels: int = 256
    facial_channels: int = 256
    facial_blocks: int = 3
    fusion_dim: int = 256
    fusion_depth: int = 2
    fusion_heads: int = 4
    finetune: str = "lora"  # lora | full | frozen: what of the backbone trains
    lora_rank: int = 8
    lora_alpha: float = 16.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EnsembleConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        if "prompts" in known:
            known["prompts"] = tuple(known["prompts"])
        return cls(**known)


TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 112, "layers": 3, "width": 128, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
ENSEMBLE_CONFIGS: dict[str, EnsembleConfig] = {
    "ensemble_giant": EnsembleConfig(),
    "ensemble_small": EnsembleConfig(name="ensemble_small", backbone="vit_small_patch14_dinov2", clip_model="ViT-B-32",
                                     texture_channels=128, facial_channels=128, fusion_dim=128),
    # Same code path at a size that trains on 2 CPU cores and ships in the repository.
    "ensemble_tiny": EnsembleConfig(
        name="ensemble_tiny", backbone="vit_small_patch14_dinov2", img_size=112,
        backbone_kwargs={"embed_dim": 192, "depth": 6, "num_heads": 3}, clip_model="ViT-B-32", clip_kwargs=TINY_CLIP,
        texture_channels=64, facial_channels=64, facial_blocks=2, fusion_dim=64, fusion_depth=1, fusion_heads=2,
        lora_rank=4, lora_alpha=8.0,
    ),
}


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update B·A (Hu et al., 2021).

    It subclasses nn.Linear so that ``weight`` and ``bias`` keep timm's key names: published
    checkpoints load before or after the adapters are added."""

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, alpha: float) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))  # zero: starts as the base layer
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / rank

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, alpha: float) -> LoRALinear:
        lora = cls(linear.in_features, linear.out_features, linear.bias is not None, rank, alpha)
        lora.weight.data.copy_(linear.weight.data)
        if linear.bias is not None:
            lora.bias.data.copy_(linear.bias.data)
        return lora.to(linear.weight.device, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scaling


def qkv_of(block: nn.Module) -> nn.Linear:
    """A ViT block's fused qkv projection (timm types a block's ``attn`` as any module)."""
    qkv = block.get_submodule("attn.qkv")
    if not isinstance(qkv, nn.Linear):
        raise TypeError(f"expected a linear qkv projection in the ViT's attention, got {type(qkv).__name__}")
    return qkv


def add_lora(backbone: VisionTransformer, rank: int, alpha: float) -> None:
    """Adapters on every attention block's qkv projection, the usual choice for ViTs."""
    for block in backbone.blocks:
        block.get_submodule("attn").qkv = LoRALinear.from_linear(qkv_of(block), rank, alpha)


class TextureHead(nn.Module):
    """Shallow: one 1×1 and one 3×3 convolution, then global pooling: broad texture statistics."""

    def __init__(self, in_dim: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_dim, channels, 1), nn.GELU(),
                                  nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.GELU())
        self.fc = nn.Linear(channels, 1)

    def forward(self, tokens_map: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(tokens_map).mean(dim=(2, 3))).squeeze(-1)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(1, channels), nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FacialHead(nn.Module):
    """Deeper: residual 3×3 blocks keep local detail (eye corners, mouth) before pooling."""

    def __init__(self, in_dim: int, channels: int, blocks: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, channels, 1)
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.fc = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, channels // 2), nn.GELU(),
                                nn.Linear(channels // 2, 1))

    def forward(self, tokens_map: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.proj(tokens_map)).mean(dim=(2, 3))).squeeze(-1)


class FusionHead(nn.Module):
    """Tokens [fusion CLS, DINOv2 CLS, DINOv2 patches, CLIP image, CLIP text × 2], each kind with
    its own learned type embedding, through a small pre-norm transformer. CLIP's zero-shot
    margin (synthetic prompt minus real prompt) is added with a learned weight, so a trained
    CLIP's semantic prior is used from the first step and a random one can be ignored."""

    def __init__(self, dino_dim: int, clip_dim: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.dino_proj = nn.Linear(dino_dim, dim)
        self.clip_proj = nn.Linear(clip_dim, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.type_embed = nn.Parameter(torch.zeros(4, dim))  # dino cls, dino patch, clip image, clip text
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim * 4, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 1)
        self.zero_shot_weight = nn.Parameter(torch.zeros(()))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)

    def forward(self, dino_tokens: torch.Tensor, prefix: int, clip_image: torch.Tensor,
                clip_text: torch.Tensor) -> torch.Tensor:
        batch = len(dino_tokens)
        dino = self.dino_proj(dino_tokens)
        dino = torch.cat([dino[:, :1] + self.type_embed[0], dino[:, prefix:] + self.type_embed[1]], dim=1)
        image = self.clip_proj(clip_image).unsqueeze(1) + self.type_embed[2]
        text = (self.clip_proj(clip_text) + self.type_embed[3]).unsqueeze(0).expand(batch, -1, -1)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), dino, image, text], dim=1)
        logit = self.fc(self.norm(self.encoder(x))[:, 0]).squeeze(-1)
        image_n, text_n = F.normalize(clip_image, dim=-1), F.normalize(clip_text, dim=-1)
        zero_shot = image_n @ text_n[1] - image_n @ text_n[0]
        return logit + self.zero_shot_weight * zero_shot


class EnsembleDetector(nn.Module):
    config: EnsembleConfig
    backbone: VisionTransformer
    prefix: int
    grid: tuple[int, int]
    clip: open_clip.CLIP  # open_clip ships no type information: Any to mypy
    clip_size: int
    prompt_tokens: torch.Tensor
    dino_mean: torch.Tensor
    dino_std: torch.Tensor
    clip_mean: torch.Tensor
    clip_std: torch.Tensor

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        self.config = config
        backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, img_size=config.img_size,
                                     **config.backbone_kwargs)
        if not isinstance(backbone, VisionTransformer):
            raise TypeError(f"the ensemble's backbone must be a timm VisionTransformer (DINOv2); "
                            f"{config.backbone} is a {type(backbone).__name__}")
        self.backbone = backbone
        self.prefix = self.backbone.num_prefix_tokens
        self.grid = tuple(self.backbone.patch_embed.grid_size)
        self.clip = create_clip(config)
        self.clip.requires_grad_(False)
        # The tokenizer ships inside open_clip; the prompts never change, so tokenise them once.
        self.register_buffer("prompt_tokens", open_clip.get_tokenizer(config.clip_model)(list(config.prompts)),
                             persistent=False)
        dim, clip_dim = self.backbone.embed_dim, self.clip.text_projection.shape[1]
        self.texture_head = TextureHead(dim, config.texture_channels)
        self.facial_head = FacialHead(dim, config.facial_channels, config.facial_blocks)
        self.fusion_head = FusionHead(dim, clip_dim, config.fusion_dim, config.fusion_depth, config.fusion_heads)
        self.clip_size = self.clip.visual.image_size[0] if isinstance(self.clip.visual.image_size, tuple) \
            else self.clip.visual.image_size
        for name, values in (("dino_mean", IMAGENET_MEAN), ("dino_std", IMAGENET_STD), ("clip_mean", CLIP_MEAN),
                             ("clip_std", CLIP_STD)):
            self.register_buffer(name, torch.tensor(values).view(1, 3, 1, 1), persistent=False)
        self.set_finetune(config.finetune)

    def set_finetune(self, mode: str) -> None:
        if mode not in ("lora", "full", "frozen"):
            raise ValueError(f"unknown finetune mode {mode!r}; choose lora, full or frozen")
        if mode == "lora" and not isinstance(qkv_of(self.backbone.blocks[0]), LoRALinear):
            add_lora(self.backbone, self.config.lora_rank, self.config.lora_alpha)
        # Frozen parameters get requires_grad_(False), not no_grad: DDP must not wait for them.
        self.backbone.requires_grad_(mode == "full")
        if mode == "lora":
            for block in self.backbone.blocks:
                lora = qkv_of(block)
                assert isinstance(lora, LoRALinear)  # add_lora above
                lora.lora_a.requires_grad_(True)
                lora.lora_b.requires_grad_(True)

    def backbone_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, prefix + h*w, D) DINOv2 tokens."""
        x = resize_to(pixels, self.config.img_size)
        return self.backbone.forward_features((x - self.dino_mean) / self.dino_std)

    def token_map(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix:]
        return patches.transpose(1, 2).reshape(len(tokens), -1, *self.grid)

    def clip_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = resize_to(pixels, self.clip_size)
        image = self.clip.encode_image((x - self.clip_mean) / self.clip_std)
        return image, self.clip.encode_text(self.prompt_tokens)

    def score_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Global Texture logits of whole frames."""
        return self.texture_head(self.token_map(self.backbone_tokens(frames)))

    def score_faces(self, faces: torch.Tensor) -> dict[str, torch.Tensor]:
        """Localized Facial and Hybrid Semantic Fusion logits of face crops (one backbone pass)."""
        tokens = self.backbone_tokens(faces)
        clip_image, clip_text = self.clip_features(faces)
        return {"facial": self.facial_head(self.token_map(tokens)),
                "fusion": self.fusion_head(tokens, self.prefix, clip_image, clip_text)}

    def forward(self, faces: torch.Tensor, frames: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every stream's logits; ``frames`` defaults to the faces for crop-only datasets."""
        logits = self.score_faces(faces)
        logits["texture"] = self.score_frames(faces if frames is None else frames)
        return {name: logits[name] for name in STREAMS}


def create_clip(config: EnsembleConfig) -> nn.Module:
    """open_clip warns on the root logger that no pretrained weights were loaded: here that is by
    design (weights come from ``load_clip_checkpoint`` or our own file), and the warning would
    turn every CLI error into two lines."""
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(config.clip_model, pretrained=None, load_weights=False, **config.clip_kwargs)
    finally:
        logging.disable(logging.NOTSET)


def resize_to(pixels: torch.Tensor, size: int) -> torch.Tensor:
    if pixels.shape[-2:] == (size, size):
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def build_ensemble(config: EnsembleConfig, dinov2_weights: str | None = None, clip_weights: str | None = None,
                   storage_options: dict[str, Any] | None = None) -> EnsembleDetector:
    """The ensemble for ``config``; ``dinov2_weights`` and ``clip_weights`` load the published
    timm / open_clip checkpoints into the backbone and CLIP (the starting point of a fine-tune)."""
    from detector.pretrained import load_clip_checkpoint, load_dinov2_checkpoint

    if not dinov2_weights and not clip_weights:
        return EnsembleDetector(config)
    # Built without adapters, so that the published checkpoints' key names fit; adapters after.
    model = EnsembleDetector(replace(config, finetune="frozen"))
    if dinov2_weights:
        load_dinov2_checkpoint(model.backbone, dinov2_weights, storage_options)
    if clip_weights:
        load_clip_checkpoint(model.clip, clip_weights, storage_options)
    model.set_finetune(config.finetune)
    model.config = config
    return model
