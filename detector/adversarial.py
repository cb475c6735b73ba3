"""One step of the hybrid detector's training, baseline or adversarial (seed 002, §4.4).

Adversarial, per batch:
  1. clean loss, and PGD pixels from the current detector;
  2. the U-Net attacker takes one step on its composite loss;
  3. the detector takes one step on clean + PGD + a fresh U-Net perturbation.

The three inputs go through the detector in one forward pass, so DDP sees exactly
one forward and one backward per step. Attacks use the bare module (no DDP hooks).

Where the batch brings blend alphas (self-blends, whose masks are known) and the detector
has a boundary head, each input's boundary logits also learn the Face X-ray target: an
attack moves pixels, not where the image was blended.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from detector.attacks import PGDConfig, detector_loss, pgd_attack, unet_attacker_loss, unwrap_attacker
from detector.hybrid import HybridDetector

MODES = ("baseline", "adversarial")


@dataclass(frozen=True)
class StepConfig:
    mode: str = "adversarial"
    pgd: PGDConfig = field(default_factory=PGDConfig)
    grad_clip: float = 1.0
    boundary_weight: float = 10.0  # of the boundary loss against the label's, where alphas come with the batch


def bare(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper, or the model itself."""
    return getattr(model, "module", model)


class TrainStep:
    """Owns the optimisers; ``__call__`` runs one step and returns its losses."""

    def __init__(self, detector: nn.Module, attacker: nn.Module | None, config: StepConfig,
                 detector_lr: float = 3e-4, attacker_lr: float = 1e-3, weight_decay: float = 0.05) -> None:
        if config.mode not in MODES:
            raise ValueError(f"unknown training mode {config.mode!r}; choose from {', '.join(MODES)}")
        if config.mode == "adversarial" and attacker is None:
            raise ValueError("adversarial training needs a U-Net attacker")
        self.detector, self.attacker, self.config = detector, attacker, config
        self.optimizer = torch.optim.AdamW(detector.parameters(), lr=detector_lr, weight_decay=weight_decay)
        self.attacker_optimizer = (torch.optim.Adam(attacker.parameters(), lr=attacker_lr)
                                   if attacker is not None else None)
        device = next(detector.parameters()).device
        # bf16 autocast on GPU: no loss scaling needed, unlike fp16.
        self.amp = device.type == "cuda"
        self.device_type = device.type

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.amp)

    def update_attacker(self, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        assert self.attacker is not None and self.attacker_optimizer is not None
        detector = bare(self.detector)
        was_training = detector.training
        detector.eval()
        self.attacker.train()
        with self.autocast():
            loss = unet_attacker_loss(detector, self.attacker, pixels, labels)
        self.attacker_optimizer.zero_grad(set_to_none=True)
        # Only the attacker learns here; the detector's gradients stay untouched.
        loss.total.backward(inputs=list(self.attacker.parameters()))
        torch.nn.utils.clip_grad_norm_(self.attacker.parameters(), self.config.grad_clip)
        self.attacker_optimizer.step()
        detector.train(was_training)
        return {"attacker_loss": loss.total.item(), "attacker_tv": loss.tv.item(),
                "attacker_low_freq": loss.low_freq.item()}

    def __call__(self, pixels: torch.Tensor, labels: torch.Tensor, alphas: torch.Tensor | None = None
                 ) -> dict[str, float]:
        """One step; ``alphas`` (B, H, W) are the batch's blend alphas (zero for real images)."""
        self.detector.train()
        labels = labels.float()
        metrics: dict[str, float] = {}
        inputs = [pixels]
        if self.config.mode == "adversarial":
            assert self.attacker is not None  # __init__ refuses adversarial mode without one
            with self.autocast():
                inputs.append(pgd_attack(bare(self.detector), pixels, labels, self.config.pgd))
            metrics.update(self.update_attacker(pixels, labels))
            bare(self.attacker).eval()
            with torch.no_grad(), self.autocast():
                inputs.append(unwrap_attacker(self.attacker).perturb(pixels))
        with self.autocast():
            if alphas is None:
                logits = self.detector(torch.cat(inputs)).float().chunk(len(inputs))
            else:
                joint, boundary = self.detector(torch.cat(inputs), with_boundary=True)
                logits = joint.float().chunk(len(inputs))
                targets = cast(HybridDetector, bare(self.detector)).boundary_targets(alphas).repeat(len(inputs), 1, 1)
                boundary_loss = F.binary_cross_entropy_with_logits(boundary.float(), targets)
                metrics["loss_boundary"] = boundary_loss.item()
            terms = [detector_loss(chunk, labels) for chunk in logits]
            total = torch.stack(terms).sum()
            if alphas is not None:
                total = total + self.config.boundary_weight * boundary_loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.detector.parameters(), self.config.grad_clip)
        self.optimizer.step()
        names = ("loss_clean", "loss_pgd", "loss_unet")
        metrics.update({name: term.item() for name, term in zip(names, terms)})
        metrics["loss_total"] = total.item()
        metrics["train_accuracy"] = ((logits[0] > 0).float() == labels).float().mean().item()
        return metrics

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.attacker is not None:
            state["attacker"] = bare(self.attacker).state_dict()
            assert self.attacker_optimizer is not None  # made with the attacker
            state["attacker_optimizer"] = self.attacker_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.attacker is not None and "attacker" in state:
            bare(self.attacker).load_state_dict(state["attacker"])
            assert self.attacker_optimizer is not None  # made with the attacker
            self.attacker_optimizer.load_state_dict(state["attacker_optimizer"])
