"""Where videos come from: listing local folders or S3 prefixes into a manifest, and opening
each video where it lives as a seekable file that reads only the blocks a decoder asks for.

A manifest row names one input file with a stable ``video_id`` (a hash of its URI,
size and etag or mtime), so a rerun recognises what it has already scanned and a
changed file is scanned again.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
from fsspec.caching import BlockCache

from pipelines.errors import SourceError, VideoError
from pipelines.rows import MANIFEST_SCHEMA, to_table

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".ts"})
# Training data may be photos too: FFmpeg opens them as one-frame videos, so decode is shared.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SNIFF_BYTES = 1024


def storage_options_for(uri: str, s3_endpoint: str | None = None) -> dict[str, Any]:
    """fsspec options; credentials and region come from the standard AWS variables."""
    if not uri.startswith("s3://"):
        return {}
    options: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    if s3_endpoint:
        options["client_kwargs"] = {"endpoint_url": s3_endpoint}
    return options


def filesystem_for(uri: str, storage_options: dict[str, Any]) -> fsspec.AbstractFileSystem:
    if uri.startswith("s3://"):
        return fsspec.filesystem("s3", **storage_options)
    if "://" in uri and not uri.startswith("file://"):
        raise SourceError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    return fsspec.filesystem("file")


def arrow_filesystem_for(uri: str, s3_endpoint: str | None = None):
    """pyarrow's own filesystem for ``uri`` (Ray Data's readers and Ray Train's storage use it);
    None for local paths."""
    if not uri.startswith("s3://"):
        return None
    from pyarrow.fs import S3FileSystem

    # pyarrow's S3 client sends checksums that some S3 servers (Ceph) reject unless told not to.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    return S3FileSystem(endpoint_override=s3_endpoint, region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))


def video_id_for(uri: str, size: int, etag: str) -> str:
    return hashlib.sha256(f"{uri}\0{size}\0{etag}".encode()).hexdigest()[:20]


def sniff_video(header: bytes) -> bool:
    """True when the first bytes look like a video container we can decode."""
    if len(header) >= 12 and header[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return True  # ISO BMFF / QuickTime
    if header.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska / WebM (EBML)
        return True
    if header[:4] == b"RIFF" and header[8:12] == b"AVI ":
        return True
    if header[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):  # MPEG-PS / MPEG video
        return True
    if header[:3] == b"FLV" or header[:4] == b"\x30\x26\xb2\x75":  # FLV, ASF/WMV
        return True
    # MPEG-TS: a sync byte every 188 bytes.
    return len(header) >= 377 and header[0] == header[188] == header[376] == 0x47


def _manifest_row(uri: str, size: int, etag: str) -> dict[str, Any]:
    return {"video_id": video_id_for(uri, size, etag), "uri": uri, "size_bytes": size, "etag": etag,
            "status": "pending"}


def _list_error_row(uri: str, reason: str) -> dict[str, Any]:
    row = _manifest_row(uri, -1, "")
    row.update(status="error", error_stage="list", error_message=reason)
    return row


def _wanted(name: str, read_header, extensions: frozenset[str]) -> bool:
    suffix = os.path.splitext(name)[1].lower()
    if suffix in extensions:
        return True
    return suffix == "" and sniff_video(read_header())


def _list_local(root: Path, extensions: frozenset[str]) -> list[dict[str, Any]]:
    files = [root] if root.is_file() else sorted(
        Path(dirpath) / name for dirpath, _, names in os.walk(root, followlinks=False) for name in names
    )
    rows = []
    for path in files:
        uri = str(path.absolute())
        try:
            if path != root and not _wanted(path.name, lambda p=path: p.open("rb").read(SNIFF_BYTES), extensions):
                continue
            stat = path.stat()
            rows.append(_manifest_row(uri, stat.st_size, str(stat.st_mtime_ns)))
        except OSError as exc:
            rows.append(_list_error_row(uri, f"{type(exc).__name__}: {exc.strerror or exc}"))
    return rows


def _list_s3(fs: fsspec.AbstractFileSystem, uri: str, extensions: frozenset[str]) -> list[dict[str, Any]]:
    root = uri[len("s3://"):].rstrip("/")
    found = fs.find(root, detail=True)
    if not found and fs.isfile(root):
        found = {root: fs.info(root)}
    rows = []
    for key, info in sorted(found.items()):
        if info.get("type") != "file":
            continue
        name = key.rsplit("/", 1)[-1]
        if key != root and not _wanted(name, lambda k=key: fs.cat_file(k, start=0, end=SNIFF_BYTES), extensions):
            continue
        etag = str(info.get("ETag") or info.get("etag") or info.get("LastModified") or "").strip('"')
        rows.append(_manifest_row(f"s3://{key}", int(info.get("size") or 0), etag))
    return rows


def list_videos(source: str, storage_options: dict[str, Any],
                extensions: frozenset[str] = VIDEO_EXTENSIONS) -> pa.Table:
    """The manifest for ``source``: a local file or folder, or an s3:// prefix (recursive)."""
    fs = filesystem_for(source, storage_options)
    if source.startswith("s3://"):
        try:
            rows = _list_s3(fs, source, extensions)
        except FileNotFoundError as exc:
            raise SourceError(f"source not found: {source}") from exc
        if not rows and not fs.exists(source[len("s3://"):]):
            raise SourceError(f"source not found: {source}")
        return to_table(rows, MANIFEST_SCHEMA)
    root = Path(source.removeprefix("file://")).expanduser()
    if not root.exists():
        raise SourceError(f"source not found: {source}")
    return to_table(_list_local(root, extensions), MANIFEST_SCHEMA)


# A decoder reads a header, an index and, per sampled frame, part of a GOP (a 2-s GOP of 720p
# H.264 at 4 Mbit/s is 1 MB): blocks of 512 KiB keep both the range requests and the bytes
# fetched past what is decoded few, and 64 of them bound what one open video holds.
BLOCK_BYTES = 512 << 10
CACHED_BLOCKS = 64


class ReadError(VideoError):
    """The video's bytes could not be fetched (as opposed to fetched and found broken)."""

    @classmethod
    def of(cls, exc: OSError) -> ReadError:
        return cls(f"cannot read the file: {exc.strerror or exc}")


class VideoFile(io.RawIOBase):
    """One video, read where it lives through a bounded block cache (fsspec's ``BlockCache``):
    only the blocks a decoder touches are fetched. It counts the bytes fetched and the seconds
    spent fetching them, and keeps the first failed fetch in ``error``: PyAV raises it from the
    call that read, and the file then reads as ended, so nothing is retried against a broken
    source. Closing it releases what ``release`` holds (a local file's descriptor)."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, name: str,
                 release: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.name, self.size = name, size
        self.bytes_read, self.read_seconds = 0, 0.0
        self.error: ReadError | None = None
        self._fetch, self._position, self._release = fetch, 0, release
        self._cache = BlockCache(BLOCK_BYTES, self._timed_fetch, size, maxblocks=CACHED_BLOCKS)

    def _timed_fetch(self, start: int, end: int) -> bytes:
        started = time.perf_counter()
        try:
            data = self._fetch(start, min(end, self.size))
        except OSError as exc:
            self.error = ReadError.of(exc)
            raise self.error from exc
        finally:
            self.read_seconds += time.perf_counter() - started
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.error is not None or self._position >= self.size:
            return 0
        data = self._cache._fetch(self._position, min(self._position + len(buffer), self.size))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None
        super().close()


def open_video(uri: str, size: int, storage_options: dict[str, Any], data: bytes | None = None) -> VideoFile:
    """``uri`` as a ``VideoFile`` of ``size`` bytes (as listed): an S3 object through range
    requests, a local file through ``pread``, or ``data`` already in memory (an upload)."""
    if data is not None:
        return VideoFile(lambda start, end: data[start:end], len(data), uri)
    if uri.startswith("s3://"):
        fs = filesystem_for(uri, storage_options)
        return VideoFile(lambda start, end: fs.cat_file(uri, start=start, end=end), size, uri)
    started = time.perf_counter()
    try:
        descriptor = os.open(uri.removeprefix("file://"), os.O_RDONLY)
    except OSError as exc:
        raise ReadError.of(exc) from exc
    video = VideoFile(lambda start, end: os.pread(descriptor, end - start, start), size, uri,
                      release=lambda: os.close(descriptor))
    video.read_seconds = time.perf_counter() - started
    return video
