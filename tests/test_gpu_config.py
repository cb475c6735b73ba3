"""The scan's device plan, batching and GPU paths: checked on a CPU, and on CUDA where there is one.

The CPU tests check what a GPU run relies on and a CPU can show: the plan falls back to CPU
settings without a GPU and never overfills one with; scoring videos in one batch (pixels
converted on the stage's device) gives each video the logits it gets alone; MTCNN batches
across videos find the faces each video finds alone; MPS falls back in one line; gradient
checkpointing keeps the fine-tune's gradients. The ``gpu`` tests compare CUDA with the CPU.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.faces import FaceCropConfig, FaceCropper
from detector.factory import parse_detector_spec
from detector.hybrid import preprocess_crops
from jobs.devices import MPS_CONTROL, GpuSettings, mps_daemon, plan_devices
from jobs.train.ensemble import build_model
from pipelines.errors import OptionError
from pipelines.rows import FACES_SCHEMA, pack_array, to_table
from pipelines.score import ScoreFaces
from pipelines.score_ensemble import ScoreEnsemble
from pipelines.stages import ENSEMBLE, FACES, SCORE

FRAMES = 32
STAGES = [FACES.bind(config=FaceCropConfig(detect_batch_size=FRAMES)), SCORE, ENSEMBLE]
HYBRID_TINY, ENSEMBLE_TINY = parse_detector_spec("hybrid_tiny"), parse_detector_spec("ensemble_tiny")


@pytest.fixture(scope="module")
def face_photos(sample_media: Path) -> np.ndarray:
    """(5, 96, 96, 3) uint8: the real face photos of the sample media, as crops."""
    paths = sorted(sample_media.glob("*-ph.jpg")) + [sample_media / "single_face.jpg"]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((96, 96))) for p in paths])


def faces_row(video_id: str, crops: np.ndarray, scenes: np.ndarray | None = None, status: str = "pending") -> dict:
    """A row as the faces stage leaves it: face i was found in frame i."""
    row = {"video_id": video_id, "status": status, "face_frame": list(range(len(crops))), "crop_size": crops.shape[1],
           "crops": pack_array(crops)[0]}
    if scenes is not None:
        row.update(scenes=pack_array(scenes)[0], scene_size=scenes.shape[1])
    return row


def scored(stage, rows: list[dict]) -> dict[str, dict]:
    return {row["video_id"]: row for row in stage(to_table(rows, FACES_SCHEMA)).to_pylist()}


def test_without_a_gpu_every_pool_gets_its_cpu_settings():
    plan = plan_devices(GpuSettings(), FRAMES, STAGES, cluster_cpus=2, cluster_gpus=0)
    assert plan.device == "cpu" and plan.autocast is None and not plan.channels_last and not plan.mps
    # One pool, an actor per CPU, takes each video through every stage on one thread.
    [chain] = plan.apply(STAGES)
    assert chain.name == "faces-score-ensemble" and chain.pool.max_actors == 2 and chain.resources.gpus == 0
    faces, score, ensemble = chain.kwargs["stages"]
    assert all(s.kwargs["device"] == "cpu" and s.kwargs["threads"] == 1 for s in (faces, score, ensemble))
    # One video per MTCNN call, as many frames as it has; the forward batches the stages always used.
    assert (chain.batch_size, faces.kwargs["config"].detect_batch_size) == (1, FRAMES)
    assert (score.kwargs["batch_size"], ensemble.kwargs["batch_size"]) == (64, 32)


def test_on_gpus_the_default_pools_share_each_gpu_without_overfilling_it():
    plan = plan_devices(GpuSettings(), FRAMES, STAGES, cluster_cpus=192, cluster_gpus=8)
    assert plan.device == "cuda" and plan.autocast == "bf16" and plan.channels_last and plan.mps
    faces, score, ensemble = plan.apply(STAGES)
    per_gpu = faces.resources.gpus * faces.pool.max_actors / 8 + score.resources.gpus + ensemble.resources.gpus
    assert per_gpu <= 1.0
    assert (faces.pool.max_actors, score.pool.max_actors, ensemble.pool.max_actors) == (16, 8, 8)
    assert all(s.kwargs["device"] == "cuda" for s in (faces, score, ensemble))
    # Whole videos per MTCNN call, enough for a full batch of frames.
    assert faces.batch_size * FRAMES >= faces.kwargs["config"].detect_batch_size == 128


def test_gpu_shares_that_overfill_a_gpu_fail_in_one_line():
    with pytest.raises(OptionError, match=r"add up to 1\.3 of each GPU") as error:
        plan_devices(GpuSettings(ensemble_gpus=0.8), FRAMES, STAGES, cluster_cpus=16, cluster_gpus=1)
    assert "\n" not in str(error.value)


def test_min_face_size_scales_down_with_frames_smaller_than_the_detection_size():
    config = FaceCropConfig(detect_long_side=640, min_face_size=20)
    assert config.detection_size(720, 1280) == (360, 640)
    assert [config.min_face_at(side) for side in (640, 480, 320, 100)] == [20, 15, 12, 12]


def test_mps_falls_back_in_one_line_where_its_control_program_is_absent(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-cuda-mps-control on it
    with mps_daemon(True) as running:
        assert running is False
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "CUDA MPS is not available" in lines[0]
    with mps_daemon(False) as running:
        assert running is False
    assert capsys.readouterr().err == ""


def test_hybrid_scores_videos_batched_together_as_it_scores_each_alone(face_photos):
    stage = ScoreFaces(HYBRID_TINY, batch_size=3, device="cpu")  # 3: batches straddle the videos
    rows = scored(stage, [faces_row("a", face_photos[:2]), faces_row("b", face_photos[2:])])
    with torch.inference_mode():
        for video_id, crops in (("a", face_photos[:2]), ("b", face_photos[2:])):
            alone = stage.model(preprocess_crops(crops, stage.model.config.img_size)).numpy()
            np.testing.assert_allclose(rows[video_id]["face_logit"], alone, atol=1e-5)
            assert rows[video_id]["t_score_s"] > 0


def test_a_bad_video_in_a_batch_gets_its_error_and_the_others_their_scores(face_photos):
    stage = ScoreFaces(HYBRID_TINY, batch_size=3, device="cpu")
    broken = dict(faces_row("broken", face_photos[:2]), crop_size=64)  # crops no longer match their shape
    none = faces_row("none", face_photos[:0], status="no_face")
    rows = scored(stage, [faces_row("a", face_photos[:2]), broken, none])
    assert rows["broken"]["status"] == "error" and rows["broken"]["error_stage"] == "score"
    assert len(rows["a"]["face_logit"]) == 2 and rows["a"]["status"] == "pending"
    assert rows["none"]["face_logit"] is None and rows["none"]["status"] == "no_face"


def test_ensemble_scores_videos_batched_together_as_it_scores_each_alone(face_photos):
    stage = ScoreEnsemble(ENSEMBLE_TINY, batch_size=3, device="cpu")
    size = stage.model.config.img_size
    frames = preprocess_crops(face_photos, size).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    videos = {"a": (face_photos[:2], frames[:2]), "b": (face_photos[2:], frames[2:])}
    rows = scored(stage, [faces_row(v, crops, scenes) for v, (crops, scenes) in videos.items()])
    with torch.inference_mode():
        for video_id, (crops, scenes) in videos.items():
            faces = stage.model.score_faces(preprocess_crops(crops, size))
            texture = stage.model.score_frames(preprocess_crops(scenes, size))
            np.testing.assert_allclose(rows[video_id]["face_facial_logit"], faces["facial"].numpy(), atol=1e-4)
            np.testing.assert_allclose(rows[video_id]["face_fusion_logit"], faces["fusion"].numpy(), atol=1e-4)
            np.testing.assert_allclose(rows[video_id]["face_texture_logit"], texture.numpy(), atol=1e-4)


def test_mtcnn_batches_across_videos_find_the_faces_each_video_finds_alone(sample_media):
    def frame(name: str) -> np.ndarray:
        return np.asarray(Image.open(sample_media / name).convert("RGB").resize((640, 360)))

    videos = [np.stack([frame("single_face.jpg"), frame("multi_face.jpg")]), np.stack([frame("multi_face.jpg")])]
    together = FaceCropper(FaceCropConfig(detect_batch_size=2)).crop_faces_many(videos)  # one batch straddles both
    alone = [FaceCropper(FaceCropConfig()).crop_faces(frames) for frames in videos]
    assert [len(faces) for faces in together] == [len(faces) for faces in alone]
    assert len(alone[1]) > 1  # the group photo: several faces
    for batched, single in zip(together, alone):
        assert [f.frame_index for f in batched] == [f.frame_index for f in single]
        np.testing.assert_allclose([f.box for f in batched], [f.box for f in single], atol=0.05)


def test_gradient_checkpointing_keeps_the_fine_tunes_gradients():
    cfg = {"model": "ensemble_tiny", "finetune": "lora", "init": None, "dinov2_weights": None,
           "clip_weights": None}
    plain, _ = build_model(cfg)
    checkpointed, _ = build_model(dict(cfg, grad_checkpointing=True))
    with torch.no_grad():  # adapters start as a no-op (B = 0); give them weight so every gradient shows
        for name, parameter in plain.named_parameters():
            if "lora_b" in name:
                parameter.normal_(std=0.02, generator=torch.Generator().manual_seed(1))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.backbone.grad_checkpointing and not plain.backbone.grad_checkpointing
    pixels = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (plain, checkpointed):
        model.train()
        sum(logits.sum() for logits in model(pixels).values()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if "lora_" in name})
    assert grads[0] and all(g is not None and g.abs().sum() > 0 for g in grads[1].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_scoring_in_bf16_is_close_to_the_cpu(face_photos):
    cpu = ScoreFaces(HYBRID_TINY, device="cpu")
    cuda = ScoreFaces(HYBRID_TINY, device="cuda", autocast="bf16", channels_last=True)
    cuda.model.load_state_dict(cpu.model.state_dict())
    on_gpu, on_cpu = cuda.score_crops(face_photos), cpu.score_crops(face_photos)
    np.testing.assert_allclose(on_gpu, on_cpu, atol=0.05, rtol=0.05)


@pytest.mark.gpu
def test_cuda_face_detection_matches_the_cpu(sample_media):
    frames = np.asarray(Image.open(sample_media / "multi_face.jpg").convert("RGB"))[None]
    on_gpu = FaceCropper(device="cuda").crop_faces(frames)
    on_cpu = FaceCropper(device="cpu").crop_faces(frames)
    assert len(on_gpu) == len(on_cpu) > 1
    np.testing.assert_allclose(sorted(f.box for f in on_gpu), sorted(f.box for f in on_cpu), atol=2.0)


@pytest.mark.gpu
def test_mps_daemon_runs_for_the_block_and_cuda_works_under_it(tmp_path, monkeypatch):
    if shutil.which(MPS_CONTROL) is None:
        pytest.skip(f"{MPS_CONTROL} is not installed")
    for folder in ("pipe", "log"):  # a daemon of this test's own, beside any that already runs
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(f"CUDA_MPS_{folder.upper()}_DIRECTORY", str(tmp_path / folder))
    with mps_daemon(True) as running:
        assert running and (tmp_path / "pipe" / "control").exists()
        probe = subprocess.run([sys.executable, "-c", "import torch; print(float(torch.ones(4, device='cuda').sum()))"],
                               capture_output=True, text=True, timeout=120)
        assert probe.stdout.strip() == "4.0", probe.stderr[-2000:]


@pytest.mark.slow
def test_gpu_benchmark_runs_on_a_cpu_with_tiny_configs(ray_cluster, sample_media, tmp_path):
    """bench/gpu_scan.py's CPU preset: the same script as on the H100, so CI keeps it working."""
    bench = Path(__file__).resolve().parent.parent / "bench" / "gpu_scan.py"
    result = subprocess.run([sys.executable, str(bench), "--preset", "cpu", "--videos", "2", "--standalone-videos", "1",
                             "--media", str(tmp_path / "media")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scan: 2 videos in" in result.stdout and "GPU: none in this cluster" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in table[1:]] == ["decode", "faces", "score", "ensemble"]
