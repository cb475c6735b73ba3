"""Running a list of stages: as a Ray Data pipeline, or in one process.

Both walk the same ``StageSpec`` list (``pipelines.stages.scan_stages``), so a video served
over HTTP gets exactly the row that a scan writes for it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.stages import Batch, Pool, StageSpec

if TYPE_CHECKING:
    import ray.data

# Rows per input block: small enough that a large archive starts streaming at once.
MAX_BLOCKS = 1000


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
        self.callables: list[Batch] = [stage.instantiate(**({"device": device} if stage.is_actor else {}))
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

