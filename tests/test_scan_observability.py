"""A scan reports each stage's throughput, and records itself in MLflow when a tracking URI is set."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd
import pytest

from jobs.scan.job import ScanConfig, ScanSummary, run_scan

pytestmark = pytest.mark.slow


def scan(source: Path, out: Path, tracking_uri: str | None = None) -> tuple[ScanSummary, str]:
    """A real scan in this process, on the session's Ray cluster; returns its summary and stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        summary = run_scan(ScanConfig(str(source), str(out), model="hybrid_tiny", detectors=("hybrid",), frames=4,
                                      progress=False, tracking_uri=tracking_uri))
    return summary, stderr.getvalue()


@pytest.fixture(scope="module")
def tracked_scan(ray_cluster, short_face_video, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        summary, stderr = scan(short_face_video, folder / "out", tracking_uri)
    return summary, stderr, tracking_uri, folder / "out"


def test_scan_reports_each_stage_throughput_at_the_end(tracked_scan):
    summary, stderr, _, _ = tracked_scan
    lines = [line for line in stderr.splitlines() if "stage throughput" in line]
    assert len(lines) == 1
    for stage in ("read", "decode", "faces", "score"):
        assert f" {stage} " in lines[0], lines[0]
        assert summary.stages[stage].videos == 1 and summary.stages[stage].busy_s > 0
    assert " ensemble " not in lines[0]  # a stage that did not run is not reported


def test_scan_records_its_parameters_and_counts_in_mlflow(tracked_scan):
    from mlflow.tracking import MlflowClient

    summary, _, tracking_uri, out = tracked_scan
    run = MlflowClient(tracking_uri).get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params, metrics = run.data.params, run.data.metrics
    assert params["scan_run_id"] == pd.read_parquet(out / "verdicts")["run_id"].iloc[0]
    assert params["model"] == "hybrid_tiny" and params["detectors"] == "hybrid" and params["frames"] == "4"
    # On a CPU cluster one pool of actors takes each video from decode through the hybrid.
    assert params["plan_device"] == "cpu" and params["plan_decode-faces-score_gpus"] == "0.0"
    assert int(params["plan_chained_actors"]) >= 1
    assert metrics["videos_scanned"] == 1 and metrics["status_ok"] == 1 and metrics["label_uncertain"] == 1
    assert metrics["faces"] == summary.faces > 0 and metrics["frames"] == 4
    assert metrics["videos_per_s"] > 0 and metrics["stage_faces_busy_s"] > 0
    assert metrics["bytes_read"] == summary.bytes_read == pd.read_parquet(out / "verdicts")["bytes_read"].sum() > 0
    assert metrics["videos_damaged"] == 0


def test_scan_without_a_tracking_uri_records_nothing_and_says_nothing_of_it(ray_cluster, short_face_video, tmp_path,
                                                                            monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary, stderr = scan(short_face_video, tmp_path / "out")
    assert summary.statuses == {"ok": 1} and summary.mlflow_run_id is None
    assert "mlflow" not in stderr.lower()
    assert not list(tmp_path.rglob("*.db")) and not list(tmp_path.rglob("mlartifacts"))
