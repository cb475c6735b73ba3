"""The two attackers the hybrid detector is trained against (seed 002, §4).

Both work in pixel space, on images in [0, 1] before the model's own normalisation,
so an ε of 8/255 means 8 grey levels, whatever the model's mean and std.

- ``pgd_attack``: L∞ projected gradient ascent with a random start.
- ``UNetAttacker``: a tiny U-Net whose output δ = ε·tanh(·) is trained to raise the
  detector's loss, with a total-variation penalty (no speckle) and a penalty on the
  energy of δ at very low spatial frequencies (no broad washes that
  compression would flatten anyway).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PGDConfig:
    eps: float = 8 / 255
    step: float = 2 / 255
    iterations: int = 10
    random_start: bool = True


@dataclass(frozen=True)
class UNetAttackerConfig:
    eps: float = 8 / 255
    width: int = 16
    tv_weight: float = 0.05
    low_freq_weight: float = 0.5
    # Radius, as a fraction of the Nyquist frequency, under which energy counts as "very low".
    low_freq_cutoff: float = 0.1


def detector_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def project(pixels: torch.Tensor, adversarial: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``adversarial`` into the L∞ ball of radius ``eps`` around ``pixels`` and into [0, 1]."""
    return torch.minimum(torch.maximum(adversarial, pixels - eps), pixels + eps).clamp_(0.0, 1.0)


def pgd_attack(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, config: PGDConfig = PGDConfig(),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial pixels within ``config.eps`` (L∞) of ``pixels`` that raise the model's loss.

    The model runs in eval mode during the attack, so that batch-norm statistics are not
    updated by adversarial inputs, and gets its own mode back afterwards. Pass the bare
    module, not a DDP wrapper: the attack's backward passes must not trigger gradient sync.
    """
    was_training = model.training
    model.eval()
    clean = pixels.detach()
    adversarial = clean.clone()
    if config.random_start:
        noise = torch.rand(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        adversarial = project(clean, clean + (noise * 2 - 1) * config.eps, config.eps)
    try:
        for _ in range(config.iterations):
            adversarial.requires_grad_(True)
            loss = detector_loss(model(adversarial), labels)
            (grad,) = torch.autograd.grad(loss, adversarial)
            adversarial = project(clean, adversarial.detach() + config.step * grad.sign(), config.eps)
    finally:
        model.train(was_training)
    return adversarial.detach()


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(4, out_channels), nn.GELU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.GroupNorm(4, out_channels), nn.GELU(),
    )


class UNetAttacker(nn.Module):
    """Two down, two up, skip connections; returns the perturbation δ with |δ| ≤ ε everywhere."""

    config: UNetAttackerConfig

    def __init__(self, config: UNetAttackerConfig = UNetAttackerConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.enc1, self.enc2, self.mid = conv_block(3, w), conv_block(w, 2 * w), conv_block(2 * w, 4 * w)
        self.dec2, self.dec1 = conv_block(4 * w + 2 * w, 2 * w), conv_block(2 * w + w, w)
        self.out = nn.Conv2d(w, 3, 1)
        # Start from δ = 0: the attacker must learn what hurts, not begin as random noise.
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None  # nn.Conv2d has a bias unless told otherwise
        nn.init.zeros_(self.out.bias)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = pixels.shape[-2:]
        e1 = self.enc1(pixels * 2 - 1)
        e2 = self.enc2(F.avg_pool2d(e1, 2, ceil_mode=True))
        m = self.mid(F.avg_pool2d(e2, 2, ceil_mode=True))
        d2 = self.dec2(torch.cat([F.interpolate(m, size=e2.shape[-2:], mode="bilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=size, mode="bilinear", align_corners=False), e1], 1))
        return self.config.eps * torch.tanh(self.out(d1))

    def perturb(self, pixels: torch.Tensor) -> torch.Tensor:
        """Attacked pixels, kept in [0, 1]; the clamp only ever shrinks |δ|."""
        return (pixels + self(pixels)).clamp(0.0, 1.0)


def unwrap_attacker(attacker: nn.Module) -> UNetAttacker:
    """The UNetAttacker itself, out of its DDP wrapper if it has one."""
    inner = getattr(attacker, "module", attacker)
    if not isinstance(inner, UNetAttacker):
        raise TypeError(f"expected a UNetAttacker, possibly DDP-wrapped, not a {type(inner).__name__}")
    return inner


def total_variation(delta: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV, per element)."""
    dy = (delta[..., 1:, :] - delta[..., :-1, :]).abs().mean()
    dx = (delta[..., :, 1:] - delta[..., :, :-1]).abs().mean()
    return dx + dy


def low_frequency_energy(delta: torch.Tensor, cutoff: float = 0.1, scale: float = 1.0) -> torch.Tensor:
    """Mean squared amplitude of δ's components at radius ≤ ``cutoff``·Nyquist (DC included),
    in units of ``scale``²: with scale = ε, 1.0 is a uniform wash at the full budget.

    Parseval makes this the energy of δ's low-pass part, so high-frequency energy costs
    nothing here and the attacker stays free to spend its budget there.
    """
    h, w = delta.shape[-2:]
    power = torch.fft.fft2(delta.float(), norm="ortho").abs().square()
    fy = torch.fft.fftfreq(h, device=delta.device).abs().view(-1, 1) / 0.5
    fx = torch.fft.fftfreq(w, device=delta.device).abs().view(1, -1) / 0.5
    low = (fy.square() + fx.square()).sqrt() <= cutoff
    return (power * low).sum(dim=(-2, -1)).mean() / (h * w) / scale**2


@dataclass
class AttackerLoss:
    total: torch.Tensor
    adversarial: torch.Tensor  # the detector's loss on attacked pixels (what the attacker raises)
    tv: torch.Tensor
    low_freq: torch.Tensor


def unet_attacker_loss(detector: nn.Module, attacker: nn.Module, pixels: torch.Tensor,
                       labels: torch.Tensor) -> AttackerLoss:
    """The attacker's composite loss: −detector loss + TV and low-frequency penalties."""
    config = unwrap_attacker(attacker).config  # the attacker may be DDP-wrapped
    delta = attacker(pixels)
    attacked = (pixels + delta).clamp(0.0, 1.0)
    adversarial = detector_loss(detector(attacked), labels)
    tv = total_variation(delta) / config.eps
    low = low_frequency_energy(delta, config.low_freq_cutoff, config.eps)
    total = -adversarial + config.tv_weight * tv + config.low_freq_weight * low
    return AttackerLoss(total, adversarial.detach(), tv.detach(), low.detach())
