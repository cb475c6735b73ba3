"""The hybrid "EfficientViT" deepfake detector (seed 002, §3).

EfficientNet-B0 (timm) turns a 224×224 face crop into a 7×7×1280 map; its 49
cells become tokens, projected, with a CLS token and learnable positions, through
a 4-layer, 4-head Transformer encoder; an MLP head on the CLS output gives one
logit (fake > 0). The model takes pixels in [0, 1] and normalises inside, so that
attacks work in pixel space and GPUs receive uint8.

The ``hybrid_boundary_*`` configs add a linear head on the 49 cell tokens that predicts where
the image is blended (Face X-ray's boundary, Li et al., CVPR 2020). Training on
self-blends, whose blend masks are known, then gives 49 targets per image instead of
one label: the supervision that lets a randomly initialised backbone find blending
traces in CPU time, where the label alone left it at chance.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, cast

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class HybridConfig:
    name: str = "hybrid_b0"
    backbone: str = "efficientnet_b0"
    img_size: int = 224
    embed_dim: int = 256
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    head_hidden: int = 128
    dropout: float = 0.1
    boundary_head: bool = False  # a per-cell blending-boundary head, trained on self-blends' masks
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    std: tuple[float, float, float] = field(default=IMAGENET_STD)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HybridConfig:
        known: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
                                 if k in cls.__dataclass_fields__}
        return cls(**known)


_TINY = HybridConfig(name="hybrid_tiny", backbone="test_efficientnet", img_size=64, embed_dim=32, depth=2, num_heads=2,
                     head_hidden=16)
HYBRID_CONFIGS: dict[str, HybridConfig] = {
    "hybrid_b0": HybridConfig(),
    "hybrid_boundary_b0": HybridConfig(name="hybrid_boundary_b0", boundary_head=True),
    # Same code path, small enough for CPU tests: timm's test-sized EfficientNet.
    "hybrid_tiny": _TINY,
    "hybrid_boundary_tiny": replace(_TINY, name="hybrid_boundary_tiny", boundary_head=True),
}


class FeatureBackbone(Protocol):
    """What the detector uses of a timm model: ``forward_features``, which every timm model has,
    though ``timm.create_model`` is typed as returning a plain ``nn.Module``."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


def backbone_feature_shape(backbone: str, img_size: int) -> tuple[int, int, int]:
    """(C, h, w) of ``forward_features`` for a square input, without computing anything."""
    # A twin on the meta device propagates shapes only: exact for any padding scheme, and
    # free, where a real dummy forward of B0 costs seconds on a small CPU.
    with torch.device("meta"):
        probe = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
        features = cast(FeatureBackbone, probe).forward_features(torch.empty(1, 3, img_size, img_size))
        channels, h, w = features.shape[1:]
    return channels, h, w


class HybridDetector(nn.Module):
    config: HybridConfig
    grid: tuple[int, int]
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: HybridConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, global_pool="")
        channels, h, w = backbone_feature_shape(config.backbone, config.img_size)
        self.grid = (h, w)
        self.proj = nn.Linear(channels, config.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, h * w + 1, config.embed_dim))
        layer = nn.TransformerEncoderLayer(
            config.embed_dim, config.num_heads, dim_feedforward=int(config.embed_dim * config.mlp_ratio),
            dropout=config.dropout, activation="gelu", batch_first=True, norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.embed_dim)
        self.head = nn.Sequential(
            nn.Linear(config.embed_dim, config.head_hidden), nn.GELU(), nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, 1),
        )
        self.boundary = nn.Linear(config.embed_dim, 1) if config.boundary_head else None
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 1

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] → (B, h*w + 1, embed_dim) encoded tokens, CLS first."""
        features = cast(FeatureBackbone, self.backbone).forward_features((pixels - self.mean) / self.std)
        x = self.proj(features.flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.encoder(x))

    def forward(self, pixels: torch.Tensor, with_boundary: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B,); with ``with_boundary``, also the boundary head's (B, h, w) logits, through
        ``forward`` so that DistributedDataParallel sees them."""
        tokens = self.tokens(pixels)
        logits = self.head(tokens[:, 0]).squeeze(-1)
        if not with_boundary:
            return logits
        if self.boundary is None:
            raise ValueError(f"{self.config.name} has no boundary head; use a hybrid_boundary_* config")
        return logits, self.boundary(tokens[:, 1:]).view(len(tokens), *self.grid)

    def boundary_targets(self, alphas: torch.Tensor) -> torch.Tensor:
        """(B, H, W) blend alphas at any size → (B, h, w) targets: the Face X-ray boundary
        4·α·(1 − α), averaged over each token's cell."""
        return F.adaptive_avg_pool2d((4.0 * alphas * (1.0 - alphas))[:, None], self.grid)[:, 0]


def preprocess_crops(crops: np.ndarray | torch.Tensor, img_size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 crops → (N, 3, img_size, img_size) float pixels in [0, 1]."""
    # A copy: crops often arrive as read-only views of Arrow buffers.
    x = torch.from_numpy(np.array(crops, dtype=np.uint8)) if isinstance(crops, np.ndarray) else crops
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (img_size, img_size):
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return x
