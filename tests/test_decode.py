"""Decoding: evenly spaced, size-capped, upright frames, with PyAV where decord fails."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.decode import (
    DecodeConfig,
    DecodeError,
    decode_with_pyav,
    probe_video,
    sample_frames,
    sample_indices,
    upright,
)
from pipelines.sources import sniff_video


def test_sample_indices_are_evenly_spaced_and_bounded():
    assert sample_indices(100, 4) == [12, 37, 62, 87]
    assert sample_indices(3, 32) == [0, 1, 2]
    assert sample_indices(0, 8) == []


def test_frames_are_capped_at_max_side(short_face_video):
    _, sampled = sample_frames(short_face_video.read_bytes(), DecodeConfig(n_frames=4, max_side=320))
    assert sampled.frames.shape[0] == 4 and max(sampled.frames.shape[1:3]) <= 320
    assert sampled.frames.dtype == np.uint8
    assert sampled.timestamps_s == sorted(sampled.timestamps_s)


def test_pyav_fallback_samples_the_same_frames(short_face_video):
    data = short_face_video.read_bytes()
    info = probe_video(data)
    _, by_decord = sample_frames(data, DecodeConfig(n_frames=4))
    by_pyav = decode_with_pyav(data, info, DecodeConfig(n_frames=4))
    assert by_pyav.frame_numbers == by_decord.frame_numbers
    assert np.abs(by_pyav.frames.astype(int) - by_decord.frames.astype(int)).mean() < 8


def test_empty_and_non_video_bytes_are_decode_errors():
    with pytest.raises(DecodeError, match="empty"):
        probe_video(b"")
    with pytest.raises(DecodeError, match="not a readable video"):
        probe_video(b"just some text, not a container" * 10)


def test_rotation_turns_frames_upright():
    frame = np.zeros((1, 2, 3, 3), np.uint8)
    frame[0, 0, 0] = 255  # top-left pixel
    turned = upright(frame, 90)
    assert turned.shape == (1, 3, 2, 3)
    assert turned[0, 2, 0, 0] == 255  # a quarter turn counterclockwise moves top-left to bottom-left


@pytest.mark.parametrize("header, is_video", [
    (b"\x00\x00\x00\x18ftypisom" + b"\x00" * 20, True),
    (b"\x1a\x45\xdf\xa3" + b"\x00" * 20, True),
    (b"RIFF\x00\x00\x00\x00AVI LIST", True),
    (b"\x00\x00\x01\xba" + b"\x00" * 20, True),
    (bytes([0x47] + [0] * 187) * 3, True),
    (b"%PDF-1.7 not a video", False),
    (b"\xff\xd8\xff\xe0 jpeg", False),
])
def test_sniffing_extensionless_files(header, is_video):
    assert sniff_video(header) is is_video


def test_rotated_video_comes_out_upright_from_both_decoders(odd_media_dir):
    data = (odd_media_dir / "rotated.mp4").read_bytes()
    info, by_decord = sample_frames(data, DecodeConfig(n_frames=4))
    by_pyav = decode_with_pyav(data, info, DecodeConfig(n_frames=4))
    assert info.rotation == 90
    assert by_decord.frames.shape[1:3] == by_pyav.frames.shape[1:3] == (info.width, info.height)
    assert np.abs(by_decord.frames.astype(int) - by_pyav.frames.astype(int)).mean() < 8


def test_decoding_then_detecting_faces_in_one_process(tmp_path, short_face_video):
    """decord2 loaded before torch made torch's CPU matmul segfault; the sequential benchmark
    and any single-process user decode and detect in one interpreter."""
    import subprocess
    import sys

    code = ("from pipelines.decode import DecodeConfig, sample_frames\n"
            "from detector.faces import FaceCropper\n"
            f"_, s = sample_frames(open({str(short_face_video)!r}, 'rb').read(), DecodeConfig(4))\n"
            "print(len(FaceCropper().crop_faces(s.frames)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) >= 4
