"""Parquet sinks for ``verdicts/`` and ``faces/``, written from the driver as the
stream arrives.

Rows are buffered into files sized for analytics. Each flush writes the faces
part first and the verdicts part of the same name second, each atomically (a
temporary name then a rename locally; one PUT on S3). A verdicts part is the
commit record: a rerun skips the videos it names, and deletes a faces part whose
verdicts part never landed, so a killed scan resumes without gaps or duplicates.
"""
from __future__ import annotations

import io
import time
import uuid

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.verdict import NESTED_FACE_FIELDS, VERDICT_SCHEMA

FACE_COLUMNS = {
    "face_frame_index": "frame_index",
    "face_timestamp_s": "timestamp_s",
    "face_box": "box",
    "face_det_prob": "det_prob",
    "face_p_fake": "p_fake",
    "face_logit": "hybrid_logit",
    "face_hybrid_p_fake": "hybrid_p_fake",
    "face_texture_logit": "texture_logit",
    "face_texture_p_fake": "texture_p_fake",
    "face_facial_logit": "facial_logit",
    "face_facial_p_fake": "facial_p_fake",
    "face_fusion_logit": "fusion_logit",
    "face_fusion_p_fake": "fusion_p_fake",
    "face_heatmap_uri": "heatmap_uri",
}
INTERNAL_COLUMNS = ("frame_numbers", "timestamps_s")
VERDICTS_SCHEMA = pa.schema(
    [f for f in VERDICT_SCHEMA if f.name not in FACE_COLUMNS and f.name not in INTERNAL_COLUMNS]
)
FACES_TABLE_SCHEMA = pa.schema(
    [pa.field("video_id", pa.string()), pa.field("uri", pa.string())]
    + [pa.field(FACE_COLUMNS[f.name], f.type.value_type) for f in NESTED_FACE_FIELDS]
    + [pa.field("model_name", pa.string()), pa.field("run_id", pa.string())]
)


def split_faces(verdicts: pa.Table) -> pa.Table:
    """One row per face from the nested ``face_*`` lists of each verdict row."""
    parents = pc.list_parent_indices(verdicts["face_frame_index"])
    columns = {
        "video_id": pc.take(verdicts["video_id"], parents),
        "uri": pc.take(verdicts["uri"], parents),
    }
    for nested, name in FACE_COLUMNS.items():
        columns[name] = pc.list_flatten(verdicts[nested])
    columns["model_name"] = pc.take(verdicts["model_name"], parents)
    columns["run_id"] = pc.take(verdicts["run_id"], parents)
    return pa.table(columns, schema=FACES_TABLE_SCHEMA)


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    if "file" in fs.protocol or "local" in fs.protocol:
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/.{name}.tmp"
        fs.pipe_file(tmp, buffer.getvalue())
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, buffer.getvalue())


def part_names(fs: fsspec.AbstractFileSystem, folder: str) -> set[str]:
    if not fs.exists(folder):
        return set()
    return {p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False) if p.endswith(".parquet")}


def completed_video_ids(fs: fsspec.AbstractFileSystem, root: str) -> set[str]:
    """Videos that already have a verdict under ``root``; removes faces parts orphaned by a kill."""
    verdict_parts = part_names(fs, f"{root}/verdicts")
    for orphan in part_names(fs, f"{root}/faces") - verdict_parts:
        fs.rm(f"{root}/faces/{orphan}")
    done: set[str] = set()
    for name in sorted(verdict_parts):
        with fs.open(f"{root}/verdicts/{name}", "rb") as f:
            done.update(pq.read_table(f, columns=["video_id"])["video_id"].to_pylist())
    return done


class VerdictWriter:
    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, run_id: str, rows_per_file: int = 1000,
                 flush_seconds: float = 60.0) -> None:
        self.fs, self.root, self.run_id = fs, root, run_id
        self.rows_per_file, self.flush_seconds = rows_per_file, flush_seconds
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.last_flush = time.monotonic()
        self.parts = 0
        fs.makedirs(f"{root}/verdicts", exist_ok=True)
        fs.makedirs(f"{root}/faces", exist_ok=True)

    def add(self, verdicts: pa.Table) -> None:
        self.pending.append(verdicts)
        self.n_pending += verdicts.num_rows
        if self.n_pending >= self.rows_per_file or time.monotonic() - self.last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.n_pending:
            return
        table = pa.concat_tables(self.pending).cast(VERDICT_SCHEMA)
        self.pending, self.n_pending = [], 0
        name = f"part-{self.run_id}-{self.parts:05d}-{uuid.uuid4().hex[:8]}.parquet"
        self.parts += 1
        write_atomic(self.fs, f"{self.root}/faces/{name}", split_faces(table))
        write_atomic(self.fs, f"{self.root}/verdicts/{name}", table.select(VERDICTS_SCHEMA.names))

    def close(self) -> None:
        self.flush()

