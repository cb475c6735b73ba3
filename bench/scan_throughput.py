"""Scan throughput: the Ray pipeline against a plain sequential loop over the same stages.

    .venv/bin/python bench/scan_throughput.py --videos 20 --frames 8

Both runs use the same stage code (decode → MTCNN → hybrid → verdict) on the same
videos; the sequential loop handles one video at a time in this process. Prints videos/s,
frames/s, faces/s, peak RSS (this process plus every Ray worker), the ratio, and each
stage's standalone rate. Figures are ratios measured in one run: the machines are noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.models import resolve_detectors
from jobs.runtime import init_ray
from jobs.samples import fetch_sample_media
from jobs.scan.job import ScanConfig, run_scan
from pipelines.execution import InProcessPipeline
from pipelines.sources import list_videos
from pipelines.stages import ScanSettings, scan_stages


class PeakRSS:
    """Samples the summed PSS of this process and its descendants (Ray workers included).
    PSS, not RSS: Ray's object store is shared memory mapped by every worker, and summing
    RSS would count those pages once per process."""

    def __init__(self, interval: float = 0.5) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_full_info().pss
            self.peak = max(self.peak, total)
            time.sleep(interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def make_videos(n: int, folder: Path, cache: Path) -> list[Path]:
    samples = fetch_sample_media(cache / "samples")
    faces = [p for p in samples if p.name in ("single_face.mp4", "WolfgangLanger_Pexels.mp4", "face_noface.mov")]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = faces[i % len(faces)]
        shutil.copy(src, folder / f"video_{i:04d}{src.suffix}")
    return sorted(folder.iterdir())


def run_sequential(folder: Path, model: str, frames: int) -> dict[str, float]:
    manifest = list_videos(str(folder), {})
    detectors = resolve_detectors(model, None, ("hybrid",))
    pipeline = InProcessPipeline(scan_stages(ScanSettings("bench", frames=frames), detectors))
    stage_time = {stage.name: 0.0 for stage in pipeline.stages}
    n_frames = n_faces = 0
    start = time.perf_counter()
    for i in range(manifest.num_rows):
        row = manifest.slice(i, 1)
        for stage, run in zip(pipeline.stages, pipeline.callables):
            t0 = time.perf_counter()
            row = run(row)
            stage_time[stage.name] += time.perf_counter() - t0
        n_frames += row["n_frames"][0].as_py()
        n_faces += row["n_faces"][0].as_py()
    elapsed = time.perf_counter() - start
    n = manifest.num_rows
    rates = {f"{k}_videos_per_s": n / v for k, v in stage_time.items() if v > 0}
    return {"videos": n, "seconds": elapsed, "frames": n_frames, "faces": n_faces, **rates}


def run_ray(folder: Path, out: Path, model: str, frames: int) -> dict[str, float]:
    import pandas as pd

    t0 = time.perf_counter()
    init_ray()  # cluster start-up is reported apart: a long scan pays it once
    print(f"ray cluster start: {time.perf_counter() - t0:.1f}s (not counted below)")
    start = time.perf_counter()
    summary = run_scan(ScanConfig(str(folder), str(out), model=model, frames=frames, resume=False, progress=False))
    elapsed = time.perf_counter() - start
    verdicts = pd.read_parquet(out / "verdicts")
    return {"videos": summary.scanned, "seconds": elapsed, "frames": int(verdicts["n_frames"].sum()),
            "faces": int(verdicts["n_faces"].sum())}


def report(name: str, r: dict[str, float], rss: int) -> None:
    s = r["seconds"]
    print(f"{name:<11} {r['videos']:>4} videos in {s:6.1f}s: {r['videos'] / s:6.2f} videos/s, "
          f"{r['frames'] / s:7.1f} frames/s, {r['faces'] / s:7.1f} faces/s, peak PSS {rss / 2**30:5.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--model", default="hybrid_b0")
    parser.add_argument("--skip-sequential", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    work = Path(tempfile.mkdtemp(prefix="fakescan-bench-"))
    cache = Path(os.environ.get("FAKESCAN_CACHE", Path.home() / ".cache" / "fakescan"))
    folder = work / "videos"
    make_videos(args.videos, folder, cache)
    print(f"{args.videos} videos, {args.frames} frames each, model {args.model}, {os.cpu_count()} cores")
    seq = None
    if not args.skip_sequential:
        with PeakRSS() as rss_seq:
            seq = run_sequential(folder, args.model, args.frames)
        report("sequential", seq, rss_seq.peak)
        print("standalone stage rates (videos/s): " + ", ".join(
            f"{k.removesuffix('_videos_per_s')} {v:.2f}" for k, v in seq.items() if k.endswith("_per_s")))
    with PeakRSS() as rss_ray:
        ray_run = run_ray(folder, work / "out", args.model, args.frames)
    report("ray", ray_run, rss_ray.peak)
    if seq:
        ratio = (ray_run["videos"] / ray_run["seconds"]) / (seq["videos"] / seq["seconds"])
        print(f"ratio ray/sequential: {ratio:.2f} (Ray includes starting its actors and loading models)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
