"""What to do with a heatmap once there is one: measure how spread it is, and draw it.

``heatmap_entropy`` is the seed paper's "attention entropy": the Shannon entropy of a
heatmap read as a spatial probability distribution. A map focused on one cell has entropy 0;
a flat one has the maximum, log(grid²) (5.28 nats on the default 14×14 grid). Under
degradation a detector whose attention drifts into the background spreads its map, so its
entropy rises. Maps are first area-resampled to ``grid``×``grid`` cells, so that detectors
with different feature resolutions (7×7, 8×8, 16×16) and crop sizes compare on one scale;
figures are only comparable at the same ``grid``.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

# A jet-like map, dark blue (cold) through cyan, yellow to dark red (hot): (position, R, G, B).
_COLOURS = np.array([
    (0.0, 0.0, 0.0, 0.5), (0.125, 0.0, 0.0, 1.0), (0.375, 0.0, 1.0, 1.0), (0.625, 1.0, 1.0, 0.0),
    (0.875, 1.0, 0.0, 0.0), (1.0, 0.5, 0.0, 0.0),
])


def heatmap_entropy(heatmaps: np.ndarray, grid: int = 14) -> np.ndarray:
    """(N, H, W) non-negative heatmaps → (N,) entropy in nats of each, area-resampled to grid×grid.

    An all-zero map (every channel scored alike, see ``detector.cam``) has no spatial
    preference and counts as flat: log(grid²)."""
    maps = np.asarray(heatmaps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"heatmaps must be (N, H, W), got shape {maps.shape}")
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    if np.any(maps < 0) or not np.all(np.isfinite(maps)):
        raise ValueError("heatmaps must be finite and non-negative")
    cells = np.einsum("gh,nhw,kw->ngk", _area_weights(maps.shape[1], grid), maps, _area_weights(maps.shape[2], grid))
    totals = cells.sum(axis=(1, 2), keepdims=True)
    p = np.divide(cells, totals, out=np.full_like(cells, 1.0 / grid**2), where=totals > 0)
    log_p = np.log(p, out=np.zeros_like(p), where=p > 0)  # 0·log 0 = 0
    return -(p * log_p).sum(axis=(1, 2))


def _area_weights(size: int, cells: int) -> np.ndarray:
    """(cells, size) matrix whose row i averages the pixels under cell i, weighting each pixel by
    the fraction of it the cell covers: exact area resampling, up or down, for any sizes."""
    edges = np.arange(cells + 1) * (size / cells)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] → (H, W, 3) uint8 colours, cold to hot."""
    values = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, 1.0)
    rgb = [np.interp(values, _COLOURS[:, 0], _COLOURS[:, channel]) for channel in (1, 2, 3)]
    return np.round(np.stack(rgb, axis=-1) * 255).astype(np.uint8)


def overlay(crop: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 crop + (h, w) heatmap in [0, 1] → (H, W, 3) uint8: the colour-mapped heatmap,
    bilinearly resized to the crop, blended over it with opacity ``alpha``."""
    _check_crop(crop)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be (h, w), got shape {heatmap.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = crop.shape[:2]
    resized = np.asarray(Image.fromarray(heatmap).resize((width, height), Image.Resampling.BILINEAR))
    blended = (1.0 - alpha) * crop.astype(np.float32) + alpha * colourise(resized).astype(np.float32)
    return np.round(blended).astype(np.uint8)


def heatmap_png(crop: np.ndarray, heatmap: np.ndarray) -> bytes:
    """PNG of the crop and its overlay side by side: (H, 2W) pixels."""
    side_by_side = np.concatenate([crop, overlay(crop, heatmap)], axis=1)
    buffer = io.BytesIO()
    Image.fromarray(side_by_side).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_crop(crop: np.ndarray) -> None:
    if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        shape = getattr(crop, "shape", None)
        raise ValueError(f"crop must be an (H, W, 3) uint8 array, got {type(crop).__name__} {shape} "
                         f"{getattr(crop, 'dtype', '')}".rstrip())
