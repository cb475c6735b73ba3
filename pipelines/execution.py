"""Running a list of stages: as a Ray Data pipeline, or in one process.

Both walk the same ``StageSpec`` list (``pipelines.stages.scan_stages``), so a video served
over HTTP gets exactly the row that a scan writes for it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.stages import Batch, Pool, Resources, StageSpec

if TYPE_CHECKING:
    import ray.data

# Rows per input block: small enough that a large archive starts streaming at once.
MAX_BLOCKS = 1000
# One chained actor per core: it runs its stages one after the other, on one thread.
CHAIN_RESOURCES = Resources(1.0, min_cpus=0.5)


def ray_data_arguments(stage: StageSpec) -> dict[str, Any]:
    """``map_batches`` keyword arguments for ``stage``."""
    arguments: dict[str, Any] = {"batch_size": stage.batch_size, "batch_format": "pyarrow", "zero_copy_batch": True,
                                 "num_cpus": stage.resources.cpus}
    if stage.resources.gpus:
        arguments["num_gpus"] = stage.resources.gpus
    if not stage.is_actor:
        return arguments | {"fn_kwargs": dict(stage.kwargs)}
    from ray.data import ActorPoolStrategy

    pool = stage.pool or Pool()
    return arguments | {"fn_constructor_kwargs": dict(stage.kwargs),
                        "compute": ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors)}


def build_dataset(rows: pa.Table, stages: Sequence[StageSpec]) -> ray.data.Dataset:
    """A streaming Ray Dataset that runs ``stages`` over ``rows`` (one row per video, no shuffle)."""
    import ray.data

    per_block = max(1, math.ceil(rows.num_rows / MAX_BLOCKS))
    ds: ray.data.Dataset = ray.data.from_arrow([rows.slice(i, per_block) for i in range(0, rows.num_rows, per_block)])
    for stage in stages:
        ds = ds.map_batches(stage.fn, **ray_data_arguments(stage))
    return ds


class InProcessPipeline:
    """The stages called in order in this process, each actor stage constructed once.

    The model stages (from the first actor stage to the last) can run on several videos at
    once while the stages around them run per video: ``run(table, phase)`` runs one phase."""

    PHASES = ("prepare", "detect", "judge")

    def __init__(self, stages: Sequence[StageSpec], device: str | None = None) -> None:
        self.stages = list(stages)
        self.callables: list[Batch] = [stage.instantiate(**({"device": device} if stage.is_actor and device else {}))
                                       for stage in self.stages]
        actors = [i for i, stage in enumerate(self.stages) if stage.is_actor]
        first, last = (actors[0], actors[-1] + 1) if actors else (len(self.stages), len(self.stages))
        self.bounds = {"prepare": (0, first), "detect": (first, last), "judge": (last, len(self.stages))}

    def instance(self, name: str) -> Batch:
        """The constructed stage called ``name``."""
        return next(c for stage, c in zip(self.stages, self.callables) if stage.name == name)

    def run(self, table: pa.Table, phase: str | None = None) -> pa.Table:
        start, end = self.bounds[phase] if phase else (0, len(self.stages))
        for stage in self.callables[start:end]:
            table = stage(table)
        return table

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.run(batch)


def chain_stages(stages: Sequence[StageSpec], actors: int) -> list[StageSpec]:
    """``stages`` with those from the first through the last model stage run as one actor stage
    of ``actors`` actors, each an ``InProcessPipeline`` that takes a video through them in turn.

    On a CPU node this keeps one busy thread per core. Separate pools there put several busy
    threads on each core, which time-slice their caches away, and frames and crops cross
    processes; a chain does the same work as the plain loop over the same stages, on every core
    at once (bench/scan_throughput.py). Each inner stage still fails its own rows under its own
    name and times itself, so the verdicts do not change."""
    models = [i for i, stage in enumerate(stages) if stage.detector]
    if not models:
        return list(stages)
    inner, rest = list(stages[: models[-1] + 1]), list(stages[models[-1] + 1 :])
    chained = StageSpec("-".join(stage.name for stage in inner), InProcessPipeline, inner[0].input_schema,
                        inner[-1].output_schema, CHAIN_RESOURCES, batch_size=1, pool=Pool(actors, actors),
                        kwargs={"stages": inner})
    return [chained, *rest]

