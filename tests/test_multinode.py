"""fakescan on a multi-node Ray cluster: the scan attaches through RAY_ADDRESS, its work spreads over
the worker nodes, and a worker node that dies mid-scan costs time, never a verdict."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import FAKESCAN
from tests.support.ray_nodes import RayNodes, eventually

pytestmark = pytest.mark.slow
WORKERS = {"worker-1": 2, "worker-2": 2}  # the head has 0 CPUs: it schedules and hosts the driver
N_VIDEOS = 12
SCAN_FLAGS = ["--model", "hybrid_tiny", "--detectors", "hybrid", "--frames", "4", "--no-progress",
              "--rows-per-file", "1"]


@pytest.fixture(scope="module")
def cluster(ray_nodes: Callable[[dict[str, int]], RayNodes]) -> RayNodes:
    return ray_nodes(WORKERS)


@pytest.fixture
def nodes(cluster: RayNodes) -> RayNodes:
    cluster.replace_dead_workers()  # every test starts with all of WORKERS alive, whatever ran before
    return cluster


@pytest.fixture(scope="module")
def videos(short_face_video: Path, no_face_video: Path, multi_face_video: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("multinode-videos")
    for i in range(N_VIDEOS - 2):
        shutil.copy(short_face_video, src / f"face {i:02d}.mp4")
    shutil.copy(no_face_video, src / "no_face.mp4")
    shutil.copy(multi_face_video, src / "multi_face.mp4")
    return src


@contextmanager
def scanning(cluster: RayNodes, src: Path, out: Path) -> Iterator[subprocess.Popen]:
    """``fakescan scan`` attached to ``cluster`` through RAY_ADDRESS; killed if a check fails first."""
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    scan = subprocess.Popen([FAKESCAN, "scan", str(src), "--out", str(out), *SCAN_FLAGS], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield scan
    finally:
        if scan.poll() is None:
            scan.kill()
            scan.communicate()


def verdict_rows(out: Path) -> int:
    folder = out / "verdicts"
    return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet")) if folder.exists() else 0


def assert_one_verdict_per_video(out: Path, src: Path) -> None:
    verdicts = pd.read_parquet(out / "verdicts")
    assert sorted(verdicts["uri"]) == sorted(str(p) for p in src.iterdir())
    assert verdicts["video_id"].is_unique
    faces = pd.read_parquet(out / "faces")
    with_faces = verdicts[verdicts["n_faces"] > 0].set_index("video_id")["n_faces"]
    assert faces.groupby("video_id").size().to_dict() == with_faces.to_dict()
    assert not list(out.glob("*/.*.tmp"))


def test_scan_spreads_over_worker_nodes_with_one_row_per_video(nodes: RayNodes, videos: Path, tmp_path: Path):
    out = tmp_path / "out"
    with scanning(nodes, videos, out) as scan:
        stdout, stderr = scan.communicate(timeout=600)
    assert scan.returncode == 0, stderr[-3000:]
    assert f"scanned {N_VIDEOS} of {N_VIDEOS} videos (0 already done)" in stdout
    assert_one_verdict_per_video(out, videos)

    # Ray's task events say where each video ran: on CPUs one actor task per video takes it from decode
    # through the detector (pipelines.execution.chain_stages).
    job_id = nodes.driver_job_id(str(out))

    def decoded() -> Counter:
        return nodes.finished_tasks_per_node("MapBatches(InProcessPipeline)).submit", job_id)

    assert eventually(lambda: sum(decoded().values()) == N_VIDEOS), decoded()
    assert all(decoded()[name] > 0 for name in WORKERS), decoded()


def busy_scan_actors(nodes: RayNodes) -> dict[str, int]:
    """Per worker node, how many of the scan's actors work on a video now (titles ``ray::MapWorker(...).submit``)."""
    return {name: sum(t.startswith("ray::MapWorker(") and t.endswith(".submit") for t in node.worker_titles())
            for name, node in nodes.workers.items()}


def test_worker_node_killed_mid_scan_loses_nothing(nodes: RayNodes, videos: Path, tmp_path: Path):
    out = tmp_path / "out"
    with scanning(nodes, videos, out) as scan:
        # Kill the node whose actors are busiest as soon as one of them works on a video: on CPUs one actor takes
        # a video from decode through the detector, so all the videos are through the actors well before the
        # first verdict row lands.
        deadline = time.monotonic() + 300
        busy = busy_scan_actors(nodes)
        while not any(busy.values()) and scan.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            busy = busy_scan_actors(nodes)
        victim = max(busy, key=lambda name: busy[name])
        nodes.workers[victim].kill()
        assert busy[victim], f"no scan actor busy on any worker node to kill: {busy}"
        assert scan.poll() is None and verdict_rows(out) < N_VIDEOS, \
            "the node must die part-way through the scan for this test to mean anything"
        stdout, stderr = scan.communicate(timeout=600)
    assert scan.returncode == 0, stderr[-3000:]
    # The same run finished every video: Ray restarted the dead node's actors and re-ran its lost tasks.
    assert f"scanned {N_VIDEOS} of {N_VIDEOS} videos (0 already done)" in stdout
    assert_one_verdict_per_video(out, videos)
    assert eventually(lambda: nodes.node_states()[victim] == "DEAD"), nodes.node_states()
