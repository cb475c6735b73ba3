"""The scan job: list → decode → faces → [probes] → score → verdict → [explain] → Parquet.

The job owns the config, Ray's start-up, the device plan and the sinks; the stages
(``pipelines.stages``) know nothing of the CLI. Every listed video yields exactly one verdicts
row, and a rerun with the same destination scans only what has no verdict yet.
"""
from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from detector.degrade import PROBES
from detector.verdict import AGGREGATIONS
from jobs.devices import DevicePlan, GpuSettings, mps_daemon, plan_devices
from jobs.models import put_weights, resolve_detectors
from jobs.resources import fit_stages, stage_params
from jobs.runtime import check_destination, cluster_resources, init_ray, quiet_ray_data
from jobs.scan.metrics import ScanRun, ScanTally, StageStats
from jobs.watchdog import JobStalled, StallWatchdog
from pipelines.errors import OptionError
from pipelines.execution import build_dataset
from pipelines.rows import MANIFEST_SCHEMA
from pipelines.sinks import VerdictWriter, completed_video_ids
from pipelines.sources import filesystem_for, list_videos, storage_options_for
from pipelines.stages import ResolvedDetector, ScanSettings, StageSpec, scan_stages

EXPLAINABLE_LABELS = ("fake", "uncertain", "real")  # labels of videos that have faces


@dataclass
class ScanConfig:
    source: str
    out: str
    model: str | None = None  # None: the bundled starter hybrid
    ensemble_model: str | None = None  # None: the bundled starter ensemble, when installed
    detectors: tuple[str, ...] | None = None  # None: every detector that has a model
    probes: tuple[str, ...] = ()
    frames: int = 32
    s3_endpoint: str | None = None
    resume: bool = True
    limit: int | None = None
    aggregation: str = "max_face_mean"
    max_side: int = 1280
    detect_long_side: int = 480
    rows_per_file: int = 1000
    flush_seconds: float = 60.0
    gpu: GpuSettings = field(default_factory=GpuSettings)
    progress: bool = True
    tracking_uri: str | None = None
    explain: tuple[str, ...] = ()  # labels whose videos get heatmaps (scan --explain), e.g. ("fake",)
    explain_faces: int = 4  # most suspicious faces explained per flagged video
    stall_warning_s: float = 180.0  # no video finished for this long: say what the scan waits for
    stall_timeout_s: float | None = None  # ... and for this long: stop (a rerun resumes)

    def check(self) -> None:
        """Fail in one line on option values that name nothing known."""
        for option, values, known in (("aggregation", (self.aggregation,), AGGREGATIONS),
                                      ("probe", self.probes, PROBES), ("label to explain", self.explain,
                                                                      EXPLAINABLE_LABELS)):
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise OptionError(f"unknown {option} {unknown[0]!r}; choose from {', '.join(known)}")

    def params(self) -> dict[str, Any]:
        """The options as flat MLflow parameters."""
        params = {k: v for k, v in asdict(self).items()
                  if k not in ("tracking_uri", "progress", "gpu", "stall_warning_s", "stall_timeout_s")}
        return params | asdict(self.gpu)


@dataclass
class ScanSummary:
    out: str
    listed: int
    skipped: int
    scanned: int
    statuses: Counter
    labels: Counter
    elapsed_s: float
    frames: int = 0
    faces: int = 0
    bytes_read: int = 0
    damaged: int = 0
    stages: dict[str, StageStats] = field(default_factory=dict)  # throughput per stage, from the rows' timings
    mlflow_run_id: str | None = None

    def line(self) -> str:
        status = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())) or "none"
        label = ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items())) or "none"
        damaged = f", {self.damaged} damaged but scanned" if self.damaged else ""
        return (f"fakescan: scanned {self.scanned} of {self.listed} videos ({self.skipped} already done) in "
                f"{self.elapsed_s:.1f}s, {self.bytes_read / 1e6:.1f} MB read | status: {status}{damaged} | "
                f"label: {label} | output: {self.out}/verdicts, {self.out}/faces")


def planned_stages(config: ScanConfig, detectors: dict[str, ResolvedDetector], run_id: str
                   ) -> tuple[list[StageSpec], DevicePlan]:
    """The scan's stages with the device plan of the cluster this process is attached to, fitted
    to its CPUs (``PlanError`` when they cannot all run at once)."""
    out = config.out if "://" in config.out else str(Path(config.out).absolute())
    settings = ScanSettings(
        run_id=run_id, frames=config.frames, max_side=config.max_side, detect_long_side=config.detect_long_side,
        storage_options=storage_options_for(config.source, config.s3_endpoint),
        probes=config.probes, aggregation=config.aggregation, explain=config.explain,
        explain_faces=config.explain_faces, out=out, out_storage_options=storage_options_for(out, config.s3_endpoint))
    stages = scan_stages(settings, detectors)
    cpus, gpus = cluster_resources()
    plan = plan_devices(config.gpu, config.frames, stages, cpus, gpus)
    return fit_stages(plan.apply(stages), cpus), plan


def run_scan(config: ScanConfig) -> ScanSummary:
    started = time.monotonic()
    config.check()
    src_options = storage_options_for(config.source, config.s3_endpoint)
    out_options = storage_options_for(config.out, config.s3_endpoint)
    manifest = list_videos(config.source, src_options)
    detectors = resolve_detectors(config.model, config.ensemble_model, config.detectors, config.tracking_uri,
                                  config.s3_endpoint)
    check_destination(config.out, out_options)

    out_fs = filesystem_for(config.out, out_options)
    root = config.out.removeprefix("file://").rstrip("/")
    done = completed_video_ids(out_fs, root) if config.resume else set()
    todo = manifest.filter(pc.invert(pc.is_in(manifest["video_id"], pa.array(sorted(done), pa.string()))))
    if config.limit is not None:
        todo = todo.slice(0, config.limit)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    skipped = len(done & set(manifest["video_id"].to_pylist()))
    # Opened before Ray starts, so that a tracking server that cannot be reached fails in one line.
    record = ScanRun(config.tracking_uri, config.out, f"scan-{run_id}",
                     dict(config.params(), scan_run_id=run_id, detectors=",".join(detectors)))
    writer = VerdictWriter(out_fs, root, run_id, config.rows_per_file, config.flush_seconds)
    tally = ScanTally()
    try:
        if todo.num_rows:
            init_ray()
            quiet_ray_data()
            stages, plan = planned_stages(config, put_weights(detectors), run_id)
            record.log_params(plan.params() | stage_params(stages))
            stream_verdicts(config, todo, stages, plan, writer, tally)
        writer.close()
    except BaseException:
        record.finish(tally.metrics(manifest.num_rows, skipped, todo.num_rows, time.monotonic() - started), failed=True)
        raise
    elapsed = time.monotonic() - started
    if todo.num_rows:
        print(tally.stage_line(), file=sys.stderr)
    record.finish(tally.metrics(manifest.num_rows, skipped, todo.num_rows, elapsed))
    return ScanSummary(config.out, manifest.num_rows, skipped, todo.num_rows, tally.statuses, tally.labels, elapsed,
                       tally.frames, tally.faces, tally.bytes_read, tally.damaged, tally.stages, record.run_id)


def stream_verdicts(config: ScanConfig, todo: pa.Table, stages: list[StageSpec], plan: DevicePlan,
                    writer: VerdictWriter, tally: ScanTally) -> None:
    """Run the stages over ``todo`` and write every verdict as it arrives, under the stall watchdog."""
    from tqdm import tqdm

    watchdog = StallWatchdog(config.stall_warning_s, config.stall_timeout_s, stages)
    # MPS must run before the actors create their CUDA contexts: the dataset starts them lazily.
    with mps_daemon(plan.mps), tqdm(total=todo.num_rows, unit="video", desc="scan", file=sys.stderr,
                                    disable=not config.progress,
                                    mininterval=1.0 if sys.stderr.isatty() else 10.0) as bar, watchdog:
        try:
            batch: pa.Table  # iter_batches is typed for every batch format; this one is pyarrow's
            # No prefetching: each verdict is written as soon as it exists, so a video stuck in the
            # pipeline never holds back one that is done.
            for batch in build_dataset(todo.cast(MANIFEST_SCHEMA), stages).iter_batches(
                    batch_format="pyarrow", batch_size=None, prefetch_batches=0):
                writer.add(batch)
                tally.add(batch)
                bar.update(batch.num_rows)
                watchdog.progress(batch.num_rows)
        except KeyboardInterrupt:
            if watchdog.stalled is None:
                raise
            writer.close()  # the verdicts done so far stay; a rerun resumes after them
            raise JobStalled(f"the scan stopped: {watchdog.stalled}; {watchdog.rows} verdicts written, rerun the "
                             "same command to resume") from None
