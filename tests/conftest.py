"""Shared fixtures: a real local Ray cluster, the real S3 server and real media."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.s3", "tests.support.media"]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

FAKESCAN = str(Path(sys.executable).parent / "fakescan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A 2-CPU Ray head on 127.0.0.1 that every scan in the session attaches to via RAY_ADDRESS."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = free_port()
    temp_dir = tmp_path_factory.mktemp("ray")
    subprocess.run(
        [ray_bin, "start", "--head", "--num-cpus", "2", "--num-gpus", "0", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--disable-usage-stats",
         "--temp-dir", str(temp_dir)],
        check=True, capture_output=True,
    )
    address = f"127.0.0.1:{port}"
    old = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = address
    yield address
    import ray

    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([ray_bin, "stop", "--force"], capture_output=True)
    if old is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = old
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_fakescan(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([FAKESCAN, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
