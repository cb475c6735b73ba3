"""Image degradations on (H, W, 3) uint8 RGB: the training engine and the fixed evaluation probes.

Training (``DegradationEngine``), as in the design doc: half of the images are degraded. Of
those, 30% first go through a JPEG/resize ``compression_cascade``; then the fifteen
``OPERATIONS`` run in random order, each with p 0.3 and a Beta(1.2, 1.2) strength; the result
is scaled back to the input size. One seed fixes every draw, so a sample degrades the same way
wherever and whenever it is loaded.

Evaluation (``PROBES``) applies fixed settings to (N, H, W, 3) batches, among them JPEG 50 and
a real H.264 round trip through libx264.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageFilter

from detector.degrade_ops import (
    OPERATIONS,
    SMOOTH_RESAMPLERS,
    Operation,
    Resample,
    choose,
    jpeg,
    resize_to,
    scaled_size,
    to_uint8,
)

__all__ = [
    "OPERATIONS", "PROBES", "DegradationConfig", "DegradationEngine", "apply_probe", "compression_cascade",
    "h264", "jpeg",
]

Probe = Callable[[np.ndarray], np.ndarray]
PROBE_SEED = 0


def compression_cascade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1–5 cycles of JPEG (quality 10–95) then a resize to 0.1–1× the input size (nearest-neighbour
    with p 0.2), as an image re-shared across platforms; ends at the input size."""
    h, w = image.shape[:2]
    out = image
    for _ in range(int(rng.integers(1, 6))):
        out = jpeg(out, int(rng.integers(10, 96)))
        resample = Resample.NEAREST if rng.random() < 0.2 else choose(rng, SMOOTH_RESAMPLERS)
        # Scaled from the input size, not the current one: five cycles must not shrink to a pixel.
        out = resize_to(out, scaled_size((h, w), rng.uniform(0.1, 1.0)), resample)
    return resize_to(out, (h, w))


@dataclass(frozen=True)
class DegradationConfig:
    p_apply: float = 0.5  # chance that an image is degraded at all
    p_cascade: float = 0.3  # chance of the compression cascade, given that it is degraded
    p_op: float = 0.3  # chance of each operation, given that it is degraded
    beta: tuple[float, float] = (1.2, 1.2)  # Beta(a, b) that each operation's strength is drawn from


class DegradationEngine:
    """``engine(image, seed)``: the design doc's random degradation, the same for the same (image, seed)."""

    def __init__(self, config: DegradationConfig = DegradationConfig(),
                 operations: Mapping[str, Operation] = OPERATIONS) -> None:
        self.config = config
        self.operations = list(operations.values())

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        check_image(image)
        rng = np.random.default_rng(seed)
        if rng.random() >= self.config.p_apply:
            return image.copy()
        return self.degrade(image, rng)

    def degrade(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Always degrade: the cascade (p_cascade), then each operation (p_op) in random order, then resize back."""
        out = compression_cascade(image, rng) if rng.random() < self.config.p_cascade else image
        for index in rng.permutation(len(self.operations)):
            if rng.random() < self.config.p_op:
                out = self.operations[index](out, float(rng.beta(*self.config.beta)), rng)
        out = resize_to(out, image.shape[:2], choose(rng, (Resample.BILINEAR, Resample.BICUBIC)))
        # A fresh, writable array: PIL-backed arrays are read-only, and the input must never be aliased.
        return out.copy() if out is image or not out.flags.writeable else out

    def degrade_batch(self, images: np.ndarray, seeds: Sequence[int]) -> np.ndarray:
        """(N, H, W, 3) uint8 with one seed per image."""
        check_batch(images)
        if len(seeds) != len(images):
            raise ValueError(f"{len(images)} images but {len(seeds)} seeds")
        return map_images(lambda image, i: self(image, int(seeds[i])), images)


def check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")


def check_batch(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected an (N, H, W, 3) uint8 batch, got {images.shape} {images.dtype}")


def map_images(fn: Callable[[np.ndarray, int], np.ndarray], images: np.ndarray) -> np.ndarray:
    """``fn(image, index)`` over a batch whose images keep their size; an empty batch stays empty."""
    if len(images) == 0:
        return images.copy()
    return np.stack([fn(image, i) for i, image in enumerate(images)])


# --- H.264 round trip ---------------------------------------------------------------------------

def h264(images: np.ndarray, crf: int = 28, preset: str = "veryfast") -> np.ndarray:
    """The N images encoded as N frames of one libx264 yuv420p video in memory and decoded back, in order."""
    check_batch(images)
    n, h, w = images.shape[:3]
    if n == 0:
        return images.copy()
    # 4:2:0 needs even sizes: pad by repeating the last row/column, crop it off after decoding.
    padded = np.pad(images, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    frames = decode_frames(encode_h264(padded, crf, preset))
    if len(frames) != n:
        raise RuntimeError(f"H.264 round trip returned {len(frames)} frames for {n}")
    return np.stack(frames)[:, :h, :w]


def encode_h264(frames: np.ndarray, crf: int, preset: str, fps: int = 25) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        # MB-tree off: with it, this libx264 build gives run-to-run different output for the same
        # frames (measured), and a fixed evaluation setting must not change between runs.
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        # x264 holds frames back for lookahead and B-frames: flushing hands out the rest.
        container.mux(stream.encode(None))
    return buffer.getvalue()


def decode_frames(data: bytes) -> list[np.ndarray]:
    """Every frame in presentation order, as (H, W, 3) uint8 RGB."""
    with av.open(io.BytesIO(data), "r") as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# --- evaluation probes --------------------------------------------------------------------------

def probe_jpeg50(images: np.ndarray) -> np.ndarray:
    return map_images(lambda image, _: jpeg(image, 50), images)


def probe_h264(images: np.ndarray) -> np.ndarray:
    return h264(images, crf=28, preset="veryfast")


def probe_blur(images: np.ndarray) -> np.ndarray:
    blur = ImageFilter.GaussianBlur(2.0)
    return map_images(lambda image, _: np.asarray(Image.fromarray(image).filter(blur)), images)


def probe_downscale(images: np.ndarray) -> np.ndarray:
    def down_up(image: np.ndarray, _: int) -> np.ndarray:
        return resize_to(resize_to(image, scaled_size(image.shape, 0.25)), image.shape[:2])

    return map_images(down_up, images)


def probe_noise(images: np.ndarray) -> np.ndarray:
    def add_noise(image: np.ndarray, index: int) -> np.ndarray:
        rng = np.random.default_rng((PROBE_SEED, index))
        return to_uint8(image.astype(np.float32) + rng.normal(0, 10.0, image.shape))

    return map_images(add_noise, images)


def probe_compound(images: np.ndarray) -> np.ndarray:
    engine = DegradationEngine(DegradationConfig(p_apply=1.0))
    return engine.degrade_batch(images, [PROBE_SEED + i for i in range(len(images))])


# Fixed settings, (N, H, W, 3) uint8 -> (N, H, W, 3) uint8; random ones are seeded by the image's
# index in the batch, so the same batch always gets the same result.
PROBES: dict[str, Probe] = {
    "jpeg50": probe_jpeg50,
    "h264": probe_h264,
    "blur": probe_blur,
    "downscale": probe_downscale,
    "noise": probe_noise,
    "compound": probe_compound,
}


def apply_probe(name: str, images: np.ndarray) -> np.ndarray:
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; choose from {', '.join(PROBES)}")
    check_batch(images)
    return PROBES[name](images)
