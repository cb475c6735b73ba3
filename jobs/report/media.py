"""Pictures for ``fakescan report``: images checked before they are embedded, and the frame of a
face decoded from its video at the size the scan saw it, with the face's box drawn."""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import av
import numpy as np
from PIL import Image, ImageDraw

from pipelines.decode import DecodeConfig, DecodeError, scaled_size, upright
from pipelines.rows import one_line

THUMBNAIL_WIDTH = 360
BOX_COLOUR = (230, 30, 30)


@dataclass(frozen=True)
class Picture:
    """An image to embed, or (``data`` None) the reason there is none."""

    data: bytes | None
    mime: str = "image/png"
    missing: str = ""


def checked_image(data: bytes) -> Picture:
    """The bytes as a Picture once PIL has decoded them, so the page never embeds garbage."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        kind = (image.format or "PNG").lower()
    return Picture(data, f"image/{kind}")


def face_thumbnail(open_video: Callable[[], BinaryIO], uri: str, timestamp_s: float,
                   box: list[float] | None) -> Picture:
    """The face's frame, its box drawn, as a small JPEG; a placeholder when the video cannot be read."""
    try:
        with open_video() as handle:
            frame = frame_at(handle, timestamp_s or 0.0)
    except Exception as exc:  # noqa: BLE001 - a video gone or broken since the scan gets a placeholder
        return Picture(None, missing=f"thumbnail unavailable: cannot read {uri}: {one_line(exc, 200)}")
    image = Image.fromarray(frame)
    if box:
        ImageDraw.Draw(image).rectangle([float(v) for v in box], outline=BOX_COLOUR, width=max(2, image.width // 200))
    image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH * 2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return Picture(buffer.getvalue(), "image/jpeg")


def frame_at(source: Any, timestamp_s: float) -> np.ndarray:
    """The first frame at or after ``timestamp_s`` (seconds from the stream's start), RGB and upright,
    scaled as the scan's decode scales it, so that the face boxes in faces/ fit it."""
    with av.open(source, mode="r") as container:
        if not container.streams.video:
            raise DecodeError("no video stream")
        stream = container.streams.video[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        half_frame = 0.5 / float(stream.average_rate or 25)
        target = start + timestamp_s
        with contextlib.suppress(av.FFmpegError):  # unseekable (a still image read as a video): decode from the start
            container.seek(int(target / stream.time_base), stream=stream, backward=True, any_frame=False)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            if frame.time is None or frame.time >= target - half_frame:
                break
        if chosen is None:
            raise DecodeError(f"no decodable frame at {timestamp_s:.2f}s")
        width, height = scaled_size(chosen.width, chosen.height, DecodeConfig().max_side)
        pixels = chosen.to_ndarray(format="rgb24", width=width, height=height)
        return upright(pixels[None], int(getattr(chosen, "rotation", 0) or 0))[0]
