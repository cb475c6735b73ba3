"""From per-face fake probabilities to one video verdict.

Frame → video aggregation is a named strategy so that analysts can audit which
rule produced a label; the raw per-face scores always travel beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

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
class Bands:
    """Probability bands; p_fake >= fake_from is 'fake', p_fake <= real_to is 'real'."""

    fake_from: float = 0.7
    real_to: float = 0.3

    def band(self, p_fake: float) -> str:
        if p_fake >= self.fake_from:
            return "high"
        if p_fake <= self.real_to:
            return "low"
        return "uncertain"

    def label(self, p_fake: float) -> str:
        return {"high": "fake", "low": "real", "uncertain": "uncertain"}[self.band(p_fake)]


def sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64) / temperature))
