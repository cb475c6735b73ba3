"""What a scan reports about itself: counts, stage throughput, and its MLflow run.

Stage throughput comes from the timings every verdict row already carries (``t_<stage>_s``,
measured inside each stage around that video's work): summed over a run they are the stage's
busy time over all its actors, so ``videos / busy s`` is one actor's rate in the pipeline,
comparable with the stage's standalone rate. Nothing else is measured or sampled.

MLflow is optional: with a tracking URI (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``) the
scan records its parameters, the device plan and these figures as one run of the
``fakescan-scan`` experiment; without one it records nothing and says nothing.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.runtime import warn
from pipelines.errors import SourceError
from pipelines.verdict import STAGE_TIMES

EXPERIMENT = "fakescan-scan"
STAGES = tuple(t.removeprefix("t_").removesuffix("_s") for t in STAGE_TIMES)


@dataclass
class StageStats:
    videos: int = 0  # rows that ran this stage (an error in it included)
    busy_s: float = 0.0  # summed over the stage's actors or tasks

    @property
    def videos_per_busy_s(self) -> float:
        return self.videos / self.busy_s if self.busy_s > 0 else 0.0


@dataclass
class ScanTally:
    """Running totals over the verdict batches of a scan."""

    statuses: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    frames: int = 0
    faces: int = 0
    bytes_read: int = 0  # fetched from storage, over every video
    damaged: int = 0  # videos scanned from what still decodes
    stages: dict[str, StageStats] = field(default_factory=lambda: {name: StageStats() for name in STAGES})

    def add(self, batch: pa.Table) -> None:
        self.statuses.update(batch["status"].to_pylist())
        self.labels.update(batch["label"].to_pylist())
        self.frames += int(pc.sum(batch["n_frames"]).as_py() or 0)
        self.faces += int(pc.sum(batch["n_faces"]).as_py() or 0)
        self.bytes_read += int(pc.sum(batch["bytes_read"]).as_py() or 0)
        self.damaged += int(pc.sum(batch["damaged"].cast(pa.int64())).as_py() or 0)
        for name, column in zip(STAGES, STAGE_TIMES):
            times = batch[column]
            self.stages[name].videos += len(times) - times.null_count
            self.stages[name].busy_s += float(pc.sum(times).as_py() or 0.0)

    def stage_line(self) -> str:
        ran = [(name, s) for name, s in self.stages.items() if s.videos]
        shown = ", ".join(f"{name} {s.videos_per_busy_s:.2f} ({s.videos} in {s.busy_s:.1f} s)" for name, s in ran)
        return f"fakescan: stage throughput, videos per busy actor-second: {shown or 'no stage ran'}"

    def metrics(self, listed: int, skipped: int, scanned: int, elapsed_s: float) -> dict[str, float]:
        values: dict[str, float] = {
            "videos_listed": listed, "videos_skipped": skipped, "videos_scanned": scanned, "frames": self.frames,
            "faces": self.faces, "bytes_read": self.bytes_read, "videos_damaged": self.damaged,
            "elapsed_s": elapsed_s, "videos_per_s": scanned / elapsed_s if elapsed_s else 0.0,
        }
        values.update({f"status_{k}": v for k, v in self.statuses.items()})
        values.update({f"label_{k}": v for k, v in self.labels.items()})
        for name, s in self.stages.items():
            if s.videos:
                values.update({f"stage_{name}_videos": s.videos, f"stage_{name}_busy_s": s.busy_s,
                               f"stage_{name}_videos_per_busy_s": s.videos_per_busy_s})
        return values


def configured_tracking_uri(uri: str | None) -> str | None:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or None


class ScanRun:
    """The scan's MLflow run, or nothing when no tracking URI is configured."""

    def __init__(self, tracking_uri: str | None, out: str, run_name: str, params: dict[str, Any]) -> None:
        self.tracking_uri = configured_tracking_uri(tracking_uri)
        self.run_id: str | None = None
        if self.tracking_uri is None:
            return
        from jobs import tracking

        root = out.removeprefix("file://").rstrip("/")
        artifacts = f"{root}/mlartifacts" if "://" in root else Path(root).absolute() / "mlartifacts"
        try:
            experiment_id = tracking.ensure_experiment(self.tracking_uri, EXPERIMENT, artifacts)
            self.run_id = tracking.start_run(self.tracking_uri, experiment_id, run_name, params)
        except Exception as exc:  # noqa: BLE001 - any failure here means "cannot record", before the scan starts
            raise SourceError(f"cannot record the scan in MLflow at {self.tracking_uri}: "
                              f"{' '.join(str(exc).split())[:300]}") from None

    def log_params(self, params: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        MlflowClient(self.tracking_uri).log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def finish(self, metrics: dict[str, float], failed: bool = False) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        now = int(time.time() * 1000)
        try:
            client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])
            client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
        except Exception as exc:  # noqa: BLE001 - the verdicts are written; a lost record must not fail the scan
            warn(f"could not finish MLflow run {self.run_id}: {' '.join(str(exc).split())[:300]}")
