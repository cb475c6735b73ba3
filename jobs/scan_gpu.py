"""Where the scan's model pools run: GPU shares, batch sizes, precision, and CUDA MPS.

``plan_devices`` turns the scan's config and the cluster's resources into one plan per pool.
Without a GPU in the cluster every pool gets its CPU settings, whatever the GPU fields say;
with GPUs, the defaults follow what one H100 measured (../shared/reference/device-ray.md):
face detection, not the Giant backbone, is the cost to beat, and MTCNN keeps a GPU only ~17%
busy, so two MTCNN actors share each GPU with one ensemble and one hybrid actor, under CUDA
MPS (several processes on one GPU without MPS were slower than one).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from pipelines.sources import SourceError

if TYPE_CHECKING:
    from jobs.scan import ScanConfig

MPS_CONTROL = "nvidia-cuda-mps-control"
AUTOCAST_CHOICES = ("bf16", "off")
# A CPU's settings: a video per MTCNN call, and the forward batches the stages always used.
CPU_VIDEOS_PER_CALL = {"faces": 1, "hybrid": 4, "ensemble": 4}
CPU_BATCH = {"hybrid": 64, "ensemble": 32}
# Share of the cluster's CPUs that each CPU pool may grow to.
CPU_SHARE = {"faces": 0.5, "hybrid": 0.25, "ensemble": 0.25}


@dataclass(frozen=True)
class PoolPlan:
    num_cpus: float  # per actor
    num_gpus: float  # per actor; 0 on a CPU cluster
    min_actors: int  # on GPUs every actor starts at once: a model loads once, not on each scale-up
    max_actors: int
    videos_per_call: int  # map_batches batch_size
    batch_size: int  # frames per MTCNN call, or images per forward pass

    def map_batches_args(self) -> dict[str, Any]:
        from ray.data import ActorPoolStrategy

        return {"batch_size": self.videos_per_call, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus,
                "compute": ActorPoolStrategy(min_size=self.min_actors, max_size=self.max_actors)}


@dataclass(frozen=True)
class DevicePlan:
    gpus: int  # in the cluster
    device: str  # what the model actors use: cuda or cpu
    faces: PoolPlan
    hybrid: PoolPlan
    ensemble: PoolPlan
    autocast: str | None  # bf16, or None for full precision
    channels_last: bool
    mps: bool  # start CUDA MPS for the scan: several actors share a GPU

    def stage_kwargs(self, pool: str) -> dict[str, Any]:
        """Constructor arguments of a model stage (ScoreFaces, ScoreEnsemble) for ``pool``."""
        return {"device": self.device, "batch_size": getattr(self, pool).batch_size, "autocast": self.autocast,
                "channels_last": self.channels_last}

    def params(self) -> dict[str, Any]:
        """Flat, prefixed ``plan_`` (beside the config's own fields), for MLflow."""
        flat: dict[str, Any] = {"gpus": self.gpus, "device": self.device, "autocast": self.autocast or "off",
                                "channels_last": self.channels_last, "mps": self.mps}
        for pool in ("faces", "hybrid", "ensemble"):
            flat.update({f"{pool}_{k}": v for k, v in asdict(getattr(self, pool)).items()})
        return {f"plan_{k}": v for k, v in flat.items()}


def cpu_pool_size(cluster_cpus: float, per_actor_cpus: float, share: float) -> int:
    return max(1, int(cluster_cpus * share / per_actor_cpus))


def plan_devices(config: ScanConfig, cluster_cpus: float, cluster_gpus: float, pools: tuple[str, ...]) -> DevicePlan:
    """The plan for ``pools`` (the enabled detectors, e.g. ("hybrid", "ensemble")) on a cluster
    with these resources. Fails in one line when the pools' GPU shares overfill a GPU."""
    gpus = int(cluster_gpus)
    if gpus < 1:
        faces = PoolPlan(config.faces_cpus, 0.0, 1, cpu_pool_size(cluster_cpus, config.faces_cpus, CPU_SHARE["faces"]),
                         CPU_VIDEOS_PER_CALL["faces"], config.frames)
        models = {pool: PoolPlan(cpus, 0.0, 1, cpu_pool_size(cluster_cpus, cpus, CPU_SHARE[pool]),
                                 CPU_VIDEOS_PER_CALL[pool], CPU_BATCH[pool])
                  for pool, cpus in (("hybrid", config.score_cpus), ("ensemble", config.ensemble_cpus))}
        return DevicePlan(0, "cpu", faces, models["hybrid"], models["ensemble"], None, False, False)
    if config.gpu_autocast not in AUTOCAST_CHOICES:
        raise SourceError(f"unknown GPU autocast {config.gpu_autocast!r}; choose from {', '.join(AUTOCAST_CHOICES)}")
    shares = {"faces": config.faces_gpus * config.faces_actors_per_gpu, "hybrid": config.score_gpus,
              "ensemble": config.ensemble_gpus}
    per_gpu = sum(shares[p] for p in ("faces", *pools))
    if per_gpu > 1.0 + 1e-9:
        raise SourceError(f"the GPU shares add up to {per_gpu:g} of each GPU (faces {shares['faces']:g}, "
                          + ", ".join(f"{p} {shares[p]:g}" for p in pools) + "); lower them to 1 or less")
    # Enough frames per MTCNN call for a full batch, in whole videos.
    faces_videos = max(1, math.ceil(config.gpu_detect_batch / max(config.frames, 1)))
    n_faces = gpus * config.faces_actors_per_gpu
    faces = PoolPlan(config.faces_cpus, config.faces_gpus, n_faces, n_faces, faces_videos, config.gpu_detect_batch)
    hybrid = PoolPlan(config.score_cpus, config.score_gpus, gpus, gpus, config.gpu_videos_per_call,
                      config.gpu_hybrid_batch)
    ensemble = PoolPlan(config.ensemble_cpus, config.ensemble_gpus, gpus, gpus, config.gpu_videos_per_call,
                        config.gpu_ensemble_batch)
    actors_per_gpu = config.faces_actors_per_gpu + len(pools)
    return DevicePlan(gpus, "cuda", faces, hybrid, ensemble, None if config.gpu_autocast == "off" else "bf16",
                      config.channels_last, config.mps and actors_per_gpu > 1)


def mps_pipe_directory() -> Path:
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))


def warn(message: str) -> None:
    print(f"fakescan: {message}", file=sys.stderr)


@contextlib.contextmanager
def mps_daemon(wanted: bool) -> Iterator[bool]:
    """CUDA MPS on this machine for the duration of the block; yields whether it runs.

    Several CUDA processes on one GPU otherwise time-slice it; under MPS their kernels run
    side by side. A daemon that already runs is used and left running; one this block
    started is stopped after it. Where MPS cannot start, the scan goes on without it, after
    one line that says so. The daemon serves this machine's GPUs: on a multi-node cluster,
    start it on every GPU node (cluster.yaml's setup commands)."""
    if not wanted:
        yield False
        return
    control = shutil.which(MPS_CONTROL)
    if control is None:
        warn(f"CUDA MPS is not available ({MPS_CONTROL} not found); actors that share a GPU will time-slice it")
        yield False
        return
    if (mps_pipe_directory() / "control").exists():
        yield True
        return
    try:
        started = subprocess.run([control, "-d"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        started = subprocess.CompletedProcess([control, "-d"], 1, "", str(exc))
    if started.returncode != 0:
        reason = " ".join((started.stderr or started.stdout or f"exit status {started.returncode}").split())[:200]
        warn(f"CUDA MPS did not start ({reason}); actors that share a GPU will time-slice it")
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run([control], input="quit\n", capture_output=True, text=True, timeout=60, check=False)
