"""The prepare job: labelled videos or photos → a face-crop dataset in Parquet.

    DEST/crops/part-*.parquet   one row per face crop (schema: pipelines.dataset.CROP_SCHEMA)
    DEST/inputs.parquet         one row per input: label, group, split, status, crops found
    DEST/dataset.json           counts per split, kind and label, and the settings used

Real crops come from the scan's own decode and face stages; pseudo-fakes are
made from the real crops in a second pass, split by split.
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from jobs.devices import GpuSettings, plan_devices
from jobs.resources import fit_stages
from jobs.runtime import check_destination, cluster_resources, init_ray, quiet_ray_data
from jobs.watchdog import StallWatchdog
from pipelines.dataset import (
    CROP_SCHEMA,
    PSEUDO_FAKE_KINDS,
    TRAINING_PSEUDO_FAKES,
    flatten_crops,
    list_labelled,
    load_donors,
    make_pseudo_fakes,
    pick_donors,
)
from pipelines.errors import OptionError, SourceError
from pipelines.execution import build_dataset
from pipelines.rows import MANIFEST_SCHEMA
from pipelines.sinks import write_atomic
from pipelines.sources import arrow_filesystem_for, filesystem_for, storage_options_for
from pipelines.stages import prepare_stages

INPUT_COLUMNS = ["video_id", "uri", "label", "group", "split", "status", "error_stage", "error_message", "n_crops"]


@dataclass
class PrepareConfig:
    source: str
    out: str
    frames: int = 16
    pseudo_fakes: tuple[str, ...] = TRAINING_PSEUDO_FAKES
    every_kind: bool = False  # one pseudo-fake of each kind per real crop, not one of a drawn kind
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    donors_per_split: int = 256
    s3_endpoint: str | None = None
    rows_per_file: int = 2000
    max_side: int = 1280
    stall_warning_s: float = 180.0  # no input finished for this long: say what the job waits for


@dataclass
class PrepareSummary:
    out: str
    inputs: Counter
    crops: dict[str, Counter] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def line(self) -> str:
        status = ", ".join(f"{k} {v}" for k, v in sorted(self.inputs.items()))
        per_split = "; ".join(f"{split}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                              for split, c in sorted(self.crops.items()))
        return f"fakescan: prepared {self.out} in {self.elapsed_s:.1f}s | inputs: {status} | crops {per_split}"


class PartWriter:
    """Buffers crop rows into Parquet parts of about ``rows_per_file`` rows."""

    def __init__(self, fs, folder: str, prefix: str, rows_per_file: int) -> None:
        self.fs, self.folder, self.prefix, self.rows_per_file = fs, folder, prefix, rows_per_file
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.parts = 0
        self.counts: dict[str, Counter] = {}
        self.paths: list[str] = []
        # Every real crop's id, split and group, to draw swap donors from (small: no images).
        self.real_index: list[pa.Table] = []
        fs.makedirs(folder, exist_ok=True)

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        for split, kind in zip(table["split"].to_pylist(), table["kind"].to_pylist()):
            self.counts.setdefault(split, Counter())[kind] += 1
        self.pending.append(table)
        self.real_index.append(table.filter(pc.equal(table["kind"], "real")).select(["crop_id", "split", "group"]))
        self.rows += table.num_rows
        if self.rows >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            name = f"{self.folder}/part-{self.prefix}-{self.parts:05d}-{uuid.uuid4().hex[:8]}.parquet"
            write_atomic(self.fs, name, pa.concat_tables(self.pending).cast(CROP_SCHEMA))
            self.pending, self.rows, self.parts = [], 0, self.parts + 1
            self.paths.append(name)

    def donor_pool(self) -> pa.Table:
        return pa.concat_tables(self.real_index) if self.real_index else CROP_SCHEMA.empty_table().select(
            ["crop_id", "split", "group"])


def crop_dataset(config: PrepareConfig, labelled: pa.Table, storage_options: dict[str, Any]):
    labels = {row["video_id"]: row for row in labelled.select(["video_id", "label", "group", "split"]).to_pylist()}
    stages = prepare_stages(storage_options, config.frames, config.max_side, labels)
    cpus, gpus = cluster_resources()
    stages = fit_stages(plan_devices(GpuSettings(), config.frames, stages, cpus, gpus).apply(stages), cpus, "prepare")
    return build_dataset(labelled.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA), stages), stages


def run_prepare(config: PrepareConfig) -> PrepareSummary:
    import ray

    started = time.monotonic()
    unknown = set(config.pseudo_fakes) - set(PSEUDO_FAKE_KINDS)
    if unknown:
        raise OptionError(f"unknown pseudo-fake kind {sorted(unknown)[0]!r}; "
                          f"choose from {', '.join(PSEUDO_FAKE_KINDS)}")
    src_options = storage_options_for(config.source, config.s3_endpoint)
    out_options = storage_options_for(config.out, config.s3_endpoint)
    labelled = list_labelled(config.source, src_options, config.split_ratios)
    if not labelled.num_rows:
        raise SourceError(f"no labelled videos or photos found in {config.source}")
    check_destination(config.out, out_options)
    fs = filesystem_for(config.out, out_options)
    root = config.out.removeprefix("file://").rstrip("/")
    if fs.exists(f"{root}/crops") and fs.ls(f"{root}/crops"):
        raise SourceError(f"{config.out} already holds a dataset; choose an empty --out")

    init_ray()
    quiet_ray_data()
    writer = PartWriter(fs, f"{root}/crops", "real", config.rows_per_file)
    inputs = []
    dataset, stages = crop_dataset(config, labelled, src_options)
    with StallWatchdog(config.stall_warning_s, stages=stages) as watchdog:
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
            writer.add(flatten_crops(batch))
            inputs.append(batch.select(["video_id", "status", "error_stage", "error_message"]).append_column(
                "n_crops", pc.list_value_length(batch["crop_rows"]).cast(pa.int32())))
            watchdog.progress(batch.num_rows)
    writer.flush()
    table = labelled.select(["video_id", "uri", "label", "group", "split"]).join(pa.concat_tables(inputs), "video_id")
    table = table.set_column(table.schema.get_field_index("status"), "status", pc.if_else(
        pc.equal(table["status"], "pending"), "ok", table["status"]))
    write_atomic(fs, f"{root}/inputs.parquet", table.select(INPUT_COLUMNS).sort_by("uri"))

    if config.pseudo_fakes and writer.donor_pool().num_rows:  # pseudo-fakes need real crops to start from
        arrow_fs = arrow_filesystem_for(config.out, config.s3_endpoint)
        paths = [p.removeprefix("s3://") for p in writer.paths]
        real_rows = ray.data.read_parquet(paths, filesystem=arrow_fs, schema=CROP_SCHEMA).filter(expr="kind == 'real'")
        donors = load_donors(paths, pick_donors(writer.donor_pool(), config.donors_per_split, config.seed), arrow_fs)
        # Its counts go into the same per-split tally as the real crops'.
        fakes = PartWriter(fs, f"{root}/crops", "pseudo", config.rows_per_file)
        fakes.counts = writer.counts
        for batch in real_rows.map_batches(make_pseudo_fakes, fn_kwargs={  # type: ignore[arg-type]  # ray: no fn_kwargs
                "kinds": tuple(config.pseudo_fakes), "donors": donors, "seed": config.seed,
                "every_kind": config.every_kind},
                batch_size=16, num_cpus=1, batch_format="pyarrow").iter_batches(batch_format="pyarrow",
                                                                                batch_size=None):
            fakes.add(batch)
        fakes.flush()
    summary = PrepareSummary(config.out, Counter(table["status"].to_pylist()), writer.counts,
                             time.monotonic() - started)
    fs.pipe_file(f"{root}/dataset.json", json.dumps({
        "config": asdict(config), "inputs": dict(summary.inputs),
        "crops": {split: dict(c) for split, c in writer.counts.items()},
    }, indent=2, default=str).encode())
    return summary
