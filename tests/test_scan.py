"""End-to-end scans of real media on a real local Ray cluster, through the CLI."""
from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tests.conftest import run_fakescan

pytestmark = pytest.mark.slow
SCAN = ("--model", "hybrid_tiny", "--frames", "4", "--no-progress")


def read_verdicts(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "verdicts")


@pytest.fixture(scope="module")
def mixed_scan(ray_cluster, odd_media_dir, tmp_path_factory):
    """One scan over a folder of good, odd and broken files."""
    out = tmp_path_factory.mktemp("mixed") / "out"
    result = run_fakescan("scan", str(odd_media_dir), "--out", str(out), *SCAN)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out, read_verdicts(out)


def test_every_listed_file_has_exactly_one_verdict(mixed_scan, odd_media_dir):
    _, _, verdicts = mixed_scan
    expected = {name for name, e in odd_media_dir.expected.items() if e.status != "absent"}
    names = [Path(uri).relative_to(odd_media_dir).as_posix() for uri in verdicts["uri"]]
    assert sorted(names) == sorted(expected)
    assert verdicts["video_id"].is_unique


def test_files_that_are_not_videos_are_not_listed(mixed_scan):
    _, _, verdicts = mixed_scan
    assert not verdicts["uri"].str.endswith("readme.txt").any()


def test_each_odd_file_gets_its_expected_status_and_stage(mixed_scan, odd_media_dir):
    _, _, verdicts = mixed_scan
    by_name = {Path(u).relative_to(odd_media_dir).as_posix(): row
               for u, row in zip(verdicts["uri"], verdicts.to_dict("records"))}
    wrong = []
    for name, expect in odd_media_dir.expected.items():
        if expect.status == "absent":
            continue
        row = by_name[name]
        got = (row["status"], row["error_stage"] if row["status"] == "error" else None)
        want = (expect.status, expect.error_stage if expect.status == "error" else None)
        if got != want:
            wrong.append(f"{name}: got {got} ({row['error_message']}), want {want}")
    assert not wrong, "\n".join(wrong)


def test_error_rows_carry_a_one_line_reason(mixed_scan):
    _, _, verdicts = mixed_scan
    errors = verdicts[verdicts["status"] == "error"]
    assert len(errors) > 0
    assert (errors["label"] == "error").all()
    assert errors["error_message"].str.len().gt(0).all()
    assert not errors["error_message"].str.contains("\n").any()


def test_summary_line_counts_statuses_and_names_the_output(mixed_scan):
    result, out, verdicts = mixed_scan
    summary = result.stdout.strip().splitlines()[-1]
    assert f"scanned {len(verdicts)} of {len(verdicts)}" in summary
    for status, count in verdicts["status"].value_counts().items():
        assert f"{status} {count}" in summary
    assert str(out) in summary


def test_untrained_model_never_reports_a_confidence(mixed_scan):
    result, _, verdicts = mixed_scan
    assert "no trained weights" in result.stderr
    assert not verdicts["model_trained"].any()
    assert verdicts["p_fake"].isna().all()
    assert set(verdicts.loc[verdicts["status"] == "ok", "label"]) == {"uncertain"}


def test_faces_table_has_one_row_per_face_and_duckdb_joins_it(mixed_scan):
    _, out, verdicts = mixed_scan
    con = duckdb.connect()
    per_video = con.execute(
        f"""select v.video_id, v.n_faces, count(f.video_id) as rows
            from read_parquet('{out}/verdicts/*.parquet') v
            left join read_parquet('{out}/faces/*.parquet') f using (video_id)
            group by all"""
    ).df()
    assert (per_video["n_faces"] == per_video["rows"]).all()
    assert per_video["n_faces"].sum() == verdicts["n_faces"].sum() > 0


def test_multi_face_video_keeps_every_face(ray_cluster, multi_face_video, tmp_path):
    out = tmp_path / "out"
    result = run_fakescan("scan", str(multi_face_video), "--out", str(out), *SCAN)
    assert result.returncode == 0, result.stderr[-3000:]
    faces = pd.read_parquet(out / "faces")
    assert faces.groupby("frame_index").size().max() >= 3
    assert len(faces["box"].iloc[0]) == 4 and faces["det_prob"].min() >= 0.9


def test_video_without_faces_is_no_face(ray_cluster, no_face_video, tmp_path):
    out = tmp_path / "out"
    result = run_fakescan("scan", str(no_face_video), "--out", str(out), *SCAN)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = read_verdicts(out).to_dict("records")
    assert (row["status"], row["label"], row["n_faces"]) == ("no_face", "no_face", 0)
    assert row["n_frames"] == 4


def test_rerun_skips_videos_already_scanned(ray_cluster, short_face_video, no_face_video, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(short_face_video, src / "a.mp4")
    out = tmp_path / "out"
    assert run_fakescan("scan", str(src), "--out", str(out), *SCAN).returncode == 0
    shutil.copy(no_face_video, src / "b.mp4")
    second = run_fakescan("scan", str(src), "--out", str(out), *SCAN)
    assert "scanned 1 of 2 videos (1 already done)" in second.stdout
    assert sorted(Path(u).name for u in read_verdicts(out)["uri"]) == ["a.mp4", "b.mp4"]


def test_readme_duckdb_queries_run_on_scan_output(mixed_scan):
    """The README's schema examples are the analysts' contract: every query must run as written."""
    _, out, _ = mixed_scan
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```sql\n")[1:]]
    sql_text = "\n".join(line for block in blocks for line in block.splitlines() if not line.startswith("--"))
    statements = [s.strip() for s in sql_text.split(";") if s.strip()]
    assert len(statements) >= 3
    con = duckdb.connect()
    for sql in statements:
        con.execute(sql.replace("'out/", f"'{out}/")).fetchall()


def test_limit_scans_only_that_many_new_videos(ray_cluster, short_face_video, no_face_video, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        shutil.copy(short_face_video, src / name)
    out = tmp_path / "out"
    first = run_fakescan("scan", str(src), "--out", str(out), "--limit", "2", *SCAN)
    assert "scanned 2 of 3 videos" in first.stdout
    rest = run_fakescan("scan", str(src), "--out", str(out), *SCAN)
    assert "scanned 1 of 3 videos (2 already done)" in rest.stdout
    assert read_verdicts(out)["video_id"].is_unique and len(read_verdicts(out)) == 3


def test_default_model_is_the_bundled_trained_starter(ray_cluster, short_face_video, tmp_path):
    result = run_fakescan("scan", str(short_face_video), "--out", str(tmp_path / "out"), "--frames", "4",
                          "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no trained weights" not in result.stderr
    verdict = pd.read_parquet(tmp_path / "out" / "verdicts").iloc[0]
    assert verdict["model_name"] == "fakescan-hybrid" and verdict["model_trained"]
    assert 0.0 <= verdict["p_fake"] <= 1.0
    faces = pd.read_parquet(tmp_path / "out" / "faces")
    assert faces["hybrid_p_fake"].notna().all()
