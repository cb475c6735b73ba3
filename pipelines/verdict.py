"""Verdict stage: per-face scores of every detector → one labelled, auditable row per video.

Each trained detector contributes its streams (the hybrid one, the ensemble three); each
stream is calibrated, aggregated over the video's faces, banded and votes with its measured
reliability (``detector.verdict.judge_video``). The output keeps the faces nested in the
video's row (``face_*`` lists); the sink splits them into ``faces/``, so the scan needs no
groupby or shuffle.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from detector.calibration import sigmoid
from detector.verdict import StreamResult, StreamScores, aggregate, judge_video
from detector.voting import DetectorCalibration
from pipelines.rows import BASE, CROPS, VIDEO, mark_error, one_line, to_table

ENSEMBLE_STREAMS = {"texture": "face_texture_logit", "facial": "face_facial_logit", "fusion": "face_fusion_logit"}
STREAM_TYPE = pa.struct([
    pa.field("detector", pa.string()), pa.field("stream", pa.string()), pa.field("p_fake", pa.float64()),
    pa.field("band", pa.string()),  # high | uncertain | low | n/a (no face)
    pa.field("vote", pa.int8()),  # 0 real, 1 uncertain, 2 fake; null when it abstains
    pa.field("weight", pa.int8()),  # reliability: 2 trusted, 1 normal, 0 ignored
])
VERDICT_FIELDS = [
    pa.field("label", pa.string()),  # fake | uncertain | real | no_face | error
    pa.field("p_fake", pa.float64()),  # calibrated, reliability-weighted over streams; null without a trained model
    pa.field("hybrid_score", pa.float64()),  # aggregated sigmoid of the hybrid's raw logits, uncalibrated
    pa.field("hybrid_p_fake", pa.float64()),
    pa.field("hybrid_label", pa.string()),  # the hybrid's own vote
    pa.field("ensemble_p_fake", pa.float64()),
    pa.field("ensemble_label", pa.string()),  # the ensemble's own vote over its three streams
    pa.field("streams", pa.list_(STREAM_TYPE)),
    pa.field("vote_fake_weight", pa.float64()),
    pa.field("vote_real_weight", pa.float64()),
    pa.field("vote_total_weight", pa.float64()),
    pa.field("probe_names", pa.list_(pa.string())),
    pa.field("probe_p_fake", pa.list_(pa.float64())),
    pa.field("stability", pa.float64()),  # max − min of p_fake over clean and probes; 0 = stable
    pa.field("aggregation", pa.string()),
    pa.field("n_frames", pa.int32()),
    pa.field("n_faces", pa.int32()),
    pa.field("frames_with_faces", pa.int32()),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("model_trained", pa.bool_()),
    pa.field("ensemble_name", pa.string()),
    pa.field("ensemble_version", pa.string()),
    pa.field("ensemble_trained", pa.bool_()),
    pa.field("run_id", pa.string()),
    pa.field("scanned_at", pa.timestamp("us", tz="UTC")),
    pa.field("duration_s", pa.float64()),
]
NESTED_FACE_FIELDS = [
    pa.field("face_frame_index", pa.list_(pa.int64())),
    pa.field("face_timestamp_s", pa.list_(pa.float64())),
    pa.field("face_box", pa.list_(pa.list_(pa.float32(), 4))),
    pa.field("face_det_prob", pa.list_(pa.float32())),
    pa.field("face_p_fake", pa.list_(pa.float64())),
    pa.field("face_logit", pa.list_(pa.float32())),
    pa.field("face_hybrid_p_fake", pa.list_(pa.float64())),
] + [f for stream, column in ENSEMBLE_STREAMS.items()
     for f in (pa.field(column, pa.list_(pa.float32())), pa.field(f"face_{stream}_p_fake", pa.list_(pa.float64())))] + [
    pa.field("face_heatmap_uri", pa.list_(pa.string())),  # scan --explain: PNG of crop | heatmap, else null
]
VERDICT_SCHEMA = pa.schema(BASE + VIDEO + VERDICT_FIELDS + NESTED_FACE_FIELDS)
EXPLAIN_INPUT_SCHEMA = pa.schema(list(VERDICT_SCHEMA) + CROPS)  # with --explain, the crops go one stage further
STAGE_TIMES = ("t_read_s", "t_decode_s", "t_faces_s", "t_probes_s", "t_score_s", "t_ensemble_s")


def trained_streams(row: dict[str, Any]) -> list[StreamScores]:
    """The streams of every trained detector that scored this row. An untrained detector's
    numbers are noise, so it does not vote."""
    streams = []
    if row.get("model_trained") and row.get("hybrid_calibration"):
        calibration = DetectorCalibration.from_json(row["hybrid_calibration"]).streams["hybrid"]
        streams.append(StreamScores("hybrid", calibration, np.asarray(row.get("face_logit") or [], np.float64),
                                    tuple(np.asarray(p, np.float64) for p in row.get("face_logit_probes") or [])))
    if row.get("ensemble_trained") and row.get("ensemble_calibration"):
        calibrations = DetectorCalibration.from_json(row["ensemble_calibration"]).streams
        for stream, column in ENSEMBLE_STREAMS.items():
            probes = tuple(np.asarray(p, np.float64) for p in row.get(f"{column}_probes") or [])
            streams.append(StreamScores("ensemble", calibrations[stream],
                                        np.asarray(row.get(column) or [], np.float64), probes))
    return streams


def abstaining_streams(row: dict[str, Any]) -> list[StreamResult]:
    """A no-face video still lists each stream, in band n/a, so that the vote is auditable."""
    results = []
    for detector, column in (("hybrid", "hybrid_calibration"), ("ensemble", "ensemble_calibration")):
        if row.get(column):
            for calibration in DetectorCalibration.from_json(row[column]).streams.values():
                results.append(StreamResult(detector, calibration.name, None, "n/a", None, calibration.weight))
    return results


def fill_scores(row: dict[str, Any], frames: list[int], aggregation: str) -> None:
    n = len(frames)
    if row.get("face_logit"):
        row["hybrid_score"] = aggregate(sigmoid(np.asarray(row["face_logit"])), np.asarray(frames), aggregation)
    streams = trained_streams(row)
    if not streams:
        row["label"] = "uncertain"  # no trained model: never a number that reads as a confidence
        return
    verdict = judge_video(streams, np.asarray(frames), aggregation)
    row.update(p_fake=verdict.p_fake, label=verdict.label, face_p_fake=verdict.face_p_fake,
               streams=[vars(s) for s in verdict.streams], vote_fake_weight=verdict.vote.fake_weight,
               vote_real_weight=verdict.vote.real_weight, vote_total_weight=verdict.vote.total_weight,
               probe_p_fake=verdict.probe_p_fake or None, stability=verdict.stability)
    for detector, (p_fake, label) in verdict.detectors.items():
        row.update({f"{detector}_p_fake": p_fake, f"{detector}_label": label})
    for stream in streams:
        name = stream.calibration.name
        p_face = stream.calibration.probability(stream.logits).tolist()
        row["face_hybrid_p_fake" if name == "hybrid" else f"face_{name}_p_fake"] = p_face[:n]


def verdict_for(row: dict[str, Any], aggregation: str) -> dict[str, Any]:
    # An error row carries no faces: its face lists may be partly filled by the stage that failed.
    frames = [] if row["status"] == "error" else (row.get("face_frame") or [])
    numbers, stamps = row.get("frame_numbers") or [], row.get("timestamps_s") or []
    row.update(
        aggregation=aggregation,
        n_frames=len(numbers),
        n_faces=len(frames),
        frames_with_faces=len(set(frames)),
        duration_s=float(sum(row.get(t) or 0.0 for t in STAGE_TIMES)),
        face_frame_index=[numbers[i] for i in frames],
        face_timestamp_s=[stamps[i] for i in frames],
        face_p_fake=[None] * len(frames),
    )
    if row["status"] == "error":
        row["label"] = "error"
    elif row["status"] == "no_face":
        row["label"] = "no_face"
        row["streams"] = [vars(s) for s in abstaining_streams(row)]
    else:
        row["status"] = "ok"
        fill_scores(row, frames, aggregation)
    # faces/ is cut from these lists side by side: each must hold one entry per face, and an
    # error row none (a stage that failed may have filled some of them).
    for field in NESTED_FACE_FIELDS:
        if row["status"] == "error":
            row[field.name] = []
        elif row.get(field.name) is None:
            row[field.name] = [None] * len(frames)
    return row


def build_verdicts(batch: pa.Table, aggregation: str, run_id: str, keep_crops: bool = False) -> pa.Table:
    """Ray Data stage: the final, labelled row of every video; ``keep_crops`` passes the crops
    on for the explain stage, which drops them."""
    now = datetime.now(UTC)
    rows = []
    for row in batch.to_pylist():
        try:
            verdict_for(row, aggregation)
        except Exception as exc:  # noqa: BLE001 - the video still gets its row
            for key in ("p_fake", "streams", "probe_p_fake", "stability"):
                row.pop(key, None)
            verdict_for(mark_error(row, "verdict", one_line(exc)), aggregation)
        row.update(run_id=run_id, scanned_at=now)
        rows.append(row)
    return to_table(rows, EXPLAIN_INPUT_SCHEMA if keep_crops else VERDICT_SCHEMA)
