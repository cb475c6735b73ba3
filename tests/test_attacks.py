"""The attackers the hybrid is trained against: bounded, effective, and penalised as specified."""
from __future__ import annotations

import math

import pytest
import torch

from detector.attacks import (
    PGDConfig,
    UNetAttacker,
    UNetAttackerConfig,
    detector_loss,
    low_frequency_energy,
    pgd_attack,
    total_variation,
    unet_attacker_loss,
)
from detector.factory import create_detector

EPS = 8 / 255


@pytest.fixture(scope="module")
def fixed_model() -> torch.nn.Module:
    """The tiny hybrid with frozen random weights, its last layer scaled so logits are O(1)
    (a fresh head answers ~0 whatever the input, which no attack can move)."""
    torch.manual_seed(0)
    model, _ = create_detector("hybrid_tiny")
    with torch.no_grad():
        model.head[-1].weight.mul_(50.0)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(8, 3, 64, 64, generator=generator)
    pixels[0] = 0.0  # black and white images: the [0, 1] clamp must hold at both ends
    pixels[1] = 1.0
    return pixels, torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.float32)


def test_pgd_stays_in_the_eps_ball_and_in_range(fixed_model, batch):
    pixels, labels = batch
    adversarial = pgd_attack(fixed_model, pixels, labels, PGDConfig(iterations=5))
    assert (adversarial - pixels).abs().max() <= EPS + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_pgd_raises_the_loss_of_a_fixed_model(fixed_model, batch):
    pixels, labels = batch
    clean = detector_loss(fixed_model(pixels), labels).item()
    attacked = detector_loss(fixed_model(pgd_attack(fixed_model, pixels, labels, PGDConfig())), labels).item()
    assert attacked > clean + 0.01, (clean, attacked)


def test_pgd_leaves_the_model_mode_and_gradients_alone(batch):
    model, _ = create_detector("hybrid_tiny")
    model.train()
    pgd_attack(model, *batch, PGDConfig(iterations=2))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_unet_perturbation_is_bounded_even_with_large_weights(batch):
    attacker = UNetAttacker(UNetAttackerConfig(width=8))
    with torch.no_grad():
        for p in attacker.parameters():
            p.normal_(0, 5.0)
    delta = attacker(batch[0])
    assert delta.abs().max() <= EPS + 1e-6
    assert delta.abs().max() > EPS / 2  # the bound is reached, not avoided by a dead network


def test_unet_learns_to_raise_the_loss_of_a_fixed_model(fixed_model, batch):
    pixels, labels = batch
    torch.manual_seed(0)
    attacker = UNetAttacker(UNetAttackerConfig(width=8))
    optimizer = torch.optim.Adam(attacker.parameters(), lr=1e-2)
    clean = detector_loss(fixed_model(pixels), labels).item()
    for _ in range(30):
        loss = unet_attacker_loss(fixed_model, attacker, pixels, labels)
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    with torch.no_grad():
        attacked = detector_loss(fixed_model(attacker.perturb(pixels)), labels).item()
        assert (attacker.perturb(pixels) - pixels).abs().max() <= EPS + 1e-6
    assert attacked > clean + 0.01, (clean, attacked)


def test_total_variation_of_known_patterns():
    flat = torch.full((1, 1, 4, 4), 0.3)
    assert total_variation(flat).item() == 0.0
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 2:] = 1.0  # one vertical edge: 4 of the 12 horizontal neighbour pairs differ by 1
    assert total_variation(edge).item() == pytest.approx(1 / 3)
    checker = (torch.arange(4).view(-1, 1) + torch.arange(4).view(1, -1)) % 2 * 2.0 - 1.0
    assert total_variation(checker.view(1, 1, 4, 4)).item() == pytest.approx(4.0)


def cosine(cycles: int, size: int = 64) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32)
    return torch.cos(2 * math.pi * cycles * x / size).view(1, 1, 1, -1).expand(1, 1, size, size)


def test_low_frequency_energy_of_known_patterns():
    # A uniform wash at the full budget is 1 in units of ε²; an amplitude-1 cosine has mean square 1/2.
    assert low_frequency_energy(torch.full((1, 3, 64, 64), EPS), scale=EPS).item() == pytest.approx(1.0)
    assert low_frequency_energy(cosine(1)).item() == pytest.approx(0.5, abs=1e-5)  # 0.03 of Nyquist
    assert low_frequency_energy(cosine(16)).item() == pytest.approx(0.0, abs=1e-6)  # half of Nyquist
    assert low_frequency_energy(cosine(1) + cosine(16)).item() == pytest.approx(0.5, abs=1e-5)


def test_the_penalties_steer_the_attacker_away_from_washes_and_speckle(fixed_model, batch):
    """With the penalties weighted up, the learned δ has less low-frequency share and less TV."""
    pixels, labels = batch
    results = {}
    for name, config in {"free": UNetAttackerConfig(width=8, tv_weight=0.0, low_freq_weight=0.0),
                         "leashed": UNetAttackerConfig(width=8, tv_weight=1.0, low_freq_weight=5.0)}.items():
        torch.manual_seed(0)
        attacker = UNetAttacker(config)
        optimizer = torch.optim.Adam(attacker.parameters(), lr=1e-2)
        for _ in range(30):
            loss = unet_attacker_loss(fixed_model, attacker, pixels, labels)
            optimizer.zero_grad()
            loss.total.backward()
            optimizer.step()
        results[name] = unet_attacker_loss(fixed_model, attacker, pixels, labels)
    assert results["leashed"].low_freq < results["free"].low_freq
    assert results["leashed"].tv < results["free"].tv
