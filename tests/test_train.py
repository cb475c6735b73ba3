"""fakescan prepare → fakescan train hybrid (Ray Train, DDP, MLflow) → fakescan scan models:/."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from detector.factory import create_detector
from jobs.tracking import WEIGHTS_ARTIFACT
from tests.conftest import FAKESCAN, run_fakescan

pytestmark = pytest.mark.slow

# Explicit splits: with a handful of groups, hashing could leave validation empty.
LABELS = [
    ("short_face.mp4", "real", "clip", "train"),
    ("0-f1-su-ph.jpg", "real", "su", "train"),
    ("15-f13-anc-ph.jpg", "fake", "anc", "train"),
    ("multi_face.jpg", "real", "group-photo", "train"),
    ("0-f15-hao-ph.jpg", "real", "hao", "val"),
    ("45-m7-di-ph.jpg", "real", "di", "val"),
    ("single_face.jpg", "real", "single", "val"),
    ("no_face.mp4", "real", "empty-room", "train"),
]


@pytest.fixture(scope="module")
def labelled_inputs(tmp_path_factory, sample_media, short_face_video, no_face_video) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    (root / "media").mkdir()
    for name, *_ in LABELS:
        source = {"short_face.mp4": short_face_video, "no_face.mp4": no_face_video}.get(name, sample_media / name)
        shutil.copy(source, root / "media" / name)
    lines = ["uri,label,group,split"] + [f"media/{n},{label},{g},{s}" for n, label, g, s in LABELS]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def prepared(ray_cluster, labelled_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    result = run_fakescan("prepare", str(labelled_inputs), "--out", str(out), "--frames", "6")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def crops_of(dataset: Path) -> pd.DataFrame:
    return pd.read_parquet(dataset / "crops")


def test_prepare_gives_every_input_one_row(prepared):
    inputs = pd.read_parquet(prepared / "inputs.parquet")
    assert len(inputs) == len(LABELS)
    by_name = {Path(uri).name: row for uri, row in zip(inputs["uri"], inputs.to_dict("records"))}
    assert by_name["no_face.mp4"]["status"] == "no_face" and by_name["no_face.mp4"]["n_crops"] == 0
    assert by_name["single_face.jpg"]["status"] == "ok" and by_name["single_face.jpg"]["n_crops"] == 1
    assert by_name["short_face.mp4"]["n_crops"] >= 5


def test_prepare_keeps_each_group_and_its_fakes_in_one_split(prepared):
    crops = crops_of(prepared)
    assert crops.groupby("group")["split"].nunique().max() == 1
    expected = {group: split for _, _, group, split in LABELS}
    assert all(expected[g] == s for g, s in zip(crops["group"], crops["split"]))
    swaps = crops[crops["kind"] == "swap"]
    donors = crops.set_index("crop_id").loc[swaps["donor_id"]]
    assert len(swaps) and (donors["split"].values == swaps["split"].values).all()
    assert (donors["group"].values != swaps["group"].values).all()


def test_prepare_labels_real_fake_and_pseudo_fake_crops(prepared):
    crops = crops_of(prepared)
    kinds = crops.groupby("kind")["label"].agg(["min", "max"]).to_dict("index")
    assert kinds["real"] == {"min": 0, "max": 0}
    assert kinds["fake"] == {"min": 1, "max": 1}  # 15-f13-anc-ph.jpg, labelled fake in the CSV
    assert {"sbi", "swap"} <= set(kinds)
    assert (crops["kind"].isin(["sbi", "swap"]).sum()) == (crops["kind"] == "real").sum()
    assert crops["image"].iloc[0][:8] == b"\x89PNG\r\n\x1a\n"


def test_prepare_rejects_a_bad_label_in_one_line(ray_cluster, tmp_path):
    (tmp_path / "labels.csv").write_text("uri,label\nclip.mp4,maybe\n")
    result = run_fakescan("prepare", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "label must be real or fake" in result.stderr


def mlflow_client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


@pytest.fixture(scope="module")
def trained(ray_cluster, prepared, s3_server, tmp_path_factory) -> dict:
    """Two DDP workers on the tiny config, checkpoints on the S3 server, registered as champion."""
    out = tmp_path_factory.mktemp("trained")
    s3_server.filesystem().mkdir("train-checkpoints")
    storage = "s3://train-checkpoints/runs"
    result = run_fakescan("train", "hybrid", "--data", str(prepared), "--out", str(out), "--model", "hybrid_tiny",
                          "--workers", "2", "--epochs", "2", "--batch-size", "8", "--pgd-steps", "2",
                          "--val-pgd-limit", "8", "--storage", storage, "--s3-endpoint", s3_server.endpoint_url,
                          "--alias", "champion")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "tracking_uri": f"sqlite:///{out / 'mlflow.db'}", "stdout": result.stdout, "storage": storage}


def test_ddp_training_records_one_run_with_per_epoch_metrics(trained):
    client = mlflow_client(trained["tracking_uri"])
    experiment = client.get_experiment_by_name("fakescan-hybrid")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert runs[0].data.params["workers"] == "2" and runs[0].data.params["mode"] == "adversarial"
    for metric in ("train_loss_clean", "train_loss_pgd", "train_loss_unet", "train_attacker_loss",
                   "val_clean_auc", "val_clean_accuracy", "val_pgd_auc", "val_jpeg50_auc", "samples_per_s"):
        assert [m.step for m in client.get_metric_history(run_id, metric)] == [0, 1], metric


def test_training_checkpoints_to_s3(trained, s3fs_client):
    keys = s3fs_client.find(trained["storage"].removeprefix("s3://"))
    assert any(k.endswith("/weights.safetensors") for k in keys)
    assert any(k.endswith("/train_state.pt") for k in keys)


def test_trained_model_is_registered_with_its_alias(trained):
    client = mlflow_client(trained["tracking_uri"])
    version = client.get_model_version_by_alias("fakescan-hybrid", "champion")
    assert str(version.version) == "1" and version.tags["mode"] == "adversarial"
    assert "val_clean_auc" in version.tags


def test_scan_loads_the_registered_model(trained, ray_cluster, short_face_video, tmp_path):
    result = run_fakescan("scan", str(short_face_video), "--out", str(tmp_path / "out"), "--frames", "4",
                          "--model", "models:/fakescan-hybrid@champion", "--tracking-uri", trained["tracking_uri"],
                          "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no trained weights" not in result.stderr
    verdict = pd.read_parquet(tmp_path / "out" / "verdicts").iloc[0]
    assert verdict["model_name"] == "fakescan-hybrid" and verdict["model_version"] == "1"
    # The tiny model's own calibrated probability; whether it also sets p_fake depends on the
    # reliability weight its validation AUC earned (0 below 0.6).
    assert verdict["model_trained"] and 0 <= verdict["hybrid_p_fake"] <= 1
    assert verdict["label"] in ("fake", "uncertain", "real")


def test_scan_with_an_unknown_registry_model_fails_in_one_line(trained, ray_cluster, short_face_video, tmp_path):
    result = run_fakescan("scan", str(short_face_video), "--out", str(tmp_path / "out"),
                          "--model", "models:/fakescan-hybrid@nobody", "--tracking-uri", trained["tracking_uri"])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "models:/fakescan-hybrid@nobody" in result.stderr


def test_killed_worker_resumes_from_its_checkpoint_in_the_same_run(ray_cluster, prepared, tmp_path):
    out = tmp_path / "train"
    storage = tmp_path / "checkpoints"
    process = subprocess.Popen(
        [FAKESCAN, "train", "hybrid", "--data", str(prepared), "--out", str(out), "--model", "hybrid_tiny",
         "--workers", "2", "--epochs", "3", "--batch-size", "4", "--pgd-steps", "3", "--val-pgd-limit", "8",
         "--storage", str(storage)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        # Ray Train writes its snapshot once a reported checkpoint is registered: only then is
        # there something to resume from.
        while not list(storage.glob("*/checkpoint_manager_snapshot.json")):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.5)
        pids = ray_cluster.worker_pids("RayTrainWorker")
        assert pids, "no Ray Train worker process found"
        os.kill(pids[-1], signal.SIGKILL)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    client = mlflow_client(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fakescan-hybrid").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    resumed = int(runs[0].data.tags["fakescan.resumed_from_epoch"])
    assert resumed >= 1  # restarted from a checkpoint, not from scratch
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_clean_auc")]
    assert sorted(set(steps)) == [0, 1, 2]


@pytest.mark.parametrize("fakes", ["self-blend", "prepared"])
def test_boundary_model_learns_the_boundary_from_self_blends_and_trains_on_prepared_fakes(ray_cluster, prepared,
                                                                                          tmp_path, fakes):
    """Two DDP workers: on prepared fakes (no alphas) the head is frozen, so DDP waits for no gradient."""
    out = tmp_path / "boundary"
    result = run_fakescan("train", "hybrid", "--data", str(prepared), "--out", str(out), "--model",
                          "hybrid_boundary_tiny", "--mode", "baseline", "--fakes", fakes, "--workers", "2",
                          "--epochs", "1", "--batch-size", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow_client(f"sqlite:///{out / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("fakescan-hybrid").experiment_id])[0]
    assert ("train_loss_boundary" in run.data.metrics) == (fakes == "self-blend")
    assert create_detector(str(out / "model" / WEIGHTS_ARTIFACT))[1].config.boundary_head


@pytest.fixture(scope="module")
def trained_ensemble(ray_cluster, prepared, tmp_path_factory) -> dict:
    """The ensemble's fine-tune: two DDP workers on the tiny config, one epoch, on the real crops paired with
    fresh self-blends."""
    out = tmp_path_factory.mktemp("ensemble")
    result = run_fakescan("train", "ensemble", "--data", str(prepared), "--out", str(out), "--model", "ensemble_tiny",
                          "--workers", "2", "--epochs", "1", "--batch-size", "8", "--fakes", "self-blend",
                          "--alias", "champion")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "tracking_uri": f"sqlite:///{out / 'mlflow.db'}"}


def test_ensemble_finetune_with_two_workers_logs_every_stream(trained_ensemble):
    client = mlflow_client(trained_ensemble["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("fakescan-ensemble").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["workers"] == "2" and runs[0].data.params["finetune"] == "full"
    assert runs[0].data.params["fakes"] == "self-blend"
    for stream in ("texture", "facial", "fusion"):
        for metric in (f"train_loss_{stream}", f"val_clean_{stream}_auc", f"val_compound_{stream}_auc",
                       f"{stream}_temperature", f"{stream}_ece"):
            assert metric in runs[0].data.metrics, metric
    version = client.get_model_version_by_alias("fakescan-ensemble", "champion")
    assert version.tags["finetune"] == "full"


def test_calibration_round_trips_through_mlflow(trained_ensemble, prepared, tmp_path):
    from detector.voting import DetectorCalibration
    from detector.weights import read_metadata
    from jobs.tracking import fetch_registered_weights

    tracking_uri = trained_ensemble["tracking_uri"]
    result = run_fakescan("calibrate", "--model", "models:/fakescan-ensemble@champion", "--data", str(prepared),
                          "--out", str(tmp_path / "calibrated"), "--tracking-uri", tracking_uri,
                          "--alias", "calibrated")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "texture: T" in result.stdout and "registered models:/fakescan-ensemble/2" in result.stdout
    client = mlflow_client(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("fakescan-calibrate").experiment_id])[0]
    logged = Path(client.download_artifacts(run.info.run_id, "calibration.json", str(tmp_path)))
    from_artifact = DetectorCalibration.from_json(logged.read_text())
    registered = fetch_registered_weights("models:/fakescan-ensemble@calibrated", tracking_uri)
    assert DetectorCalibration.from_metadata(read_metadata(registered.data)) == from_artifact
    assert set(from_artifact.streams) == {"texture", "facial", "fusion"}
    assert "texture_ece" in run.data.metrics


def test_scan_with_both_detectors_writes_streams_bands_votes_and_stability(trained_ensemble, ray_cluster,
                                                                            short_face_video, tmp_path):
    # The bundled hybrid starter votes with weight 1; the one-epoch ensemble's weight may be 0.
    result = run_fakescan("scan", str(short_face_video), "--out", str(tmp_path / "out"), "--frames", "4",
                          "--ensemble-model", "models:/fakescan-ensemble@champion",
                          "--tracking-uri", trained_ensemble["tracking_uri"], "--detectors", "hybrid,ensemble",
                          "--probes", "jpeg50,h264", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    verdict = pd.read_parquet(tmp_path / "out" / "verdicts").iloc[0]
    assert verdict["ensemble_trained"] and verdict["ensemble_name"] == "fakescan-ensemble"
    streams = {s["stream"]: s for s in verdict["streams"]}
    assert set(streams) == {"hybrid", "texture", "facial", "fusion"}
    assert all(s["band"] in ("high", "uncertain", "low") and s["vote"] in (0, 1, 2) for s in streams.values())
    assert verdict["vote_total_weight"] == sum(s["weight"] for s in streams.values())
    assert verdict["vote_total_weight"] >= 1
    assert 0 <= verdict["p_fake"] <= 1 and 0 <= verdict["ensemble_p_fake"] <= 1 and 0 <= verdict["hybrid_p_fake"] <= 1
    assert list(verdict["probe_names"]) == ["jpeg50", "h264"] and len(verdict["probe_p_fake"]) == 2
    assert verdict["stability"] == pytest.approx(max(verdict["p_fake"], *verdict["probe_p_fake"])
                                                 - min(verdict["p_fake"], *verdict["probe_p_fake"]))
    faces = pd.read_parquet(tmp_path / "out" / "faces")
    assert len(faces) == verdict["n_faces"]
    for column in ("p_fake", "hybrid_p_fake", "texture_p_fake", "facial_p_fake", "fusion_p_fake", "fusion_logit"):
        assert faces[column].notna().all(), column
