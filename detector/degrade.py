"""Image degradations, on (H, W, 3) uint8 arrays."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through a baseline JPEG at ``quality`` (1–95), with 4:2:0 chroma as cameras write it."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality), subsampling=2)
    return np.asarray(Image.open(buffer).convert("RGB"))
