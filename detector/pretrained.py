"""Published DINOv2 (timm) and CLIP (open_clip) checkpoints, loaded offline from a path or any fsspec URL.

The key conversions and position-embedding resampling are timm's and open_clip's own, so a file that
those libraries would load with ``pretrained=True`` loads here too, just without the hub download.
``.pth``/``.bin``/``.pt`` files are read with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""
from __future__ import annotations

import io
from typing import Any

import torch
from open_clip.convert import convert_state_dict
from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from detector.weights import load_state, read_bytes

State = dict[str, torch.Tensor]

# Wrappers that training scripts put around the state dict (timm: "model"/"state_dict", open_clip: "state_dict").
WRAPPER_KEYS = ("state_dict", "model")
DDP_PREFIX = "module."
# open_clip drops this one because transformers>=4.31 no longer stores it on HF text towers.
STALE_POSITION_IDS = "text.transformer.embeddings.position_ids"


def is_safetensors(data: bytes) -> bool:
    """A safetensors file opens with an 8-byte header length and then the JSON header itself."""
    return len(data) > 8 and data[8:9] == b"{"


def load_torch_file(data: bytes, source: str) -> Any:
    # weights_only refuses any pickled object that is not a tensor, a container or a primitive.
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # junk bytes fail anywhere in the unpickler, with any exception type
        lines = str(e).strip().splitlines()
        raise ValueError(f"not a safetensors or tensors-only torch file: {source} "
                         f"({lines[0] if lines else type(e).__name__})") from e


def unwrap_state(checkpoint: Any, source: str) -> State:
    """The tensor dict inside a checkpoint, without ``{"state_dict": ...}`` wrappers or DDP prefixes."""
    while isinstance(checkpoint, dict):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if wrapper is None:
            break
        checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"no state dict in {source}")
    not_tensors = sorted(str(k) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"state dict in {source} holds non-tensor entries: {', '.join(not_tensors[:3])}")
    if all(k.startswith(DDP_PREFIX) for k in checkpoint):
        checkpoint = {k[len(DDP_PREFIX):]: v for k, v in checkpoint.items()}
    return checkpoint


def read_state(source: str, storage_options: dict[str, Any] | None = None) -> State:
    """Tensors of a safetensors or torch checkpoint at ``source``, format told by content, not by suffix."""
    data = read_bytes(source, storage_options)
    if is_safetensors(data):
        try:
            return unwrap_state(load_safetensors(data), source)
        except SafetensorError as e:
            raise ValueError(f"corrupt safetensors file: {source} ({e})") from None
    return unwrap_state(load_torch_file(data, source), source)


def drop_absent_head(state: State, model: nn.Module) -> State:
    """Without classifier keys when the model has none (``num_classes=0``)."""
    if any(k.startswith("head.") for k in model.state_dict()):
        return state
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def load_timm_checkpoint(backbone: nn.Module, source: str, storage_options: dict[str, Any] | None = None) -> None:
    """Load a timm checkpoint of the same architecture (e.g. ``efficientnet_b0``'s ImageNet
    ``model.safetensors``) into a backbone built with ``num_classes=0``: its classifier is left out.
    Any other key or shape that does not fit raises ``ValueError`` naming ``source``."""
    ours = backbone.state_dict()
    state = {k: v for k, v in read_state(source, storage_options).items()
             if k in ours or not k.startswith("classifier.")}
    load_state(backbone, state, source)


def load_dinov2_checkpoint(backbone: VisionTransformer, source: str,
                           storage_options: dict[str, Any] | None = None) -> None:
    """Load a DINOv2 checkpoint (timm's ``model.safetensors`` or Meta's original keys) into ``backbone``.

    timm's ``checkpoint_filter_fn`` converts Meta's keys and resamples ``pos_embed`` from the trained
    grid (37x37 at 518 px) to the backbone's, as ``timm.create_model(pretrained=True, img_size=...)``
    does. Any key or shape that still does not fit raises ``ValueError`` naming ``source``.
    """
    state = checkpoint_filter_fn(read_state(source, storage_options), backbone)
    load_state(backbone, drop_absent_head(state, backbone), source)


def fit_scalar_shape(state: State, model: nn.Module, key: str) -> None:
    # Checkpoints differ in storing logit_scale/logit_bias as a 0-d or a 1-element tensor.
    own = getattr(model, key, None)
    if key in state and own is not None and state[key].ndim != own.ndim:
        state[key] = state[key].reshape(own.shape)


def text_pos_embed_width_fits(state: State, clip: nn.Module) -> bool:
    # open_clip asserts on a width mismatch; leaving the tensor as is lets load_state name the bad shape.
    key = "positional_embedding" if "positional_embedding" in state else "text.positional_embedding"
    own = getattr(clip, "positional_embedding", None)
    if own is None:
        own = getattr(getattr(clip, "text", None), "positional_embedding", None)
    return key in state and own is not None and state[key].ndim == 2 and state[key].shape[1] == own.shape[1]


def convert_clip_state(state: State, clip: nn.Module) -> State:
    """open_clip's ``load_checkpoint`` conversions, except that a missing ``logit_bias`` stays missing."""
    state = convert_state_dict(clip, state)
    if "positional_embedding" in state and not hasattr(clip, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    fit_scalar_shape(state, clip, "logit_scale")
    fit_scalar_shape(state, clip, "logit_bias")
    if STALE_POSITION_IDS not in clip.state_dict():
        state.pop(STALE_POSITION_IDS, None)
    resize_pos_embed(state, clip)
    if text_pos_embed_width_fits(state, clip):
        resize_text_pos_embed(state, clip)
    return state


def load_clip_checkpoint(clip: nn.Module, source: str, storage_options: dict[str, Any] | None = None) -> None:
    """Load an open_clip checkpoint (``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``,
    optionally ``{"state_dict": {"module.<key>": ...}}``) strictly into an open_clip ``CLIP``/``CustomTextCLIP``.
    """
    state = convert_clip_state(dict(read_state(source, storage_options)), clip)
    load_state(clip, state, source)
