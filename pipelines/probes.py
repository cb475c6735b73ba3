"""Probes stage: every face crop again under fixed degradations (JPEG 50, real H.264, ...).

The score stages score each probe's crops beside the clean ones, and the verdict reports
how far the video's p_fake moves across them (``stability``): a verdict that flips under a
JPEG re-save is one an analyst should not act on alone.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from detector.degrade import apply_probe
from pipelines.rows import SCORING_SCHEMA, pack_array, stage_guard, to_table, unpack_array


def degrade_faces(batch: pa.Table, probes: tuple[str, ...]) -> pa.Table:
    """Ray Data stage (a task: it holds no model, so it takes no CPU while idle)."""
    rows = batch.to_pylist()
    for row in rows:
        if row["status"] != "pending":
            continue
        with stage_guard(row, "probes"):
            n, size = len(row["face_frame"]), row["crop_size"]
            crops = unpack_array(row["crops"], [n, size, size, 3])
            row["probe_crops"], _ = pack_array(np.stack([apply_probe(name, crops) for name in probes]))
            row["probe_names"] = list(probes)
    return to_table(rows, SCORING_SCHEMA)


def scored_crops(row: dict) -> np.ndarray:
    """(1 + probes, faces, size, size, 3): a row's clean crops, then each probe's."""
    n, size = len(row["face_frame"]), row["crop_size"]
    return np.concatenate([unpack_array(row["crops"], [1, n, size, size, 3]), probe_crops(row, n, size)])


def probe_crops(row: dict, n: int, size: int) -> np.ndarray:
    """(P, N, size, size, 3) probe crops of a row, or an empty (0, ...) array without probes."""
    names = row.get("probe_names") or []
    if not names:
        return np.zeros((0, n, size, size, 3), np.uint8)
    return unpack_array(row["probe_crops"], [len(names), n, size, size, 3])
