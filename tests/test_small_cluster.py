"""On a cluster of one CPU every job either runs or refuses at once in one line, naming what it
needs and what the cluster has: never a job that waits for ever."""
from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.dataset import CROP_SCHEMA
from tests.conftest import FAKESCAN, free_port
from tests.support.ray_nodes import RayNodes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_cpu(ray_nodes: Callable[[dict[str, int]], RayNodes]) -> RayNodes:
    return ray_nodes({"solo": 1})  # the head holds no CPU: one worker node with one CPU


def fakescan_on(cluster: RayNodes, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    return subprocess.run([FAKESCAN, *args], capture_output=True, text=True, timeout=600, env=env)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, short_face_video: Path) -> Path:
    folder = tmp_path_factory.mktemp("one-clip")
    (folder / "face.mp4").write_bytes(short_face_video.read_bytes())
    return folder


def test_a_scan_with_every_stage_fits_one_cpu_and_finishes(one_cpu, clip, tmp_path):
    result = fakescan_on(one_cpu, "scan", str(clip), "--out", str(tmp_path / "out"), "--model", "hybrid_tiny",
                         "--ensemble-model", "ensemble_tiny", "--probes", "jpeg50", "--explain", "--frames", "2",
                         "--no-progress", "--stall-timeout", "300")
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_parquet(tmp_path / "out" / "verdicts")["status"].tolist() == ["ok"]


def test_a_scan_with_one_detector_fits_and_finishes(one_cpu, clip, tmp_path):
    result = fakescan_on(one_cpu, "scan", str(clip), "--out", str(tmp_path / "out"), "--model", "hybrid_tiny",
                         "--detectors", "hybrid", "--frames", "2", "--no-progress", "--stall-timeout", "300")
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_parquet(tmp_path / "out" / "verdicts")["status"].tolist() == ["ok"]


def test_training_with_more_workers_than_fit_is_refused(one_cpu, tmp_path):
    crops = tmp_path / "data" / "crops"
    crops.mkdir(parents=True)
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 96, 80)).save(png, format="PNG")
    rows = [{"crop_id": f"c{i}", "label": i % 2, "kind": "real", "split": "train", "group": f"g{i}",
             "image": png.getvalue()} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows, schema=CROP_SCHEMA), crops / "part-0.parquet")
    line = one_error_line(fakescan_on(one_cpu, "train", "hybrid", "--data", str(tmp_path / "data"), "--out",
                                      str(tmp_path / "run"), "--model", "hybrid_tiny", "--workers", "2"))
    assert "training with 2 worker(s) needs at least 1.5 CPUs" in line and "the cluster has 1" in line


def test_serve_with_more_replicas_than_fit_is_refused(one_cpu):
    line = one_error_line(fakescan_on(one_cpu, "serve", "--replicas", "3", "--replica-cpus", "0.5", "--detectors",
                                      "hybrid", "--port", str(free_port())))
    assert "3 replica(s) of 0.5 CPU need 1.5 CPUs and the cluster has 1" in line
