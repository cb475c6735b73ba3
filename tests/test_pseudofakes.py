"""Pseudo-fakes from real faces: deterministic, local to the face, and aligned by landmarks."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from detector.faces import FaceCropper
from detector.pseudofakes import (
    face_mask,
    self_blend,
    self_blend_with_alpha,
    similarity_transform,
    source_and_target,
    transfer_colour_lab,
)
from pipelines.dataset import CROP_SCHEMA, DONOR_METHODS, PSEUDO_FAKE_KINDS, make_pseudo_fakes, png_array, png_bytes


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


@pytest.mark.parametrize("seed", range(6))
def test_self_blend_pastes_the_source_face_onto_the_target_surroundings(faces, seed):
    face = faces[0]
    fake = self_blend(face.crop, face.landmarks, np.random.default_rng(seed)).astype(int)
    # The same draws, in the same order, give the pair self_blend blended.
    source, target = (x.astype(int) for x in source_and_target(face.crop, np.random.default_rng(seed)))
    nose_x, nose_y = face.landmarks[2].astype(int)
    nose = (slice(nose_y - 10, nose_y + 10), slice(nose_x - 10, nose_x + 10))
    assert np.abs(fake[:12] - target[:12]).mean() < 0.5  # the top of the crop (hair, background) is the target's
    assert np.abs(fake[nose] - target[nose]).mean() > 1.0  # the face is not
    # the face moves from the target towards the source, by the blend ratio (at most all the way)
    assert np.abs(fake[nose] - target[nose]).mean() <= np.abs(source[nose] - target[nose]).mean() + 0.5


def test_the_source_target_generator_changes_either_side(faces):
    face = faces[0]
    changed_target = [not np.array_equal(source_and_target(face.crop, np.random.default_rng(seed))[1], face.crop)
                      for seed in range(20)]
    assert 0 < sum(changed_target) < 20


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


@pytest.mark.parametrize("method", sorted(DONOR_METHODS))
def test_a_donor_method_puts_another_face_inside_the_face_only(faces, method):
    target, donor = faces[0], faces[1]
    fake = DONOR_METHODS[method](target.crop, target.landmarks, donor.crop, donor.landmarks,
                                 np.random.default_rng(0))
    assert fake.shape == target.crop.shape and fake.dtype == np.uint8
    centre = target.landmarks.mean(axis=0).astype(int)
    window = (slice(centre[1] - 15, centre[1] + 15), slice(centre[0] - 15, centre[0] + 15))
    assert np.abs(fake[window].astype(int) - target.crop[window].astype(int)).mean() > 3.0
    assert np.array_equal(fake[:8], target.crop[:8])  # the top rows are outside the mask


def test_lab_colour_transfer_moves_the_source_to_the_target_colours():
    rng = np.random.default_rng(0)
    source = np.clip(rng.normal((60, 120, 200), 10, (64, 64, 3)), 0, 255).astype(np.uint8)
    target = np.clip(rng.normal((200, 150, 90), 10, (64, 64, 3)), 0, 255).astype(np.uint8)
    moved = transfer_colour_lab(source, target, np.ones((64, 64), np.float32))
    assert np.abs(moved.mean((0, 1)) - target.mean((0, 1))).max() < 6
    assert np.abs(source.mean((0, 1)) - target.mean((0, 1))).max() > 100


def crop_table(faces) -> pa.Table:
    rows = [{"crop_id": f"c{i}", "label": 0, "kind": "real", "split": "test", "group": f"person{i}",
             "landmarks": face.landmarks.reshape(-1).tolist(), "image": png_bytes(face.crop)}
            for i, face in enumerate(faces[:3])]
    return pa.Table.from_pylist(rows).cast(pa.schema([CROP_SCHEMA.field(n) for n in rows[0]]))


def test_every_kind_makes_one_fake_of_each_method_per_real_crop(faces):
    crops = crop_table(faces)
    donors = {"test": [dict(row, image=row["image"]) for row in crops.to_pylist()]}
    fakes = make_pseudo_fakes(crops, PSEUDO_FAKE_KINDS, donors, seed=0, every_kind=True)
    assert sorted(fakes["crop_id"].to_pylist()) == sorted(f"c{i}-{k}" for i in range(3) for k in PSEUDO_FAKE_KINDS)
    assert set(fakes["label"].to_pylist()) == {1}
    for row in fakes.to_pylist():
        # a swap or morph takes another person's face; a self-blend none
        assert (row["donor_id"] is not None) == (row["kind"] != "sbi") and row["donor_id"] != row["crop_id"][:2]
        assert png_array(row["image"]).shape == faces[0].crop.shape


def test_drawn_kinds_make_one_fake_per_real_crop(faces):
    crops = crop_table(faces)
    fakes = make_pseudo_fakes(crops, PSEUDO_FAKE_KINDS, {}, seed=0)
    # no donors at all: each crop's drawn kind falls back to a self-blend, and says so
    assert fakes.num_rows == 3 and set(fakes["kind"].to_pylist()) == {"sbi"}


def test_training_pairs_every_real_crop_with_a_fresh_self_blend_of_itself(faces):
    from jobs.train.worker import with_self_blends

    batch = {"pixels": np.stack([f.crop for f in faces[:3]]), "label": np.zeros(3, np.float32),
             "landmarks": np.stack([f.landmarks for f in faces[:3]])}
    made = with_self_blends(batch, first_seed=100)
    images, labels = made.images, made.labels
    assert images.shape == (6, *faces[0].crop.shape) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(images[:3], batch["pixels"])
    for i in range(3):  # each fake is the self-blend of its own crop, seeded by its place
        expected = self_blend(faces[i].crop, faces[i].landmarks, np.random.default_rng(100 + i))
        assert np.array_equal(images[3 + i], expected)
    next_epoch = with_self_blends(batch, first_seed=200).images
    assert not np.array_equal(next_epoch[3:], images[3:])  # a new epoch, new fakes


def test_training_batches_carry_where_each_image_is_blended(faces):
    from jobs.train.worker import with_self_blends

    batch = {"pixels": np.stack([f.crop for f in faces[:2]]), "label": np.zeros(2, np.float32),
             "landmarks": np.stack([f.landmarks for f in faces[:2]])}
    made = with_self_blends(batch, first_seed=100)
    assert made.alphas is not None and made.alphas.shape == (4, *faces[0].crop.shape[:2])
    assert not made.alphas[:2].any()  # real crops: nothing pasted
    for i in range(2):
        fake, alpha = self_blend_with_alpha(faces[i].crop, faces[i].landmarks, np.random.default_rng(100 + i))
        assert np.array_equal(made.images[2 + i], fake) and np.array_equal(made.alphas[2 + i], alpha)
        assert alpha.max() > 0.2 and alpha[0, 0] < 1e-3  # pasted over the face, not in the corner


def test_alpha_is_where_a_self_blend_differs_from_its_crop(faces):
    face = faces[0]
    fake, alpha = self_blend_with_alpha(face.crop, face.landmarks, np.random.default_rng(3))
    changed = np.abs(fake.astype(int) - face.crop.astype(int)).max(axis=-1) > 2
    assert not changed[alpha < 1e-3].any()  # outside the mask the crop is untouched
    assert changed[alpha > 0.2].mean() > 0.5
