"""Shared fixtures: a real local Ray cluster, the real S3 server and real media."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before any test module imports decord (an independent reference decoder in tests/test_media.py):
# decord2's native libraries, loaded first, shadow symbols that torch resolves later, and torch
# then segfaults in the same process.
import torch

pytest_plugins = ["tests.support.s3", "tests.support.media", "tests.support.ray_nodes"]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

FAKESCAN = str(Path(sys.executable).parent / "fakescan")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped, with the reason, where there is none."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in gpu_tests:
        item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RayCluster:
    address: str
    temp_dir: Path  # every process of this cluster logs under it

    def worker_pids(self, actor_class: str) -> list[int]:
        """PIDs of this cluster's worker processes running ``actor_class`` (other clusters on the
        machine are left out: a worker's stdout is a log file under this cluster's temp dir)."""
        found = subprocess.run(["pgrep", "-f", f"ray::{actor_class}"], capture_output=True, text=True).stdout.split()
        pids = []
        for pid in map(int, found):
            try:
                if os.readlink(f"/proc/{pid}/fd/1").startswith(str(self.temp_dir)):
                    pids.append(pid)
            except OSError:
                continue
        return pids


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A 2-CPU Ray head on 127.0.0.1 that every scan in the session attaches to via RAY_ADDRESS.

    ``ray start --block`` stays in the foreground and takes its own processes down when
    terminated, so the suite never stops a Ray cluster that it did not start (``ray stop``
    would stop every cluster on the machine).
    """
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = free_port()
    temp_dir = tmp_path_factory.mktemp("ray")
    log = (temp_dir / "ray-start.log").open("w")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "0", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--disable-usage-stats",
         "--temp-dir", str(temp_dir)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in (temp_dir / "ray-start.log").read_text():
        assert head.poll() is None, (temp_dir / "ray-start.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "ray start --head took over 90 s"
        time.sleep(0.5)
    address = f"127.0.0.1:{port}"
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    yield RayCluster(address, temp_dir)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    head.terminate()
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
    log.close()
    if old is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = old
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_fakescan(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([FAKESCAN, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
