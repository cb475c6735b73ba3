"""fakescan evaluate: the seven-scenario protocol, its attacks, and the tables it writes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from detector.attacks import PGDConfig, detector_loss
from detector.evaluation import (
    SCENARIOS,
    EvaluatedDetector,
    compress,
    evaluate_crops,
    fit_unet_attacker,
    scenario_pixels,
)
from detector.factory import create_detector
from detector.hybrid import preprocess_crops
from detector.voting import DetectorCalibration
from detector.weights import save_weights
from jobs.evaluate.outputs import methods_table, metrics_table
from tests.conftest import run_fakescan


@pytest.fixture(scope="module")
def face_crops(sample_media) -> tuple[np.ndarray, np.ndarray]:
    """Real face photos, cut into 8 crops of 96 px, half of them labelled fake."""
    from PIL import Image

    photo = np.asarray(Image.open(sample_media / "single_face.jpg").convert("RGB"))
    h, w = photo.shape[:2]
    crops = [np.asarray(Image.fromarray(photo[y : y + h // 2, x : x + w // 2]).resize((96, 96)))
             for y in (0, h // 4, h // 2 - 1) for x in (0, w // 4, w // 2 - 1)][:8]
    return np.stack(crops), np.array([0, 1] * 4, np.float32)


@pytest.fixture(scope="module")
def tiny_hybrid(face_crops) -> EvaluatedDetector:
    """The tiny hybrid fitted to the crops, so that it has decisions for an attacker to flip
    (a random model's near-constant output gives a label-blind attacker nothing to work with)."""
    crops, labels = face_crops
    torch.manual_seed(0)
    model, _ = create_detector("hybrid_tiny")
    pixels, targets = preprocess_crops(crops, model.config.img_size), torch.as_tensor(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        loss = detector_loss(model(pixels), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return EvaluatedDetector("tiny", model, DetectorCalibration.uncalibrated("hybrid", ("hybrid",)),
                             model.config.img_size)


def mean_loss(detector: EvaluatedDetector, pixels: torch.Tensor, labels: np.ndarray) -> float:
    with torch.no_grad():
        return detector_loss(detector.target(pixels), torch.as_tensor(labels)).item()


def test_pgd_scenario_raises_the_detectors_loss(tiny_hybrid, face_crops):
    crops, labels = face_crops
    clean = scenario_pixels("clean", crops, labels, tiny_hybrid, None, PGDConfig())
    attacked = scenario_pixels("pgd", crops, labels, tiny_hybrid, None, PGDConfig(iterations=5))
    assert (attacked - clean).abs().max() <= 8 / 255 + 1e-6
    assert mean_loss(tiny_hybrid, attacked, labels) > mean_loss(tiny_hybrid, clean, labels) + 0.01


def test_attacks_leave_the_detector_scoring_as_before(tiny_hybrid, face_crops):
    crops, labels = face_crops
    before = tiny_hybrid.logits(preprocess_crops(crops, tiny_hybrid.img_size))["hybrid"]
    evaluate_crops(tiny_hybrid, crops, labels, ("pgd",), None, PGDConfig(iterations=2), analysis="gradcam")
    assert not tiny_hybrid.model.training
    after = evaluate_crops(tiny_hybrid, crops, labels, ("clean",), None, PGDConfig(), analysis=None)
    np.testing.assert_allclose(after["clean"].logits["hybrid"], before, atol=1e-5)


def test_unet_attacker_fitted_against_a_model_raises_its_loss(tiny_hybrid, face_crops):
    crops, labels = face_crops
    attacker = fit_unet_attacker(tiny_hybrid, crops, labels, steps=40, batch_size=8)
    clean = scenario_pixels("clean", crops, labels, tiny_hybrid, None, PGDConfig())
    attacked = scenario_pixels("unet", crops, labels, tiny_hybrid, attacker, PGDConfig())
    assert (attacked - clean).abs().max() <= 8 / 255 + 1e-6
    assert mean_loss(tiny_hybrid, attacked, labels) > mean_loss(tiny_hybrid, clean, labels)


def test_h264_scenario_reencodes_each_crop_on_its_own(face_crops):
    crops, _ = face_crops
    together = compress(crops[:3], "h264")
    alone = np.concatenate([compress(crops[i : i + 1], "h264") for i in range(3)])
    assert np.array_equal(together, alone)
    error = np.abs(together.astype(np.float32) - crops[:3]).mean()
    assert 0.3 < error < 12  # lossy, but still the same faces


def test_every_scenario_gives_every_stream_a_probability(face_crops):
    crops, labels = face_crops
    model, info = create_detector("ensemble_tiny")
    detector = EvaluatedDetector("ens", model, info.calibration, model.config.img_size)
    attacker = fit_unet_attacker(detector, crops, labels, steps=2)
    results = evaluate_crops(detector, crops[:2], labels[:2], SCENARIOS, attacker, PGDConfig(iterations=2))
    assert list(results) == list(SCENARIOS)
    for scenario, scores in results.items():
        assert set(scores.p_fake) == {"texture", "facial", "fusion", "all"}
        assert all(len(p) == 2 and np.all((p >= 0) & (p <= 1)) for p in scores.p_fake.values())
        assert set(scores.entropy) == {"texture", "facial", "fusion"}
        assert (scores.feature_cosine is None) == (scenario == "clean")


def test_metrics_match_hand_computed_values():
    # Labels 0 0 1 1, p 0.1 0.6 0.4 0.9: pairs (fake > real) 3 of 4 → AUC 0.75;
    # p > 0.5 right for 0.1 and 0.9 → accuracy 0.5; ECE with 10 bins: each sample alone in its
    # bin: (|0.1−0| + |0.6−0| + |0.4−1| + |0.9−1|) / 4 = 1.4 / 4 = 0.35.
    predictions = pa.table({"model": ["m"] * 4, "stream": ["all"] * 4, "scenario": ["clean"] * 4,
                            "crop_id": list("abcd"), "label": pa.array([0, 0, 1, 1], pa.int8()),
                            "p_fake": pa.array([0.1, 0.6, 0.4, 0.9], pa.float32())})
    row = metrics_table(predictions, {"m": "hybrid"}).to_pylist()[0]
    assert row["auc"] == pytest.approx(0.75)
    assert row["accuracy"] == pytest.approx(0.5)
    assert row["ece"] == pytest.approx(0.35, abs=1e-6)
    assert row["n"] == 4


def test_each_fake_method_is_judged_against_all_the_real_crops():
    # Real p 0.1 0.6; sbi fakes 0.9 0.8 rank above both reals → AUC 1; the morph fake 0.4 sits between the two
    # reals → AUC 0.5.
    predictions = pa.table({"model": ["m"] * 5, "stream": ["all"] * 5, "scenario": ["clean"] * 5,
                            "crop_id": list("abcde"), "label": pa.array([0, 0, 1, 1, 1], pa.int8()),
                            "kind": ["real", "real", "sbi", "sbi", "morph"],
                            "p_fake": pa.array([0.1, 0.6, 0.9, 0.8, 0.4], pa.float32())})
    rows = {r["method"]: r for r in methods_table(predictions, {"m": "hybrid"}).to_pylist()}
    assert set(rows) == {"sbi", "morph"}
    assert rows["sbi"]["auc"] == pytest.approx(1.0) and (rows["sbi"]["n_real"], rows["sbi"]["n_fake"]) == (2, 2)
    assert rows["morph"]["auc"] == pytest.approx(0.5) and rows["morph"]["n_fake"] == 1


def test_an_unknown_scenario_is_a_one_line_error(tmp_path):
    result = run_fakescan("evaluate", "--model", "x.safetensors", "--data", str(tmp_path), "--out",
                          str(tmp_path / "out"), "--scenarios", "clean,snow")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "snow" in result.stderr


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    hybrid, info = create_detector("hybrid_tiny")
    save_weights(hybrid, folder / "hybrid.safetensors", {"config": json.dumps(info.config.to_dict()),
                                                        "version": "t1"})
    ensemble, info = create_detector("ensemble_tiny")
    save_weights(ensemble, folder / "ensemble.safetensors", {"detector": "ensemble", "version": "t2",
                                                            "config": json.dumps(info.config.to_dict())})
    return {"hybrid": folder / "hybrid.safetensors", "ensemble": folder / "ensemble.safetensors"}


@pytest.fixture(scope="module")
def evaluation(ray_cluster, tiny_weights, sample_media, short_face_video, tmp_path_factory) -> Path:
    """Two models side by side on a labelled video set (prepared by evaluate itself)."""
    videos = tmp_path_factory.mktemp("labelled")
    for name in ("single_face.jpg", "multi_face.jpg"):
        shutil.copy(sample_media / name, videos / name)
    shutil.copy(short_face_video, videos / "short_face.mp4")
    (videos / "labels.csv").write_text("uri,label,group\nsingle_face.jpg,real,a\nmulti_face.jpg,real,b\n"
                                       "short_face.mp4,real,c\n")
    out = tmp_path_factory.mktemp("evaluation") / "out"
    result = run_fakescan("evaluate", "--model", f"small={tiny_weights['hybrid']}",
                          "--model", f"ens={tiny_weights['ensemble']}", "--data", str(videos / "labels.csv"),
                          "--out", str(out), "--pgd-steps", "2", "--unet-steps", "3", "--gallery", "2",
                          "--tracking-uri", f"sqlite:///{out.parent}/mlflow.db", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluated 2 model(s)" in result.stdout
    return out


def test_evaluation_scores_every_model_stream_and_scenario(evaluation):
    summary = json.loads((evaluation / "evaluation.json").read_text())
    metrics = pd.read_parquet(evaluation / "metrics.parquet")
    predictions = pd.read_parquet(evaluation / "predictions.parquet")
    assert summary["kind"] == "fakescan-evaluation" and summary["n"] > 0 and 0 < summary["n_fake"] < summary["n"]
    assert [m["name"] for m in summary["models"]] == ["small", "ens"]
    expected = {("small", "all"), ("small", "hybrid")} | {("ens", s) for s in ("all", "texture", "facial", "fusion")}
    for model, stream in expected:
        rows = metrics[(metrics.model == model) & (metrics.stream == stream)]
        assert list(rows.scenario) == list(SCENARIOS)
        assert (rows.n == summary["n"]).all()
    assert len(predictions) == summary["n"] * len(SCENARIOS) * len(expected)


def test_evaluation_metrics_follow_from_its_predictions(evaluation):
    from detector.metrics import roc_auc

    metrics = pd.read_parquet(evaluation / "metrics.parquet")
    predictions = pd.read_parquet(evaluation / "predictions.parquet")
    for row in metrics.itertuples():
        p = predictions[(predictions.model == row.model) & (predictions.stream == row.stream)
                        & (predictions.scenario == row.scenario)]
        assert row.auc == pytest.approx(roc_auc(p.label.to_numpy(), p.p_fake.to_numpy()), abs=1e-6, nan_ok=True)
        assert row.accuracy == pytest.approx(((p.p_fake > 0.5) == (p.label == 1)).mean())
    methods = pd.read_parquet(evaluation / "methods.parquet")
    assert set(methods.method) == set(predictions[predictions.label == 1].kind) <= {"sbi", "swap"}
    for row in methods.itertuples():
        p = predictions[(predictions.model == row.model) & (predictions.stream == row.stream)
                        & (predictions.scenario == row.scenario) & predictions.kind.isin(["real", row.method])]
        assert (row.n_real, row.n_fake) == ((p.label == 0).sum(), (p.label == 1).sum())
        assert row.auc == pytest.approx(roc_auc(p.label.to_numpy(), p.p_fake.to_numpy()), abs=1e-6, nan_ok=True)


def test_evaluation_writes_analysis_galleries_and_an_mlflow_run(evaluation):
    import mlflow

    analysis = pd.read_parquet(evaluation / "analysis.parquet")
    assert set(analysis.scenario) == set(SCENARIOS) - {"clean"}
    assert analysis.feature_cosine.between(-1, 1).all() and (analysis.entropy_clean > 0).all()
    gallery = pd.read_parquet(evaluation / "gallery.parquet")
    assert set(gallery.kind) <= {"confident_fake", "disagreement"} and len(gallery)
    for path in gallery.heatmap_path.dropna().tolist() + gallery.crop_path.tolist():
        assert (evaluation / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((evaluation / "evaluation.json").read_text())
    run = mlflow.tracking.MlflowClient(f"sqlite:///{evaluation.parent}/mlflow.db").get_run(summary["mlflow_run_id"])
    assert "small.clean.auc" in run.data.metrics and "ens.facial.h264.ece" in run.data.metrics


def test_report_renders_the_evaluation(evaluation):
    result = run_fakescan("report", str(evaluation))
    assert result.returncode == 0, result.stderr[-2000:]
    page = (evaluation / "report.html").read_text()
    assert 'class="protocol' in page and page.count("<svg") >= 2 * len(SCENARIOS)
    assert 'class="methods' in page and 'data-method="sbi"' in page
    assert "data:image/png;base64," in page  # the galleries' heatmaps, embedded
