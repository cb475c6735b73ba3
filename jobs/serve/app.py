"""``fakescan serve``: the scan as an HTTP service on Ray Serve.

One deployment, ``ScanService``: each replica loads the scan's models once and runs the
scan's own stages in-process on each request's video (jobs/serve_pipeline.py), so the
answer is the ``verdicts/`` row and ``faces/`` rows that ``fakescan scan`` would write.
Decoding runs per request; the model stages run in ``serve.batch`` batches of decoded
videos, as the scan's actor pools run them on blocks of rows.

    POST /v1/scan    multipart upload in the field ``file``, or JSON {"uri": "s3://… | /path"}
    GET  /healthz    200 once the replica has loaded its models
    GET  /v1/models  detectors, model names and versions, trained flags, calibration
"""

import asyncio
import json
import logging
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from jobs.models import put_weights, resolve_detectors
from jobs.resources import PlanError
from jobs.runtime import cluster_resources, init_ray
from jobs.serve.pipeline import (
    ForbiddenSource,
    NotAVideo,
    UnreadableSource,
    Video,
    VideoPipeline,
    check_uri_allowed,
    check_video,
    read_uri,
    scan_result,
    upload_video,
)
from pipelines.sources import storage_options_for
from pipelines.stages import ResolvedDetector, ScanSettings

APP_NAME = "fakescan"
MAX_JSON_BYTES = 64 << 10
log = logging.getLogger("fakescan.serve")


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None  # None: the bundled starter hybrid, as in the scan
    ensemble_model: str | None = None  # None: the bundled starter ensemble, when installed
    detectors: tuple[str, ...] | None = None  # None: every detector that has a model, as in the scan
    tracking_uri: str | None = None
    s3_endpoint: str | None = None
    frames: int = 32
    aggregation: str = "max_face_mean"
    replicas: int = 1
    # Sized for 2 cores: a replica holds its CPU while idle, and the proxy and controller need none.
    replica_cpus: float = 0.5
    replica_gpus: float = 0.25  # only where the cluster has GPUs
    max_ongoing_requests: int = 8
    max_batch_size: int = 4  # decoded videos per pass through the model stages, as the scan's blocks
    batch_wait_timeout_s: float = 0.05
    max_upload_bytes: int = 200 << 20  # a URI's video is opened where it lives, at any size
    uri_prefixes: tuple[str, ...] = ()  # where {"uri": …} may read; empty: anywhere this server can

    def scan_settings(self, run_id: str) -> ScanSettings:
        return ScanSettings(run_id=run_id, frames=self.frames, aggregation=self.aggregation)


class BadRequest(ValueError):
    """A body that cannot be parsed."""


class MissingField(ValueError):
    """A well-formed body without the field that names the video."""


class UnsupportedBody(ValueError):
    """A body that is neither a multipart upload nor JSON."""


class TooLarge(ValueError):
    """A body over the upload limit."""


ERROR_STATUS: dict[type[Exception], int] = {
    BadRequest: 400, ForbiddenSource: 403, TooLarge: 413, NotAVideo: 415, UnsupportedBody: 415,
    MissingField: 422, UnreadableSource: 422,
}

# Serve freezes the app when the class is decorated: every handler is registered before that.
api = FastAPI(title="fakescan", description="Deepfake verdicts for single videos, from the scan's own stages.")


async def client_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=ERROR_STATUS[type(exc)])


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request failed")
    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"},
                        status_code=500)


for error_type in ERROR_STATUS:
    api.add_exception_handler(error_type, client_error)
api.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]  # starlette: handlers take any Exception
api.add_exception_handler(Exception, server_error)


async def limited_body(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body, refused as soon as it is known to exceed ``limit``: by its declared
    Content-Length before a byte is read, else while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body is {int(declared)} bytes, over this server's {limit}-byte limit")
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise TooLarge(f"the request body is over this server's {limit}-byte limit")
        yield chunk


@serve.deployment(name="ScanService", max_constructor_retry_count=2)
@serve.ingress(api)
class ScanService:
    def __init__(self, detectors: dict[str, ResolvedDetector], config: ServeConfig, run_id: str) -> None:
        # The weights arrive as object refs (read once by the driver; see build_app).
        self.pipeline = VideoPipeline(detectors, config.scan_settings(run_id))
        self.config = config
        self.models = {"detectors": self.pipeline.describe(), "frames": config.frames,
                       "aggregation": config.aggregation, "run_id": run_id}
        self.detect.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]  # added by @serve.batch
        self.detect.set_batch_wait_timeout_s(config.batch_wait_timeout_s)  # type: ignore[attr-defined]  # as above

    @api.get("/healthz")
    def healthz(self) -> dict[str, Any]:
        # A replica takes requests only after __init__ loaded every model.
        return {"status": "ok", "replica": serve.get_replica_context().replica_tag}

    @api.get("/v1/models")
    def list_models(self) -> dict[str, Any]:
        return self.models

    @api.post("/v1/scan")
    async def scan(self, request: Request) -> JSONResponse:
        video = await self.receive(request)
        if video.data is not None:  # an upload; a URI's file is the scan's to judge, as in a scan
            await asyncio.to_thread(check_video, video.data)
        decoded = await asyncio.to_thread(self.pipeline.decode, video.table())
        del video  # the upload's bytes are not needed while the frames wait for their batch
        scored = await self.detect(decoded)
        verdicts = await asyncio.to_thread(self.pipeline.judge, scored)
        return JSONResponse(scan_result(verdicts))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)  # __init__ applies the config's settings
    async def detect(self, decoded: list[pa.Table]) -> list[pa.Table]:
        scored = await asyncio.to_thread(self.pipeline.detect, pa.concat_tables(decoded))
        return [scored.slice(i, 1) for i in range(scored.num_rows)]

    async def receive(self, request: Request) -> Video:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            return await self.receive_upload(request)
        if media_type == "application/json":
            return await self.receive_uri(request)
        raise UnsupportedBody("send the video as multipart/form-data in the field 'file', or JSON "
                              '{"uri": "s3://… or a path"}' + (f", not {media_type}" if media_type else ""))

    async def receive_upload(self, request: Request) -> Video:
        started = time.perf_counter()
        parser = MultiPartParser(request.headers, limited_body(request, self.config.max_upload_bytes),
                                 max_files=1, max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise BadRequest(f"malformed multipart body: {exc.message}") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise MissingField("the multipart body has no file in the field 'file'")
            data = await upload.read()
        finally:
            await form.close()
        return upload_video(data, upload.filename, time.perf_counter() - started)

    async def receive_uri(self, request: Request) -> Video:
        body = b"".join([chunk async for chunk in limited_body(request, MAX_JSON_BYTES)])
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        uri = payload.get("uri") if isinstance(payload, dict) else None
        if not isinstance(uri, str) or not uri.strip():
            raise MissingField('the JSON body needs a field "uri" with an s3:// URI or a path')
        uri = uri.strip()
        check_uri_allowed(uri, self.config.uri_prefixes)
        options = storage_options_for(uri, self.config.s3_endpoint)
        return await asyncio.to_thread(read_uri, uri, options)


def check_replicas_fit(config: ServeConfig) -> None:
    """Replicas that cannot all be placed would leave the app deploying for ever: refuse in one line."""
    cpus, gpus = cluster_resources()
    needed = config.replicas * config.replica_cpus
    if needed > cpus:
        raise PlanError(f"{config.replicas} replica(s) of {config.replica_cpus:g} CPU need {needed:g} CPUs and the "
                        f"cluster has {cpus:g}; lower --replicas or --replica-cpus")
    if gpus and config.replicas * config.replica_gpus > gpus:
        raise PlanError(f"{config.replicas} replica(s) of {config.replica_gpus:g} GPU need "
                        f"{config.replicas * config.replica_gpus:g} GPUs and the cluster has {gpus:g}")


def build_app(config: ServeConfig, detectors: dict[str, ResolvedDetector], run_id: str) -> serve.Application:
    """The Serve application for ``resolve_serve_models``'s detectors. Needs Ray initialised."""
    actor_options: dict[str, Any] = {"num_cpus": config.replica_cpus}
    if ray.cluster_resources().get("GPU", 0) > 0:
        actor_options["num_gpus"] = config.replica_gpus
    return ScanService.options(  # type: ignore[attr-defined]  # ray.serve's decorator adds .options
        num_replicas=config.replicas, max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options=actor_options).bind(
        # The weights go to the object store once, not into the deployment's stored config.
        put_weights(detectors), config, run_id)


def resolve_serve_models(config: ServeConfig) -> dict[str, ResolvedDetector]:
    """The scan's model resolution (registry fetch, one-line errors) for the served detectors."""
    return resolve_detectors(config.model, config.ensemble_model, config.detectors, config.tracking_uri,
                             config.s3_endpoint)


def url_of(config: ServeConfig) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    return f"http://{f'[{host}]' if ':' in host else host}:{config.port}"


def wait_until_healthy(url: str, timeout_s: float = 60.0) -> None:
    """The printed URL must answer with this app: Serve keeps the HTTP options of a Serve
    instance already running on the cluster, whatever this command asked for."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                if response.status == 200 and json.load(response).get("status") == "ok":
                    return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the app was deployed but {url}/healthz does not answer; is Serve already "
                               "running on this cluster with other HTTP options?")
        time.sleep(0.5)


def shut_down() -> None:
    """Delete this app; stop Serve too when no other app is left on the cluster."""
    if not ray.is_initialized():  # failed before Ray started: nothing to remove
        return
    try:
        serve.delete(APP_NAME)
    except RayServeException:  # Serve never started
        return
    if not serve.status().applications:
        serve.shutdown()


def deploy(config: ServeConfig) -> str:
    """Resolve the models, start Ray (or attach to RAY_ADDRESS) and Serve, deploy the app;
    return its URL once it answers there."""
    models = resolve_serve_models(config)  # a bad --model fails here, in one line, before Ray starts
    init_ray()
    check_replicas_fit(config)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    run_id = "serve-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config, models, run_id), name=APP_NAME, route_prefix="/")
    url = url_of(config)
    wait_until_healthy(url)
    return url


def serve_until_stopped(config: ServeConfig, on_ready: Callable[[str], None]) -> None:
    """Deploy, call ``on_ready(url)``, block until SIGINT or SIGTERM, then shut the app down.
    A signal during start-up (KeyboardInterrupt, or Ray's own SIGTERM exit) removes it too."""
    previous: dict[signal.Signals, Any] = {}
    try:
        url = deploy(config)
        stop = threading.Event()
        # After ray.init, which installs a SIGTERM handler of its own.
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        on_ready(url)
        while not stop.wait(1.0):
            pass
    finally:
        shut_down()
        for sig, handler in previous.items():  # a caller in the same process gets its own back
            signal.signal(sig, handler)
