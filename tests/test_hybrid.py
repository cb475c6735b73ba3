"""The hybrid detector (seed 002 §3): tokens, shapes, and weights that round-trip."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from detector.hybrid import HYBRID_CONFIGS, create_hybrid, preprocess_crops
from detector.weights import save_weights


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_hybrid("hybrid_tiny")


def test_forward_gives_one_logit_per_image(tiny):
    model, info = tiny
    x = torch.rand(3, 3, model.config.img_size, model.config.img_size)
    assert model(x).shape == (3,)
    assert not info.trained and info.version == "random-init"


def test_tokens_are_the_backbone_grid_plus_cls(tiny):
    model, _ = tiny
    x = torch.rand(2, 3, model.config.img_size, model.config.img_size)
    with torch.no_grad():
        h, w = model.backbone.forward_features(x).shape[-2:]
        tokens = model.tokens(x)
    assert model.grid == (h, w)
    assert tokens.shape == (2, h * w + 1, model.config.embed_dim) and model.num_tokens == h * w + 1


def test_production_config_has_49_tokens_plus_cls():
    model, _ = create_hybrid("hybrid_b0")
    assert model.grid == (7, 7) and model.num_tokens == 50
    assert model.proj.in_features == 1280
    assert len(model.encoder.layers) == 4 and model.encoder.layers[0].self_attn.num_heads == 4


def test_weights_round_trip_with_metadata(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "m.safetensors"
    save_weights(model, path, {"config": json.dumps(model.config.to_dict()), "name": "fakescan-hybrid",
                               "version": "7", "trained": "true"})
    loaded, info = create_hybrid("hybrid_b0", weights=path)  # the file's config wins
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(model(x), loaded(x), atol=1e-6)
    assert (info.name, info.version, info.trained, info.config.name) == ("fakescan-hybrid", "7", True, "hybrid_tiny")


def test_fp16_weights_load_close_to_fp32(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "m16.safetensors"
    save_weights(model, path, {"config": json.dumps(model.config.to_dict())}, dtype=torch.float16)
    loaded, _ = create_hybrid("hybrid_tiny", weights=path)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(model(x), loaded(x), atol=2e-2)


def test_weights_of_another_architecture_are_refused(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "tiny.safetensors"
    save_weights(model, path, {})  # no config in metadata, so the caller's config is used
    wider = replace(HYBRID_CONFIGS["hybrid_tiny"], embed_dim=48)
    with pytest.raises(ValueError, match=r"does not fit.*wrong shape.*cls_token"):
        create_hybrid(wider, weights=path)


def test_preprocess_resizes_uint8_crops_to_unit_range():
    crops = np.full((2, 224, 224, 3), 255, np.uint8)
    x = preprocess_crops(crops, 64)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) == pytest.approx(1.0) and float(x.max()) == pytest.approx(1.0)
