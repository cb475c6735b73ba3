"""Scan throughput on one machine: the Ray pipeline against two sequential loops, in one run.

    .venv/bin/python bench/scan_throughput.py                    # 120 mixed clips (bench/mixed_media.py)
    .venv/bin/python bench/scan_throughput.py --media DIR        # any folder of videos
    .venv/bin/python bench/scan_throughput.py --pss-scale        # also peak PSS at a tenth of the videos

Three ways to score the same videos with the same hybrid model, alternating for ``--rounds``
rounds (medians reported; the machines are noisy, so only ratios within one run mean much):

- **plain loop**: what a team writes today (bench/plain_loop.py: decord, MTCNN at its defaults
  on a half-scale copy, the hybrid, the mean), one video at a time with torch's default threads;
- **same-code loop**: fakescan's own stages called in order in this process, one video at a
  time (``InProcessPipeline``); against it, the pipeline shows what overlap alone buys;
- **pipeline**: ``fakescan scan --detectors hybrid`` on the Ray cluster this process starts
  once (its start-up is reported apart; the pipeline's own actor start and model load count).

For each: videos/s, frames/s, cores busy (CPU seconds of this process and every Ray process
over the wall time) and peak PSS. Then each stage's busy seconds per video in the pipeline
(summed over its actors, from the verdicts' ``t_<stage>_s``) against the same-code loop's.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mixed_media import make_mixed_media
from bench.plain_loop import run_plain_loop
from jobs.models import resolve_detectors
from jobs.runtime import init_ray
from jobs.scan.job import ScanConfig, run_scan
from pipelines.execution import InProcessPipeline
from pipelines.sources import list_videos
from pipelines.stages import ScanSettings, scan_stages


@dataclass
class Run:
    videos: int
    seconds: float
    frames: int
    stage_s: dict[str, float] = field(default_factory=dict)  # busy seconds per stage, over all videos
    cpu_s: float = 0.0
    peak_pss: int = 0
    busy_by_window: list[float] = field(default_factory=list)
    cpu_by_kind: dict[str, float] = field(default_factory=dict)


def process_kind(proc: psutil.Process) -> str:
    """What a process is: Ray titles its workers ``ray::<what they run>``."""
    words = proc.cmdline() or [proc.name()]
    if words[0].startswith("ray::"):
        return "ray:" + words[0].split(".")[0].removeprefix("ray::")
    if proc.pid == os.getpid():
        return "driver (this process)"
    return next((Path(w).name for w in words if not Path(w).name.startswith("python")), proc.name())


class ProcessTreeSampler:
    """Peak summed PSS and CPU seconds of this process and its descendants (Ray's included).
    PSS, not RSS: Ray's object store is shared memory mapped by every worker, and summing RSS
    would count those pages once per process. PSS is read every ``pss_every``-th sample only:
    it walks every mapping of every process, and every 0.5 s over a Ray cluster's 30 processes
    that took a tenth of a core from the pipeline it measured."""

    def __init__(self, interval: float = 1.0, pss_every: int = 5) -> None:
        self._pss_every, self._samples = pss_every, 0
        self.peak_pss = 0
        self._cpu: dict[int, tuple[float, float]] = {}  # pid → (first, last) CPU seconds seen
        self._names: dict[int, str] = {}
        self.timeline: list[tuple[float, float]] = []  # (seconds since start, CPU seconds so far)
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    @property
    def cpu_s(self) -> float:
        return sum(last - first for first, last in self._cpu.values())

    def _sample(self) -> None:
        me = psutil.Process()
        total, with_pss = 0, self._samples % self._pss_every == 0
        self._samples += 1
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                if with_pss:
                    total += proc.memory_full_info().pss
                times = proc.cpu_times()
                used = times.user + times.system
                self._cpu[proc.pid] = (self._cpu.get(proc.pid, (used, used))[0], used)
                if not self._names.get(proc.pid, "").startswith("ray:"):  # a worker takes its title late
                    self._names[proc.pid] = process_kind(proc)
        self.peak_pss = max(self.peak_pss, total)
        self.timeline.append((time.perf_counter() - self._started, self.cpu_s))

    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds per kind of process (a stage's actors, Ray's daemons, this driver)."""
        kinds: dict[str, float] = {}
        for pid, (first, last) in self._cpu.items():
            kinds[self._names[pid]] = kinds.get(self._names[pid], 0.0) + last - first
        return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))

    def cores_busy_by_window(self, window_s: float = 10.0) -> list[float]:
        """Cores busy in each ``window_s`` of the run: where a pipeline starts, stalls or trails."""
        busy, start = [], (0.0, 0.0)
        for t, cpu in self.timeline:
            if t - start[0] >= window_s:
                busy.append((cpu - start[1]) / (t - start[0]))
                start = (t, cpu)
        return busy

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(interval)

    def __enter__(self) -> ProcessTreeSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def measured(fn: Callable[[], Run]) -> Run:
    with ProcessTreeSampler() as sampler:
        run = fn()
    run.cpu_s, run.peak_pss, run.busy_by_window = sampler.cpu_s, sampler.peak_pss, sampler.cores_busy_by_window()
    run.cpu_by_kind = sampler.cpu_by_kind()
    return run


def plain_loop(folder: Path, model: str, frames: int) -> Run:
    result = run_plain_loop(sorted(p for p in folder.iterdir() if p.is_file()), model, frames)
    return Run(result.videos, result.seconds, result.frames)


def same_code_loop(folder: Path, model: str, frames: int) -> Run:
    manifest = list_videos(str(folder), {})
    detectors = resolve_detectors(model, None, ("hybrid",))
    pipeline = InProcessPipeline(scan_stages(ScanSettings("bench", frames=frames), detectors))
    stage_s = dict.fromkeys((stage.name for stage in pipeline.stages), 0.0)
    n_frames = 0
    started = time.perf_counter()
    for i in range(manifest.num_rows):
        row = manifest.slice(i, 1)
        for stage, run in zip(pipeline.stages, pipeline.callables):
            t0 = time.perf_counter()
            row = run(row)
            stage_s[stage.name] += time.perf_counter() - t0
        n_frames += row["n_frames"][0].as_py() or 0
    return Run(manifest.num_rows, time.perf_counter() - started, n_frames, stage_s)


def pipeline(folder: Path, model: str, frames: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="fakescan-bench-") as out:
        summary = run_scan(ScanConfig(str(folder), out, model=model, detectors=("hybrid",), frames=frames,
                                      resume=False, progress=False))
    stage_s = {name: s.busy_s for name, s in summary.stages.items() if s.videos}
    return Run(summary.scanned, summary.elapsed_s, summary.frames, stage_s)


def median_run(runs: Sequence[Run]) -> Run:
    """The run of median wall time (its own figures, not a mix of runs)."""
    return sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]


def report(name: str, runs: Sequence[Run], baseline: Run | None) -> None:
    r = median_run(runs)
    ratio = f"{baseline.seconds / r.seconds:5.2f}x" if baseline else "    -"
    walls = "/".join(f"{x.seconds:.0f}" for x in runs)
    print(f"| {name} | {r.videos} | {walls} | {r.videos / r.seconds:.3f} | {r.frames / r.seconds:.1f} | "
          f"{r.cpu_s / r.seconds:.2f} | {r.cpu_s / r.videos:.2f} | {r.peak_pss / 2**30:.2f} | {ratio} |")


def subset_folder(folder: Path, n: int, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in folder.iterdir() if p.is_file())[:n]:
        (into / path.name).symlink_to(path)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=120, help="mixed clips to make and scan (without --media)")
    parser.add_argument("--media", type=Path, help="scan this folder instead of the mixed clips")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--model", default="hybrid_b0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-loops", action="store_true", help="run the pipeline only")
    parser.add_argument("--same-code-rounds", type=int, help="rounds with the same-code loop (default: every round)")
    parser.add_argument("--pss-scale", action="store_true",
                        help="also the pipeline's peak PSS on a tenth of the videos")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    work = Path(tempfile.mkdtemp(prefix="fakescan-bench-"))
    # The cache may hold more clips than asked for: the first --videos of them, as links.
    folder = args.media or subset_folder(make_mixed_media(args.videos), args.videos, work / "videos")
    n = len(list_videos(str(folder), {}))
    print(f"{n} videos in {folder}, {args.frames} frames each, model {args.model}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}")
    started = time.perf_counter()
    init_ray()
    print(f"Ray cluster start: {time.perf_counter() - started:.1f} s (once; not counted below)\n")
    ways: dict[str, Callable[[Path, str, int], Run]] = {"plain loop": plain_loop, "same-code loop": same_code_loop,
                                                        "pipeline": pipeline}
    if args.skip_loops:
        ways = {"pipeline": pipeline}
    if args.same_code_rounds == 0:
        ways.pop("same-code loop", None)
    runs: dict[str, list[Run]] = {name: [] for name in ways}
    for round_ in range(args.rounds):
        for name, way in ways.items():
            if name == "same-code loop" and args.same_code_rounds is not None and round_ >= args.same_code_rounds:
                continue
            runs[name].append(measured(lambda way=way: way(folder, args.model, args.frames)))
            print(f"round {round_ + 1}: {name} {runs[name][-1].seconds:.1f} s", flush=True)
    baseline = median_run(runs["plain loop"]) if "plain loop" in runs else None
    print("\n| way | videos | wall s (each round) | videos/s | frames/s | cores busy | CPU s/video | peak PSS GiB "
          "| × plain loop |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, way_runs in runs.items():
        report(name, way_runs, baseline)
    piped = median_run(runs["pipeline"])
    loop = median_run(runs["same-code loop"]) if "same-code loop" in runs else None
    print("\n| stage | pipeline busy s/video (all actors) | same-code loop s/video | pipeline ÷ loop |")
    print("| --- | --- | --- | --- |")
    for stage, busy in piped.stage_s.items():
        alone = loop.stage_s.get(stage, 0.0) / loop.videos if loop else 0.0
        versus = f"{busy / piped.videos / alone:.2f}" if alone else "-"
        print(f"| {stage} | {busy / piped.videos:.3f} | {f'{alone:.3f}' if loop else '-'} | {versus} |")
    print("\npipeline cores busy per 10 s: " + " ".join(f"{b:.1f}" for b in piped.busy_by_window))
    print("pipeline CPU seconds per video, by process: " + ", ".join(
        f"{kind} {cpu / piped.videos:.2f}" for kind, cpu in piped.cpu_by_kind.items() if cpu / piped.videos >= 0.01))
    if args.pss_scale:
        tenth = subset_folder(folder, max(1, n // 10), work / "tenth")
        small = measured(lambda: pipeline(tenth, args.model, args.frames))
        print(f"\npeak PSS: {small.peak_pss / 2**30:.2f} GiB for {small.videos} videos, "
              f"{piped.peak_pss / 2**30:.2f} GiB for {piped.videos} ({piped.peak_pss / small.peak_pss:.2f}x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
