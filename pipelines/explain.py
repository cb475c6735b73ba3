"""Explain stage (``scan --explain``): Score-CAM heatmaps for the faces of flagged videos.

It runs after the verdict, so it knows which videos are flagged, and reads the crops that the
verdict stage passed on for it. For each flagged video it explains its most suspicious faces
with one detector stream, writes a PNG per face (the crop beside its heatmap overlay) under
``OUT/heatmaps/VIDEO_ID/``, and puts the URIs in ``face_heatmap_uri``. The path has no run id,
so a resumed scan overwrites rather than duplicates.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from detector.device import resolve_device, use_threads
from detector.explain import explain, heatmap_png
from detector.factory import DetectorSpec
from detector.hybrid import preprocess_crops
from pipelines.inference import load_detector
from pipelines.rows import one_line, to_table, unpack_array
from pipelines.sources import filesystem_for
from pipelines.verdict import VERDICT_SCHEMA

EXPLAINED_STREAM = {"hybrid": "hybrid", "ensemble": "facial"}


def suspicious_faces(row: dict[str, Any], limit: int) -> list[int]:
    """Indices of the ``limit`` faces with the highest p_fake (raw logit where uncalibrated)."""
    scores = [p if p is not None else (logit if logit is not None else -np.inf)
              for p, logit in zip(row["face_p_fake"], row.get("face_logit") or [None] * len(row["face_p_fake"]))]
    return [int(i) for i in np.argsort(-np.asarray(scores, np.float64), kind="stable")[:limit]]


class ExplainFaces:
    """``spec`` and ``weights`` are those of the detector that explains (as its score stage's)."""

    def __init__(self, spec: DetectorSpec, weights: Any, out: str, storage_options: dict[str, Any],
                 labels: tuple[str, ...] = ("fake",), max_faces: int = 4, top_k: int = 16,
                 device: str | None = None, threads: int | None = None) -> None:
        use_threads(threads)
        self.device = resolve_device(device)
        self.model, info = load_detector(spec, weights, self.device)
        self.img_size = info.img_size
        self.stream = EXPLAINED_STREAM[info.kind]
        self.fs = filesystem_for(out, storage_options)
        self.out = out.removeprefix("file://").rstrip("/")
        self.labels, self.max_faces, self.top_k = labels, max_faces, top_k

    def uri_of(self, video_id: str, face: int) -> str:
        """An absolute local path, or the full ``s3://`` URI: what an analyst can open."""
        return f"{self.out}/heatmaps/{video_id}/face-{face:04d}.png"

    def explain_row(self, row: dict[str, Any]) -> None:
        n, size = len(row["face_p_fake"]), row["crop_size"]
        crops = unpack_array(row["crops"], [n, size, size, 3])
        picked = suspicious_faces(row, self.max_faces)
        pixels = preprocess_crops(crops[picked], self.img_size).to(self.device)
        heatmaps = explain(self.model, pixels, method="scorecam", streams=[self.stream], top_k=self.top_k)[self.stream]
        uris: list[str | None] = [None] * n
        for face, heatmap in zip(picked, heatmaps):
            uri = uris[face] = self.uri_of(row["video_id"], face)
            self.fs.makedirs(uri.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe(uri, heatmap_png(crops[face], heatmap))
        row["face_heatmap_uri"] = uris

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        for row in rows:
            if row["label"] not in self.labels or not row["face_p_fake"] or row.get("crops") is None:
                continue
            try:
                self.explain_row(row)
            except Exception as exc:  # noqa: BLE001 - the verdict stands; say why it has no heatmaps
                row.update(error_stage="explain", error_message=one_line(exc))
        return to_table(rows, VERDICT_SCHEMA)
