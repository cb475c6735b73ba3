"""Damaged files that still play are scanned: seeded damage of the kinds archives get (flipped
bits, zeroed runs, spliced or swapped blocks, truncations, overwritten header bytes) applied to
real clips in four containers. A file that a plain skip-bad-packets PyAV loop decodes to at
least 8 frames must get a verdict, and an error says what is wrong in one plain line."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from pipelines.decode import DecodeConfig, decode_videos
from pipelines.sources import list_videos
from tests.conftest import run_fakescan
from tests.support.media import DAMAGE_KINDS, damage, playable_frames

SEEDS = range(4)
PLAYABLE = 8  # frames a player's loop decodes, above which the scan owes a verdict
NOT_PLAIN = re.compile(r"\b[A-Z]\w*(Error|Exception)\b|Traceback|File \"|\[[a-z0-9_]+ @ 0x")


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory, short_face_video, odd_media_dir) -> Path:
    folder = tmp_path_factory.mktemp("damaged")
    clips = [short_face_video] + [odd_media_dir / name for name in ("clip.mkv", "clip.webm", "clip.ts")]
    for clip in clips:
        data = clip.read_bytes()
        for kind in DAMAGE_KINDS:
            for seed in SEEDS:
                (folder / f"{clip.stem}{clip.suffix.replace('.', '_')}-{kind}-{seed}{clip.suffix}").write_bytes(
                    damage(data, kind, seed))
    return folder


@pytest.fixture(scope="module")
def decoded(damaged_dir) -> list[dict]:
    """Every damaged file through the decode stage, with what a player's loop gets from it."""
    rows = decode_videos(list_videos(str(damaged_dir), {}), DecodeConfig(n_frames=8), {}).to_pylist()
    for row in rows:
        row["playable"] = playable_frames(Path(row["uri"]).read_bytes())
    return rows


def test_the_damage_is_real(decoded):
    assert sum(row["damaged"] is True for row in decoded) >= len(decoded) // 3
    assert sum(row["status"] == "error" for row in decoded) >= 4  # some files are beyond repair


def test_a_damaged_file_that_still_plays_is_never_an_error(decoded):
    missed = [f"{Path(r['uri']).name} ({r['playable']} playable frames): {r['error_message']}"
              for r in decoded if r["status"] == "error" and r["playable"] >= PLAYABLE]
    assert not missed, "\n".join(missed)


def test_a_scanned_damaged_file_says_it_is_damaged_and_how_much(decoded):
    for row in decoded:
        if row["status"] == "pending":
            assert row["damaged"] == (row["decode_errors"] > 0)
            assert row["frames_decoded"] >= len(row["frame_numbers"]) >= 1


def test_errors_say_what_is_wrong_with_the_file_in_one_plain_line(decoded):
    errors = [r for r in decoded if r["status"] == "error"]
    assert errors
    for row in errors:
        message = row["error_message"]
        assert row["error_stage"] == "decode" and message and "\n" not in message
        assert not NOT_PLAIN.search(message), message


@pytest.mark.slow
def test_a_scan_of_damaged_files_gives_each_one_row(ray_cluster, damaged_dir, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for path in sorted(damaged_dir.glob("short_face*-0.mp4")):  # one file of each damage keeps the scan short
        shutil.copy(path, source / path.name)
    result = run_fakescan("scan", str(source), "--out", str(tmp_path / "out"), "--detectors", "hybrid",
                          "--model", "hybrid_tiny", "--frames", "4", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = pd.read_parquet(tmp_path / "out" / "verdicts")
    assert sorted(Path(u).name for u in verdicts["uri"]) == sorted(p.name for p in source.iterdir())
    assert verdicts["video_id"].is_unique
    playable = verdicts["uri"].map(lambda u: playable_frames(Path(u).read_bytes()) >= PLAYABLE)
    assert (verdicts.loc[playable, "status"] != "error").all()
    assert verdicts["damaged"].any() and "damaged but scanned" in result.stdout
    assert pa.types.is_boolean(pa.Schema.from_pandas(verdicts[["damaged"]]).field("damaged").type)
