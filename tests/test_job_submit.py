"""``ray job submit -- fakescan scan ...``: the scan runs as a Ray job on a running cluster, its
driver attaches to that cluster (it starts no Ray of its own), and the job succeeds with one
verdict per video."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import FAKESCAN
from tests.support.ray_nodes import RayNodes, eventually, no_session_ray_address

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def cluster(ray_nodes: Callable[[dict[str, int]], RayNodes]) -> RayNodes:
    return ray_nodes({"worker-1": 2})  # the head has 0 CPUs: every stage must run on worker-1


def test_ray_job_submit_scans_on_the_running_cluster(cluster: RayNodes, short_face_video: Path, no_face_video: Path,
                                                      multi_face_video: Path, tmp_path: Path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    src = tmp_path / "videos"
    src.mkdir()
    for video in (short_face_video, no_face_video, multi_face_video):
        shutil.copy(video, src / video.name)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the job server, not the caller, says where
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", "fakescan-scan-1", "--",
         FAKESCAN, "scan", str(src), "--out", str(out), "--model", "hybrid_tiny", "--detectors", "hybrid",
         "--frames", "4", "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env)
    assert submit.returncode == 0, (submit.stdout + submit.stderr)[-3000:]
    assert "fakescan: scanned 3 of 3 videos (0 already done)" in submit.stdout  # the job's log, tailed

    with no_session_ray_address():  # the client would ask the session cluster's dashboard instead
        job = JobSubmissionClient(cluster.dashboard_url).get_job_info("fakescan-scan-1")
    assert job.status == JobStatus.SUCCEEDED, job.message
    # The scan registered as this job's driver on the head, where the job server runs its entrypoint;
    # a scan that started its own local Ray would have left no driver here and no tasks on worker-1.
    head_id = next(node_id for node_id, name in cluster.node_names().items() if name == "head")
    assert job.driver_info is not None and job.driver_node_id == head_id

    def decoded() -> Counter:
        # On CPUs one actor task per video takes it from decode through the detector.
        return cluster.finished_tasks_per_node("MapBatches(InProcessPipeline)).submit", job.job_id)

    assert eventually(lambda: decoded() == {"worker-1": 3}), decoded()

    verdicts = pd.read_parquet(out / "verdicts")
    assert sorted(verdicts["uri"]) == sorted(str(p) for p in src.iterdir())
    assert verdicts.set_index("uri")["status"].to_dict() == {
        str(src / short_face_video.name): "ok", str(src / no_face_video.name): "no_face",
        str(src / multi_face_video.name): "ok"}
