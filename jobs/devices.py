"""Where a job's actor pools run: CPU pool sizes, GPU shares, batch sizes, precision, CUDA MPS.

``plan_devices`` turns the GPU settings and the cluster's resources into one plan per actor
stage, which ``DevicePlan.apply`` lays over the declared stages (``pipelines.stages``).
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobs.runtime import pool_size, warn
from pipelines.errors import OptionError
from pipelines.execution import chain_stages
from pipelines.stages import Pool, Resources, StageSpec

MPS_CONTROL = "nvidia-cuda-mps-control"
AUTOCAST_CHOICES = ("bf16", "off")


@dataclass(frozen=True)
class GpuSettings:
    """How the scan uses GPUs (ignored on a cluster without one); the README's "On a GPU" table."""

    faces_gpus: float = 0.2  # per MTCNN actor
    faces_actors_per_gpu: int = 2
    score_gpus: float = 0.1  # per hybrid actor; 0.1 of each GPU is left for other actors (explain)
    ensemble_gpus: float = 0.4
    gpu_detect_batch: int = 128  # frames per MTCNN call (whole videos of the same detection size)
    gpu_hybrid_batch: int = 512  # face crops per forward pass
    gpu_ensemble_batch: int = 64
    gpu_videos_per_call: int = 16  # videos per call of a model actor: their crops share batches
    gpu_autocast: str = "bf16"  # bf16 | off
    channels_last: bool = True
    mps: bool = True  # start CUDA MPS for the scan when actors share a GPU

    def share(self, stage: str) -> float:
        """What a stage's actors take of each GPU, all together."""
        return {"faces": self.faces_gpus * self.faces_actors_per_gpu, "score": self.score_gpus,
                "ensemble": self.ensemble_gpus}.get(stage, 0.0)


@dataclass(frozen=True)
class StagePlan:
    resources: Resources  # per actor
    pool: Pool
    batch_size: int  # videos per call
    kwargs: Mapping[str, Any]  # the constructor arguments a device changes


@dataclass(frozen=True)
class DevicePlan:
    gpus: int  # in the cluster
    device: str  # what the actors use: cuda or cpu
    autocast: str | None  # bf16, or None for full precision
    channels_last: bool
    mps: bool  # start CUDA MPS for the scan: several actors share a GPU
    stages: Mapping[str, StagePlan]  # per actor stage
    # On a CPU cluster: this many actors (one per CPU) each run the stages from decode through
    # the last model stage in turn (``pipelines.execution.chain_stages``); 0 for separate pools.
    chained_actors: int = 0

    def apply(self, stages: Sequence[StageSpec]) -> list[StageSpec]:
        """The stages with this plan's resources, pools, batches and device arguments."""
        planned = []
        for stage in stages:
            plan = self.stages.get(stage.name)
            planned.append(stage if plan is None else replace(
                stage, resources=plan.resources, pool=plan.pool, batch_size=plan.batch_size).bind(**plan.kwargs))
        return chain_stages(planned, self.chained_actors) if self.chained_actors else planned

    def params(self) -> dict[str, Any]:
        """Flat, prefixed ``plan_`` (beside the config's own fields), for MLflow; each stage's own
        figures are ``jobs.resources.stage_params``."""
        flat: dict[str, Any] = {"gpus": self.gpus, "device": self.device, "autocast": self.autocast or "off",
                                "channels_last": self.channels_last, "mps": self.mps,
                                "chained_actors": self.chained_actors}
        return {f"plan_{k}": v for k, v in flat.items()}


def threads_for(resources: Resources) -> int:
    """torch threads for an actor: its CPU reservation, whole (Ray's rule for OMP_NUM_THREADS)."""
    return max(1, math.floor(resources.cpus + 1e-9))


def plan_devices(settings: GpuSettings, frames: int, stages: Sequence[StageSpec], cluster_cpus: float,
                 cluster_gpus: float) -> DevicePlan:
    """The plan for the actor stages of ``stages`` on a cluster with these resources. Without a
    GPU every pool keeps its CPU settings, whatever ``settings`` say; with GPUs it fails in one
    line when the pools' shares overfill a GPU."""
    actors = [stage for stage in stages if stage.is_actor]
    gpus = int(cluster_gpus)
    if gpus < 1:
        cpu_plans = {}
        for stage in actors:
            # Every actor from the start: an actor holds its CPUs whether Ray Data has scaled
            # the pool up to it or not, and a pool that starts at one grows late or never.
            n = pool_size(cluster_cpus, stage.resources.cpus, stage.cpu_share)
            cpu_plans[stage.name] = StagePlan(stage.resources, Pool(n, n), stage.batch_size,
                                              {"device": "cpu", "threads": threads_for(stage.resources)})
        return DevicePlan(0, "cpu", None, False, False, cpu_plans, chained_actors=max(1, int(cluster_cpus)))
    if settings.gpu_autocast not in AUTOCAST_CHOICES:
        raise OptionError(f"unknown GPU autocast {settings.gpu_autocast!r}; choose from {', '.join(AUTOCAST_CHOICES)}")
    shares = {stage.name: settings.share(stage.name) for stage in actors if settings.share(stage.name)}
    if sum(shares.values()) > 1.0 + 1e-9:
        raise OptionError(f"the GPU shares add up to {sum(shares.values()):g} of each GPU ("
                          + ", ".join(f"{name} {share:g}" for name, share in shares.items())
                          + "); lower them to 1 or less")
    autocast = None if settings.gpu_autocast == "off" else settings.gpu_autocast
    model = {"device": "cuda", "autocast": autocast, "channels_last": settings.channels_last}
    plans: dict[str, StagePlan] = {}
    for stage in actors:
        if stage.name == "faces":
            n = gpus * settings.faces_actors_per_gpu
            config = replace(stage.kwargs["config"], detect_batch_size=settings.gpu_detect_batch)
            # Enough frames per MTCNN call for a full batch, in whole videos.
            videos = max(1, math.ceil(settings.gpu_detect_batch / max(frames, 1)))
            plans["faces"] = StagePlan(replace(stage.resources, gpus=settings.faces_gpus), Pool(n, n), videos,
                                       {"device": "cuda", "config": config, "threads": threads_for(stage.resources)})
        elif stage.detector:
            batch = settings.gpu_hybrid_batch if stage.detector == "hybrid" else settings.gpu_ensemble_batch
            plans[stage.name] = StagePlan(replace(stage.resources, gpus=settings.share(stage.name)),
                                          Pool(gpus, gpus), settings.gpu_videos_per_call,
                                          dict(model, batch_size=batch, threads=threads_for(stage.resources)))
    for stage in actors:
        if stage.name not in plans:  # explain: one actor with the share of the detector it explains
            explained = next((plans[s.name] for s in actors if s.detector == stage.kwargs["spec"].kind), None)
            resources = explained.resources if explained else stage.resources
            plans[stage.name] = StagePlan(resources, Pool(1, 1), stage.batch_size,
                                          {"device": "cuda", "threads": threads_for(resources)})
    actors_per_gpu = settings.faces_actors_per_gpu + sum(1 for s in actors if s.detector)
    return DevicePlan(gpus, "cuda", autocast, settings.channels_last, settings.mps and actors_per_gpu > 1, plans)


def mps_pipe_directory() -> Path:
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))


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
