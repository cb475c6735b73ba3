"""Weights I/O for every detector: safetensors only, from a path or any fsspec URL.

Nothing is unpickled, so a weights file from an untrusted bucket cannot run code.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str], dtype: torch.dtype | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    with fsspec.open(str(path), "wb", **(storage_options or {})) as f:
        f.write(save_safetensors(state, metadata={k: str(v) for k, v in metadata.items()}))


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob: 8-byte little-endian header length, then JSON."""
    (header_len,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}


def read_bytes(source: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The whole file at a local path or fsspec URL (``s3://bucket/key`` ...)."""
    try:
        with fsspec.open(source, "rb", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"weights not found: {source}") from None


def load_weights(source: str | bytes, storage_options: dict[str, Any] | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata from a safetensors path or URL, or from the file's bytes."""
    if isinstance(source, bytes):
        data, uri = source, "weights bytes"
    else:
        data, uri = read_bytes(source, storage_options), source
    if len(data) < 8:
        raise ValueError(f"not a safetensors file: {uri}")
    return load_safetensors(data), read_metadata(data)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``state`` strictly into ``model``, casting floating tensors (e.g. fp16 files) to the
    dtype of the model's own tensor; a state dict that does not fit raises ``ValueError``."""
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    reshaped = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        problems = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped))
                    if keys]
        raise ValueError(f"state dict does not fit the model for {source}; " + "; ".join(problems))
    model.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()})
