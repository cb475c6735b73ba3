"""Explanations: CAMs that point where the evidence is, per-stream heatmaps and features of the
real (tiny) detectors, and the drift measures and pictures built from them."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detector.explain import (
    METHODS,
    explain,
    feature_cosine,
    grad_cam,
    heatmap_entropy,
    heatmap_png,
    overlay,
    score_cam,
    stream_features,
    stream_names,
)
from detector.factory import create_detector

QUADRANTS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row, column): top-left, top-right, bottom-left, bottom-right
RED, GREEN, BLUE, YELLOW = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)


class RedDetector(nn.Module):
    """A real conv net whose right answer is known: its "fake" logit rises with the amount of pure
    red in the image and with nothing else. Its three channels each detect one pure colour, so a
    faithful CAM must weigh the red channel and ignore the green and blue ones."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.ReLU(), nn.AvgPool2d(4))
        self.head = nn.Linear(3, 1)
        with torch.no_grad():
            self.features[0].weight.copy_((2 * torch.eye(3) - 1).view(3, 3, 1, 1))  # own colour minus the others
            self.head.weight.copy_(torch.tensor([[8.0, 0.0, 0.0]]))
            self.head.bias.fill_(-2.0)

    def map_and_logit(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activations = self.features(pixels)
        return activations, self.head(activations.mean(dim=(2, 3))).squeeze(-1)


def scene(red_at: int, size: int = 32) -> torch.Tensor:
    """A grey image with a coloured square in each quadrant: red in ``QUADRANTS[red_at]``."""
    image = torch.full((3, size, size), 0.3)
    colours = [GREEN, BLUE, YELLOW]
    colours.insert(red_at, RED)
    half, side = size // 2, size // 4
    for (row, column), colour in zip(QUADRANTS, colours):
        top, left = row * half + side // 2, column * half + side // 2
        image[:, top : top + side, left : left + side] = torch.tensor(colour).view(3, 1, 1)
    return image


def share_in_quadrant(heatmap: np.ndarray, quadrant: tuple[int, int]) -> float:
    half_h, half_w = heatmap.shape[0] // 2, heatmap.shape[1] // 2
    row, column = quadrant
    quadrant = heatmap[row * half_h : (row + 1) * half_h, column * half_w : (column + 1) * half_w]
    return float(quadrant.sum() / heatmap.sum())


@pytest.mark.parametrize("method", METHODS)
def test_cam_points_at_the_evidence_and_follows_it_from_image_to_image(method):
    model = RedDetector().eval()
    pixels = torch.stack([scene(i) for i in range(len(QUADRANTS))])  # the red square in each quadrant in turn
    if method == "gradcam":
        heatmaps = grad_cam(model.map_and_logit, pixels)
    else:
        # batch_size 5 splits the 4 × 3 masked inputs unevenly across images.
        heatmaps = score_cam(lambda x: torch.sigmoid(model.map_and_logit(x)[1]), lambda x: model.features(x), pixels,
                             top_k=3, batch_size=5)
    assert heatmaps.shape == (4, 32, 32) and heatmaps.min() >= 0 and heatmaps.max() == pytest.approx(1.0)
    for heatmap, quadrant in zip(heatmaps.numpy(), QUADRANTS):
        assert share_in_quadrant(heatmap, quadrant) > 0.6
        peak = np.unravel_index(heatmap.argmax(), heatmap.shape)
        assert (peak[0] // 16, peak[1] // 16) == quadrant


@pytest.fixture(scope="module")
def hybrid():
    torch.manual_seed(0)
    return create_detector("hybrid_tiny")[0]


@pytest.fixture(scope="module")
def ensemble():
    torch.manual_seed(0)
    return create_detector("ensemble_tiny")[0]


def modes_and_state(model: nn.Module) -> tuple[list[bool], dict[str, torch.Tensor]]:
    return [m.training for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["hybrid", "ensemble"])
def test_explain_gives_one_heatmap_per_stream_and_leaves_the_model_as_it_was(name, method, request):
    model = request.getfixturevalue(name)
    # The ensemble resizes inside, so its heatmaps come back at the size of whatever it was given.
    size = (72, 56) if name == "ensemble" else (model.config.img_size,) * 2
    # Training mode with a frozen part in eval, as during fine-tuning: every module's own mode must come back.
    model.train()
    (model.clip if name == "ensemble" else model.backbone).eval()
    before_modes, before_state = modes_and_state(model)
    heatmaps = explain(model, torch.rand(2, 3, *size), method, top_k=2, batch_size=3)
    after_modes, after_state = modes_and_state(model)
    assert tuple(heatmaps) == stream_names(model)
    for maps in heatmaps.values():
        assert maps.shape == (2, *size) and maps.dtype == np.float32
        assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert after_modes == before_modes
    assert all(torch.equal(before_state[k], after_state[k]) for k in before_state)
    assert all(p.grad is None for p in model.parameters())


def test_stream_features_are_what_each_streams_classifier_turns_into_its_logit(hybrid, ensemble):
    faces = torch.rand(3, 3, 112, 112)
    hybrid.eval(), ensemble.eval()
    with torch.no_grad():
        hybrid_features = stream_features(hybrid, faces[:, :, :64, :64])
        assert torch.allclose(hybrid.head(hybrid_features["hybrid"]).squeeze(-1), hybrid(faces[:, :, :64, :64]),
                              atol=1e-5)
        features, logits = stream_features(ensemble, faces, batch_size=2), ensemble(faces)
        classifiers = {"texture": ensemble.texture_head.fc, "facial": ensemble.facial_head.fc,
                       "fusion": ensemble.fusion_head.fc}
        # The fusion logit also adds CLIP's zero-shot margin, with a learned weight that starts at 0.
        for stream, classifier in classifiers.items():
            assert features[stream].shape[0] == 3
            assert torch.allclose(classifier(features[stream]).squeeze(-1), logits[stream], atol=1e-5)


def test_explain_refuses_an_unknown_method_or_stream(hybrid, ensemble):
    pixels = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"unknown explanation method 'lime'; choose one of: scorecam, gradcam"):
        explain(hybrid, pixels, "lime")
    with pytest.raises(ValueError, match=r"unknown stream 'audio' for EnsembleDetector; it has: texture, facial, "
                                         r"fusion"):
        explain(ensemble, pixels, streams=["facial", "audio"])


def test_heatmap_entropy_matches_hand_computed_values():
    uniform = np.full((14, 14), 0.5)
    one_cell = np.zeros((14, 14))
    one_cell[3, 5] = 1.0
    two_cells = one_cell.copy()
    two_cells[10, 1] = 1.0
    # At 112×112 each cell is an 8×8 block: a hot block that fills one cell is still one cell.
    one_block = np.kron(one_cell, np.ones((8, 8)))
    # At 7×7 each pixel covers 2×2 cells: area resampling spreads it evenly over four.
    coarse = np.zeros((7, 7))
    coarse[2, 4] = 1.0
    flat_zero = np.zeros((14, 14))
    entropies = [heatmap_entropy(m[None])[0] for m in (uniform, one_cell, two_cells, flat_zero)]
    assert entropies == pytest.approx([math.log(196), 0.0, math.log(2), math.log(196)], abs=1e-9)
    assert heatmap_entropy(one_block[None])[0] == pytest.approx(0.0, abs=1e-9)
    assert heatmap_entropy(coarse[None])[0] == pytest.approx(math.log(4))
    assert heatmap_entropy(coarse[None], grid=7)[0] == pytest.approx(0.0, abs=1e-9)


def test_feature_cosine_matches_hand_computed_values():
    clean = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, 0.0], [3.0, 4.0]])
    degraded = torch.tensor([[0.0, 1.0], [2.0, 4.0], [-1.0, 0.0], [4.0, 3.0]])
    assert feature_cosine(clean, degraded) == pytest.approx([0.0, 1.0, -1.0, 24 / 25])
    with pytest.raises(ValueError, match="need two"):
        feature_cosine(clean, degraded[:3])


def test_overlay_and_png_keep_the_crop_size_and_decode():
    crop = np.random.default_rng(0).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[:4, :4] = 1.0
    blended = overlay(crop, heatmap)
    assert blended.shape == (40, 30, 3) and blended.dtype == np.uint8
    assert np.array_equal(overlay(crop, heatmap, alpha=0.0), crop)
    painted = overlay(crop, heatmap, alpha=1.0)
    assert tuple(painted[0, 0]) == (128, 0, 0) and tuple(painted[-1, -1]) == (0, 0, 128)  # hot top-left, cold rest
    decoded = np.asarray(Image.open(io.BytesIO(heatmap_png(crop, heatmap))).convert("RGB"))
    assert decoded.shape == (40, 60, 3)
    assert np.array_equal(decoded[:, :30], crop) and np.array_equal(decoded[:, 30:], blended)
    with pytest.raises(ValueError, match=r"crop must be an \(H, W, 3\) uint8 array"):
        overlay(crop.astype(np.float32), heatmap)
