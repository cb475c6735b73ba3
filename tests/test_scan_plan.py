"""Scans that reserve every kind of stage finish on the 2-CPU cluster CI has; a scan that stops
making progress says what it waits for, stops at its --stall-timeout, and resumes."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pandas as pd
import pytest

from jobs.scan.job import ScanConfig, run_scan
from tests.conftest import run_fakescan

pytestmark = pytest.mark.slow
TINY = {"model": "hybrid_tiny", "ensemble_model": "ensemble_tiny", "frames": 2, "progress": False,
        "stall_timeout_s": 300.0}  # a regression fails the test instead of hanging the suite
# Each choice of detectors with every optional stage on: the most a scan reserves for it. All 18
# combinations of --detectors × --probes × --explain go through the real plan in test_resources.
MATRIX = [(detectors, ("jpeg50", "h264"), ("fake", "uncertain"))
          for detectors in (("hybrid", "ensemble"), ("hybrid",), ("ensemble",))]


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory: pytest.TempPathFactory, short_face_video: Path, no_face_video: Path) -> Path:
    folder = tmp_path_factory.mktemp("two-clips")
    (folder / "face.mp4").write_bytes(short_face_video.read_bytes())
    (folder / "no_face.mp4").write_bytes(no_face_video.read_bytes())
    return folder


@pytest.mark.parametrize("detectors, probes, explain", MATRIX,
                         ids=[f"{'+'.join(d)}-probes{len(p)}-explain{len(e)}" for d, p, e in MATRIX])
def test_every_stage_combination_finishes_on_two_cpus(ray_cluster, two_clips, tmp_path, detectors, probes, explain):
    summary = run_scan(ScanConfig(str(two_clips), str(tmp_path / "out"), detectors=detectors, probes=probes,
                                  explain=explain, **TINY))
    verdicts = pd.read_parquet(tmp_path / "out" / "verdicts")
    assert summary.scanned == len(verdicts) == 2
    assert sorted(verdicts["status"]) == ["no_face", "ok"]
    if explain:  # random tiny models call every face uncertain: the explain stage drew its heatmaps
        assert pd.read_parquet(tmp_path / "out" / "faces")["heatmap_uri"].notna().any()


def test_both_starters_with_explain_finish_on_two_cpus(ray_cluster, two_clips, tmp_path):
    """The hang of issue 19: the default detectors plus --explain on the 2-core machine."""
    result = run_fakescan("scan", str(two_clips), "--out", str(tmp_path / "out"), "--explain", "--no-progress",
                          "--stall-timeout", "300", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(pd.read_parquet(tmp_path / "out" / "verdicts")) == 2


def test_a_stalled_scan_says_what_it_waits_for_stops_and_resumes(ray_cluster, short_face_video, tmp_path):
    """A file whose read never returns (a named pipe no one writes, as a hung mount would do):
    the other videos get their verdicts, the watchdog names the stuck stage, --stall-timeout
    stops the scan with exit code 1, and a rerun scans only what is missing."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    for i in range(4):  # a full call of the model stages: nothing waits for the stuck one to fill a batch
        (videos / f"face{i}.mp4").write_bytes(short_face_video.read_bytes())
    stuck = videos / "stuck.mp4"
    os.mkfifo(stuck)
    flags = ["--model", "hybrid_tiny", "--detectors", "hybrid", "--frames", "2", "--no-progress"]
    try:
        result = run_fakescan("scan", str(videos), "--out", str(out), *flags, "--stall-warning", "20",
                              "--stall-timeout", "60", timeout=600)
    finally:
        # Unblock the stuck read (it gets end-of-file), so that no task of the session cluster hangs on.
        threading.Thread(target=lambda: stuck.open("wb").close(), daemon=True).start()
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("fakescan: error:")]
    assert len(errors) == 1 and "the scan stopped: no video finished for" in errors[0]
    # On a CPU cluster one pool of actors takes each video from decode through the hybrid.
    assert "blocks done: decode-faces-score 4/5" in errors[0] and "4 verdicts written" in errors[0]
    assert any(line.startswith("fakescan: warning: no video finished for") for line in result.stderr.splitlines())
    assert sorted(pd.read_parquet(out / "verdicts")["uri"].map(lambda u: Path(u).name)) == [
        f"face{i}.mp4" for i in range(4)]

    stuck.unlink()
    stuck.write_bytes(short_face_video.read_bytes())
    rerun = run_fakescan("scan", str(videos), "--out", str(out), *flags, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "scanned 1 of 5 videos (4 already done)" in rerun.stdout
    assert sorted(pd.read_parquet(out / "verdicts")["uri"].map(lambda u: Path(u).name)) == [
        *(f"face{i}.mp4" for i in range(4)), "stuck.mp4"]
