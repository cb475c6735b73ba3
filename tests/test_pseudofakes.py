"""Pseudo-fakes from real faces: deterministic, local to the face, and aligned by landmarks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detector.faces import FaceCropper
from detector.pseudofakes import face_mask, landmark_swap, self_blend, similarity_transform


@pytest.fixture(scope="module")
def faces(sample_media) -> list:
    cropper = FaceCropper()
    single = cropper.crop_faces(np.asarray(Image.open(sample_media / "single_face.jpg").convert("RGB"))[None])
    group = cropper.crop_faces(np.asarray(Image.open(sample_media / "multi_face.jpg").convert("RGB"))[None])
    return single + group


def test_self_blend_is_deterministic_per_seed(faces):
    face = faces[0]
    first = self_blend(face.crop, face.landmarks, np.random.default_rng(7))
    again = self_blend(face.crop, face.landmarks, np.random.default_rng(7))
    other = self_blend(face.crop, face.landmarks, np.random.default_rng(8))
    assert first.dtype == np.uint8 and first.shape == face.crop.shape
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_self_blend_changes_the_face_and_not_the_background(faces):
    face = faces[0]
    fake = self_blend(face.crop, face.landmarks, np.random.default_rng(3)).astype(int)
    diff = np.abs(fake - face.crop.astype(int)).mean(axis=2)
    nose_x, nose_y = face.landmarks[2].astype(int)
    assert diff[nose_y - 15 : nose_y + 15, nose_x - 15 : nose_x + 15].mean() > 2.0
    assert diff[:12].mean() == 0.0  # the top of the crop (hair, background) is untouched


def test_face_mask_is_soft_and_covers_the_landmarks(faces):
    face = faces[0]
    mask = face_mask(face.landmarks, face.crop.shape[:2], np.random.default_rng(0))
    assert mask.dtype == np.float32 and mask.min() == 0.0 and mask.max() <= 1.0
    assert all(mask[int(y), int(x)] > 0.5 for x, y in face.landmarks)
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 100  # a feathered edge, not a hard cut


def test_similarity_transform_recovers_a_known_transform():
    points = np.array([[70, 90], [130, 88], [100, 120], [78, 150], [125, 148]], np.float64)
    angle, scale, shift = np.radians(10), 1.2, np.array([5.0, -8.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation.T + shift
    matrix = similarity_transform(points, moved)
    assert np.allclose(matrix[:, :2], rotation, atol=1e-9) and np.allclose(matrix[:, 2], shift, atol=1e-9)


def test_landmark_swap_puts_another_face_on_the_target(faces):
    target, donor = faces[0], faces[1]
    fake = landmark_swap(target.crop, target.landmarks, donor.crop, donor.landmarks, np.random.default_rng(0))
    assert fake.shape == target.crop.shape and fake.dtype == np.uint8
    centre = target.landmarks.mean(axis=0).astype(int)
    window = (slice(centre[1] - 20, centre[1] + 20), slice(centre[0] - 20, centre[0] + 20))
    assert np.abs(fake[window].astype(int) - target.crop[window].astype(int)).mean() > 5.0
    assert np.array_equal(fake[:8, :8], target.crop[:8, :8])  # the corner is outside the face mask
