"""The hybrid detector (seed 002 §3): tokens and shapes. Loading, saving and the forward and
backward contract of every config are in test_factory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.factory import create_detector
from detector.hybrid import preprocess_crops


def test_tokens_are_the_backbone_grid_plus_cls():
    model, _ = create_detector("hybrid_tiny")
    x = torch.rand(2, 3, model.config.img_size, model.config.img_size)
    with torch.no_grad():
        h, w = model.backbone.forward_features(x).shape[-2:]
        tokens = model.tokens(x)
    assert model.grid == (h, w)
    assert tokens.shape == (2, h * w + 1, model.config.embed_dim) and model.num_tokens == h * w + 1


def test_production_config_has_49_tokens_plus_cls():
    model, _ = create_detector("hybrid_b0")
    assert model.grid == (7, 7) and model.num_tokens == 50
    assert model.proj.in_features == 1280
    assert len(model.encoder.layers) == 4 and model.encoder.layers[0].self_attn.num_heads == 4


def test_preprocess_resizes_uint8_crops_to_unit_range():
    crops = np.full((2, 224, 224, 3), 255, np.uint8)
    x = preprocess_crops(crops, 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) == pytest.approx(1.0) and float(x.max()) == pytest.approx(1.0)
