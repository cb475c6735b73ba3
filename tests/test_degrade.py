"""Degradations: every operation keeps shape and dtype, is seeded and does something; the probes
hold their fixed settings (JPEG 50, a real H.264 round trip, blur, downscale, noise, compound)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from detector.degrade import (
    OPERATIONS,
    PROBES,
    DegradationConfig,
    DegradationEngine,
    apply_probe,
    compression_cascade,
    h264,
    jpeg,
)
from detector.degrade_ops import RESIZING_OPERATIONS, resize_to

EXPECTED_OPERATIONS = [
    "smoothing", "motion_blur", "speckle_noise", "resize", "colour", "gaussian_noise", "jpeg", "chroma_subsampling",
    "colour_banding", "brightness_contrast", "chromatic_aberration", "moire", "glitch", "vignette", "distractor",
]


def textured_image(h: int = 96, w: int = 96, seed: int = 0) -> np.ndarray:
    """Gradients, a ripple texture, a red rectangle and a blue disc (hard colour edges), mild sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    image = np.stack([x / w * 200 + 30, y / h * 180 + 40, 128 + 60 * np.sin(x / 3 + phase) * np.cos(y / 5)], axis=-1)
    top, left = rng.integers(h // 8, h // 3), rng.integers(w // 8, w // 3)
    image[top : top + h // 4, left : left + w // 3] = [220, 40, 60]
    disc = (y - 0.65 * h) ** 2 + (x - 0.65 * w) ** 2 < (0.18 * min(h, w)) ** 2
    image[disc] = [30, 90, 200]
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def high_frequency_energy(image: np.ndarray, radius: float = 0.25) -> float:
    """Spectral energy of the grey image above ``radius`` cycles per pixel."""
    grey = image.astype(np.float64).mean(axis=2)
    # Windowed: the FFT sees the image as periodic, and the jump at its borders would count as detail.
    window = np.outer(np.hanning(grey.shape[0]), np.hanning(grey.shape[1]))
    spectrum = np.abs(np.fft.fft2((grey - grey.mean()) * window)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(grey.shape[0]), np.fft.fftfreq(grey.shape[1]), indexing="ij")
    return float(spectrum[np.hypot(fy, fx) > radius].sum())


IMAGE = textured_image()
ODD_IMAGE = textured_image(61, 83, seed=1)


def test_registry_holds_the_fifteen_operations_in_order():
    assert list(OPERATIONS) == EXPECTED_OPERATIONS
    assert set(OPERATIONS) >= RESIZING_OPERATIONS


@pytest.mark.parametrize("name", EXPECTED_OPERATIONS)
@pytest.mark.parametrize("image", [IMAGE, ODD_IMAGE], ids=["96x96", "61x83"])
def test_operation_keeps_dtype_and_shape(name, image):
    for strength in (0.0, 0.5, 1.0):
        out = OPERATIONS[name](image, strength, np.random.default_rng(3))
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        if name not in RESIZING_OPERATIONS:
            assert out.shape == image.shape
        assert resize_to(out, image.shape[:2]).shape == image.shape


@pytest.mark.parametrize("name", EXPECTED_OPERATIONS)
def test_operation_is_seeded(name):
    op = OPERATIONS[name]
    first = op(IMAGE, 0.6, np.random.default_rng(0))
    assert np.array_equal(first, op(IMAGE, 0.6, np.random.default_rng(0)))
    # Some operations draw only a variant, so one other seed may coincide; five never all do.
    assert any(not np.array_equal(first, op(IMAGE, 0.6, np.random.default_rng(seed))) for seed in range(1, 6))


@pytest.mark.parametrize("name", EXPECTED_OPERATIONS)
def test_operation_changes_the_image_at_full_strength(name):
    out = resize_to(OPERATIONS[name](IMAGE, 1.0, np.random.default_rng(0)), IMAGE.shape[:2])
    assert np.abs(out.astype(np.int16) - IMAGE).mean() > 2.0
    assert psnr(out, IMAGE) < 35


def test_compression_cascade_ends_at_the_input_size_and_is_seeded():
    for seed in range(5):
        out = compression_cascade(ODD_IMAGE, np.random.default_rng(seed))
        assert out.shape == ODD_IMAGE.shape and out.dtype == np.uint8
        assert np.array_equal(out, compression_cascade(ODD_IMAGE, np.random.default_rng(seed)))
        assert psnr(out, ODD_IMAGE) < 40


def test_engine_is_deterministic_per_seed():
    engine = DegradationEngine(DegradationConfig(p_apply=1.0))
    outputs = [engine(ODD_IMAGE, seed) for seed in range(8)]
    for seed, out in enumerate(outputs):
        assert out.shape == ODD_IMAGE.shape and out.dtype == np.uint8
        assert np.array_equal(out, DegradationEngine(DegradationConfig(p_apply=1.0))(ODD_IMAGE, seed))
    assert len({out.tobytes() for out in outputs}) == len(outputs)
    assert all(out.flags.writeable for out in outputs)


def test_engine_with_p_apply_0_returns_an_unchanged_copy():
    engine = DegradationEngine(DegradationConfig(p_apply=0.0))
    for seed in range(5):
        out = engine(IMAGE, seed)
        assert np.array_equal(out, IMAGE) and out is not IMAGE and out.flags.writeable


def test_engine_degrades_about_half_of_the_images_by_default():
    engine = DegradationEngine()
    changed = sum(not np.array_equal(engine(IMAGE, seed), IMAGE) for seed in range(100))
    assert 30 <= changed <= 70


def test_engine_with_every_step_on_keeps_the_size():
    engine = DegradationEngine(DegradationConfig(p_apply=1.0, p_cascade=1.0, p_op=1.0))
    for seed in range(3):
        out = engine(ODD_IMAGE, seed)
        assert out.shape == ODD_IMAGE.shape and out.dtype == np.uint8
        assert psnr(out, ODD_IMAGE) < 30


def test_degrade_batch_matches_single_images():
    engine = DegradationEngine(DegradationConfig(p_apply=1.0))
    images = np.stack([textured_image(64, 64, seed) for seed in range(3)])
    batch = engine.degrade_batch(images, [11, 12, 13])
    assert batch.shape == images.shape and batch.dtype == np.uint8
    for image, seed, out in zip(images, [11, 12, 13], batch):
        assert np.array_equal(out, engine(image, seed))
    with pytest.raises(ValueError):
        engine.degrade_batch(images, [1, 2])


def test_jpeg50_costs_the_expected_psnr():
    at_50 = psnr(IMAGE, jpeg(IMAGE, 50))
    assert 25 < at_50 < 40
    assert psnr(IMAGE, jpeg(IMAGE, 90)) > at_50 + 1
    assert np.array_equal(apply_probe("jpeg50", IMAGE[None])[0], jpeg(IMAGE, 50))


def test_jpeg_is_the_baseline_4_2_0_round_trip():
    buffer = io.BytesIO()
    Image.fromarray(IMAGE).save(buffer, format="JPEG", quality=50, subsampling=2)
    assert np.array_equal(jpeg(IMAGE, 50), np.asarray(Image.open(buffer).convert("RGB")))


def test_blur_removes_high_frequencies():
    blurred = apply_probe("blur", IMAGE[None])[0]
    assert high_frequency_energy(IMAGE) > 50 * high_frequency_energy(blurred)


@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("size", [(64, 64), (63, 95)], ids=["64x64", "63x95"])
def test_h264_probe_round_trips_every_frame(n, size):
    images = np.stack([textured_image(*size, seed) for seed in range(n)])
    out = apply_probe("h264", images)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)
    assert psnr(out, images) > 20


def test_h264_keeps_the_frame_order():
    # A slow pan: similar frames, so x264 predicts between them and reorders B-frames.
    strip = textured_image(64, 160, seed=4)
    frames = np.stack([strip[:, 4 * i : 4 * i + 64] for i in range(12)])
    out = h264(frames)
    errors = np.abs(out[:, None].astype(np.int16) - frames[None]).mean(axis=(2, 3, 4))
    assert np.array_equal(errors.argmin(axis=1), np.arange(len(frames)))


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_keeps_shape_changes_pixels_and_is_fixed(name):
    images = np.stack([textured_image(64, 64, seed) for seed in range(3)])
    out = apply_probe(name, images)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in zip(out, images))
    assert np.array_equal(out, apply_probe(name, images))
    assert apply_probe(name, images[:0]).shape == (0, 64, 64, 3)


def test_probes_are_the_named_set():
    assert list(PROBES) == ["jpeg50", "h264", "blur", "downscale", "noise", "compound"]


def test_unknown_probe_names_the_choices():
    with pytest.raises(ValueError, match="unknown probe 'sharpen'; choose from jpeg50, h264, blur") as error:
        apply_probe("sharpen", IMAGE[None])
    assert all(name in str(error.value) for name in PROBES)


def test_probe_wants_a_batch():
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8"):
        apply_probe("jpeg50", IMAGE)
