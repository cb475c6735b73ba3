"""Verdict stage: per-face scores → one labelled, auditable row per video.

The output keeps the faces nested in the video's row (``face_*`` lists); the sink
splits them into ``faces/`` so the scan needs no groupby or shuffle.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from detector.calibration import Calibration
from detector.verdict import Bands, aggregate, sigmoid
from pipelines.rows import BASE, VIDEO, mark_error, one_line, to_table

VERDICT_FIELDS = [
    pa.field("label", pa.string()),  # fake | uncertain | real | no_face | error
    pa.field("p_fake", pa.float64()),  # calibrated; null unless status ok and the model is trained
    pa.field("hybrid_score", pa.float64()),  # aggregated sigmoid of raw logits, uncalibrated
    pa.field("aggregation", pa.string()),
    pa.field("n_frames", pa.int32()),
    pa.field("n_faces", pa.int32()),
    pa.field("frames_with_faces", pa.int32()),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("model_trained", pa.bool_()),
    pa.field("run_id", pa.string()),
    pa.field("scanned_at", pa.timestamp("us", tz="UTC")),
    pa.field("duration_s", pa.float64()),
]
NESTED_FACE_FIELDS = [
    pa.field("face_frame_index", pa.list_(pa.int64())),
    pa.field("face_timestamp_s", pa.list_(pa.float64())),
    pa.field("face_box", pa.list_(pa.list_(pa.float32(), 4))),
    pa.field("face_det_prob", pa.list_(pa.float32())),
    pa.field("face_logit", pa.list_(pa.float32())),
    pa.field("face_p_fake", pa.list_(pa.float64())),
]
VERDICT_SCHEMA = pa.schema(BASE + VIDEO + VERDICT_FIELDS + NESTED_FACE_FIELDS)
STAGE_TIMES = ("t_read_s", "t_decode_s", "t_faces_s", "t_score_s")


def verdict_for(row: dict[str, Any], aggregation: str, bands: Bands) -> dict[str, Any]:
    # An error row carries no faces: its face lists may be partly filled by the stage that failed.
    frames = [] if row["status"] == "error" else (row.get("face_frame") or [])
    numbers, stamps = row.get("frame_numbers") or [], row.get("timestamps_s") or []
    logits = np.asarray(row.get("face_logit") or [], np.float64)
    row.update(
        aggregation=aggregation,
        n_frames=len(numbers),
        n_faces=len(frames),
        frames_with_faces=len(set(frames)),
        duration_s=float(sum(row.get(t) or 0.0 for t in STAGE_TIMES)),
        face_frame_index=[numbers[i] for i in frames],
        face_timestamp_s=[stamps[i] for i in frames],
        # Untrained model: one null per face, never a number that reads as a confidence.
        face_p_fake=[None] * len(frames),
    )
    if row["status"] == "error":
        row["label"] = "error"
    elif row["status"] == "no_face":
        row["label"] = "no_face"
    else:
        row["status"] = "ok"
        row["hybrid_score"] = aggregate(sigmoid(logits), np.asarray(frames), aggregation)
        if row.get("model_trained"):
            calibration = Calibration(row.get("calibration_temperature") or 1.0, row.get("calibration_bias") or 0.0)
            p_face = calibration.probability(logits)
            row["face_p_fake"] = p_face.tolist()
            row["p_fake"] = aggregate(p_face, np.asarray(frames), aggregation)
            row["label"] = bands.label(row["p_fake"])
        else:
            row["label"] = "uncertain"
    return row


def build_verdicts(batch: pa.Table, aggregation: str, bands: Bands, run_id: str) -> pa.Table:
    """Ray Data stage: the final, labelled row of every video."""
    now = datetime.now(timezone.utc)
    rows = []
    for row in batch.to_pylist():
        try:
            verdict_for(row, aggregation, bands)
        except Exception as exc:  # noqa: BLE001 - the video still gets its row
            verdict_for(mark_error(row, "score", one_line(exc)), aggregation, bands)
        row.update(run_id=run_id, scanned_at=now)
        rows.append(row)
    return to_table(rows, VERDICT_SCHEMA)
