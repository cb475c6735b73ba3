"""``fakescan report``: one self-contained HTML page from an evaluation's or a scan's output.

This module recognises what a folder (local or ``s3://``) holds, loads it and assembles plain
records; ``jobs.report.html`` renders them. Every picture is fetched and encoded here, so the
page needs nothing but itself: no network, no files beside it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detector.metrics import reliability_curve, roc_curve
from jobs.evaluate.outputs import EVALUATION_FILE
from jobs.report.media import Picture, checked_image, face_thumbnail
from pipelines.errors import SourceError
from pipelines.rows import one_line
from pipelines.sources import filesystem_for, storage_options_for

OVERALL = "all"  # the detector's calibrated overall probability, beside an ensemble's own streams
FLAGGED_LABELS = ("fake", "uncertain")  # in the order they are shown
HEATMAPS_PER_VIDEO = 3
RELIABILITY_BINS = 10
EXPLAIN_HINT = "run the scan with --explain for heatmaps"
VERDICT_COLUMNS = ("video_id", "uri", "status", "label", "p_fake", "hybrid_score", "n_faces", "error_stage",
                   "error_message", "model_name", "model_version", "model_trained", "ensemble_name",
                   "ensemble_version", "ensemble_trained", "run_id", "scanned_at")
FACE_COLUMNS = ("video_id", "timestamp_s", "box", "p_fake", "hybrid_logit", "heatmap_uri")


@dataclass(frozen=True)
class Series:
    """One model's line on a plot, with the figure its legend quotes, or why it has no line."""

    model: str
    points: list[tuple[float, float]]
    figure: float
    note: str = ""


@dataclass(frozen=True)
class ScenarioPlots:
    scenario: str
    roc: list[Series]
    reliability: list[Series]


@dataclass(frozen=True)
class GalleryVerdict:
    model: str
    stream: str
    p_fake: float | None
    heatmap: Picture | None  # None: this detector (stream) drew none


@dataclass(frozen=True)
class GalleryCase:
    crop_id: str
    label: int
    crop: Picture
    verdicts: list[GalleryVerdict]


@dataclass
class EvaluationReport:
    root: str
    info: dict[str, Any]  # evaluation.json
    models: list[str]  # display names, in evaluation.json's order
    scenarios: list[str]
    metrics: list[dict[str, Any]]
    methods: list[dict[str, Any]]  # methods.parquet: per fake method; empty for evaluations made before it
    plots: list[ScenarioPlots]
    analysis: list[dict[str, Any]]
    gallery: dict[str, list[GalleryCase]]  # kind → cases
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FlaggedVideo:
    verdict: dict[str, Any]
    face: dict[str, Any] | None  # the highest-scoring face, if any
    thumbnail: Picture
    heatmaps: list[Picture]


@dataclass(frozen=True)
class ErrorGroup:
    stage: str
    reason: str
    count: int
    examples: list[str]


@dataclass
class ScanReport:
    root: str
    n_videos: int
    by_status: dict[str, int]
    by_label: dict[str, int]
    models: list[dict[str, Any]]  # name, version, trained, videos
    run_ids: list[str]
    scanned: tuple[str, str] | None  # first and last scanned_at
    flagged: list[FlaggedVideo]
    n_flaggable: int
    errors: list[ErrorGroup]
    heatmaps_available: bool
    notes: list[str] = field(default_factory=list)


class Storage:
    """Files under one output folder, local or ``s3://``, and any other URI it names."""

    def __init__(self, root: str, s3_endpoint: str | None):
        self.root = root.rstrip("/") or root
        self.s3_endpoint = s3_endpoint
        self.fs = self.filesystem(self.root)

    def filesystem(self, uri: str) -> fsspec.AbstractFileSystem:
        return filesystem_for(uri, storage_options_for(uri, self.s3_endpoint))

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def read_bytes(self, uri: str) -> bytes:
        return self.filesystem(uri).cat_file(uri)

    def read_table(self, relative: str, columns: tuple[str, ...] | None = None) -> pa.Table | None:
        """A Parquet file or a folder of parts (columns that a part lacks come back null); None when absent."""
        path = self.path(relative)
        if self.fs.isfile(path):
            files = [path]
        elif self.fs.isdir(path):
            files = sorted(p for p in self.fs.ls(path, detail=False) if p.endswith(".parquet"))
        else:
            return None
        tables = []
        for name in files:
            with self.fs.open(name, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                present = parquet.schema_arrow.names
                tables.append(parquet.read(columns=None if columns is None else [c for c in columns if c in present]))
        return pa.concat_tables(tables, promote_options="default") if tables else None


def fetch_picture(storage: Storage, uri: str, what: str) -> Picture:
    try:
        return checked_image(storage.read_bytes(uri))
    except Exception as exc:  # noqa: BLE001 - a missing or broken image is shown as such, never fatal
        return Picture(None, missing=f"{what} unreadable ({uri}): {one_line(exc, 200)}")


# ---- evaluation ------------------------------------------------------------------------------------------------

def load_evaluation(storage: Storage) -> EvaluationReport:
    info = json.loads(storage.read_bytes(storage.path(EVALUATION_FILE)))
    if info.get("kind") != "fakescan-evaluation":
        raise SourceError(f"{storage.path(EVALUATION_FILE)} is not a fakescan evaluation (kind {info.get('kind')!r})")
    table = storage.read_table("metrics.parquet")
    if table is None:
        raise FileNotFoundError(f"{storage.path('metrics.parquet')} is missing: the evaluation did not finish")
    metrics = table.to_pylist()
    models = ordered([m["name"] for m in info.get("models", [])], (r["model"] for r in metrics))
    scenarios = ordered(info.get("scenarios", []), (r["scenario"] for r in metrics))
    notes = [f"Evaluation: {note}" for note in info.get("notes") or []]
    notes += [f"{m['name']} has untrained (random) weights: its figures are chance by design."
              for m in info.get("models", []) if not m.get("trained", True)]
    overall = {(r["model"], r["scenario"]): r for r in metrics if r["stream"] == OVERALL}
    # roc_auc is NaN exactly when one class is missing.
    notes += [f"AUC undefined for {model} on {scenario}: its crops are of one class only."
              for (model, scenario), r in overall.items() if r["auc"] is None or r["auc"] != r["auc"]]
    predictions = storage.read_table("predictions.parquet")
    if predictions is None:
        notes.append("No predictions.parquet: ROC curves and reliability diagrams are left out.")
    analysis = storage.read_table("analysis.parquet")
    if analysis is None or analysis.num_rows == 0:
        notes.append("No robustness analysis: the evaluation recorded no features or heatmap entropies.")
    gallery = storage.read_table("gallery.parquet")
    methods = storage.read_table("methods.parquet")
    return EvaluationReport(
        root=storage.root, info=info, models=models, scenarios=scenarios, metrics=metrics,
        methods=[] if methods is None else methods.to_pylist(),
        plots=[] if predictions is None else scenario_plots(models, scenarios, predictions, overall),
        analysis=[] if analysis is None else analysis.to_pylist(),
        gallery={} if gallery is None else gallery_cases(storage, gallery.to_pylist()), notes=notes)


def ordered(declared: list[str], seen: Iterable[str]) -> list[str]:
    """Names in the declared order, then any others the tables hold."""
    return list(declared) + sorted(set(seen) - set(declared))


def scenario_plots(models: list[str], scenarios: list[str], predictions: pa.Table,
                   overall: dict[tuple[str, str], dict[str, Any]]) -> list[ScenarioPlots]:
    """Per scenario, every model's ROC curve and reliability diagram, from its overall ("all") predictions."""
    rows = predictions.filter(pc.equal(predictions["stream"], OVERALL))
    model = np.asarray(rows["model"].to_pylist(), dtype=object)
    scenario = np.asarray(rows["scenario"].to_pylist(), dtype=object)
    labels = rows["label"].to_numpy(zero_copy_only=False).astype(np.int8)
    p_fake = rows["p_fake"].to_numpy(zero_copy_only=False).astype(np.float64)
    plots = []
    for name in scenarios:
        roc, reliability = [], []
        for display in models:
            chosen = (model == display) & (scenario == name)
            metrics = overall.get((display, name), {})
            auc, ece = metrics.get("auc", float("nan")), metrics.get("ece", float("nan"))
            if not chosen.any():
                roc.append(Series(display, [], auc, "no predictions"))
                reliability.append(Series(display, [], ece, "no predictions"))
                continue
            chosen &= np.isfinite(p_fake)
            y, p = labels[chosen], p_fake[chosen]
            if len(np.unique(y)) < 2:
                roc.append(Series(display, [], auc, "one class only"))
            else:
                fpr, tpr = roc_curve(y, p)
                roc.append(Series(display, list(zip(fpr.tolist(), tpr.tolist())), auc))
            curve = reliability_curve(np.clip(p, 0.0, 1.0), y, RELIABILITY_BINS)
            points = [(m, f) for m, f in zip(curve["mean_probability"], curve["fraction_fake"]) if m is not None]
            reliability.append(Series(display, points, ece))
        plots.append(ScenarioPlots(name, roc, reliability))
    return plots


def gallery_cases(storage: Storage, rows: list[dict[str, Any]]) -> dict[str, list[GalleryCase]]:
    """One case per crop and kind: the crop once, then each detector's (and stream's) p_fake and heatmap."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["kind"], row["crop_id"]), []).append(row)
    cases: dict[str, list[GalleryCase]] = {}
    for (kind, crop_id), members in grouped.items():
        verdicts = [GalleryVerdict(m["model"], m["stream"], m["p_fake"],
                                   fetch_picture(storage, storage.path(m["heatmap_path"]), "heatmap")
                                   if m.get("heatmap_path") else None)
                    for m in members]
        crop = fetch_picture(storage, storage.path(members[0]["crop_path"]), "crop")
        cases.setdefault(kind, []).append(GalleryCase(crop_id, int(members[0]["label"]), crop, verdicts))
    return cases


# ---- scan --------------------------------------------------------------------------------------------------------

def load_scan(storage: Storage, top: int) -> ScanReport:
    verdicts = storage.read_table("verdicts", VERDICT_COLUMNS)
    if verdicts is None or verdicts.num_rows == 0:
        return ScanReport(storage.root, 0, {}, {}, [], [], None, [], 0, [], False,
                          ["verdicts/ holds no rows yet: the scan has not committed any part."])
    flaggable = verdicts.filter(pc.is_in(verdicts["label"], pa.array(FLAGGED_LABELS)))
    ranked = flaggable.append_column("label_rank", pc.index_in(flaggable["label"], pa.array(FLAGGED_LABELS)))
    order = pc.sort_indices(ranked, [("label_rank", "ascending", "at_end"), ("p_fake", "descending", "at_end"),
                                     ("hybrid_score", "descending", "at_end")])
    top_rows = flaggable.take(order[:top]).to_pylist()
    faces = top_faces(storage, [row["video_id"] for row in top_rows])
    heatmaps_available = any(face.get("heatmap_uri") for rows in faces.values() for face in rows)
    flagged = [flagged_video(storage, row, faces.get(row["video_id"], []), heatmaps_available) for row in top_rows]
    span = pc.min_max(verdicts["scanned_at"]).as_py()
    scanned = [t.isoformat(sep=" ", timespec="seconds") for t in (span["min"], span["max"]) if t]
    report = ScanReport(
        root=storage.root, n_videos=verdicts.num_rows, by_status=value_counts(verdicts["status"]),
        by_label=value_counts(verdicts["label"]), models=scan_models(verdicts),
        run_ids=sorted(r for r in pc.unique(verdicts["run_id"]).to_pylist() if r),
        scanned=tuple(scanned) if scanned else None,
        flagged=flagged, n_flaggable=flaggable.num_rows, errors=error_groups(verdicts),
        heatmaps_available=heatmaps_available)
    if flaggable.num_rows and pc.all(pc.is_null(flaggable["p_fake"])).as_py():
        report.notes.append("No trained detector voted, so p_fake is empty: flagged videos are ranked by the "
                            "hybrid's raw, uncalibrated score.")
    if top_rows and not heatmaps_available:
        report.notes.append(f"No heatmaps in faces/: {EXPLAIN_HINT}.")
    return report


def value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = {str(item["values"]): int(item["counts"]) for item in pc.value_counts(column).to_pylist()}
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def scan_models(verdicts: pa.Table) -> list[dict[str, Any]]:
    models = []
    for prefix in ("model", "ensemble"):
        keys = [f"{prefix}_name", f"{prefix}_version", f"{prefix}_trained"]
        named = verdicts.filter(pc.is_valid(verdicts[keys[0]]))
        for row in named.group_by(keys).aggregate([("video_id", "count")]).to_pylist():
            models.append({"name": row[keys[0]], "version": row[keys[1]], "trained": row[keys[2]],
                           "videos": row["video_id_count"]})
    return models


def error_groups(verdicts: pa.Table) -> list[ErrorGroup]:
    errors = verdicts.filter(pc.equal(verdicts["status"], "error"))
    grouped: dict[tuple[str, str], list[str]] = {}
    for row in errors.select(["error_stage", "error_message", "uri"]).to_pylist():
        grouped.setdefault((row["error_stage"] or "?", row["error_message"] or "?"), []).append(row["uri"])
    return [ErrorGroup(stage, reason, len(uris), sorted(uris)[:3])
            for (stage, reason), uris in sorted(grouped.items(), key=lambda kv: (-len(kv[1]), kv[0]))]


def top_faces(storage: Storage, video_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each video's faces, highest-scoring first (calibrated p_fake, else the raw logit)."""
    faces = storage.read_table("faces", FACE_COLUMNS) if video_ids else None
    if faces is None:
        return {}
    faces = faces.filter(pc.is_in(faces["video_id"], pa.array(video_ids)))
    if "heatmap_uri" not in faces.column_names:
        faces = faces.append_column("heatmap_uri", pa.nulls(faces.num_rows, pa.string()))
    order = pc.sort_indices(faces, [("p_fake", "descending", "at_end"), ("hybrid_logit", "descending", "at_end")])
    by_video: dict[str, list[dict[str, Any]]] = {}
    for face in faces.take(order).to_pylist():
        by_video.setdefault(face["video_id"], []).append(face)
    return by_video


def flagged_video(storage: Storage, verdict: dict[str, Any], faces: list[dict[str, Any]],
                  heatmaps_available: bool) -> FlaggedVideo:
    face = faces[0] if faces else None
    if face is None:
        thumbnail = Picture(None, missing="no face row in faces/ for this video")
    else:
        uri = verdict["uri"]
        thumbnail = face_thumbnail(lambda: storage.filesystem(uri).open(uri, "rb"), uri, face["timestamp_s"],
                                   face["box"])
    explained = [f["heatmap_uri"] for f in faces if f.get("heatmap_uri")][:HEATMAPS_PER_VIDEO]
    heatmaps = [fetch_picture(storage, uri, "heatmap") for uri in explained]
    if not heatmaps:
        heatmaps = [Picture(None, missing="no heatmap for this video's faces" if heatmaps_available else EXPLAIN_HINT)]
    return FlaggedVideo(verdict, face, thumbnail, heatmaps)


# ---- entry points --------------------------------------------------------------------------------------------

def load_report(path: str, s3_endpoint: str | None = None, top: int = 20) -> EvaluationReport | ScanReport:
    """What PATH holds, loaded: an evaluation (evaluation.json) or a scan (verdicts/)."""
    storage = Storage(path, s3_endpoint)
    if storage.fs.isfile(storage.path(EVALUATION_FILE)):
        return load_evaluation(storage)
    if storage.fs.isdir(storage.path("verdicts")):
        return load_scan(storage, top)
    if not storage.fs.exists(storage.root):
        raise FileNotFoundError(f"no such folder: {path}")
    raise SourceError(f"{path} is neither an evaluation's output (no {EVALUATION_FILE}) nor a scan's (no verdicts/)")


def default_out(path: str) -> str:
    return f"{path.rstrip('/')}/report.html"


def write_page(page: str, out: str, s3_endpoint: str | None = None) -> None:
    fs = filesystem_for(out, storage_options_for(out, s3_endpoint))
    if out.startswith("s3://"):
        fs.pipe_file(out, page.encode("utf-8"))
    else:
        target = Path(out.removeprefix("file://")).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
