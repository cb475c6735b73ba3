"""Explanations of fakescan's detectors, stream by stream (the seed paper's attribution analysis).

- ``explain``: where each stream looks, as Score-CAM (default) or Grad-CAM heatmaps of the
  "fake" score. Heatmaps of clean and degraded crops, side by side (``heatmap_png``), show
  attention drift; ``heatmap_entropy`` measures it (lower: more focused, less drift).
- ``stream_features`` and ``feature_cosine``: how stable each stream's features are under a
  degradation, as the cosine similarity of clean and degraded feature vectors.

Which map each stream explains (its "target layer", the map the CAM weights):

| stream | map | feature vector (classifier input) |
| --- | --- | --- |
| hybrid | EfficientNet ``forward_features`` (7×7 on B0), as it enters the projection to tokens | encoded CLS token |
| texture | the texture head's last convolution (on the DINOv2 patch grid) | its pooled output |
| facial | the facial head's last residual block | its pooled output |
| fusion | the DINOv2 patch-token grid, as it enters the fusion block (no convolution there) | fused CLS token |

The maps are captured with forward hooks during the model's own forward pass, so the score
explained is exactly the stream's logit. The ensemble's texture stream scores whole frames:
``explain`` gives it the same ``pixels`` as the face streams, as scans of crop datasets do.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.cam import grad_cam, score_cam
from detector.ensemble import STREAMS, EnsembleDetector
from detector.heatmaps import heatmap_entropy, heatmap_png, overlay
from detector.hybrid import HybridDetector
from detector.protocol import EXPLAIN_METHODS as METHODS

__all__ = [
    "METHODS", "explain", "feature_cosine", "grad_cam", "heatmap_entropy", "heatmap_png", "overlay", "score_cam",
    "stream_features", "stream_names",
]

Forward = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Stream:
    """One stream as explanations see it."""

    forward: Forward  # pixels → (target map (N, K, h, w) on the logit's path, logit (N,))
    classifier: nn.Module  # its input is the stream's (N, D) feature vector


def stream_names(model: nn.Module) -> tuple[str, ...]:
    """The streams ``explain`` and ``stream_features`` report for this model."""
    if isinstance(model, HybridDetector):
        return ("hybrid",)
    if isinstance(model, EnsembleDetector):
        return STREAMS
    raise _unsupported(model)


def explain(model: nn.Module, pixels: Tensor, method: str = "scorecam", streams: Sequence[str] | None = None,
            top_k: int = 32, batch_size: int = 32) -> dict[str, np.ndarray]:
    """(N, 3, H, W) pixels in [0, 1] → {stream: (N, H, W) float32 heatmap of the "fake" score, in [0, 1]}.

    Score-CAM costs ``top_k`` forward passes per crop and stream; Grad-CAM one forward and one
    backward pass. The model runs in eval mode on its own device; its modes are restored after."""
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of: {', '.join(METHODS)}")
    names = _chosen_streams(model, streams)
    _check_pixels(pixels)
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
    available = _streams(model)
    weight = next(model.parameters())
    parts: dict[str, list[np.ndarray]] = {name: [np.zeros((0, *pixels.shape[-2:]), np.float32)] for name in names}
    with _evaluating(model):
        for start in range(0, len(pixels), batch_size):
            x = pixels[start : start + batch_size].to(weight.device, weight.dtype)
            for name in names:
                forward = available[name].forward
                if method == "gradcam":
                    maps = grad_cam(forward, x)
                else:
                    maps = score_cam(partial(_score_of, forward), partial(_map_of, forward), x, top_k, batch_size)
                parts[name].append(maps.cpu().numpy().astype(np.float32))
    return {name: np.concatenate(parts[name]) for name in names}


@torch.no_grad()
def stream_features(model: nn.Module, pixels: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
    """(N, 3, H, W) pixels in [0, 1] → {stream: (N, D) float CPU tensor}: what each stream's
    classifier receives, from one forward pass of the whole model."""
    _check_pixels(pixels)
    classifiers = {name: stream.classifier for name, stream in _streams(model).items()}
    weight = next(model.parameters())
    parts: dict[str, list[Tensor]] = {name: [] for name in classifiers}
    with _evaluating(model):
        for start in range(0, len(pixels), batch_size):
            with ExitStack() as stack:
                seen = {name: stack.enter_context(_input_of(module)) for name, module in classifiers.items()}
                model(pixels[start : start + batch_size].to(weight.device, weight.dtype))
            for name, captured in seen.items():
                parts[name].append(captured[-1].float().cpu())
    return {name: torch.cat(chunks) if chunks else torch.zeros(0, 0) for name, chunks in parts.items()}


def feature_cosine(clean: Tensor, degraded: Tensor) -> np.ndarray:
    """(N, D) features of clean and of degraded crops → (N,) cosine similarity, row by row
    (1: the degradation left the features' direction unchanged; a zero vector gives 0)."""
    clean, degraded = torch.as_tensor(clean), torch.as_tensor(degraded)
    if clean.ndim != 2 or clean.shape != degraded.shape:
        raise ValueError(f"need two (N, D) feature arrays of one shape, got {tuple(clean.shape)} and "
                         f"{tuple(degraded.shape)}")
    return F.cosine_similarity(clean.double(), degraded.double(), dim=1).numpy()


def _streams(model: nn.Module) -> dict[str, Stream]:
    if isinstance(model, HybridDetector):
        tokens = partial(_token_grid_into, model.proj, model.grid, prefix=0)
        return {"hybrid": Stream(_forward(tokens, model), model.head)}
    if isinstance(model, EnsembleDetector):
        def facial_logit(faces: Tensor) -> Tensor:  # score_faces without CLIP, which only fusion needs
            return model.facial_head(model.token_map(model.backbone_tokens(faces)))

        dino_grid = partial(_token_grid_into, model.fusion_head.dino_proj, model.grid, prefix=model.prefix)
        return {
            "texture": Stream(_forward(partial(_output_of, model.texture_head.conv), model.score_frames),
                              model.texture_head.fc),
            "facial": Stream(_forward(partial(_output_of, model.facial_head.blocks), facial_logit),
                             model.facial_head.fc),
            "fusion": Stream(_forward(dino_grid, lambda faces: model.score_faces(faces)["fusion"]),
                             model.fusion_head.fc),
        }
    raise _unsupported(model)


def _unsupported(model: nn.Module) -> TypeError:
    return TypeError(f"explanations support HybridDetector and EnsembleDetector, not {type(model).__name__}")


def _score_of(forward: Forward, pixels: Tensor) -> Tensor:
    """Score-CAM's class score for one stream: the probability of "fake"."""
    return torch.sigmoid(forward(pixels)[1])


def _map_of(forward: Forward, pixels: Tensor) -> Tensor:
    """Score-CAM's activations for one stream: its target map."""
    return forward(pixels)[0]


def _forward(capture: Callable[[], AbstractContextManager[list[Tensor]]], logit: Callable[[Tensor], Tensor]) -> Forward:
    def forward(pixels: Tensor) -> tuple[Tensor, Tensor]:
        with capture() as seen:
            logits = logit(pixels)
        return seen[-1], logits

    return forward


@contextmanager
def _output_of(module: nn.Module) -> Iterator[list[Tensor]]:
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda _module, _args, output: seen.append(output))
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def _input_of(module: nn.Module) -> Iterator[list[Tensor]]:
    seen: list[Tensor] = []
    handle = module.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def _token_grid_into(module: nn.Module, grid: tuple[int, int], prefix: int) -> Iterator[list[Tensor]]:
    """Record the patch tokens entering ``module`` (B, prefix + h·w, D) as a (B, D, h, w) map, and
    hand the module tokens rebuilt from that map: equal values, but now the logit depends on
    the map itself, so Grad-CAM's gradient reaches it."""
    seen: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        tokens = args[0]
        patch_map = tokens[:, prefix:].transpose(1, 2).reshape(len(tokens), -1, *grid)
        seen.append(patch_map)
        return (torch.cat([tokens[:, :prefix], patch_map.flatten(2).transpose(1, 2)], dim=1), *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, running BatchNorm statistics) for the block; then every module's own
    mode back, as it was (a frozen part may sit in eval inside a model that trains)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _chosen_streams(model: nn.Module, streams: Sequence[str] | None) -> tuple[str, ...]:
    names = stream_names(model)
    if streams is None:
        return names
    if isinstance(streams, str):
        streams = (streams,)
    unknown = [name for name in streams if name not in names]
    if unknown:
        raise ValueError(f"unknown stream {unknown[0]!r} for {type(model).__name__}; it has: {', '.join(names)}")
    return tuple(dict.fromkeys(streams))


def _check_pixels(pixels: Tensor) -> None:
    if not isinstance(pixels, Tensor) or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be an (N, 3, H, W) tensor in [0, 1], got "
                         f"{type(pixels).__name__} {tuple(getattr(pixels, 'shape', ()))}")
