"""A scan killed with SIGKILL resumes where it stopped: no gaps, no duplicates."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.conftest import FAKESCAN, run_fakescan

pytestmark = pytest.mark.slow
N_VIDEOS = 13


def verdict_rows(out: Path) -> int:
    folder = out / "verdicts"
    return sum(pq.read_metadata(p).num_rows for p in folder.glob("*.parquet")) if folder.exists() else 0


def test_kill_9_mid_scan_then_rerun_gives_one_row_per_video(ray_cluster, short_face_video, tmp_path):
    """A named pipe no one writes holds the scan open, so the SIGKILL lands mid-scan however fast the
    other videos go: on a small input their verdicts can all land in one burst."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(N_VIDEOS - 1):  # a multiple of the verdict stage's batch: none waits for the stuck one
        shutil.copy(short_face_video, src / f"clip {i:02d}.mp4")
    stuck = src / "stuck.mp4"
    os.mkfifo(stuck)
    out = tmp_path / "out"
    args = ["scan", str(src), "--out", str(out), "--model", "hybrid_tiny", "--frames", "12", "--no-progress",
            "--rows-per-file", "1"]
    driver = subprocess.Popen([FAKESCAN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while verdict_rows(out) < N_VIDEOS - 1 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        # Unblock the stuck read (it gets end-of-file), so that no task of the session cluster hangs on.
        threading.Thread(target=lambda: stuck.open("wb").close(), daemon=True).start()
    done_before = verdict_rows(out)
    assert 0 < done_before < N_VIDEOS, "the scan must be killed part-way for this test to mean anything"
    stuck.unlink()
    shutil.copy(short_face_video, stuck)

    rerun = run_fakescan(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"scanned {N_VIDEOS - done_before} of {N_VIDEOS} videos ({done_before} already done)" in rerun.stdout

    verdicts = pd.read_parquet(out / "verdicts")
    assert len(verdicts) == N_VIDEOS and verdicts["video_id"].is_unique
    faces = pd.read_parquet(out / "faces")
    assert faces.groupby("video_id").size().to_dict() == verdicts.set_index("video_id")["n_faces"].to_dict()
    assert not list(out.glob("*/.*.tmp"))
