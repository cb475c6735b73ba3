"""scan --explain: heatmaps of flagged faces beside the output, their URIs in faces/."""
from __future__ import annotations

import io

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import run_fakescan

pytestmark = pytest.mark.slow
# The tiny random model has no calibration, so every verdict is "uncertain": explain those.
SCAN = ("--model", "hybrid_tiny", "--detectors", "hybrid", "--frames", "6", "--no-progress", "--explain", "uncertain")


def test_explain_writes_a_heatmap_per_suspicious_face(ray_cluster, short_face_video, no_face_video, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "face.mp4").write_bytes(short_face_video.read_bytes())
    (videos / "empty.mp4").write_bytes(no_face_video.read_bytes())
    result = run_fakescan("scan", str(videos), "--out", str(tmp_path / "out"), *SCAN)
    assert result.returncode == 0, result.stderr[-3000:]
    faces = pd.read_parquet(tmp_path / "out" / "faces")
    explained = faces.dropna(subset=["heatmap_uri"])
    assert len(explained) == min(4, len(faces)) > 0
    assert (faces.dropna(subset=["heatmap_uri"]).uri.str.endswith("face.mp4")).all()
    # The most suspicious faces are the ones explained.
    assert explained.hybrid_logit.min() >= faces.hybrid_logit.nlargest(len(explained)).min()
    for uri in explained.heatmap_uri:
        assert uri.startswith(str(tmp_path / "out" / "heatmaps"))
        image = Image.open(uri)
        assert image.format == "PNG" and image.width == 2 * image.height  # the crop beside its overlay


@pytest.mark.s3
def test_explain_writes_heatmaps_to_s3(ray_cluster, s3_server, s3_bucket, s3fs_client, short_face_video):
    s3fs_client.put_file(str(short_face_video), f"{s3_bucket}/in/face.mp4")
    result = run_fakescan("scan", f"s3://{s3_bucket}/in", "--out", f"s3://{s3_bucket}/out",
                          "--s3-endpoint", s3_server.endpoint_url, *SCAN)
    assert result.returncode == 0, result.stderr[-3000:]
    parts = [p for p in s3fs_client.find(f"{s3_bucket}/out/faces") if p.endswith(".parquet")]
    faces = pd.concat([pq.read_table(io.BytesIO(s3fs_client.cat_file(p))).to_pandas() for p in parts])
    uris = faces.heatmap_uri.dropna().tolist()
    assert uris and all(u.startswith(f"s3://{s3_bucket}/out/heatmaps/") for u in uris)
    assert Image.open(io.BytesIO(s3fs_client.cat_file(uris[0]))).format == "PNG"


def test_explain_rejects_a_label_without_faces_in_one_line(tmp_path, short_face_video):
    result = run_fakescan("scan", str(short_face_video), "--out", str(tmp_path / "o"), "--explain", "no_face")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no_face" in result.stderr
