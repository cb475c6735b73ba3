"""Decoding: evenly spaced, size-capped, upright frames, read where the video lives, fetching
only what the sampled frames need."""
from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.decode import DecodeConfig, DecodeError, sample_frames, sample_indices, upright
from pipelines.sources import VideoFile, open_video, sniff_video, storage_options_for
from tests.support.media import LONG_VIDEO_GOP_S, LONG_VIDEO_SECONDS


def local(path: Path) -> VideoFile:
    return open_video(str(path), path.stat().st_size, {})


def test_sample_indices_are_evenly_spaced_and_bounded():
    assert sample_indices(100, 4) == [12, 37, 62, 87]
    assert sample_indices(3, 32) == [0, 1, 2]
    assert sample_indices(0, 8) == []


def test_frames_are_capped_evenly_spaced_and_in_order(short_face_video):
    info, sampled = sample_frames(local(short_face_video), DecodeConfig(n_frames=4, max_side=320))
    assert sampled.frames.shape[0] == 4 and max(sampled.frames.shape[1:3]) <= 320
    assert sampled.frames.dtype == np.uint8
    gaps = np.diff(sampled.timestamps_s)
    assert (gaps > 0).all() and gaps.max() < 2 * gaps.min()
    assert not sampled.damaged and sampled.frames_decoded <= info.n_frames


def test_sampled_frames_are_the_frames_a_plain_decode_shows_at_those_times(short_face_video):
    _, sampled = sample_frames(local(short_face_video), DecodeConfig(n_frames=5))
    with av.open(str(short_face_video)) as container:
        every = {round(f.time, 3): f.to_ndarray(format="rgb24") for f in container.decode(video=0)}
    for frame, time_s in zip(sampled.frames, sampled.timestamps_s):
        assert np.array_equal(frame, every[round(time_s, 3)])


def test_bytes_that_are_not_a_video_say_so_in_plain_words():
    with pytest.raises(DecodeError) as caught:
        sample_frames(io.BytesIO(b"just some text, not a container" * 10), DecodeConfig(n_frames=4))
    assert str(caught.value) == "not a readable video container: Invalid data found when processing input"


def test_rotation_turns_frames_upright():
    frame = np.zeros((1, 2, 3, 3), np.uint8)
    frame[0, 0, 0] = 255  # top-left pixel
    turned = upright(frame, 90)
    assert turned.shape == (1, 3, 2, 3)
    assert turned[0, 2, 0, 0] == 255  # a quarter turn counterclockwise moves top-left to bottom-left


def test_rotated_video_comes_out_upright(odd_media_dir, media_cache):
    info, turned = sample_frames(local(odd_media_dir / "rotated.mp4"), DecodeConfig(n_frames=4))
    _, straight = sample_frames(local(media_cache / "base.mp4"), DecodeConfig(n_frames=4))
    assert info.rotation == 90 and turned.frames.shape == straight.frames.shape
    assert np.abs(turned.frames.astype(int) - straight.frames.astype(int)).mean() < 8


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


@pytest.mark.parametrize("kind", ["moov_at_end", "faststart", "transport_stream"])
def test_a_long_video_is_sampled_over_its_whole_length_from_a_fraction_of_its_bytes(long_videos, kind):
    path = getattr(long_videos, kind)
    video = local(path)
    _, sampled = sample_frames(video, DecodeConfig(n_frames=8))
    assert len(sampled.frames) == 8 and not sampled.damaged
    span = LONG_VIDEO_SECONDS / 8
    assert sampled.timestamps_s[0] < span and sampled.timestamps_s[-1] > LONG_VIDEO_SECONDS - span
    assert video.bytes_read < 0.35 * video.size, f"read {video.bytes_read} of {video.size} bytes"
    # Each sampled frame costs at most about one GOP of decoding, not everything before it.
    assert sampled.frames_decoded <= 8 * (LONG_VIDEO_GOP_S * 25 + 5)


def test_a_long_video_on_s3_is_fetched_by_ranges(long_videos, s3_server, s3fs_client, s3_bucket):
    uri = f"s3://{s3_bucket}/archive/moov_at_end.mp4"
    s3fs_client.put(str(long_videos.moov_at_end), uri)
    size = long_videos.moov_at_end.stat().st_size
    video = open_video(uri, size, storage_options_for(uri, s3_server.endpoint_url))
    _, sampled = sample_frames(video, DecodeConfig(n_frames=8))
    _, from_disk = sample_frames(local(long_videos.moov_at_end), DecodeConfig(n_frames=8))
    assert np.array_equal(sampled.frames, from_disk.frames)
    assert video.bytes_read < 0.35 * size and video.read_seconds > 0


def test_bytes_in_memory_decode_like_the_file_they_came_from(short_face_video):
    _, from_file = sample_frames(local(short_face_video), DecodeConfig(n_frames=4))
    upload = open_video("upload://clip.mp4", 0, {}, data=short_face_video.read_bytes())
    _, from_memory = sample_frames(upload, DecodeConfig(n_frames=4))
    assert np.array_equal(from_file.frames, from_memory.frames)
    assert upload.bytes_read == short_face_video.stat().st_size


def test_decoding_then_detecting_faces_in_one_process(short_face_video):
    from detector.faces import FaceCropper

    _, sampled = sample_frames(local(short_face_video), DecodeConfig(4))
    assert len(FaceCropper().crop_faces(sampled.frames)) >= 4
