"""The declared stages keep their contract, each one the same way: the schema they declare in
gives the schema they declare out, one row per video in order, and a bad video becomes that
video's row with the stage named, while the others go on.

Every stage of a scan with both detectors (tiny configs), probes and --explain runs here in one
process on real clips, each on what the stage before it wrote.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from detector.factory import create_detector, parse_detector_spec
from pipelines.execution import InProcessPipeline
from pipelines.rows import MANIFEST_SCHEMA
from pipelines.sources import list_videos
from pipelines.stages import SCAN_STAGES, ResolvedDetector, ScanSettings, StageSpec, scan_stages

# What breaks one video at each stage's input: the stage must turn it into that video's row.
Breakage = Callable[[dict[str, Any]], None]
BREAKAGES: dict[str, Breakage] = {
    "decode": lambda row: row.update(uri=__file__, size_bytes=os.path.getsize(__file__)),  # text, not a video
    "faces": lambda row: row.update(frames=b"\0" * 7),
    "probes": lambda row: row.update(crops=b"\0" * 7),
    "score": lambda row: row.update(crops=b"\0" * 7),
    "ensemble": lambda row: row.update(crops=b"\0" * 7),
    "verdict": lambda row: row.update(face_logit=[0.5]),  # one logit for several faces
    "explain": lambda row: row.update(crops=b"\0" * 7),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, short_face_video: Path, no_face_video: Path) -> Path:
    folder = tmp_path_factory.mktemp("stage-videos")
    (folder / "a_face.mp4").write_bytes(short_face_video.read_bytes())
    (folder / "b_face.mp4").write_bytes(short_face_video.read_bytes())
    (folder / "c_no_face.mp4").write_bytes(no_face_video.read_bytes())
    (folder / "d_empty.mp4").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> list[StageSpec]:
    """Every stage a scan can run: both detectors, a probe, and heatmaps for uncertain videos (what
    a random model's videos are)."""
    detectors = {}
    for name in ("hybrid_tiny", "ensemble_tiny"):
        spec = parse_detector_spec(name)
        detectors[spec.kind] = ResolvedDetector(spec, create_detector(spec)[1])
    settings = ScanSettings(run_id="stages", frames=3, probes=("jpeg50",), explain=("uncertain",),
                            out=str(tmp_path_factory.mktemp("stage-out")))
    return scan_stages(settings, detectors)


@pytest.fixture(scope="module")
def pipeline(stages: list[StageSpec]) -> InProcessPipeline:
    return InProcessPipeline(stages, device="cpu")


@pytest.fixture(scope="module")
def inputs(pipeline: InProcessPipeline, videos: Path) -> dict[str, pa.Table]:
    """Each stage's input: the manifest for the first, then what the stage before it wrote."""
    table = list_videos(str(videos), {}).cast(MANIFEST_SCHEMA)
    seen = {}
    for stage, run in zip(pipeline.stages, pipeline.callables):
        seen[stage.name] = table
        table = run(table)
    return seen


def test_the_scan_list_holds_every_declared_stage_in_order(stages: list[StageSpec]):
    assert [s.name for s in stages] == [s.name for s in SCAN_STAGES]


def test_each_stage_reads_only_columns_the_stage_before_it_writes(stages: list[StageSpec]):
    for before, stage in itertools.pairwise(stages):
        written = {f.name: f for f in before.output_schema}
        missing = [f.name for f in stage.input_schema if written.get(f.name) != f]
        assert not missing, f"{stage.name} reads {missing}, which {before.name} does not write as declared"


@pytest.mark.parametrize("name", [s.name for s in SCAN_STAGES])
def test_declared_schema_in_gives_declared_schema_out_one_row_per_video(name, pipeline, inputs):
    stage, run = next((s, r) for s, r in zip(pipeline.stages, pipeline.callables) if s.name == name)
    given = inputs[name]
    assert set(stage.input_schema.names) <= set(given.column_names)
    out = run(given)
    assert out.schema == stage.output_schema
    assert out["video_id"].to_pylist() == given["video_id"].to_pylist()
    statuses = {Path(uri).name: status for uri, status in zip(out["uri"].to_pylist(), out["status"].to_pylist())}
    assert statuses["d_empty.mp4"] == "error"
    if name == "explain":
        assert any(uri for uris in out["face_heatmap_uri"].to_pylist() for uri in uris if uri)


@pytest.mark.parametrize("name", [s.name for s in SCAN_STAGES])
def test_a_video_broken_at_a_stage_becomes_its_row_with_the_stage_named(name, pipeline, inputs):
    run = pipeline.instance(name)
    rows = inputs[name].to_pylist()
    index = {Path(r["uri"]).name: i for i, r in enumerate(rows)}
    BREAKAGES[name](rows[index["a_face.mp4"]])
    out = run(pa.Table.from_pylist(rows, schema=inputs[name].schema)).to_pylist()
    broken, healthy = out[index["a_face.mp4"]], out[index["b_face.mp4"]]
    assert broken["error_stage"] == name and "\n" not in broken["error_message"]
    if name == "explain":  # the verdict stands; the row says why it has no heatmaps
        assert broken["status"] == "ok"
    else:
        assert broken["status"] == "error"
    assert healthy["error_stage"] is None and healthy["status"] in ("pending", "ok")
    assert len(out) == len(rows)


def test_a_video_that_cannot_be_fetched_is_a_read_error_of_the_decode_stage(pipeline, inputs):
    rows = inputs["decode"].to_pylist()
    rows[0]["uri"] += ".gone"
    out = pipeline.instance("decode")(pa.Table.from_pylist(rows, schema=inputs["decode"].schema)).to_pylist()
    assert (out[0]["status"], out[0]["error_stage"]) == ("error", "read")
    assert out[0]["error_message"] == "cannot read the file: No such file or directory"
    assert out[1]["status"] == "pending"
