"""Decode: sample N evenly spaced frames from a video held in memory.

PyAV probes the container first (streams, size, duration, rotation): files it
cannot parse never reach decord, whose native code is less forgiving of corrupt
input. decord then seeks straight to the sampled frames, scaled at decode time so
that huge resolutions never materialise; where decord fails, PyAV seeks instead.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import pyarrow as pa
import torch  # noqa: F401 - must load before decord: see below

# isort: split
# decord2's bundled native libraries, loaded before torch, shadow symbols that torch's CPU
# matmul resolves later, and MTCNN then segfaults in the same process. torch first is safe.
import decord

from pipelines.rows import DECODED_SCHEMA, pack_array, stage_guard, to_table


class DecodeError(ValueError):
    pass


@dataclass(frozen=True)
class DecodeConfig:
    n_frames: int = 32
    max_side: int = 1280  # long side after scaling; crops are cut from frames this size


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
    decoder: str


def probe_video(data: bytes) -> VideoInfo:
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as exc:
        raise DecodeError(f"not a readable video container ({exc.__class__.__name__})") from exc
    with container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise DecodeError("video stream has no frame size")
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = float(container.duration or 0) / av.time_base
        n_frames = stream.frames or round(duration * fps)
        first = next(container.decode(stream), None)
        if first is None:
            raise DecodeError("video stream has no decodable frame")
        return VideoInfo(width, height, n_frames, fps, duration, int(getattr(first, "rotation", 0) or 0))


def sample_indices(n_total: int, n: int) -> list[int]:
    """Centres of n equal segments: evenly spaced and never the black first frame alone."""
    if n_total <= 0:
        return []
    n = min(n, n_total)
    return sorted({int((i + 0.5) * n_total / n) for i in range(n)})


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    # Even sizes: some scalers refuse odd ones for 4:2:0 input.
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def display_size(info: VideoInfo, max_side: int) -> tuple[int, int]:
    """Width and height as a player shows the video (after rotation), capped at max_side."""
    width, height = scaled_size(info.width, info.height, max_side)
    return (height, width) if abs(info.rotation) % 180 == 90 else (width, height)


def decode_with_decord(data: bytes, info: VideoInfo, config: DecodeConfig) -> SampledFrames:
    # decord2 applies the display matrix itself, so its frames come out upright.
    width, height = display_size(info, config.max_side)
    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    indices = sample_indices(len(reader), config.n_frames)
    if not indices:
        raise DecodeError("decord found no frames")
    frames = reader.get_batch(indices).asnumpy()
    timestamps = reader.get_frame_timestamp(indices)[:, 0].astype(float).tolist()
    return SampledFrames(frames, indices, timestamps, "decord")


def decode_with_pyav(data: bytes, info: VideoInfo, config: DecodeConfig) -> SampledFrames:
    """Seek to each sampled frame; PyAV returns stored (not rotated) pixels, so rotate here."""
    width, height = scaled_size(info.width, info.height, config.max_side)
    n_total = info.n_frames if info.n_frames > 0 else max(1, int(info.duration_s * (info.fps or 25)))
    targets = sample_indices(n_total, config.n_frames)
    fps = info.fps or 25.0
    frames, numbers, stamps = [], [], []
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        if time_base is None:  # libavformat gives every demuxed stream one (1/90000 by default)
            raise DecodeError("video stream has no time base")
        start = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
        for target in targets:
            t = start + target / fps
            container.seek(int(t / time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.time is None or frame.time + 0.5 / fps >= t:
                    frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
                    numbers.append(target)
                    stamps.append(float(frame.time if frame.time is not None else t) - start)
                    break
    if not frames:
        raise DecodeError("PyAV decoded no frames")
    return SampledFrames(upright(np.stack(frames), info.rotation), numbers, stamps, "pyav")


def upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    quarter_turns = round(rotation / 90.0) % 4
    return np.ascontiguousarray(np.rot90(frames, k=quarter_turns, axes=(1, 2))) if quarter_turns else frames


def sample_frames(data: bytes, config: DecodeConfig) -> tuple[VideoInfo, SampledFrames]:
    info = probe_video(data)
    try:
        sampled = decode_with_decord(data, info, config)
    except Exception as decord_error:  # noqa: BLE001 - decord's errors are untyped; PyAV gets a turn
        try:
            sampled = decode_with_pyav(data, info, config)
        except Exception as pyav_error:
            raise DecodeError(f"decord: {decord_error}; pyav: {pyav_error}") from pyav_error
    return info, sampled


def decode_videos(batch: pa.Table, config: DecodeConfig) -> pa.Table:
    """Ray Data stage: bytes → sampled, upright, size-capped frames."""
    rows = batch.to_pylist()
    for row in rows:
        data = row.pop("data", None)
        if row["status"] != "pending":
            continue
        with stage_guard(row, "decode"):
            info, sampled = sample_frames(data or b"", config)
            row["frames"], row["frame_shape"] = pack_array(sampled.frames)
            row.update(
                decoder=sampled.decoder, video_width=info.width, video_height=info.height, video_fps=info.fps,
                video_duration_s=info.duration_s, rotation=info.rotation,
                frame_numbers=sampled.frame_numbers, timestamps_s=sampled.timestamps_s,
            )
    return to_table(rows, DECODED_SCHEMA)

