"""From per-face scores of every stream to one video verdict.

Frame → video aggregation is a named strategy so that analysts can audit which
rule produced a label; the raw per-face scores always travel beside it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detector.voting import StreamCalibration, Vote, combined_probability, weighted_vote

Aggregation = Callable[[np.ndarray, np.ndarray], float]


def aggregate_mean(p_face: np.ndarray, frame_index: np.ndarray) -> float:
    """Mean over every face in every frame."""
    return float(np.mean(p_face))


def aggregate_max_face_mean(p_face: np.ndarray, frame_index: np.ndarray) -> float:
    """Most suspicious face per frame, then the mean over frames: one swapped face among
    several real ones still moves the verdict."""
    frames = np.unique(frame_index)
    return float(np.mean([p_face[frame_index == f].max() for f in frames]))


def aggregate_confident_frames(p_face: np.ndarray, frame_index: np.ndarray, keep: float = 0.5) -> float:
    """Mean over the frames whose most suspicious face is furthest from 0.5: blurred or
    occluded frames that the model cannot read do not dilute the decisive ones."""
    frames = np.unique(frame_index)
    per_frame = np.array([p_face[frame_index == f].max() for f in frames])
    n_keep = max(1, int(np.ceil(len(per_frame) * keep)))
    order = np.argsort(-np.abs(per_frame - 0.5))
    return float(np.mean(per_frame[order[:n_keep]]))


AGGREGATIONS: dict[str, Aggregation] = {
    "mean": aggregate_mean,
    "max_face_mean": aggregate_max_face_mean,
    "confident_frames": aggregate_confident_frames,
}


def aggregate(p_face: np.ndarray, frame_index: np.ndarray, strategy: str) -> float:
    if strategy not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {strategy!r}; choose from {', '.join(AGGREGATIONS)}")
    if len(p_face) == 0:
        raise ValueError("no faces to aggregate")
    return AGGREGATIONS[strategy](np.asarray(p_face, np.float64), np.asarray(frame_index))


@dataclass(frozen=True)
class StreamScores:
    """One stream's raw logits for every face of a video, with its calibration. ``probe_logits``
    holds one array per probe; a stream that does not see the probes (the texture stream reads
    whole frames) repeats its clean logits."""

    detector: str
    calibration: StreamCalibration
    logits: np.ndarray
    probe_logits: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class StreamResult:
    detector: str
    stream: str
    p_fake: float | None  # None when the stream abstained (no face)
    band: str
    vote: int | None
    weight: int


@dataclass(frozen=True)
class VideoVerdict:
    p_fake: float | None
    label: str
    vote: Vote
    face_p_fake: list[float | None]
    streams: list[StreamResult]
    detectors: dict[str, tuple[float | None, str]]  # detector → (p_fake, label of its own vote)
    probe_p_fake: list[float | None]
    stability: float | None  # spread (max − min) of p_fake over clean and probes; 0 = stable


def judge_video(streams: list[StreamScores], frame_index: np.ndarray, aggregation: str) -> VideoVerdict:
    """Calibrate each stream, aggregate its faces to the video, band and vote, then combine:
    ``p_fake`` is the reliability-weighted mean of the streams' calibrated probabilities and
    the label is their reliability-weighted vote."""
    frames = np.asarray(frame_index)
    weights = {s.calibration.name: s.calibration.weight for s in streams}
    p_faces = {s.calibration.name: s.calibration.probability(s.logits) for s in streams}
    p_video = {name: aggregate(p, frames, aggregation) for name, p in p_faces.items()}
    bands = {s.calibration.name: s.calibration.band(p_video[s.calibration.name]) for s in streams}
    vote = weighted_vote(bands, weights)
    results = [StreamResult(s.detector, s.calibration.name, p_video[s.calibration.name], bands[s.calibration.name],
                            vote.votes.get(s.calibration.name), s.calibration.weight) for s in streams]
    detectors = {}
    for detector in dict.fromkeys(s.detector for s in streams):
        names = [s.calibration.name for s in streams if s.detector == detector]
        own = weighted_vote({n: bands[n] for n in names}, {n: weights[n] for n in names})
        detectors[detector] = (combined_probability({n: p_video[n] for n in names}, {n: weights[n] for n in names}),
                               own.label)
    n_faces = len(frames)
    if not any(weights.values()):
        # Every stream was judged unreliable on validation: record their scores and votes,
        # but give no probability that would read as a confidence.
        return VideoVerdict(None, vote.label, vote, [None] * n_faces, results, detectors, [], None)
    face_p = [combined_probability({n: float(p[i]) for n, p in p_faces.items()}, weights) for i in range(n_faces)]
    n_probes = max((len(s.probe_logits) for s in streams), default=0)
    probe_p = []
    for k in range(n_probes):
        probed = {s.calibration.name: aggregate(s.calibration.probability(s.probe_logits[k] if s.probe_logits
                                                                          else s.logits), frames, aggregation)
                  for s in streams}
        probe_p.append(combined_probability(probed, weights))
    p_fake = combined_probability(p_video, weights)
    spread = [p for p in [p_fake, *probe_p] if p is not None]
    stability = float(max(spread) - min(spread)) if n_probes and spread else None
    return VideoVerdict(p_fake, vote.label, vote, face_p, results, detectors, probe_p, stability)
