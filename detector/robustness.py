"""How a detector holds up: accuracy and ROC AUC on clean, compressed and attacked crops."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from detector.attacks import PGDConfig, pgd_attack
from detector.degrade import jpeg
from detector.hybrid import HybridDetector, preprocess_crops
from detector.metrics import accuracy, roc_auc


@torch.no_grad()
def logits_of(model: nn.Module, pixels: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    device = next(model.parameters()).device
    out = [model(pixels[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(pixels), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0,), np.float32)


def pgd_logits(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, config: PGDConfig,
               batch_size: int = 32) -> np.ndarray:
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(pixels), batch_size):
        x, y = pixels[i : i + batch_size].to(device), labels[i : i + batch_size].float().to(device)
        with torch.enable_grad():
            adversarial = pgd_attack(model, x, y, config)
        out.append(logits_of(model, adversarial, batch_size))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def scenario_metrics(model: nn.Module, crops: np.ndarray, labels: np.ndarray, pgd: PGDConfig | None = None,
                     pgd_limit: int = 256, img_size: int | None = None) -> dict[str, float]:
    """``{scenario}_accuracy`` and ``{scenario}_auc`` for clean, jpeg50 and (with ``pgd``) PGD crops.

    PGD runs on the first ``pgd_limit`` crops only: it costs ``iterations`` forward and
    backward passes per crop.
    """
    if len(crops) == 0:
        return {}
    if img_size:
        size = img_size
    elif isinstance(model, HybridDetector):
        size = model.config.img_size
    else:
        raise TypeError(f"pass img_size for a {type(model).__name__}: only a HybridDetector knows its own")
    was_training = model.training
    model.eval()
    scenarios: dict[str, Callable[[], np.ndarray]] = {
        "clean": lambda: logits_of(model, preprocess_crops(crops, size)),
        "jpeg50": lambda: logits_of(model, preprocess_crops(np.stack([jpeg(c, 50) for c in crops]), size)),
    }
    results: dict[str, float] = {}
    for name, run in scenarios.items():
        logits = run()
        results[f"{name}_accuracy"], results[f"{name}_auc"] = accuracy(labels, logits), roc_auc(labels, logits)
    if pgd is not None and pgd.iterations > 0:
        n = min(pgd_limit, len(crops))
        logits = pgd_logits(model, preprocess_crops(crops[:n], size), torch.as_tensor(labels[:n]), pgd)
        results["pgd_accuracy"], results["pgd_auc"] = accuracy(labels[:n], logits), roc_auc(labels[:n], logits)
    model.train(was_training)
    return results
