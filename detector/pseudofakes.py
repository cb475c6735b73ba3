"""Pseudo-fakes made from real face crops, so training needs no downloaded deepfakes.

- ``self_blend``: the face is blended onto itself after small colour, sharpness and
  geometric changes, through a soft mask around the face (self-blended images,
  Shiohara & Yamasaki, CVPR 2022, reimplemented from the paper's description: the
  source-target generator changes either the pasted face or its surroundings, the mask
  is deformed, and the blend ratio is drawn). The result keeps the identity but carries
  the traces every face swap leaves: a blending boundary and a colour/frequency
  mismatch between face and surroundings.
- ``landmark_swap``: another real face, aligned onto this one by the similarity
  transform that best maps its five MTCNN landmarks onto this face's, colour-matched
  inside the mask and blended in.
- ``morph``: a face morph, a different method kept for evaluation: another person's
  aligned face, colour-transferred in CIELAB (Reinhard et al.), averaged with this face
  at about half and half inside a polygon around the landmarks, with a narrow feather.

Both take (H, W, 3) uint8 crops, landmarks as (5, 2) (x, y) crop pixels in MTCNN's
order (left eye, right eye, nose, left mouth corner, right mouth corner), and a numpy
Generator, so that a fixed seed gives the same fake.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageCms, ImageDraw, ImageFilter
from scipy import ndimage

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
    hard = deform_mask(np.asarray(mask, np.float32) / 255.0, eye_span, rng)
    feather = max(1.0, eye_span * rng.uniform(0.1, 0.35))
    return ndimage.gaussian_filter(hard, feather).astype(np.float32)


def deform_mask(mask: np.ndarray, eye_span: float, rng: np.random.Generator) -> np.ndarray:
    """An elastic warp of the mask's outline, then a random erosion or dilation: SBI's mask
    deformation, so that no two blending boundaries have the same shape."""
    h, w = mask.shape
    # A smooth displacement field: a coarse random grid, upsampled, of up to a fifth of the eye span.
    coarse = rng.normal(0, eye_span * 0.08, (2, 4, 4))
    field = [ndimage.zoom(c, (h / 4, w / 4), order=3)[:h, :w] for c in coarse]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    warped = ndimage.map_coordinates(mask, [rows + field[0], cols + field[1]], order=1, mode="constant")
    size = int(rng.integers(1, max(2, int(eye_span * 0.15)) + 1))
    grow = rng.random() < 0.5
    return (ndimage.grey_dilation if grow else ndimage.grey_erosion)(warped, size=(size, size))


def jitter_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel gain and shift, hue and saturation, brightness and contrast: a different
    'source' camera (SBI's RGB shift, HSV and brightness-contrast changes)."""
    hsv = np.asarray(Image.fromarray(image).convert("HSV"), np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-5, 6))) % 256  # PIL's hue runs over 0..255
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.85, 1.15), 0, 255)
    x = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), np.float32)
    gain = rng.uniform(0.92, 1.08, 3)
    shift = rng.uniform(-12, 12, 3)
    contrast = rng.uniform(0.85, 1.15)
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
        factor = rng.uniform(0.25, 0.8)
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


def source_and_target(crop: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """SBI's source-target generator: one copy of the crop is changed in colour and frequency,
    which one is drawn, so that a detector cannot learn that only the pasted face is ever
    changed; the source is then shifted a little."""
    changed = jitter_sharpness(jitter_colour(crop, rng), rng)
    source, target = (changed, crop) if rng.random() < 0.5 else (crop, changed)
    return warp_similarity(source, random_shift(rng, crop.shape[0])), target


def self_blend(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return self_blend_with_alpha(crop, landmarks, rng)[0]


def self_blend_with_alpha(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator
                          ) -> tuple[np.ndarray, np.ndarray]:
    """A self-blend and its (H, W) float32 alpha: where, and how much, the source was pasted."""
    source, target = source_and_target(crop, rng)
    alpha = face_mask(landmarks, crop.shape[:2], rng) * float(rng.choice(BLEND_RATIOS))
    return blend(target, source, alpha, 1.0), alpha


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


_SRGB = ImageCms.createProfile("sRGB")
_LAB = ImageCms.createProfile("LAB")
_TO_LAB = ImageCms.buildTransformFromOpenProfiles(_SRGB, _LAB, "RGB", "LAB")
_FROM_LAB = ImageCms.buildTransformFromOpenProfiles(_LAB, _SRGB, "LAB", "RGB")


def _to_lab(image: np.ndarray) -> np.ndarray:
    """uint8 CIELAB with a and b offset by 128 (PIL stores them as signed bytes)."""
    lab = np.asarray(ImageCms.applyTransform(Image.fromarray(image), _TO_LAB)).copy()
    lab[..., 1:] = lab[..., 1:].view(np.int8).astype(np.int16) + 128
    return lab


def _from_lab(lab: np.ndarray) -> np.ndarray:
    signed = lab.copy()
    signed[..., 1:] = (lab[..., 1:].astype(np.int16) - 128).astype(np.int8).view(np.uint8)
    return np.asarray(ImageCms.applyTransform(Image.fromarray(signed, "LAB"), _FROM_LAB))


def transfer_colour_lab(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer: ``source``'s CIELAB channels moved to ``target``'s mean and std inside the mask."""
    return _from_lab(match_colour(_to_lab(source), _to_lab(target), mask))


def landmark_polygon_mask(landmarks: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A soft (H, W) mask: the polygon through the landmarks pushed outwards from the face centre
    (brows above the eyes, chin below the mouth), with a narrow feather."""
    h, w = size
    centre = landmarks.mean(axis=0)
    eye_span = max(float(np.linalg.norm(landmarks[1] - landmarks[0])), 4.0)
    down = (landmarks[3:].mean(axis=0) - landmarks[:2].mean(axis=0))
    down = down / max(float(np.linalg.norm(down)), 1e-6)
    left_eye, right_eye, _, left_mouth, right_mouth = landmarks
    outline = [left_eye - down * eye_span * 0.45, right_eye - down * eye_span * 0.45,
               right_mouth + down * eye_span * 0.35, left_mouth + down * eye_span * 0.35]
    outline = [centre + (p - centre) * rng.uniform(1.15, 1.35) for p in outline]
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in outline], fill=255)
    return ndimage.gaussian_filter(np.asarray(mask, np.float32) / 255.0, max(1.0, eye_span * 0.06)).astype(np.float32)


def morph(target: np.ndarray, target_landmarks: np.ndarray, donor: np.ndarray, donor_landmarks: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    aligned = warp_similarity(donor, similarity_transform(donor_landmarks, target_landmarks))
    mask = landmark_polygon_mask(target_landmarks, target.shape[:2], rng)
    aligned = transfer_colour_lab(aligned, target, mask)
    return blend(target, aligned, mask, float(rng.uniform(0.4, 0.6)))
