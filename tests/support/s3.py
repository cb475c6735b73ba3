"""Pytest plugin: a real S3 server (Ceph radosgw on a one-node memstore cluster) for tests.

Loaded with ``pytest_plugins = ["tests.support.s3"]`` in ``tests/conftest.py``.

Fixtures:
    s3_server    (session)  -> S3Server(endpoint_url, access_key, secret_key)
    s3fs_client  (function) -> s3fs.S3FileSystem talking to that server, no caches
    s3_bucket    (function) -> name of a fresh, empty bucket on that server

The server is started by ``scripts/s3-server.sh`` in a pytest temp dir and stopped at the end of
the session. While it runs, the AWS_* credential variables in ``os.environ`` point at it, so
subprocesses and Ray workers started afterwards inherit them. AWS_ENDPOINT_URL is set too:
s3fs/boto3 honour it, pyarrow.fs.S3FileSystem does not (pass ``endpoint_override=``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = REPO_ROOT / "scripts" / "s3-server.sh"
CEPH_PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph")
INSTALL_HINT = "sudo apt-get install -y radosgw ceph-mon ceph-osd"
DEFAULT_ACCESS_KEY = "fakescan-test"
DEFAULT_SECRET_KEY = "fakescan-test-secret"
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 120


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str

    def filesystem(self):
        """A new s3fs filesystem for this server, with instance and listings caches off."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            client_kwargs={"endpoint_url": self.endpoint_url},
            skip_instance_cache=True,
            use_listings_cache=False,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(workdir: Path) -> None:
    subprocess.run(
        ["bash", str(SERVER_SCRIPT), "stop", str(workdir)],
        check=False,
        timeout=STOP_TIMEOUT_S,
    )


def _start(workdir: Path, access_key: str, secret_key: str) -> tuple[str, float]:
    env = dict(os.environ, FAKESCAN_S3_ACCESS_KEY=access_key, FAKESCAN_S3_SECRET_KEY=secret_key)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(SERVER_SCRIPT), "start", str(workdir), str(_free_port())],
            capture_output=True,
            text=True,
            env=env,
            timeout=START_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{SERVER_SCRIPT.name} start did not finish in {START_TIMEOUT_S}s; logs in {workdir}/log\n"
            f"{exc.stderr or ''}",
            pytrace=False,
        )
    if proc.returncode != 0:
        pytest.fail(
            f"{SERVER_SCRIPT.name} start failed (exit {proc.returncode}); logs in {workdir}/log\n"
            f"{proc.stdout}{proc.stderr}",
            pytrace=False,
        )
    match = re.search(r"endpoint=(\S+)", proc.stdout)
    if match is None:
        pytest.fail(f"{SERVER_SCRIPT.name} start printed no endpoint:\n{proc.stdout}", pytrace=False)
    return match.group(1), time.monotonic() - started


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    missing = [p for p in CEPH_PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.fail(
            f"The S3 tests need Ceph's radosgw, but {', '.join(missing)} is not installed. "
            f"Install it with: {INSTALL_HINT}",
            pytrace=False,
        )
    access_key = os.environ.get("FAKESCAN_S3_ACCESS_KEY", DEFAULT_ACCESS_KEY)
    secret_key = os.environ.get("FAKESCAN_S3_SECRET_KEY", DEFAULT_SECRET_KEY)
    workdir = tmp_path_factory.mktemp("s3-server")
    try:
        try:
            endpoint_url, seconds = _start(workdir, access_key, secret_key)
        except pytest.fail.Exception:
            # radosgw has exited at start-up, without a log line, on a heavily loaded machine:
            # one more try in a fresh folder on a new port before the S3 tests fail.
            _stop(workdir)
            workdir = tmp_path_factory.mktemp("s3-server")
            endpoint_url, seconds = _start(workdir, access_key, secret_key)
        print(f"\nS3 server {endpoint_url} up in {seconds:.1f}s (state in {workdir})")
        server = S3Server(endpoint_url=endpoint_url, access_key=access_key, secret_key=secret_key)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", access_key)
            mp.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
            mp.setenv("AWS_ENDPOINT_URL", endpoint_url)
            # Newer AWS SDKs (pyarrow's included) send aws-chunked uploads with CRC checksum
            # trailers by default; radosgw 16 answers them with 411 MissingContentLength.
            mp.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
            mp.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
                mp.delenv(name, raising=False)
            yield server
    finally:
        _stop(workdir)


@pytest.fixture
def s3fs_client(s3_server: S3Server):
    return s3_server.filesystem()


@pytest.fixture
def s3_bucket(s3fs_client) -> str:
    bucket = f"fakescan-{uuid.uuid4().hex[:16]}"
    s3fs_client.mkdir(bucket)
    yield bucket
    # radosgw keeps objects in RAM (memstore): free them, best effort.
    with contextlib.suppress(OSError):
        s3fs_client.rm(bucket, recursive=True)
