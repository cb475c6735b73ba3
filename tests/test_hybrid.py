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


def test_boundary_configs_map_every_cell_beside_the_logit():
    model, _ = create_detector("hybrid_boundary_tiny")
    x = torch.rand(3, 3, model.config.img_size, model.config.img_size)
    with torch.no_grad():
        logits, boundary = model(x, with_boundary=True)
        plain = model(x)
    assert logits.shape == (3,) and boundary.shape == (3, *model.grid)
    assert torch.equal(logits, plain)  # the head reads the tokens; the verdict is unchanged by asking for it


def test_a_hybrid_without_a_boundary_head_says_which_configs_have_one():
    model, _ = create_detector("hybrid_tiny")
    with pytest.raises(ValueError, match="hybrid_boundary_"):
        model(torch.rand(1, 3, 64, 64), with_boundary=True)


def test_boundary_target_is_zero_for_one_image_and_one_for_an_even_mix():
    model, _ = create_detector("hybrid_boundary_tiny")
    h, w = model.grid
    alphas = torch.zeros(3, 8 * h, 8 * w)
    alphas[1] = 1.0  # wholly pasted: one image again, no blending
    alphas[2, :, : 4 * w] = 0.5  # the left half mixed half and half
    targets = model.boundary_targets(alphas)
    assert targets.shape == (3, h, w)
    assert not targets[:2].any()
    assert torch.allclose(targets[2, :, : w // 2], torch.ones(h, w // 2)) and not targets[2, :, -(w // 2):].any()


def test_training_on_blend_alphas_teaches_the_boundary_head():
    from detector.adversarial import StepConfig, TrainStep

    torch.manual_seed(0)
    model, _ = create_detector("hybrid_boundary_tiny")
    step = TrainStep(model, None, StepConfig("baseline"), detector_lr=3e-3)
    pixels = torch.rand(8, 3, 64, 64)
    labels = torch.tensor([0.0] * 4 + [1.0] * 4)
    alphas = torch.zeros(8, 64, 64)
    alphas[4:, 16:48, 16:48] = 0.5  # the fakes: a square blended half and half
    losses = [step(pixels, labels, alphas)["loss_boundary"] for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
