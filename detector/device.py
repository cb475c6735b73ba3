"""Which torch device a model runs on when the caller does not say."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> str:
    """``device`` as given, else the GPU when there is one, else the CPU."""
    if device is not None:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"
