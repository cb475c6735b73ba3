"""The tables an evaluation writes, computed from its long prediction rows."""
from __future__ import annotations

import io
import re
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from detector.metrics import accuracy, expected_calibration_error, roc_auc
from detector.protocol import OVERALL

EVALUATION_FILE = "evaluation.json"  # what was evaluated, with notes: the evaluation's record
METRICS_SCHEMA = pa.schema([
    ("model", pa.string()), ("detector", pa.string()), ("stream", pa.string()), ("scenario", pa.string()),
    ("n", pa.int64()), ("accuracy", pa.float64()), ("auc", pa.float64()), ("ece", pa.float64()),
    ("mean_p_fake", pa.float64()),
])
# Per fake method: the real crops against the fakes of one kind (sbi, swap, morph, or "fake" as labelled).
METHODS_SCHEMA = pa.schema([
    ("model", pa.string()), ("detector", pa.string()), ("stream", pa.string()), ("scenario", pa.string()),
    ("method", pa.string()), ("n_real", pa.int64()), ("n_fake", pa.int64()), ("accuracy", pa.float64()),
    ("auc", pa.float64()), ("ece", pa.float64()), ("mean_p_fake", pa.float64()),
])
ANALYSIS_SCHEMA = pa.schema([
    ("model", pa.string()), ("stream", pa.string()), ("scenario", pa.string()), ("n", pa.int64()),
    ("feature_cosine", pa.float64()), ("entropy_clean", pa.float64()), ("entropy_degraded", pa.float64()),
])


def _groups(predictions: pa.Table, keys: tuple[str, ...]) -> dict[tuple, dict[str, np.ndarray]]:
    columns = {name: predictions[name].to_numpy(zero_copy_only=False) for name in predictions.column_names}
    index: dict[tuple, list[int]] = defaultdict(list)
    for i, key in enumerate(zip(*(columns[k] for k in keys))):
        index[key].append(i)
    return {key: {name: values[rows] for name, values in columns.items()} for key, rows in index.items()}


def _scores(p_fake: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Accuracy (p_fake > 0.5), ROC AUC, ECE and the mean p_fake of one group of crops."""
    p, y = p_fake.astype(np.float64), label.astype(np.float64)
    return {"accuracy": accuracy(y, p, 0.5), "auc": roc_auc(y, p),
            "ece": expected_calibration_error(np.clip(p, 0, 1), y), "mean_p_fake": float(p.mean())}


def metrics_table(predictions: pa.Table, detectors: dict[str, str]) -> pa.Table:
    """Accuracy (p_fake > 0.5), ROC AUC and ECE per model, stream and scenario, in the
    order the predictions came (scenarios in protocol order)."""
    rows = []
    for (model, stream, scenario), g in _groups(predictions, ("model", "stream", "scenario")).items():
        rows.append({"model": model, "detector": detectors[model], "stream": stream, "scenario": scenario,
                     "n": len(g["label"]), **_scores(g["p_fake"], g["label"])})
    return pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)


def methods_table(predictions: pa.Table, detectors: dict[str, str]) -> pa.Table:
    """Accuracy, ROC AUC and ECE per model, stream, scenario and fake method: each method's
    fakes against all the real crops, so that a method never trained on is judged apart."""
    rows = []
    for (model, stream, scenario), g in _groups(predictions, ("model", "stream", "scenario")).items():
        real = g["label"] == 0
        for method in sorted(set(g["kind"][~real].tolist())):
            fake = g["kind"] == method
            pick = real | fake
            rows.append({"model": model, "detector": detectors[model], "stream": stream, "scenario": scenario,
                         "method": method, "n_real": int(real.sum()), "n_fake": int(fake.sum()),
                         **_scores(g["p_fake"][pick], g["label"][pick])})
    return pa.Table.from_pylist(rows, schema=METHODS_SCHEMA)


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray([v for v in values if v is not None], np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def analysis_table(predictions: pa.Table) -> pa.Table:
    """Per model, stream and degraded scenario: mean feature cosine to clean, and mean
    heatmap entropy on clean and on degraded crops (lower entropy = less attention drift)."""
    streams = predictions.filter(pc.not_equal(predictions["stream"], OVERALL))
    if not streams.num_rows or streams["entropy"].null_count == streams.num_rows:
        return pa.Table.from_pylist([], schema=ANALYSIS_SCHEMA)
    groups = _groups(streams, ("model", "stream", "scenario"))
    rows = []
    for (model, stream, scenario), g in groups.items():
        if scenario == "clean":
            continue
        clean = groups.get((model, stream, "clean"))
        rows.append({"model": model, "stream": stream, "scenario": scenario, "n": len(g["crop_id"]),
                     "feature_cosine": _mean(g["feature_cosine"]),
                     "entropy_clean": _mean(clean["entropy"]) if clean is not None else None,
                     "entropy_degraded": _mean(g["entropy"])})
    return pa.Table.from_pylist(rows, schema=ANALYSIS_SCHEMA)


def gallery_picks(predictions: pa.Table, per_kind: int) -> list[tuple[str, str]]:
    """(crop_id, kind) pairs: each model's most confident fakes on clean crops, and the crops
    on which the detectors (or, for one model, its streams) disagree most."""
    clean = predictions.filter(pc.equal(predictions["scenario"], "clean"))
    if not clean.num_rows or per_kind < 1:
        return []
    overall = clean.filter(pc.equal(clean["stream"], OVERALL))
    picks: dict[str, str] = {}
    for g in _groups(overall, ("model",)).values():
        for i in np.argsort(-g["p_fake"], kind="stable")[:per_kind]:
            picks.setdefault(str(g["crop_id"][i]), "confident_fake")
    models = set(overall["model"].to_pylist())
    judges = overall if len(models) > 1 else clean.filter(pc.not_equal(clean["stream"], OVERALL))
    spread: dict[str, list[float]] = defaultdict(list)
    for crop_id, p in zip(judges["crop_id"].to_pylist(), judges["p_fake"].to_pylist()):
        spread[crop_id].append(p)
    ranked = sorted(((max(v) - min(v), k) for k, v in spread.items() if len(v) > 1), reverse=True)
    for gap, crop_id in ranked[:per_kind]:
        if gap > 0:
            picks.setdefault(crop_id, "disagreement")
    return sorted(picks.items(), key=lambda item: (item[1], item[0]))


def mlflow_metrics(metrics: pa.Table, methods: pa.Table | None = None) -> dict[str, float]:
    """``MODEL.SCENARIO.auc`` for the overall probability, ``MODEL.STREAM.SCENARIO.auc`` per stream,
    and ``MODEL.SCENARIO.METHOD.auc`` per fake method (overall probability)."""
    out = {}
    for row in metrics.to_pylist():
        prefix = row["model"] if row["stream"] == OVERALL else f"{row['model']}.{row['stream']}"
        out.update(_finite(f"{prefix}.{row['scenario']}", row))
    for row in ([] if methods is None else methods.to_pylist()):
        if row["stream"] == OVERALL:
            out.update(_finite(f"{row['model']}.{row['scenario']}.{row['method']}", row))
    return out


def _finite(prefix: str, row: dict) -> dict[str, float]:
    return {re.sub(r"[^\w./ -]", "_", f"{prefix}.{key}"): float(row[key]) for key in ("accuracy", "auc", "ece")
            if row[key] is not None and row[key] == row[key]}


def png_bytes_of(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def put_bytes(fs, path: str, data: bytes) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # local folders must exist; S3 ignores this
    fs.pipe(path, data)


def write_table(fs, path: str, table: pa.Table) -> str:
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    return path
