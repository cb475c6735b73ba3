"""Pseudo-fakes made from real face crops, so training needs no downloaded deepfakes.

- ``self_blend``: the face is blended onto itself after small colour, sharpness and
  geometric changes, through a soft mask around the face (the idea of self-blended
  images, Shiohara & Yamasaki, CVPR 2022, reimplemented from the paper's description).
  The result keeps the identity but carries the traces every face swap leaves: a
  blending boundary and a colour/frequency mismatch between face and surroundings.
- ``landmark_swap``: another real face, aligned onto this one by the similarity
  transform that best maps its five MTCNN landmarks onto this face's, colour-matched
  inside the mask and blended in.

Both take (H, W, 3) uint8 crops, landmarks as (5, 2) (x, y) crop pixels in MTCNN's
order (left eye, right eye, nose, left mouth corner, right mouth corner), and a numpy
Generator, so that a fixed seed gives the same fake.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)


def face_mask(landmarks: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A soft (H, W) float32 mask in [0, 1]: an ellipse around the landmarks, jittered, feathered."""
    h, w = size
    eyes = landmarks[:2].mean(axis=0)
    mouth = landmarks[3:].mean(axis=0)
    eye_span = max(float(np.linalg.norm(landmarks[1] - landmarks[0])), 4.0)
    eye_to_mouth = max(float(np.linalg.norm(mouth - eyes)), 4.0)
    centre = (eyes + mouth) / 2 + rng.normal(0, 0.03, 2) * eye_span
    half_width = eye_span * rng.uniform(0.85, 1.15)
    half_height = eye_to_mouth * rng.uniform(1.15, 1.5)
    angle = np.degrees(np.arctan2(*(landmarks[1] - landmarks[0])[::-1]))
    # Draw upright on a canvas centred on the face, then rotate it with the eye line.
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse(
        [centre[0] - half_width, centre[1] - half_height, centre[0] + half_width, centre[1] + half_height], fill=255)
    mask = mask.rotate(-angle, resample=Image.Resampling.BILINEAR, center=tuple(centre))
    feather = max(1.0, eye_span * rng.uniform(0.1, 0.35))
    mask = mask.filter(ImageFilter.GaussianBlur(feather))
    return np.asarray(mask, np.float32) / 255.0


def jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small per-channel gain and shift, brightness and contrast: a different 'source' camera."""
    x = image.astype(np.float32)
    gain = rng.uniform(0.92, 1.08, 3)
    shift = rng.uniform(-12, 12, 3)
    contrast = rng.uniform(0.9, 1.1)
    mean = x.mean()
    x = (x - mean) * contrast + mean
    return np.clip(x * gain + shift, 0, 255).astype(np.uint8)


def jitter_sharpness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, sharpen or a down-up resample: the frequency mismatch of a generated face."""
    pil = Image.fromarray(image)
    choice = rng.integers(0, 3)
    if choice == 0:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    elif choice == 1:
        pil = pil.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.uniform(50, 150)), threshold=2))
    else:
        w, h = pil.size
        factor = rng.uniform(0.5, 0.8)
        pil = pil.resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.Resampling.BILINEAR)
        pil = pil.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(pil)


def warp_similarity(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp by the 2×3 similarity ``matrix`` (source → destination pixels), same size, edges replicated."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    h, w = image.shape[:2]
    warped = Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, data=tuple(inverse.reshape(-1)),
                                              resample=Image.Resampling.BILINEAR, fillcolor=None)
    return np.asarray(warped)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares 2×3 similarity (rotation, uniform scale, translation) mapping source points onto target."""
    # Unknowns a, b, tx, ty with x' = a x − b y + tx, y' = b x + a y + ty.
    rows = []
    rhs = []
    for (x, y), (u, v) in zip(source, target):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.asarray(rows, np.float64), np.asarray(rhs, np.float64), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]], np.float64)


def random_shift(rng: np.random.Generator, size: int) -> np.ndarray:
    """A small random similarity around the crop centre: scale ±5%, shift ±2.5%, rotation ±3°."""
    scale = rng.uniform(0.95, 1.05)
    theta = np.radians(rng.uniform(-3, 3))
    c = size / 2
    a, b = scale * np.cos(theta), scale * np.sin(theta)
    tx, ty = rng.uniform(-0.025, 0.025, 2) * size
    return np.array([[a, -b, c - a * c + b * c + tx], [b, a, c - b * c - a * c + ty]], np.float64)


def blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray, ratio: float) -> np.ndarray:
    alpha = (mask * ratio)[..., None]
    return np.clip(source * alpha + target * (1 - alpha), 0, 255).round().astype(np.uint8)


def self_blend(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    source = jitter_sharpness(jitter_colour(crop, rng), rng)
    source = warp_similarity(source, random_shift(rng, crop.shape[0]))
    mask = face_mask(landmarks, crop.shape[:2], rng)
    return blend(crop, source, mask, float(rng.choice(BLEND_RATIOS)))


def match_colour(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift and scale each channel of ``source`` to the mean and std of ``target`` inside the mask."""
    weights = mask[..., None] / max(float(mask.sum()), 1.0)
    s, t = source.astype(np.float32), target.astype(np.float32)
    s_mean, t_mean = (s * weights).sum((0, 1)), (t * weights).sum((0, 1))
    s_std = np.sqrt(((s - s_mean) ** 2 * weights).sum((0, 1))) + 1e-3
    t_std = np.sqrt(((t - t_mean) ** 2 * weights).sum((0, 1))) + 1e-3
    return np.clip((s - s_mean) / s_std * t_std + t_mean, 0, 255).astype(np.uint8)


def landmark_swap(target: np.ndarray, target_landmarks: np.ndarray, donor: np.ndarray, donor_landmarks: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    aligned = warp_similarity(donor, similarity_transform(donor_landmarks, target_landmarks))
    mask = face_mask(target_landmarks, target.shape[:2], rng)
    aligned = jitter_sharpness(match_colour(aligned, target, mask), rng)
    return blend(target, aligned, mask, float(rng.choice(BLEND_RATIOS[2:])))
