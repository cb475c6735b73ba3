"""The scan's stages, declared once, in the manner of NeMo Curator's stages.

Each ``StageSpec`` says what a stage is: its name (also the ``error_stage`` of the rows it
fails and its ``t_<name>_s`` timer), the callable (a class for an actor pool: ``__init__``
loads, ``__call__(batch)`` transforms; a function for tasks), the resources of one actor or
task, how many videos a call takes, the Arrow schemas it reads and writes, and its arguments.
``SCAN_STAGES`` is the scan's ordered list, ``scan_stages`` picks and binds what a scan runs;
``PREPARE_STAGES`` and ``prepare_stages`` do the same for ``fakescan prepare``.
``pipelines.execution`` runs that list on Ray Data (``build_dataset``) or in one process
(``InProcessPipeline``, what a Serve replica runs); a job's device plan only overrides what a
GPU changes.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from detector.faces import FaceCropConfig
from detector.factory import DetectorInfo, DetectorSpec
from pipelines.dataset import ENCODED_SCHEMA, encode_crops
from pipelines.decode import DecodeConfig, decode_videos
from pipelines.explain import ExplainFaces
from pipelines.faces import CropFaces
from pipelines.probes import degrade_faces
from pipelines.rows import DECODED_SCHEMA, FACES_SCHEMA, MANIFEST_SCHEMA, SCORING_SCHEMA
from pipelines.score import ScoreFaces
from pipelines.score_ensemble import ScoreEnsemble
from pipelines.verdict import EXPLAIN_INPUT_SCHEMA, VERDICT_SCHEMA, build_verdicts

Batch = Callable[[pa.Table], pa.Table]


@dataclass(frozen=True)
class Resources:
    """What one actor or task of a stage reserves (actors hold theirs while idle), and the least
    CPU reservation it still runs with on a small cluster (``jobs.resources.fit_stages``)."""

    cpus: float
    gpus: float = 0.0
    min_cpus: float | None = None  # None: as many as ``cpus``

    @property
    def least_cpus(self) -> float:
        return self.cpus if self.min_cpus is None else min(self.min_cpus, self.cpus)


@dataclass(frozen=True)
class Pool:
    """An actor stage's pool: ``min_actors`` start at once, and it grows up to ``max_actors``."""

    min_actors: int = 1
    max_actors: int = 1


@dataclass(frozen=True)
class StageSpec:
    name: str
    fn: Callable[..., Any]
    input_schema: pa.Schema  # the columns it reads (a stage passes on any others it is given)
    output_schema: pa.Schema
    resources: Resources
    batch_size: int  # videos per call
    # Actor stages: the share of the cluster's CPUs the pool may grow to on a CPU cluster, and
    # the pool the job's plan set (None until then: one actor).
    cpu_share: float = 0.0
    pool: Pool | None = None
    detector: str | None = None  # the detector kind whose model this stage runs
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # the function's, or the constructor's

    @property
    def is_actor(self) -> bool:
        return isinstance(self.fn, type)

    def bind(self, **kwargs: Any) -> StageSpec:
        return replace(self, kwargs={**self.kwargs, **kwargs})

    def instantiate(self, **overrides: Any) -> Batch:
        """The stage as a callable on one batch, in this process (an actor's constructor runs here)."""
        kwargs = {**self.kwargs, **overrides}
        return self.fn(**kwargs) if self.is_actor else functools.partial(self.fn, **kwargs)


# Decode opens each video where it lives and fetches only what it decodes: no bytes travel
# through the object store. Its rows fail at ``read`` when the fetch fails.
# Decode and faces declare the same resources and batch, so that where a CPU cluster runs them
# as stages of their own (``fakescan prepare``; a scan chains them with its model stages,
# ``pipelines.execution.chain_stages``) Ray Data fuses decode into the faces actors: the full
# frames never leave the process that decoded them. A GPU plan gives faces a GPU share, and
# decode stays a task stage that feeds them.
CPU_DECODE_AND_FACES = Resources(0.5, min_cpus=0.25)
DECODE = StageSpec("decode", decode_videos, MANIFEST_SCHEMA, DECODED_SCHEMA, CPU_DECODE_AND_FACES, batch_size=1)
FACES = StageSpec("faces", CropFaces, DECODED_SCHEMA, FACES_SCHEMA, CPU_DECODE_AND_FACES, batch_size=1,
                  cpu_share=0.5)
PROBES = StageSpec("probes", degrade_faces, FACES_SCHEMA, SCORING_SCHEMA, Resources(0.25, min_cpus=0.1),
                   batch_size=1)
SCORE = StageSpec("score", ScoreFaces, FACES_SCHEMA, SCORING_SCHEMA, Resources(0.25, min_cpus=0.1), batch_size=4,
                  cpu_share=0.25, detector="hybrid", kwargs={"batch_size": 64})
ENSEMBLE = StageSpec("ensemble", ScoreEnsemble, FACES_SCHEMA, SCORING_SCHEMA, Resources(0.25, min_cpus=0.1),
                     batch_size=4, cpu_share=0.25, detector="ensemble", kwargs={"batch_size": 32})
VERDICT = StageSpec("verdict", build_verdicts, SCORING_SCHEMA, VERDICT_SCHEMA, Resources(0.1, min_cpus=0.05),
                    batch_size=4)
# One actor, with the resources of the detector it explains (``scan_stages``).
EXPLAIN = StageSpec("explain", ExplainFaces, EXPLAIN_INPUT_SCHEMA, VERDICT_SCHEMA, Resources(0.25, min_cpus=0.1),
                    batch_size=4)
SCAN_STAGES: tuple[StageSpec, ...] = (DECODE, FACES, PROBES, SCORE, ENSEMBLE, VERDICT, EXPLAIN)
# fakescan prepare: the scan's first stages, then each face as a lossless PNG crop row.
ENCODE = StageSpec("encode", encode_crops, FACES_SCHEMA, ENCODED_SCHEMA, Resources(0.25, min_cpus=0.1),
                   batch_size=4)
PREPARE_STAGES: tuple[StageSpec, ...] = (DECODE, FACES, ENCODE)
MODEL_STAGES = {stage.detector: stage for stage in SCAN_STAGES if stage.detector}  # detector kind → its stage


@dataclass(frozen=True)
class ResolvedDetector:
    """A detector a job has resolved: its spec, what it is, and its weights (the file's bytes,
    or an object ref to them; None for a config's random weights)."""

    spec: DetectorSpec
    info: DetectorInfo
    weights: Any = None


@dataclass(frozen=True)
class ScanSettings:
    """What a job decided for the stages of one scan."""

    run_id: str
    frames: int = 32
    max_side: int = 1280
    detect_long_side: int = 480
    storage_options: Mapping[str, Any] = field(default_factory=dict)  # of the source
    probes: tuple[str, ...] = ()
    aggregation: str = "max_face_mean"
    explain: tuple[str, ...] = ()  # labels whose videos get heatmaps
    explain_faces: int = 4
    out: str = ""  # where heatmaps go
    out_storage_options: Mapping[str, Any] = field(default_factory=dict)


def scan_stages(settings: ScanSettings, detectors: Mapping[str, ResolvedDetector]) -> list[StageSpec]:
    """The stages of a scan, in order, with their arguments: every detector in ``detectors``
    (kind → detector) gets its model stage; probes and explain only when asked for."""
    ensemble = detectors.get("ensemble")
    stages = [
        DECODE.bind(config=DecodeConfig(settings.frames, settings.max_side),
                    storage_options=dict(settings.storage_options)),
        # A CPU detects one video per call: its frames are one MTCNN batch.
        FACES.bind(config=FaceCropConfig(detect_long_side=settings.detect_long_side,
                                         detect_batch_size=settings.frames),
                   scene_size=ensemble.info.img_size if ensemble else None),
    ]
    if settings.probes:
        stages.append(PROBES.bind(probes=tuple(settings.probes)))
    for kind, stage in MODEL_STAGES.items():
        if kind in detectors:
            stages.append(stage.bind(spec=detectors[kind].spec, weights=detectors[kind].weights))
    # With heatmaps to draw, the crops go one stage further.
    verdict = replace(VERDICT, output_schema=EXPLAIN_INPUT_SCHEMA) if settings.explain else VERDICT
    stages.append(verdict.bind(aggregation=settings.aggregation, run_id=settings.run_id,
                               keep_crops=bool(settings.explain)))
    if settings.explain:
        kind = "hybrid" if "hybrid" in detectors else "ensemble"
        stages.append(replace(EXPLAIN, resources=MODEL_STAGES[kind].resources).bind(
            spec=detectors[kind].spec, weights=detectors[kind].weights, out=settings.out,
            storage_options=dict(settings.out_storage_options), labels=settings.explain,
            max_faces=settings.explain_faces))
    return stages


def prepare_stages(storage_options: Mapping[str, Any], frames: int, max_side: int,
                   labels: Mapping[str, Mapping[str, Any]]) -> list[StageSpec]:
    """The stages of ``fakescan prepare``, with their arguments (``labels``: video_id → label,
    group and split)."""
    decode, faces, encode = PREPARE_STAGES
    return [decode.bind(config=DecodeConfig(frames, max_side), storage_options=dict(storage_options)),
            faces.bind(config=FaceCropConfig()),
            encode.bind(labels=dict(labels))]
