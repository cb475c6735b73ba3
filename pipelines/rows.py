"""The one-row-per-video record as it travels through the scan.

Every stage emits the same base columns plus its own payload, with an explicit
Arrow schema, so a block in which every video failed has the same types as one
in which none did. Heavy payloads (frames, crops) are dropped by the
stage that consumes them, which keeps the object store bounded.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.errors import VideoError

BASE = [
    pa.field("video_id", pa.string()),
    pa.field("uri", pa.string()),
    pa.field("size_bytes", pa.int64()),
    pa.field("etag", pa.string()),
    pa.field("status", pa.string()),  # pending | ok | no_face | error
    pa.field("error_stage", pa.string()),  # list | read | decode | faces | probes | score | ensemble
    pa.field("error_message", pa.string()),
    pa.field("t_read_s", pa.float64()),
    pa.field("t_decode_s", pa.float64()),
    pa.field("t_faces_s", pa.float64()),
    pa.field("t_score_s", pa.float64()),
    pa.field("t_probes_s", pa.float64()),
    pa.field("t_ensemble_s", pa.float64()),
    pa.field("bytes_read", pa.int64()),  # fetched from storage to decode this video
]
VIDEO = [
    pa.field("decoder", pa.string()),
    pa.field("video_width", pa.int32()),
    pa.field("video_height", pa.int32()),
    pa.field("video_fps", pa.float64()),
    pa.field("video_duration_s", pa.float64()),
    pa.field("rotation", pa.int32()),
    pa.field("frame_numbers", pa.list_(pa.int64())),
    pa.field("timestamps_s", pa.list_(pa.float64())),
    pa.field("frames_decoded", pa.int32()),  # every frame decoded to reach the sampled ones
    pa.field("decode_errors", pa.int32()),  # packets or frames that failed to decode and were skipped
    pa.field("damaged", pa.bool_()),  # decode_errors > 0: scanned from what still decodes
]
FACES = [
    pa.field("face_frame", pa.list_(pa.int32())),  # index into frame_numbers
    pa.field("face_box", pa.list_(pa.list_(pa.float32(), 4))),
    pa.field("face_det_prob", pa.list_(pa.float32())),
    pa.field("face_landmarks", pa.list_(pa.list_(pa.float32(), 10))),  # 5 (x, y) in crop pixels
]
SCORES = [
    pa.field("face_logit", pa.list_(pa.float32())),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("model_trained", pa.bool_()),
    pa.field("hybrid_calibration", pa.string()),  # detector.voting.DetectorCalibration as JSON
    pa.field("face_logit_probes", pa.list_(pa.list_(pa.float32()))),  # [probe][face]
]
ENSEMBLE_SCORES = [
    pa.field("face_texture_logit", pa.list_(pa.float32())),  # the face's whole frame
    pa.field("face_facial_logit", pa.list_(pa.float32())),
    pa.field("face_fusion_logit", pa.list_(pa.float32())),
    pa.field("face_facial_logit_probes", pa.list_(pa.list_(pa.float32()))),
    pa.field("face_fusion_logit_probes", pa.list_(pa.list_(pa.float32()))),
    pa.field("ensemble_name", pa.string()),
    pa.field("ensemble_version", pa.string()),
    pa.field("ensemble_trained", pa.bool_()),
    pa.field("ensemble_calibration", pa.string()),
]
# Payloads that the score stages read; the verdict stage drops them.
CROPS = [pa.field("crops", pa.large_binary()), pa.field("crop_size", pa.int32())]
SCENES = [pa.field("scenes", pa.large_binary()), pa.field("scene_size", pa.int32())]  # frames for the texture stream
PROBES = [pa.field("probe_names", pa.list_(pa.string())), pa.field("probe_crops", pa.large_binary())]

MANIFEST_SCHEMA = pa.schema(BASE)
# Rows that carry their video's bytes (an upload to the server) rather than a URI to open.
UPLOAD_SCHEMA = pa.schema(BASE + [pa.field("data", pa.large_binary())])
DECODED_SCHEMA = pa.schema(
    BASE + VIDEO + [pa.field("frames", pa.large_binary()), pa.field("frame_shape", pa.list_(pa.int32()))]
)
FACES_SCHEMA = pa.schema(BASE + VIDEO + FACES + CROPS + SCENES)
# One schema for every score stage, so that the hybrid and the ensemble can run in either order
# or alone; each fills its own columns and passes the payloads on.
SCORING_SCHEMA = pa.schema(BASE + VIDEO + FACES + CROPS + SCENES + PROBES + SCORES + ENSEMBLE_SCORES)


def to_table(rows: list[dict[str, Any]], schema: pa.Schema,
             arrays: Mapping[str, Sequence[np.ndarray | None]] | None = None) -> pa.Table:
    """``rows`` as a table of ``schema``; ``arrays`` gives large_binary columns as uint8 arrays,
    one per row, which Arrow wraps instead of copying (frames are tens of MB a video)."""
    arrays = arrays or {}
    table = pa.Table.from_pylist([{f.name: None if f.name in arrays else row.get(f.name) for f in schema}
                                  for row in rows], schema=schema)
    for name, values in arrays.items():
        table = table.set_column(schema.get_field_index(name), schema.field(name), binary_column(values))
    return table


def to_rows(batch: pa.Table, *array_columns: str) -> tuple[list[dict[str, Any]], dict[str, list[np.ndarray | None]]]:
    """The batch's rows as dicts, less ``array_columns``, which come apart as uint8 views over
    Arrow's memory: read-only, and not copied into Python bytes."""
    rows = batch.drop_columns(list(array_columns)).to_pylist()
    return rows, {name: binary_views(batch[name]) for name in array_columns}


def binary_column(values: Sequence[np.ndarray | None]) -> pa.Array:
    """uint8 arrays as one large_binary array; a lone array is wrapped, not copied."""
    present = [np.ascontiguousarray(v, dtype=np.uint8).reshape(-1) for v in values if v is not None]
    offsets = np.cumsum([0] + [0 if v is None else v.size for v in values], dtype=np.int64)
    data = present[0] if len(present) == 1 else np.concatenate(present) if present else np.zeros(0, np.uint8)
    validity = None if len(present) == len(values) else pa.array([v is not None for v in values]).buffers()[1]
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(values),
                                            [validity, pa.py_buffer(offsets), pa.py_buffer(data)])


def binary_views(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """Each value of a large_binary column as a uint8 array over the column's own buffer."""
    views: list[np.ndarray | None] = []
    for chunk in column.chunks:
        _, offsets_buffer, data_buffer = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
        data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
        valid = chunk.is_valid().to_pylist()
        views += [data[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(chunk))]
    return views


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The error as one line: a ``VideoError`` says what is wrong with the video in its own
    words; anything else is unexpected, and its type name helps whoever reports it."""
    text = " ".join((str(exc) if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mark_error(row: dict[str, Any], stage: str, reason: str) -> dict[str, Any]:
    row.update(status="error", error_stage=stage, error_message=reason)
    return row


@contextmanager
def stage_guard(row: dict[str, Any], stage: str) -> Iterator[None]:
    """Turn any failure while processing ``row`` into an error verdict for that stage,
    and time the stage. A bad video never fails the batch (Ray would retry, then drop it)."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure becomes that video's verdict
        mark_error(row, stage, one_line(exc))
    finally:
        row[f"t_{stage}_s"] = time.perf_counter() - start


def pack_array(array: np.ndarray) -> tuple[bytes, list[int]]:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return array.tobytes(), list(array.shape)


def unpack_array(data: bytes | np.ndarray, shape: list[int]) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)
