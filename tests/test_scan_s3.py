"""Scans from and to a real S3 server (Ceph radosgw on 127.0.0.1)."""
from __future__ import annotations

import io

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_fakescan

pytestmark = [pytest.mark.s3, pytest.mark.slow]
SCAN = ("--model", "hybrid_tiny", "--frames", "4", "--no-progress")


def read_s3_parquet(fs, prefix: str) -> pd.DataFrame:
    parts = sorted(p for p in fs.find(prefix) if p.endswith(".parquet"))
    assert parts, f"no parquet under s3://{prefix}"
    return pd.concat([pq.read_table(io.BytesIO(fs.cat_file(p))).to_pandas() for p in parts], ignore_index=True)


def test_scan_s3_prefix_to_s3_destination(ray_cluster, s3_server, s3_bucket, s3fs_client, short_face_video,
                                          no_face_video, tmp_path):
    s3fs_client.put_file(str(short_face_video), f"{s3_bucket}/archive/2024/face clip.mp4")
    s3fs_client.put_file(str(no_face_video), f"{s3_bucket}/archive/2025/NOFACE.MOV")
    s3fs_client.pipe_file(f"{s3_bucket}/archive/notes.txt", b"not a video")
    s3fs_client.pipe_file(f"{s3_bucket}/archive/broken.mp4", b"\x00" * 100)

    result = run_fakescan("scan", f"s3://{s3_bucket}/archive", "--out", f"s3://{s3_bucket}/results",
                          "--s3-endpoint", s3_server.endpoint_url, *SCAN)
    assert result.returncode == 0, result.stderr[-3000:]

    verdicts = read_s3_parquet(s3fs_client, f"{s3_bucket}/results/verdicts")
    by_uri = dict(zip(verdicts["uri"], verdicts["status"]))
    assert by_uri == {
        f"s3://{s3_bucket}/archive/2024/face clip.mp4": "ok",
        f"s3://{s3_bucket}/archive/2025/NOFACE.MOV": "no_face",
        f"s3://{s3_bucket}/archive/broken.mp4": "error",
    }
    faces = read_s3_parquet(s3fs_client, f"{s3_bucket}/results/faces")
    assert len(faces) == verdicts["n_faces"].sum() > 0


def test_scan_s3_source_to_local_destination_resumes(ray_cluster, s3_server, s3_bucket, s3fs_client,
                                                     short_face_video, tmp_path):
    s3fs_client.put_file(str(short_face_video), f"{s3_bucket}/v/a.mp4")
    args = ("scan", f"s3://{s3_bucket}/v", "--out", str(tmp_path / "out"), "--s3-endpoint", s3_server.endpoint_url,
            *SCAN)
    assert run_fakescan(*args).returncode == 0
    s3fs_client.put_file(str(short_face_video), f"{s3_bucket}/v/b.mp4")
    second = run_fakescan(*args)
    assert "scanned 1 of 2 videos (1 already done)" in second.stdout
    assert len(pd.read_parquet(tmp_path / "out" / "verdicts")) == 2


def test_missing_bucket_is_a_one_line_error(s3_server, tmp_path):
    result = run_fakescan("scan", "s3://no-such-bucket-fakescan/x", "--out", str(tmp_path / "o"),
                          "--s3-endpoint", s3_server.endpoint_url)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "source not found" in result.stderr
