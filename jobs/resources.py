"""A resource plan that always fits the cluster, or a one-line refusal before anything starts.

Ray Data runs actor pools and tasks side by side. An actor holds its CPUs for as long as its
pool lives, idle or not; a task stage needs a free slot each time it runs. When the actors
hold so much that a task stage's request can never be placed, Ray waits for ever without a word
(2 cores, both detectors and ``--explain`` did exactly that). So before the job starts Ray
Data, ``fit_stages`` checks that every actor pool at its largest, plus one task of every task
stage, fits in the cluster's CPUs; when it does not, it first keeps each pool to its smallest
size, then lowers every reservation towards the least its stage declares
(``Resources.min_cpus``) by one common fraction. A reservation is Ray's bookkeeping, not a cap
on what a process may use: lowering it costs some contention, never correctness. Only when even
the least does not fit does the job stop, with one line naming what each stage needs and what
the cluster has.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pipelines.errors import UsageError
from pipelines.stages import Pool, StageSpec

# Ray accounts fractional resources to four decimal places.
RAY_RESOURCE_DIGITS = 4


class PlanError(UsageError):
    """The job's stages cannot all run on this cluster at once."""


def reserved_cpus(stages: Sequence[StageSpec], least: bool = False) -> float:
    """CPUs held with every actor pool at its largest and one task of every task stage."""
    total = 0.0
    for stage in stages:
        cpus = stage.resources.least_cpus if least else stage.resources.cpus
        total += cpus * (stage.pool.max_actors if stage.is_actor and stage.pool else 1)
    return round(total, RAY_RESOURCE_DIGITS)  # as Ray sums them: in fixed point, not in binary fractions


def describe(stages: Sequence[StageSpec], least: bool = False) -> str:
    def cpus(stage: StageSpec) -> float:
        return stage.resources.least_cpus if least else stage.resources.cpus

    actors = [f"{s.name} {(s.pool.max_actors if s.pool else 1)}×{cpus(s):g}" for s in stages if s.is_actor]
    tasks = [f"{s.name} {cpus(s):g}" for s in stages if not s.is_actor]
    return "; ".join(part for part in (f"actors: {', '.join(actors)}" if actors else "",
                                       f"tasks: {', '.join(tasks)}" if tasks else "") if part)


def stage_params(stages: Sequence[StageSpec]) -> dict[str, Any]:
    """Each stage's reservation, pool and batch as flat MLflow parameters (``plan_<stage>_...``)."""
    params: dict[str, Any] = {}
    for stage in stages:
        params.update({f"plan_{stage.name}_cpus": stage.resources.cpus, f"plan_{stage.name}_gpus": stage.resources.gpus,
                       f"plan_{stage.name}_videos_per_call": stage.batch_size})
        if stage.is_actor and stage.pool:
            params.update({f"plan_{stage.name}_min_actors": stage.pool.min_actors,
                           f"plan_{stage.name}_max_actors": stage.pool.max_actors})
    return params


def fit_stages(stages: Sequence[StageSpec], cluster_cpus: float, job: str = "scan") -> list[StageSpec]:
    """``stages`` with reservations that fit ``cluster_cpus``; ``PlanError`` when none can."""
    fitted = list(stages)
    if reserved_cpus(fitted) <= cluster_cpus:
        return fitted
    fitted = [replace(s, pool=Pool(s.pool.min_actors, s.pool.min_actors)) if s.is_actor and s.pool else s
              for s in fitted]
    if reserved_cpus(fitted) <= cluster_cpus:
        return fitted
    least, full = reserved_cpus(fitted, least=True), reserved_cpus(fitted)
    if least > cluster_cpus:
        raise PlanError(f"the {job} needs at least {least:g} CPUs for its stages at once ({describe(fitted, True)}) "
                        f"and the cluster has {cluster_cpus:g}; run it on more CPUs, or with fewer stages"
                        + (" (--detectors, --probes, --explain)" if job == "scan" else ""))
    share = (cluster_cpus - least) / (full - least)
    return [replace(s, resources=replace(s.resources, cpus=_round_down(
        s.resources.least_cpus + share * (s.resources.cpus - s.resources.least_cpus)))) for s in fitted]


def _round_down(cpus: float) -> float:
    scale = 10**RAY_RESOURCE_DIGITS
    return math.floor(cpus * scale + 1e-6) / scale
