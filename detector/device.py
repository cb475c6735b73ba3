"""Which torch device a model runs on when the caller does not say, and how many threads it uses."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> str:
    """``device`` as given, else the GPU when there is one, else the CPU."""
    if device is not None:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


def use_threads(threads: int | None) -> None:
    """torch's intra-op threads in this process, when a caller says: a pipeline stage runs as
    many as its CPU share, so that the stages on one machine do not fight over its cores
    (Ray sets OMP_NUM_THREADS the same way, but only where the environment has not set it)."""
    if threads is not None:
        torch.set_num_threads(max(1, threads))
