"""Class activation maps for any model: Grad-CAM and Score-CAM, in pure PyTorch.

Both weight the channels of one activation map (N, K, h, w) and sum them into a spatial
heatmap; they differ in where the weights come from:

- Grad-CAM (Selvaraju et al., 2017): the gradient of the score, averaged over the map.
  One forward and one backward pass; only the activations' gradient is computed, so the
  model's parameters never receive a ``.grad``.
- Score-CAM (Wang et al., 2020): no gradients at all. Each of the ``top_k`` most active
  channels, upsampled and min-max normalised, masks the input; the channel's weight is how
  much the class score of its masked input exceeds that of the weakest channel's. The paper
  measures the increase over a black image instead, but a deepfake detector may well call a
  black image fake (it is far from anything it saw), and then every weight is 0 and every
  map blank. Relative to the weakest channel the weights keep the paper's order, need no
  out-of-distribution input, and are all 0 only when no channel's region matters.

Heatmaps come back as (N, H, W) at the input's size, in [0, 1]: ReLU'd, bilinearly upsampled
and min-max normalised per sample. A map with no spread (all channels scored alike, or a
flat map) comes back all zeros.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def grad_cam(forward: Callable[[Tensor], tuple[Tensor, Tensor]], pixels: Tensor) -> Tensor:
    """``forward(pixels)`` → (activations (N, K, h, w) on the score's path, score (N,)); → (N, H, W)."""
    # The input itself requires grad, so the activations do even when every weight is frozen.
    x = pixels.detach().requires_grad_(True)
    with torch.enable_grad():
        activations, score = forward(x)
        # Samples are independent in eval mode, so one backward pass of the sum serves all.
        (gradients,) = torch.autograd.grad(score.sum(), activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activations).sum(dim=1).detach()
    return _heatmaps(cam, pixels.shape[-2:])


@torch.no_grad()
def score_cam(score: Callable[[Tensor], Tensor], activations: Callable[[Tensor], Tensor], pixels: Tensor,
              top_k: int = 32, batch_size: int = 32) -> Tensor:
    """``score(pixels)`` → (N,) class score (for a binary detector, sigmoid of the logit);
    ``activations(pixels)`` → (N, K, h, w). Scores ``N·top_k`` masked inputs, ``batch_size`` at a time."""
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
    maps = activations(pixels)
    n, channels, h, w = maps.shape
    k = min(top_k, channels)
    chosen = maps.mean(dim=(2, 3)).topk(k, dim=1).indices
    picked = maps.gather(1, chosen[:, :, None, None].expand(n, k, h, w))
    flat = picked.reshape(n * k, 1, h, w)
    scores = torch.empty(n * k, device=pixels.device)
    for start in range(0, n * k, batch_size):
        rows = torch.arange(start, min(start + batch_size, n * k), device=pixels.device)
        masks = _min_max(F.interpolate(flat[rows], size=pixels.shape[-2:], mode="bilinear", align_corners=False))
        scores[rows] = score(pixels[rows // k] * masks).float()
    scores = scores.reshape(n, k)
    # Linear weights, not the paper's softmax: the score is a probability, so its differences
    # lie in [-1, 1] and a softmax over them would weigh every channel nearly alike.
    weights = (scores - scores.amin(dim=1, keepdim=True))[:, :, None, None]
    return _heatmaps((weights * picked.float()).sum(dim=1), pixels.shape[-2:])


def _heatmaps(cam: Tensor, size: torch.Size) -> Tensor:
    """(N, h, w) weighted sums → (N, H, W) in [0, 1]."""
    upsampled = F.interpolate(cam.float().relu().unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)
    return _min_max(upsampled).squeeze(1)


def _min_max(x: Tensor) -> Tensor:
    """Each (1, H, W) slice of (B, 1, H, W) scaled to [0, 1]; a flat slice becomes zeros."""
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    span = x.amax(dim=(1, 2, 3), keepdim=True) - low
    # Relative threshold: a span at float rounding level is a flat map, not a signal to amplify.
    flat = span <= torch.finfo(x.dtype).eps * x.abs().amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(flat, torch.zeros_like(x), (x - low) / span.clamp_min(torch.finfo(x.dtype).tiny))
