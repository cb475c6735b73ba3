"""The scan's stages on one video at a time, in-process: what a Serve replica runs per request.

The same stage list as the scan's Ray Data pipeline (``pipelines.stages.scan_stages``), on the
same Arrow rows, so that a served verdict is exactly the row ``fakescan scan`` writes to
``verdicts/`` for that file, and its faces the rows it writes to ``faces/``. Nothing here
imports Ray: the replica wraps it, and a benchmark can call it directly.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.decode import DecodeConfig, DecodeError, sample_frames
from pipelines.errors import SourceError
from pipelines.execution import InProcessPipeline
from pipelines.rows import UPLOAD_SCHEMA, to_table
from pipelines.sinks import VERDICTS_SCHEMA, split_faces
from pipelines.sources import SNIFF_BYTES, list_videos, sniff_video, video_id_for
from pipelines.stages import ResolvedDetector, ScanSettings, scan_stages


class NotAVideo(ValueError):
    """The bytes are not a video container that the scan would try to decode."""


class UnreadableSource(ValueError):
    """A URI that names no single readable video."""


class ForbiddenSource(ValueError):
    """A URI outside the prefixes this server may read."""


@dataclass(frozen=True)
class Video:
    """One video to scan: its manifest row, built as the scan lists it, and its bytes when they
    came with the request (an upload); a URI's video is opened where it lives, as the scan does."""

    row: dict[str, Any]
    data: bytes | None = None

    def table(self) -> pa.Table:
        return to_table([{**self.row, "data": self.data}], UPLOAD_SCHEMA)


class VideoPipeline:
    """decode → faces → every detector → verdict: the scan's stages, on an upload's bytes or on
    the video a URI names."""

    def __init__(self, detectors: Mapping[str, ResolvedDetector], settings: ScanSettings,
                 device: str | None = None) -> None:
        self.detectors = detectors
        self.stages = InProcessPipeline(scan_stages(settings, detectors), device)

    def decode(self, videos: pa.Table) -> pa.Table:
        return self.stages.run(videos, "prepare")

    def detect(self, decoded: pa.Table) -> pa.Table:
        """The model stages, on any number of decoded rows (a replica batches them)."""
        return self.stages.run(decoded, "detect")

    def judge(self, scored: pa.Table) -> pa.Table:
        return self.stages.run(scored, "judge")

    def __call__(self, videos: pa.Table) -> pa.Table:
        return self.judge(self.detect(self.decode(videos)))

    def describe(self) -> list[dict[str, Any]]:
        """Each detector's model, whether it was trained, and its calibration per stream."""
        return [detector.info.describe() for detector in self.detectors.values()]


def upload_video(data: bytes, filename: str | None, read_seconds: float) -> Video:
    """An uploaded file as a manifest row: ``upload://NAME``, its etag the MD5 of its bytes (the
    S3 ETag the same bytes get when put in one part), so a re-upload keeps its ``video_id``."""
    uri = f"upload://{safe_name(filename)}"
    etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
    row = {"video_id": video_id_for(uri, len(data), etag), "uri": uri, "size_bytes": len(data), "etag": etag,
           "status": "pending", "t_read_s": read_seconds}
    return Video(row, data)


def safe_name(filename: str | None) -> str:
    """The client's base name for the file, without path or control characters."""
    name = re.sub(r"[\x00-\x1f\x7f]", "", os.path.basename((filename or "").replace("\\", "/"))).strip()
    return name or "video"


def check_uri_allowed(uri: str, prefixes: tuple[str, ...]) -> None:
    """No prefixes: any URI. Otherwise the URI must sit under one of them, after resolving
    ``..`` and symlinks for local paths (S3 keys are literal, so ``..`` is refused there)."""
    if not prefixes:
        return
    if uri.startswith("s3://"):
        # A prefix is a folder: s3://archive allows s3://archive/x, not s3://archive-private/x.
        allowed = ".." not in uri.split("/") and any(uri.startswith(p.rstrip("/") + "/")
                                                     for p in prefixes if p.startswith("s3://"))
    else:
        path = Path(uri.removeprefix("file://")).expanduser().resolve()
        allowed = any(path.is_relative_to(Path(p.removeprefix("file://")).expanduser().resolve())
                      for p in prefixes if not p.startswith("s3://"))
    if not allowed:
        raise ForbiddenSource(f"this server reads only under {', '.join(prefixes)}: {uri}")


def read_uri(uri: str, storage_options: dict[str, Any]) -> Video:
    """List one video exactly as the scan does (same ``video_id``); the decode stage opens it."""
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri.removeprefix("file://")).expanduser()
        if path.is_dir():  # never walk a folder on a client's say-so
            raise UnreadableSource(f"{uri} is a folder; send one video")
        expected = str(path.absolute())
    else:
        expected = uri.rstrip("/")
    try:
        manifest = list_videos(uri, storage_options)
    except (SourceError, OSError) as exc:
        raise UnreadableSource(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a storage client's own errors (credentials, endpoint)
        raise UnreadableSource(f"cannot list {uri}: {type(exc).__name__}: {exc}") from None
    if manifest.num_rows != 1 or manifest["uri"][0].as_py() != expected:
        raise UnreadableSource(f"{uri} is a prefix, not one video")
    row = manifest.to_pylist()[0]
    if row["status"] == "error":
        raise UnreadableSource(f"cannot read {uri}: {row['error_message']}")
    return Video({k: v for k, v in row.items() if v is not None})


def check_video(data: bytes) -> None:
    """Raise NotAVideo unless the scan would try to decode these bytes: a container's magic
    bytes (even if the rest is corrupt: that is the scan's ``error`` row, not a refusal), else
    anything FFmpeg opens with a video stream, a still photo included, as the scan does."""
    if not data:
        raise NotAVideo("the file is empty (0 bytes)")
    if sniff_video(data[:SNIFF_BYTES]):
        return
    try:
        sample_frames(io.BytesIO(data), DecodeConfig(n_frames=1, max_side=16))
    except DecodeError as exc:
        raise NotAVideo(f"not a video: {exc}") from None


def scan_result(verdicts: pa.Table) -> dict[str, Any]:
    """A one-row verdicts table as JSON: the ``verdicts/`` row and its ``faces/`` rows."""
    return {"verdict": json_safe(verdicts.select(VERDICTS_SCHEMA.names).to_pylist()[0]),
            "faces": json_safe(split_faces(verdicts).to_pylist())}


def json_safe(value: Any) -> Any:
    """Arrow's Python values as strict JSON: timestamps in ISO 8601, no NaN or infinity."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
