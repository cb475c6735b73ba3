"""Face detection at the cost it needs: frames are detected small, and only a video with no face
there is detected again at full size, which keeps faces too small for the first pass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.faces import FaceCropConfig, FaceCropper

WIDTH, HEIGHT = 1280, 720  # the largest frame the scan decodes


def frame_with_faces(face: Image.Image, sides: list[int]) -> np.ndarray:
    """A grey 1280×720 frame with the face pasted at each side length, left to right."""
    frame = Image.new("RGB", (WIDTH, HEIGHT), (118, 112, 104))
    x = 40
    for side in sides:
        frame.paste(face.resize((side, side), Image.Resampling.LANCZOS), (x, (HEIGHT - side) // 2))
        x += side + 80
    return np.asarray(frame)[None]


@pytest.fixture(scope="module")
def face(sample_media: Path) -> Image.Image:
    return Image.open(sample_media / "single_face.jpg").convert("RGB")


def test_a_face_too_small_for_the_first_pass_is_found_by_the_second(face):
    small = frame_with_faces(face, [48])  # the photo's face is 14 px here, 5 px at the first pass's 480
    assert sum(map(len, FaceCropper(FaceCropConfig(fallback_long_side=None)).detect(small)[0])) == 0
    boxes = FaceCropper(FaceCropConfig()).detect(small)[0]
    assert sum(map(len, boxes)) == 1
    x1, y1, x2, y2 = boxes[0][0]
    assert 40 < (x1 + x2) / 2 < 40 + 48 and (HEIGHT - 48) / 2 < (y1 + y2) / 2 < (HEIGHT + 48) / 2  # full-size pixels


def test_a_video_with_a_face_found_at_first_is_not_detected_again(face):
    both = frame_with_faces(face, [360, 48])
    found = FaceCropper(FaceCropConfig()).detect(both)[0][0]
    assert len(found) == 1 and found[0][2] - found[0][0] > 80  # the large face only: no second pass
    assert len(FaceCropper(FaceCropConfig(detect_long_side=1280)).detect(both)[0][0]) == 2


@pytest.mark.parametrize("factor", [0.6, 0.709])
def test_every_pyramid_factor_finds_a_large_face_in_the_same_place(face, factor):
    frame = frame_with_faces(face, [300])
    reference = FaceCropper(FaceCropConfig(detect_long_side=1280)).detect(frame)[0][0][0]
    found = FaceCropper(FaceCropConfig(scale_factor=factor)).detect(frame)[0][0]
    assert len(found) == 1 and np.abs(found[0] - reference).max() < 0.1 * 300


def test_the_second_pass_finds_a_small_face_in_every_frame_of_a_video(face):
    video = np.repeat(frame_with_faces(face, [48]), 12, axis=0)
    boxes = FaceCropper(FaceCropConfig(fallback_probe_frames=4)).detect(video)[0]
    assert [len(frame_boxes) for frame_boxes in boxes] == [1] * 12


def test_a_video_with_no_face_costs_the_second_pass_only_its_probe_frames(face, monkeypatch):
    blank = np.full((32, HEIGHT, WIDTH, 3), 118, np.uint8)
    cropper = FaceCropper(FaceCropConfig())
    searched: list[int] = []
    detect = cropper.mtcnn.detect
    monkeypatch.setattr(cropper.mtcnn, "detect",
                        lambda frames, **kw: searched.append(len(frames)) or detect(frames, **kw))
    assert sum(map(len, cropper.detect(blank)[0])) == 0
    assert searched == [32, 8]  # the first pass on every frame, the second on 8 of them
