"""Mistakes on the command line end in one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import os

import pytest

from tests.conftest import run_fakescan


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_source(tmp_path):
    assert_one_line_error(run_fakescan("scan", str(tmp_path / "nope"), "--out", str(tmp_path / "o")),
                          "source not found")


def test_unsupported_uri_scheme(tmp_path):
    assert_one_line_error(run_fakescan("scan", "ftp://host/videos", "--out", str(tmp_path / "o")),
                          "unsupported URI scheme")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; covered by the file-as-parent case")
def test_read_only_destination(tmp_path, short_face_video):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert_one_line_error(run_fakescan("scan", str(short_face_video), "--out", str(ro / "out")), "cannot write")


def test_destination_under_a_file(tmp_path, short_face_video):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_one_line_error(run_fakescan("scan", str(short_face_video), "--out", str(blocker / "out")),
                          "cannot write")


def test_missing_out_option(tmp_path):
    assert_one_line_error(run_fakescan("scan", str(tmp_path)), "--out")


def test_bad_frames_value(tmp_path):
    assert_one_line_error(run_fakescan("scan", str(tmp_path), "--out", str(tmp_path / "o"), "--frames", "zero"),
                          "--frames")


@pytest.mark.parametrize(("flag", "value", "said"), [("--degrade-share", "1.5", "between 0 and 1"),
                                                     ("--degrade-share", "half", "not a number"),
                                                     ("--fakes", "gan", "invalid choice")])
def test_bad_training_data_options(tmp_path, flag, value, said):
    result = run_fakescan("train", "hybrid", "--data", str(tmp_path), "--out", str(tmp_path / "o"), flag, value)
    assert_one_line_error(result, flag, said)


def test_model_path_that_does_not_exist(tmp_path, short_face_video):
    result = run_fakescan("scan", str(short_face_video), "--out", str(tmp_path / "o"),
                          "--model", str(tmp_path / "missing.safetensors"))
    assert_one_line_error(result, "missing.safetensors")


def test_help_explains_every_scan_option():
    result = run_fakescan("scan", "--help")
    assert result.returncode == 0
    for option in ("--out", "--model", "--frames", "--s3-endpoint", "--resume", "--no-resume", "--limit"):
        assert option in result.stdout
