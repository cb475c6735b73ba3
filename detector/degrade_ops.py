"""The fifteen training degradations, each ``op(image, strength, rng) -> image`` on (H, W, 3) uint8 RGB.

``strength`` in [0, 1] maps onto each operation's range (0: mild, 1: the harshest setting);
``rng`` draws everything else (which variant, direction, position), so a seeded Generator
always gives the same result. Only ``resize`` changes the size; ``detector.degrade`` scales
the result back to the input size at the end.
"""
from __future__ import annotations

import io
import string
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

Operation = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
T = TypeVar("T")

Resample = Image.Resampling
SMOOTH_RESAMPLERS = (Resample.BILINEAR, Resample.BICUBIC, Resample.LANCZOS, Resample.BOX)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
TEXT_CHARACTERS = string.ascii_letters + string.digits + "@#&!?.:-_ "


# --- primitives ---------------------------------------------------------------------------------

def encode_jpeg(image: np.ndarray, quality: int, subsampling: int = 2) -> np.ndarray:
    """JPEG round trip; ``subsampling`` is PIL's: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality), subsampling=subsampling)
    return np.asarray(Image.open(buffer).convert("RGB"))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through a baseline JPEG at ``quality`` (1–95), with 4:2:0 chroma as cameras write it."""
    return encode_jpeg(image, quality, subsampling=2)


def lerp(low: float, high: float, t: float) -> float:
    return low + (high - low) * t


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def choose(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def random_sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def scaled_size(size: tuple[int, ...], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def resize_to(image: np.ndarray, size: tuple[int, int], resample: Resample = Resample.BILINEAR) -> np.ndarray:
    """``image`` at (height, width) ``size``; the array itself when it already has that size."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), resample))


def pil_filter(image: np.ndarray, kernel: ImageFilter.Filter) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(kernel))


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Same-size convolution of every channel with an odd-sized 2-D ``kernel``, edges reflected."""
    kh, kw = kernel.shape
    h, w = image.shape[:2]
    padded = np.pad(image.astype(np.float32), ((kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), mode="reflect")
    # Through the FFT: a motion or anisotropic kernel is not separable and can be 30+ taps wide.
    # Zero-padding to a 5-smooth size keeps it fast and, being larger, never wraps around.
    size = (fast_length(padded.shape[0]), fast_length(padded.shape[1]))
    spectrum = np.fft.rfft2(padded, s=size, axes=(0, 1)) * np.fft.rfft2(kernel, s=size)[..., None]
    full = np.fft.irfft2(spectrum, s=size, axes=(0, 1))
    return to_uint8(full[kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w])


def fast_length(n: int) -> int:
    """The smallest m >= n with no prime factor above 5."""
    m = n
    while True:
        rest = m
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return m
        m += 1


def gaussian_kernel(sigma_major: float, sigma_minor: float, angle: float) -> np.ndarray:
    """Normalised 2-D Gaussian with the given standard deviations, its major axis at ``angle`` radians."""
    radius = max(1, int(np.ceil(3 * sigma_major)))
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float32)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    kernel = np.exp(-0.5 * ((u / sigma_major) ** 2 + (v / sigma_minor) ** 2))
    return kernel / kernel.sum()


def line_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised kernel of a straight line ``length`` pixels long through the centre, at ``angle`` radians."""
    radius = max(1, int(np.ceil(length / 2)))
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1), np.float32)
    t = np.linspace(-length / 2, length / 2, max(2, int(4 * length)))
    rows = np.clip(np.rint(radius + t * np.sin(angle)).astype(int), 0, 2 * radius)
    cols = np.clip(np.rint(radius + t * np.cos(angle)).astype(int), 0, 2 * radius)
    np.add.at(kernel, (rows, cols), 1.0)
    return kernel / kernel.sum()


def luminance(x: np.ndarray) -> np.ndarray:
    return x @ LUMA


@lru_cache(maxsize=64)
def font_of_size(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


# --- operations ---------------------------------------------------------------------------------

def smoothing(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Anisotropic or isotropic Gaussian, or box blur (sigma 0.5–3 px): defocus, beauty filters, denoisers."""
    sigma = lerp(0.5, 3.0, strength)
    kind = rng.integers(3)
    if kind == 0:
        return convolve(image, gaussian_kernel(sigma, sigma * rng.uniform(0.2, 1.0), rng.uniform(0, np.pi)))
    if kind == 1:
        return pil_filter(image, ImageFilter.GaussianBlur(sigma))
    return pil_filter(image, ImageFilter.BoxBlur(sigma))


def motion_blur(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur, 3–17 px long in any direction: camera shake or fast movement."""
    return convolve(image, line_kernel(lerp(3.0, 17.0, strength), rng.uniform(0, np.pi)))


def speckle_noise(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative speckle, Poisson shot noise or salt-and-pepper: low light, dead pixels."""
    x = image.astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        return to_uint8(x * (1 + rng.normal(0, lerp(0.04, 0.35, strength), x.shape)))
    if kind == 1:
        photons = 10 ** lerp(3.0, 1.0, strength)  # per full-scale pixel: fewer photons, more noise
        return to_uint8(rng.poisson(x * (photons / 255)) * (255 / photons))
    out = image.copy()
    hit = rng.random(image.shape[:2]) < lerp(0.005, 0.08, strength)
    out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)[:, None]
    return out


def resize(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Downscale to 0.9–0.2× (nearest-neighbour with p 0.2) and leave it small: a low-resolution source."""
    resample = Resample.NEAREST if rng.random() < 0.2 else choose(rng, SMOOTH_RESAMPLERS)
    return resize_to(image, scaled_size(image.shape, lerp(0.9, 0.2, strength)), resample)


def colour(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Partial-to-full grayscale, a washed-out fade, or a colour cast (white balance gone wrong)."""
    x = image.astype(np.float32)
    grey = luminance(x)[..., None]
    kind = rng.integers(3)
    if kind == 0:
        return to_uint8(x + (grey - x) * lerp(0.3, 1.0, strength))
    if kind == 1:
        amount = lerp(0.1, 0.6, strength)
        faded = x + (grey - x) * amount
        return to_uint8(faded * (1 - amount / 2) + 255 * rng.uniform(0.6, 1.0) * amount / 2)
    direction = rng.normal(size=3)
    gain = 1 + direction / np.linalg.norm(direction) * lerp(0.05, 0.4, strength)
    return to_uint8(x * gain.astype(np.float32))


def gaussian_noise(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, sigma 2–30 grey levels; luminance-only (same in R, G, B) with p 0.4."""
    shape = (*image.shape[:2], 1) if rng.random() < 0.4 else image.shape
    return to_uint8(image.astype(np.float32) + rng.normal(0, lerp(2.0, 30.0, strength), shape))


def jpeg_compression(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """JPEG at quality 90–10, chroma 4:2:0 (p 0.7) or 4:4:4."""
    return encode_jpeg(image, round(lerp(90, 10, strength)), subsampling=2 if rng.random() < 0.7 else 0)


def chroma_subsampling(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Chroma averaged over 2×2 to 4×4 blocks and scaled back up, as video codecs store colour."""
    h, w = image.shape[:2]
    factor = round(lerp(2, 4, strength))
    small = (-(-h // factor), -(-w // factor))
    upsample = choose(rng, (Resample.NEAREST, Resample.BILINEAR))
    y, cb, cr = Image.fromarray(image).convert("YCbCr").split()
    cb, cr = (Image.fromarray(resize_to(resize_to(np.asarray(c), small, Resample.BOX), (h, w), upsample))
              for c in (cb, cr))
    return np.asarray(Image.merge("YCbCr", (y, cb, cr)).convert("RGB"))


def colour_banding(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Each channel quantised to 32–4 levels, dithered with p 0.5: low bit depth, GIF-like posterisation."""
    step = 255 / (round(lerp(32, 4, strength)) - 1)
    x = image.astype(np.float32)
    if rng.random() < 0.5:
        x = x + rng.uniform(-step / 2, step / 2, x.shape).astype(np.float32)
    return to_uint8(np.rint(x / step) * step)


def brightness_contrast(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness shifted by ±10–90 grey levels and contrast scaled by e^±(0.1–1): under/over exposure."""
    x = image.astype(np.float32)
    contrast = np.exp(random_sign(rng) * lerp(0.1, 1.0, strength))
    brightness = random_sign(rng) * lerp(10, 90, strength)
    mean = x.mean()
    return to_uint8((x - mean) * contrast + mean + brightness)


def chromatic_aberration(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Red or blue magnified about the centre, 0.5–4 px at the corners: the colour fringes of a cheap lens."""
    h, w = image.shape[:2]
    cx, cy = w / 2, h / 2
    scale = 1 + lerp(0.5, 4.0, strength) / max(np.hypot(cx, cy), 1.0)
    # Magnify only (never shrink) so that every output pixel has a source inside the image.
    data = (1 / scale, 0.0, cx - cx / scale, 0.0, 1 / scale, cy - cy / scale)
    out = image.copy()
    channel = 0 if rng.random() < 0.5 else 2
    out[..., channel] = np.asarray(Image.fromarray(image[..., channel]).transform(
        (w, h), Image.Transform.AFFINE, data, resample=Resample.BILINEAR))
    return out


def moire(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Two fine gratings, phase-shifted per channel, modulating 4–25% of the intensity: a filmed screen."""
    h, w = image.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frequency, angle = rng.uniform(0.15, 0.45), rng.uniform(0, np.pi)
    # The second grating is slightly detuned and rotated: the product beats at a low frequency.
    pattern = grating(x, y, frequency, angle, rng.uniform(0, 2 * np.pi, 3)) * grating(
        x, y, frequency * rng.uniform(1.03, 1.12), angle + rng.uniform(-0.15, 0.15), rng.uniform(0, 2 * np.pi, 3))
    return to_uint8(image.astype(np.float32) * (1 + lerp(0.04, 0.25, strength) * pattern))


def grating(x: np.ndarray, y: np.ndarray, frequency: float, angle: float, phases: np.ndarray) -> np.ndarray:
    """(H, W, 3) cosine of ``frequency`` cycles per pixel across direction ``angle``, one phase per channel."""
    ramp = 2 * np.pi * frequency * (x * np.cos(angle) + y * np.sin(angle))
    return np.cos(ramp[..., None] + phases.astype(np.float32))


def glitch(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """1–6 bands of macroblock rows, shifted sideways, smeared from the row above or blockified and tinted,
    as a damaged H.264 stream shows them."""
    out = image.copy()
    h, w = image.shape[:2]
    block = max(2, min(h, w) // 16)  # a macroblock, relative to the crop size
    for _ in range(1 + int(rng.integers(0, round(lerp(1, 5, strength)) + 1))):
        top = block * int(rng.integers(0, max(1, h // block)))
        rows = slice(top, min(h, top + block * int(rng.integers(1, 4))))
        effect = rng.integers(3)
        if effect == 0:
            shift = round(random_sign(rng) * lerp(0.05, 0.4, strength) * w)
            out[rows] = np.roll(out[rows], shift, axis=1)
        elif effect == 1:
            out[rows] = out[max(top - 1, 0)]
        else:
            out[rows] = blockify(out[rows], block, rng.normal(0, lerp(5, 40, strength), 3))
    return out


def blockify(band: np.ndarray, block: int, tint: np.ndarray) -> np.ndarray:
    """Each ``block``-wide tile replaced by its mean colour plus ``tint``: a macroblock with lost residuals."""
    h, w = band.shape[:2]
    means = resize_to(band, (max(1, h // block), max(1, w // block)), Resample.BOX)
    return to_uint8(resize_to(means, (h, w), Resample.NEAREST).astype(np.float32) + tint)


def vignette(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Corners darkened by 20–80%, around a slightly off-centre point."""
    h, w = image.shape[:2]
    cy, cx = h / 2 * (1 + rng.normal(0, 0.1)), w / 2 * (1 + rng.normal(0, 0.1))
    y, x = np.ogrid[0:h, 0:w]
    radius = np.hypot((y - cy) / (h / 2), (x - cx) / (w / 2)) / np.sqrt(2)
    falloff = 1 - lerp(0.2, 0.8, strength) * np.clip(radius, 0, 1) ** rng.uniform(1.5, 3.0)
    return to_uint8(image.astype(np.float32) * falloff[..., None].astype(np.float32))


def distractor(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A text overlay (caption, watermark) or a pasted patch (sticker, occluder), 8–40% of the image side."""
    return text_overlay(image, strength, rng) if rng.random() < 0.5 else pasted_patch(image, strength, rng)


def text_overlay(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    size = max(6, round(min(h, w) * lerp(0.08, 0.3, strength)))
    text = "".join(choose(rng, TEXT_CHARACTERS) for _ in range(int(rng.integers(3, 12))))
    position = (int(rng.uniform(0, 0.7) * w), int(rng.uniform(0, 0.85) * h))
    fill = (*rng.integers(0, 256, 3).tolist(), round(255 * lerp(0.4, 1.0, strength)))
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(position, text, fill=fill, font=font_of_size(size))
    return np.asarray(Image.alpha_composite(Image.fromarray(image).convert("RGBA"), layer).convert("RGB"))


def pasted_patch(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A rectangle or ellipse of flat colour, noise, or another part of the image, pasted somewhere."""
    h, w = image.shape[:2]
    side = lerp(0.1, 0.4, strength)
    ph = int(np.clip(round(h * side * rng.uniform(0.6, 1.4)), 2, h))
    pw = int(np.clip(round(w * side * rng.uniform(0.6, 1.4)), 2, w))
    kind = rng.integers(3)
    if kind == 0:
        patch = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (ph, pw, 3))
    elif kind == 1:
        patch = rng.integers(0, 256, (ph, pw, 3), dtype=np.uint8)
    else:
        top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = image[top : top + ph, left : left + pw].copy()
    shape = Image.new("L", (pw, ph), 0)
    draw = ImageDraw.Draw(shape)
    (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([0, 0, pw - 1, ph - 1], fill=255)
    mask = np.asarray(shape) > 0
    out = image.copy()
    top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    out[top : top + ph, left : left + pw][mask] = patch[mask]
    return out


OPERATIONS: dict[str, Operation] = {
    "smoothing": smoothing,
    "motion_blur": motion_blur,
    "speckle_noise": speckle_noise,
    "resize": resize,
    "colour": colour,
    "gaussian_noise": gaussian_noise,
    "jpeg": jpeg_compression,
    "chroma_subsampling": chroma_subsampling,
    "colour_banding": colour_banding,
    "brightness_contrast": brightness_contrast,
    "chromatic_aberration": chromatic_aberration,
    "moire": moire,
    "glitch": glitch,
    "vignette": vignette,
    "distractor": distractor,
}
RESIZING_OPERATIONS = frozenset({"resize"})  # the only ones whose output size differs from the input's
