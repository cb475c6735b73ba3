"""The robustness protocol (seed 002, §6): one detector's scores on clean, compressed and
attacked face crops, per stream, plus the attribution analyses of seed 000.

Scenarios, in the paper's order: clean, JPEG 50, H.264 (a real libx264 round trip), PGD
white-box, the learned U-Net attacker, and the U-Net attack followed by JPEG 50 or H.264.
Compression of clean crops happens at the crop's own resolution; attacked pixels are made
at the model's input size and compressed there, since that is what an attacker would ship.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from detector.attacks import PGDConfig, UNetAttacker, UNetAttackerConfig, pgd_attack, unet_attacker_loss
from detector.degrade import apply_probe
from detector.explain import explain, feature_cosine, heatmap_entropy, stream_features
from detector.factory import stream_logits
from detector.hybrid import preprocess_crops
from detector.protocol import OVERALL, SCENARIOS
from detector.voting import DetectorCalibration, combined_probability


class AttackTarget(nn.Module):
    """A detector as one logit per crop, which is what the attacks raise the loss of: the
    hybrid's logit, or the mean of the ensemble's stream logits (the training loss's target)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # An nn.Module starts in train mode: the attacks restore the wrapper's mode when they
        # finish, which must not switch the detector's batch norms to batch statistics.
        self.train(model.training)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixels)
        return torch.stack(list(logits.values())).mean(0) if isinstance(logits, dict) else logits


@dataclass
class EvaluatedDetector:
    """A loaded detector with the calibration that turns its logits into probabilities."""

    name: str
    model: nn.Module
    calibration: DetectorCalibration
    img_size: int
    target: AttackTarget = field(init=False)

    def __post_init__(self) -> None:
        self.target = AttackTarget(self.model)

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self.calibration.streams)

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor, batch_size: int = 32) -> dict[str, np.ndarray]:
        device = next(self.model.parameters()).device
        parts: dict[str, list[np.ndarray]] = {s: [] for s in self.streams}
        for start in range(0, len(pixels), batch_size):
            out = stream_logits(self.model, pixels[start : start + batch_size].to(device))
            for stream in self.streams:
                parts[stream].append(out[stream].float().cpu().numpy())
        return {s: np.concatenate(v) if v else np.zeros((0,), np.float32) for s, v in parts.items()}

    def probabilities(self, logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each stream's calibrated p_fake and, under ``OVERALL``, the detector's: the
        reliability-weighted mean, or the plain mean when every stream weighs 0 (see
        ``overall_rule``)."""
        p = {s: np.asarray(self.calibration.streams[s].probability(v), np.float64) for s, v in logits.items()}
        n = len(next(iter(p.values())))
        p[OVERALL] = np.array([combined_probability({s: float(v[i]) for s, v in p.items()}, self.calibration.weights)
                               for i in range(n)], np.float64)
        return p

    @property
    def weighted(self) -> bool:
        return sum(self.calibration.weights.values()) > 0

    @property
    def overall_rule(self) -> str:
        return overall_rule(self.calibration)


def overall_rule(calibration: DetectorCalibration) -> str:
    """How a detector's overall p_fake combines its streams, in words for the record."""
    weighted = sum(calibration.weights.values()) > 0
    return "reliability-weighted mean" if weighted else "unweighted mean (every stream weighs 0)"


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return (pixels.detach().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())


def compress(images: np.ndarray, probe: str) -> np.ndarray:
    """One probe per image: a batch-wide H.264 stream would make each crop's result depend on
    its neighbours in the batch."""
    return np.concatenate([apply_probe(probe, images[i : i + 1]) for i in range(len(images))]) if len(images) \
        else images


def scenario_pixels(scenario: str, crops: np.ndarray, labels: np.ndarray, detector: EvaluatedDetector,
                    attacker: UNetAttacker | None, pgd: PGDConfig) -> torch.Tensor:
    """(N, 3, S, S) model inputs in [0, 1] for ``scenario``; S is the detector's input size."""
    size = detector.img_size
    if scenario == "clean":
        return preprocess_crops(crops, size)
    if scenario in ("jpeg50", "h264"):
        return preprocess_crops(compress(crops, scenario), size)
    device = next(detector.model.parameters()).device
    clean = preprocess_crops(crops, size).to(device)
    if scenario == "pgd":
        return pgd_attack(detector.target, clean, torch.as_tensor(labels, device=device), pgd).cpu()
    if attacker is None:
        raise ValueError(f"scenario {scenario!r} needs a fitted U-Net attacker")
    with torch.no_grad():
        attacked = attacker.to(device).eval().perturb(clean)
    if scenario == "unet":
        return attacked.cpu()
    return preprocess_crops(compress(to_uint8(attacked), scenario.removeprefix("unet_")), size)


def fit_unet_attacker(detector: EvaluatedDetector, crops: np.ndarray, labels: np.ndarray, steps: int,
                      batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                      config: UNetAttackerConfig = UNetAttackerConfig()) -> UNetAttacker:
    """A U-Net attacker trained against this detector alone (white-box, frozen detector) with
    the composite loss of training: raise the detector's loss, stay smooth and not wash-like."""
    torch.manual_seed(seed)
    device = next(detector.model.parameters()).device
    attacker = UNetAttacker(config).to(device).train()
    optimizer = torch.optim.Adam(attacker.parameters(), lr=lr)
    pixels = preprocess_crops(crops, detector.img_size)
    targets = torch.as_tensor(labels, dtype=torch.float32)
    order = np.random.default_rng(seed)
    was_training = detector.model.training
    detector.model.eval()
    for _ in range(steps):
        pick = torch.as_tensor(order.choice(len(pixels), size=min(batch_size, len(pixels)), replace=False))
        loss = unet_attacker_loss(detector.target, attacker, pixels[pick].to(device), targets[pick].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward(inputs=list(attacker.parameters()))
        torch.nn.utils.clip_grad_norm_(attacker.parameters(), 1.0)
        optimizer.step()
    detector.model.train(was_training)
    return attacker.eval()


def attacker_bytes(attacker: UNetAttacker) -> bytes:
    buffer = io.BytesIO()
    torch.save(attacker.state_dict(), buffer)
    return buffer.getvalue()


def attacker_from_bytes(data: bytes, config: UNetAttackerConfig = UNetAttackerConfig()) -> UNetAttacker:
    attacker = UNetAttacker(config)
    attacker.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    return attacker.eval()


@dataclass
class ScenarioScores:
    """One scenario's results for a batch of crops, per stream (``OVERALL`` included)."""

    logits: dict[str, np.ndarray]
    p_fake: dict[str, np.ndarray]
    feature_cosine: dict[str, np.ndarray] | None = None  # vs clean; None for clean itself
    entropy: dict[str, np.ndarray] | None = None  # heatmap entropy (nats) per stream


def evaluate_crops(detector: EvaluatedDetector, crops: np.ndarray, labels: np.ndarray,
                   scenarios: tuple[str, ...] = SCENARIOS, attacker: UNetAttacker | None = None,
                   pgd: PGDConfig = PGDConfig(), analysis: str | None = "gradcam") -> dict[str, ScenarioScores]:
    """Every scenario's scores for one batch; with ``analysis`` (an explain method) also the
    feature cosine to clean and the heatmap entropy of every stream."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    device = next(detector.model.parameters()).device
    results: dict[str, ScenarioScores] = {}
    clean_features: dict[str, torch.Tensor] | None = None
    for scenario in scenarios:
        pixels = scenario_pixels(scenario, crops, labels, detector, attacker, pgd)
        logits = detector.logits(pixels)
        scores = ScenarioScores(logits, detector.probabilities(logits))
        if analysis:
            with torch.no_grad():
                features = stream_features(detector.model, pixels.to(device))
            if scenario == "clean":
                clean_features = features
            elif clean_features is not None:
                scores.feature_cosine = {s: feature_cosine(clean_features[s], features[s]) for s in features}
            maps = explain(detector.model, pixels.to(device), method=analysis)
            scores.entropy = {s: heatmap_entropy(m) for s, m in maps.items()}
        results[scenario] = scores
    return results
