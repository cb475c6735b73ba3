"""Decode: N evenly spaced, upright, size-capped frames of a video, read where it lives.

PyAV opens the video as a seekable file (``pipelines.sources.VideoFile``), so only the header,
the index and the GOPs around the sampled times are fetched: an hour-long broadcast costs a few
dozen GOPs, not its whole size. For each sampled time the decoder jumps to the keyframe before
it when that keyframe lies ahead of what it has decoded, and otherwise decodes on, so a short
clip with one keyframe is decoded once from start to end.

Damage does not stop it: packets that fail to demux or decode are counted and skipped, and
when seeking lands in damage and yields less than half the frames asked for, one linear pass
over the whole file samples from whatever decodes. A video is an error only when not one of
its frames decodes.
"""
from __future__ import annotations

import bisect
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import pyarrow as pa

from detector.faces import evenly_spaced
from pipelines.errors import VideoError
from pipelines.rows import DECODED_SCHEMA, mark_error, one_line, to_table
from pipelines.sources import ReadError, open_video

# Demux failures in a row after which the rest of the file is taken as unreadable.
MAX_DEMUX_FAILURES = 32
# A seek must skip at least this much video to pay for its flush and its fetch.
SEEK_MIN_SKIP_S = 1.0
# Index times are decode times; with B-frames a keyframe shows a few frames later.
REORDER_MARGIN_S = 0.25
# Without an index, a seek pays off only past a likely GOP; each seek teaches a longer one.
DEFAULT_KEYFRAME_GAP_S = 5.0


class DecodeError(VideoError):
    pass


@dataclass(frozen=True)
class DecodeConfig:
    n_frames: int = 32
    max_side: int = 1280  # long side after scaling; crops are cut from frames this size
    threads: int = 1  # the decoder's threads: the stage's CPU share


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    n_frames: int
    fps: float
    duration_s: float
    rotation: int  # degrees counterclockwise that a player applies to show the frame upright


@dataclass(frozen=True)
class SampledFrames:
    frames: np.ndarray  # (n, h, w, 3) uint8, upright
    frame_numbers: list[int]
    timestamps_s: list[float]
    frames_decoded: int  # every frame the decoder produced, sampled or passed over
    decode_errors: int  # packets that failed to demux or decode, and frames flagged corrupt
    decoder: str = "pyav"

    @property
    def damaged(self) -> bool:
        return self.decode_errors > 0


@dataclass
class _Counts:
    frames: int = 0
    errors: int = 0


@dataclass
class _Picked:
    """Frames kept so far, converted at one output size (the first good frame's, scaled)."""

    max_side: int
    size: tuple[int, int] | None = None
    stored_size: tuple[int, int] = (0, 0)  # the first good frame's, before scaling and rotation
    rotation: int = 0
    arrays: list[np.ndarray] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def convert(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:
            self.stored_size = (frame.width, frame.height)
            self.size = scaled_size(frame.width, frame.height, self.max_side)
            self.rotation = int(getattr(frame, "rotation", 0) or 0)
        width, height = self.size
        if (frame.width, frame.height) == self.size:  # no scaler: the colour conversion alone is cheaper
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(format="rgb24", width=width, height=height)

    def add(self, frame: av.VideoFrame, time_s: float) -> None:
        self.arrays.append(self.convert(frame))
        self.times.append(time_s)


def sample_indices(n_total: int, n: int) -> list[int]:
    """Centres of n equal segments: evenly spaced and never the black first frame alone."""
    return evenly_spaced(max(n_total, 0), n).tolist()


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    # Even sizes: some scalers refuse odd ones for 4:2:0 input.
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    quarter_turns = round(rotation / 90.0) % 4
    return np.ascontiguousarray(np.rot90(frames, k=quarter_turns, axes=(1, 2))) if quarter_turns else frames


def _open(source: io.IOBase) -> av.container.InputContainer:
    try:
        return av.open(source, mode="r", metadata_errors="replace")  # damaged tags must not stop the video
    except av.FFmpegError as exc:
        raise DecodeError(f"not a readable video container: {exc.strerror or 'unknown format'}") from exc


def _frames(container: av.container.InputContainer, stream: av.VideoStream, counts: _Counts
            ) -> Iterator[av.VideoFrame]:
    """Every frame that decodes from the container's position on; what fails is counted and skipped."""
    failures_in_a_row = 0
    while failures_in_a_row < MAX_DEMUX_FAILURES:
        try:
            for packet in container.demux(stream):
                failures_in_a_row = 0
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    counts.errors += 1
                    continue
                for frame in frames:
                    counts.frames += 1
                    counts.errors += bool(frame.is_corrupt)
                    yield frame
            return
        except av.FFmpegError:  # the demuxer resynchronises on the next call, or fails again
            counts.errors += 1
            failures_in_a_row += 1


def _time(frame: av.VideoFrame, start_s: float, previous_s: float, fps: float) -> float:
    return frame.time - start_s if frame.time is not None else previous_s + 1.0 / fps


class _Video:
    """An open container's video stream and what its header says about it."""

    def __init__(self, container: av.container.InputContainer) -> None:
        if not container.streams.video:
            raise DecodeError("no video stream")
        self.container, self.stream = container, container.streams.video[0]
        stream = self.stream
        self.time_base = stream.time_base
        self.start_s = float(stream.start_time * self.time_base) if stream.start_time is not None and \
            self.time_base else 0.0
        self.fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration and self.time_base:
            self.duration_s = float(stream.duration * self.time_base)
        else:
            self.duration_s = max(0.0, float(container.duration or 0) / av.time_base)
        self.n_frames = stream.frames or round(self.duration_s * self.fps)
        # The keyframes the index lists (MP4, MKV with cues); none for streams such as MPEG-TS.
        self.keyframes_s = sorted(float(entry.timestamp * self.time_base) - self.start_s
                                  for entry in stream.index_entries if entry.is_keyframe) if self.time_base else []

    def seek(self, time_s: float) -> None:
        time_base = self.time_base or Fraction(1, av.time_base)
        self.container.seek(int((self.start_s + max(0.0, time_s)) / time_base), stream=self.stream if
                            self.time_base else None, backward=True, any_frame=False)

    def worth_seeking(self, target_s: float, decoded_to_s: float, keyframe_gap_s: float) -> bool:
        """Jump only when the keyframe before the target lies well past what is decoded already."""
        if self.keyframes_s:
            before = bisect.bisect_right(self.keyframes_s, target_s - REORDER_MARGIN_S) - 1
            return before >= 0 and self.keyframes_s[before] > decoded_to_s + SEEK_MIN_SKIP_S
        return target_s - decoded_to_s > keyframe_gap_s


def _sample_by_seeking(video: _Video, targets_s: list[float], picked: _Picked, counts: _Counts) -> None:
    fps = video.fps or 25.0
    tolerance = 0.5 / fps
    # Decoding starts where the container opened: the first targets of a clip need no seek.
    frames: Iterator[av.VideoFrame] | None = _frames(video.container, video.stream, counts)
    decoded_to, keyframe_gap = 0.0, DEFAULT_KEYFRAME_GAP_S
    landed: float | None = 0.0
    for target in targets_s:
        if frames is None or video.worth_seeking(target, decoded_to, keyframe_gap):
            try:
                video.seek(target)
            except av.FFmpegError:
                counts.errors += 1
                return
            frames, landed = _frames(video.container, video.stream, counts), None
        assert frames is not None
        last = None
        for frame in frames:
            decoded_to = _time(frame, video.start_s, decoded_to, fps)
            if landed is None:
                landed = decoded_to
                keyframe_gap = max(keyframe_gap, target - landed)
            if decoded_to >= target - tolerance:
                picked.add(frame, decoded_to)
                break
            last = frame
        else:  # the stream ended before this target: its last frame is the nearest there is
            if last is not None and (not picked.times or decoded_to > picked.times[-1]):
                picked.add(last, decoded_to)
            return


def _sample_linearly(video: _Video, n: int, picked: _Picked, counts: _Counts) -> None:
    """One pass over every frame, keeping every ``stride``-th; when 2n are kept, every other one
    goes and the stride doubles, so memory stays bounded whatever the length."""
    kept: list[tuple[np.ndarray, float]] = []
    stride, time_s = 1, -1.0 / (video.fps or 25.0)
    for index, frame in enumerate(_frames(video.container, video.stream, counts)):
        time_s = _time(frame, video.start_s, time_s, video.fps or 25.0)
        if index % stride == 0:
            kept.append((picked.convert(frame), time_s))
            if len(kept) >= 2 * n:
                kept, stride = kept[::2], stride * 2
    for i in sample_indices(len(kept), n):
        picked.arrays.append(kept[i][0])
        picked.times.append(kept[i][1])


def sample_frames(source: io.IOBase, config: DecodeConfig) -> tuple[VideoInfo, SampledFrames]:
    seek_counts, linear_counts = _Counts(), _Counts()
    picked = _Picked(config.max_side)
    with _open(source) as container:
        video = _Video(container)
        video.stream.thread_count = config.threads
        header = (video.stream.codec_context.width, video.stream.codec_context.height)
        # Centres of n equal spans of the duration: the header's frame rate is an average.
        n = min(config.n_frames, video.n_frames) if video.duration_s > 0 else 0
        targets = [(i + 0.5) * video.duration_s / n for i in range(n)]
        if targets:
            _sample_by_seeking(video, targets, picked, seek_counts)
    if len(picked.times) * 2 < (len(targets) or config.n_frames):
        source.seek(0)
        with _open(source) as container:
            linear = _Picked(config.max_side)
            _sample_linearly(_Video(container), config.n_frames, linear, linear_counts)
        picked = max(picked, linear, key=lambda p: len(p.times))
    # A linear pass saw all the damage there is; a seeking one only what it passed through.
    errors = linear_counts.errors if linear_counts.frames or linear_counts.errors else seek_counts.errors
    if not picked.arrays or picked.size is None:
        damage = f" ({errors} damaged packet{'s' if errors != 1 else ''} skipped)" if errors else ""
        raise DecodeError(f"no decodable video frame{damage}")
    info = VideoInfo(header[0] or picked.stored_size[0], header[1] or picked.stored_size[1], video.n_frames,
                     video.fps, video.duration_s, picked.rotation)
    fps = video.fps or 25.0
    sampled = SampledFrames(upright(np.stack(picked.arrays), picked.rotation),
                            [round(t * fps) for t in picked.times], picked.times,
                            seek_counts.frames + linear_counts.frames, errors)
    return info, sampled


def _decode(row: dict, config: DecodeConfig, storage_options: dict, data: bytes | None) -> None:
    """Fill ``row`` with its video's sampled frames; raises ``ReadError`` for a fetch that failed
    (PyAV raises it from the call that read, or sees the stream end early) and ``DecodeError``
    for a file with no decodable frame."""
    with open_video(row["uri"], row["size_bytes"], storage_options, data) as file:
        try:
            if not file.size:
                raise DecodeError("empty file (0 bytes)")
            info, sampled = sample_frames(file, config)
        finally:
            row["bytes_read"], row["t_read_s"] = file.bytes_read, file.read_seconds
            if file.error is not None:  # a fetch failed: whatever PyAV made of it, that is the cause
                raise file.error
    row["frames"], row["frame_shape"] = sampled.frames, list(sampled.frames.shape)
    row.update(decoder=sampled.decoder, video_width=info.width, video_height=info.height, video_fps=info.fps,
               video_duration_s=info.duration_s, rotation=info.rotation, frame_numbers=sampled.frame_numbers,
               timestamps_s=sampled.timestamps_s, frames_decoded=sampled.frames_decoded,
               decode_errors=sampled.decode_errors, damaged=sampled.damaged)


def decode_videos(batch: pa.Table, config: DecodeConfig, storage_options: dict) -> pa.Table:
    """Ray Data stage: each pending video, opened where it lives (or from the ``data`` column,
    for bytes already in memory), → sampled, upright, size-capped frames. A fetch that fails is
    a ``read`` error, a file with no decodable frame a ``decode`` error; ``t_read_s`` is the
    time spent fetching, ``t_decode_s`` the rest."""
    rows = batch.to_pylist()
    for row in rows:
        data = row.pop("data", None)
        if row["status"] != "pending":
            continue
        started = time.perf_counter()
        try:
            _decode(row, config, storage_options, data)
        except Exception as exc:  # noqa: BLE001 - every failure becomes that video's verdict
            mark_error(row, "read" if isinstance(exc, ReadError) else "decode", one_line(exc))
        row["t_decode_s"] = max(0.0, time.perf_counter() - started - (row.get("t_read_s") or 0.0))
    return to_table(rows, DECODED_SCHEMA, arrays={"frames": [row.pop("frames", None) for row in rows]})
