"""``fakescan serve``: the real CLI on the session's Ray cluster, spoken to over HTTP.

One server for the module (starting Serve and loading the models takes most of the time),
with a small upload limit and --uri-prefix set, so every refusal can be tried on it. The
last test stops it with SIGTERM and checks that the cluster gets its CPUs back.
"""
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import requests

from pipelines.sinks import FACES_TABLE_SCHEMA, VERDICTS_SCHEMA
from pipelines.sources import list_videos, storage_options_for
from tests.conftest import FAKESCAN, free_port

pytestmark = [pytest.mark.slow, pytest.mark.s3]
START_TIMEOUT_S = 240
REQUEST_TIMEOUT_S = 120


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path  # the command's stderr
    allowed: Path  # the local --uri-prefix
    bucket: str  # under the S3 --uri-prefix
    video: Path  # outside --uri-prefix
    replica: str = ""  # the replica that answered first
    stdout: list[str] = field(default_factory=list)

    def post(self, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/v1/scan", timeout=REQUEST_TIMEOUT_S, **kwargs)

    def upload(self, data: bytes, name: str = "clip.mp4") -> requests.Response:
        return self.post(files={"file": (name, data, "video/mp4")})

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=30)


def wait_for_line(server: Server, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in server.stdout):
        if server.process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"fakescan serve did not start (exit {server.process.poll()}):\n"
                        f"{''.join(server.stdout)}{server.log.read_text()[-3000:]}", pytrace=False)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(ray_cluster, s3_server, short_face_video, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("served")
    shutil.copy(short_face_video, allowed / "face clip.mp4")
    s3 = s3_server.filesystem()
    bucket = f"fakescan-serve-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    s3.put_file(str(short_face_video), f"{bucket}/archive/face clip.mp4")
    port = free_port()
    # Room for the test clip and its multipart framing; twice the clip is over.
    limit = short_face_video.stat().st_size + 4096
    log = allowed.parent / "serve.log"
    stderr = log.open("w")
    process = subprocess.Popen(
        [FAKESCAN, "serve", "--port", str(port), "--frames", "4", "--max-upload-bytes", str(limit),
         "--replica-cpus", "0.5", "--max-ongoing-requests", "8", "--max-batch-size", "4",
         "--s3-endpoint", s3_server.endpoint_url, "--uri-prefix", str(allowed), "--uri-prefix", f"s3://{bucket}/"],
        stdout=subprocess.PIPE, stderr=stderr, text=True)
    srv = Server(f"http://127.0.0.1:{port}", process, log, allowed, bucket, short_face_video)

    def read_stdout() -> None:
        for line in process.stdout:
            srv.stdout.append(line)

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        wait_for_line(srv, "fakescan: serving", START_TIMEOUT_S)
        srv.replica = srv.get("/healthz").json()["replica"]
        yield srv
    finally:
        if process.poll() is None:  # a test failed before the SIGTERM test: still leave the cluster clean
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
        stderr.close()
        s3.rm(bucket, recursive=True)


def test_serving_line_names_the_url(server):
    assert [line.strip() for line in server.stdout if "serving" in line] == [
        f"fakescan: serving {server.url} (POST /v1/scan, GET /healthz, GET /v1/models); Ctrl-C or SIGTERM stops it"]


def as_verdicts_table(verdict: dict[str, Any]) -> pa.Table:
    row = dict(verdict, scanned_at=datetime.fromisoformat(verdict["scanned_at"]))
    return pa.Table.from_pylist([row], schema=VERDICTS_SCHEMA)


def test_upload_answers_with_a_verdicts_row_and_its_face_rows(server, short_face_video):
    response = server.upload(short_face_video.read_bytes(), name="face clip.mp4")
    assert response.status_code == 200, response.text
    verdict, faces = response.json()["verdict"], response.json()["faces"]
    # Exactly the columns and types of verdicts/ and faces/.
    assert list(verdict) == VERDICTS_SCHEMA.names
    assert as_verdicts_table(verdict).num_rows == 1
    assert pa.Table.from_pylist(faces, schema=FACES_TABLE_SCHEMA).num_rows == len(faces)
    assert list(faces[0]) == FACES_TABLE_SCHEMA.names
    assert (verdict["status"], verdict["uri"], verdict["n_frames"]) == ("ok", "upload://face clip.mp4", 4)
    assert verdict["label"] in ("fake", "uncertain", "real") and 0 <= verdict["p_fake"] <= 1
    assert len(faces) == verdict["n_faces"] > 0
    assert {f["video_id"] for f in faces} == {verdict["video_id"]}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_uri_is_read_as_the_scan_reads_it(server, s3_server, where):
    uri = str(server.allowed / "face clip.mp4") if where == "local" else f"s3://{server.bucket}/archive/face clip.mp4"
    response = server.post(json={"uri": uri})
    assert response.status_code == 200, response.text
    verdict = response.json()["verdict"]
    listed = list_videos(uri, storage_options_for(uri, s3_server.endpoint_url))
    assert (verdict["uri"], verdict["video_id"]) == (uri, listed["video_id"][0].as_py())
    assert verdict["status"] == "ok" and verdict["n_faces"] > 0


def test_corrupt_video_is_an_error_verdict_as_in_the_scan(server, short_face_video):
    data = short_face_video.read_bytes()
    assert b"moov" not in data[: len(data) // 5]  # cut before the index: unreadable, but still an mp4
    response = server.upload(data[: len(data) // 5], name="truncated.mp4")
    assert response.status_code == 200, response.text
    verdict = response.json()["verdict"]
    assert (verdict["status"], verdict["label"], verdict["error_stage"]) == ("error", "error", "decode")
    assert "not a readable video container" in verdict["error_message"]
    assert response.json()["faces"] == []


def oversized_chunks(data: bytes) -> Any:
    """A multipart body sent chunked, with no Content-Length to refuse it by."""
    yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'
    yield data
    yield data
    yield b"\r\n--b--\r\n"


BAD_REQUESTS: dict[str, tuple[int, Callable[[Server], dict[str, Any]]]] = {
    "text named .mp4": (415, lambda s: {"files": {"file": ("notes.mp4",
                                                           b"Meeting notes\n- archive the tapes\n" * 40)}}),
    "empty file": (415, lambda s: {"files": {"file": ("empty.mp4", b"")}}),
    "form fields, not a file": (415, lambda s: {"data": {"uri": str(s.video)}}),
    "malformed JSON": (400, lambda s: {"data": b'{"uri": ', "headers": {"Content-Type": "application/json"}}),
    "JSON without uri": (422, lambda s: {"json": {"url": str(s.video)}}),
    "multipart without the file field": (422, lambda s: {"files": {"video": ("a.mp4", s.video.read_bytes())}}),
    "missing local file": (422, lambda s: {"json": {"uri": str(s.allowed / "missing.mp4")}}),
    "missing S3 key": (422, lambda s: {"json": {"uri": f"s3://{s.bucket}/archive/missing.mp4"}}),
    "folder": (422, lambda s: {"json": {"uri": str(s.allowed)}}),
    "outside --uri-prefix": (403, lambda s: {"json": {"uri": str(s.video)}}),
    "escape with ..": (403, lambda s: {"json": {"uri": f"{s.allowed}/../{s.video.parent.name}/{s.video.name}"}}),
    "over the limit": (413, lambda s: {"files": {"file": ("big.mp4", s.video.read_bytes() * 2)}}),
    "over the limit, chunked": (413, lambda s: {"data": oversized_chunks(s.video.read_bytes()),
                                                "headers": {"Content-Type": "multipart/form-data; boundary=b"}}),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_a_one_line_error(server, case):
    status, request = BAD_REQUESTS[case]
    response = server.post(**request(server))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error and "\n" not in error and "Traceback" not in error


def test_concurrent_uploads_all_get_their_verdict(server, short_face_video):
    data = short_face_video.read_bytes()
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda i: server.upload(data, name=f"clip{i}.mp4"), range(6)))
    assert [r.status_code for r in responses] == [200] * 6, [r.text[:300] for r in responses]
    verdicts = [r.json()["verdict"] for r in responses]
    assert {v["uri"] for v in verdicts} == {f"upload://clip{i}.mp4" for i in range(6)}
    assert all(v["status"] == "ok" and v["n_faces"] > 0 for v in verdicts)
    # The same frames through a batch or alone: the same scores.
    assert len({round(v["hybrid_score"], 6) for v in verdicts}) == 1


def test_models_lists_each_detector_with_its_calibration(server):
    models = server.get("/v1/models").json()
    by_detector = {d["detector"]: d for d in models["detectors"]}
    assert set(by_detector) == {"hybrid", "ensemble"}
    assert by_detector["hybrid"]["trained"] and by_detector["hybrid"]["version"]
    assert set(by_detector["ensemble"]["calibration"]) == {"texture", "facial", "fusion"}
    ensemble = by_detector["ensemble"]["calibration"].values()
    assert all({"temperature", "low", "high", "weight"} <= set(s) for s in ensemble)
    assert (models["frames"], models["aggregation"]) == (4, "max_face_mean")


def test_replica_survives_bad_requests(server, short_face_video):
    health = server.get("/healthz")
    assert health.status_code == 200
    assert health.json()["replica"] == server.replica  # a crashed replica comes back under a new id
    assert server.upload(short_face_video.read_bytes()).status_code == 200


def test_sigterm_stops_the_server_and_frees_its_cpus(server, ray_cluster):
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=90) == 0, server.log.read_text()[-3000:]
    assert "Traceback" not in server.log.read_text()
    with pytest.raises(requests.ConnectionError):
        server.get("/healthz")
    import ray

    # An earlier in-process job of this session may already be connected to the same cluster.
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=ray_cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
            assert time.monotonic() < deadline, f"CPUs still held: {ray.available_resources()}"
            time.sleep(1)
    finally:
        if connected_here:
            ray.shutdown()
