"""``fakescan report``: self-contained HTML from an evaluation's or a scan's output, opened in a real
headless Chromium (Debian's ``chromium``) to check what a reader sees: tables, decoded images, plots."""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from detector.metrics import accuracy, expected_calibration_error, roc_auc
from jobs.report.data import load_report
from jobs.report.html import render
from tests.conftest import run_fakescan

SCENARIOS = ["clean", "jpeg50", "h264", "pgd", "unet", "unet_jpeg50", "unet_h264"]
FAKES_ONLY = "unet"  # the attacker only touches fakes here, so AUC is undefined: the page must say so
# name, detector, separation
MODELS = [("baseline", "hybrid", 0.8), ("robust", "hybrid", 1.6), ("ensemble", "ensemble", 1.2)]
STREAMS = {"hybrid": ["all"], "ensemble": ["all", "texture", "facial", "fusion"]}
N_CROPS = 40
# Runs after the page has loaded and writes what the browser made of it into the DOM, for --dump-dom.
PROBE = """<script>window.addEventListener("load", () => {
  const cells = t => [...document.querySelectorAll(`table.${t} td`)].map(td => ({...td.dataset, text: td.textContent}));
  const result = {
    protocol: cells("protocol"), streams: cells("streams"), analysis: cells("analysis"), status: cells("counts-status"),
    label: cells("counts-label"), errors: [...document.querySelectorAll("table.errors tr[data-stage]")].map(
      tr => ({stage: tr.dataset.stage, cells: [...tr.cells].map(c => c.textContent)})),
    images: [...document.images].map(i => ({cls: i.className, complete: i.complete, width: i.naturalWidth,
                                            height: i.naturalHeight})),
    plots: [...document.querySelectorAll("svg.plot")].map(s => ({kind: s.dataset.kind, scenario: s.dataset.scenario,
      shown: s.getBoundingClientRect().width > 0,
      models: [...s.querySelectorAll("polyline.series")].map(p => p.dataset.model)})),
    flagged: [...document.querySelectorAll("table.flagged tr[data-video]")].map(tr => tr.dataset.label),
    text: document.body.innerText};
  const out = document.createElement("pre"); out.id = "probe"; out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});</script>"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (CI installs it with scripts/ci-system-deps.sh; here too if missing)."""
    if shutil.which("chromium") is None:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        install = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, text=True,
                                 timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        assert install.returncode == 0, f"could not install chromium: {install.stderr[-2000:]}"
    return shutil.which("chromium")


def seen_by_chromium(chromium: str, page: Path, tmp_path: Path) -> dict:
    """Open the page (with PROBE added) in headless Chromium and return what the probe found."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000", "--dump-dom",
         probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the probe did not run: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def face_png(photo: Path, size: tuple[int, int], tint: tuple[int, int, int] | None = None) -> bytes:
    image = Image.open(photo).convert("RGB").resize(size)
    if tint:
        image = Image.blend(image, Image.new("RGB", size, tint), 0.4)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def evaluation_dir(tmp_path_factory, sample_media) -> Path:
    """An evaluation output folder as ``fakescan evaluate`` writes it: evaluation.json and its four tables."""
    root = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(7)
    labels = np.array([1, 0] * (N_CROPS // 2), np.int8)
    predictions, metrics = [], []
    for model, detector, separation in MODELS:
        for stream in STREAMS[detector]:
            for scenario in SCENARIOS:
                chosen = labels == 1 if scenario == FAKES_ONLY else np.ones(N_CROPS, bool)
                y = labels[chosen]
                p = (1 / (1 + np.exp(-(separation * (2 * y - 1) + rng.normal(0, 1, len(y)))))).astype(np.float32)
                predictions += [{"model": model, "stream": stream, "scenario": scenario, "crop_id": f"c{i:03d}",
                                 "label": int(lab), "p_fake": float(q)}
                                for i, lab, q in zip(np.flatnonzero(chosen), y, p)]
                metrics.append({"model": model, "detector": detector, "stream": stream, "scenario": scenario,
                                "n": len(y), "accuracy": accuracy(y, p, 0.5), "auc": roc_auc(y, p),
                                "ece": expected_calibration_error(p.astype(np.float64), y),
                                "mean_p_fake": float(p.mean())})
    pq.write_table(pa.Table.from_pylist(metrics, pa.schema([
        ("model", pa.string()), ("detector", pa.string()), ("stream", pa.string()), ("scenario", pa.string()),
        ("n", pa.int64()), ("accuracy", pa.float64()), ("auc", pa.float64()), ("ece", pa.float64()),
        ("mean_p_fake", pa.float64())])), root / "metrics.parquet")
    pq.write_table(pa.Table.from_pylist(predictions, pa.schema([
        ("model", pa.string()), ("stream", pa.string()), ("scenario", pa.string()), ("crop_id", pa.string()),
        ("label", pa.int8()), ("p_fake", pa.float32())])), root / "predictions.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"model": model, "stream": "all", "scenario": scenario, "n": N_CROPS, "feature_cosine": 0.9 - 0.1 * k,
         "entropy_clean": 6.1, "entropy_degraded": None if scenario == "pgd" else 6.1 + 0.05 * k}
        for model, _, _ in MODELS for k, scenario in enumerate(SCENARIOS[1:], 1)], pa.schema([
            ("model", pa.string()), ("stream", pa.string()), ("scenario", pa.string()), ("n", pa.int64()),
            ("feature_cosine", pa.float64()), ("entropy_clean", pa.float64()), ("entropy_degraded", pa.float64())])),
        root / "analysis.parquet")
    (root / "crops").mkdir()
    gallery = []
    for i, (kind, crop, model, has_heatmap, p_fake) in enumerate([
            ("confident_fake", "c000", "robust", True, 0.97), ("confident_fake", "c002", "robust", True, 0.95),
            ("disagreement", "c004", "baseline", True, 0.9), ("disagreement", "c004", "robust", False, 0.2),
            ("disagreement", "c006", "baseline", False, None), ("disagreement", "c006", "robust", False, 0.1)]):
        photo = sample_media / ("single_face.jpg" if i % 2 else "multi_face.jpg")
        (root / "crops" / f"{crop}.png").write_bytes(face_png(photo, (224, 224)))
        heatmap = f"crops/{crop}-{model}-heatmap.png" if has_heatmap else None
        if heatmap:
            (root / heatmap).write_bytes(face_png(photo, (448, 224), tint=(255, 0, 0)))
        gallery.append({"crop_id": crop, "kind": kind, "label": 1, "model": model, "stream": "all",
                        "p_fake": p_fake, "crop_path": f"crops/{crop}.png", "heatmap_path": heatmap})
    pq.write_table(pa.Table.from_pylist(gallery, pa.schema([
        ("crop_id", pa.string()), ("kind", pa.string()), ("label", pa.int8()), ("model", pa.string()),
        ("stream", pa.string()), ("p_fake", pa.float32()), ("crop_path", pa.string()),
        ("heatmap_path", pa.string())])), root / "gallery.parquet")
    (root / "evaluation.json").write_text(json.dumps({
        "kind": "fakescan-evaluation", "created": "2026-11-29T12:00:00+00:00", "data": "data/celebdf-crops",
        "split": "test", "n": N_CROPS, "scenarios": SCENARIOS, "mlflow_run_id": None, "settings": {"pgd_steps": 10},
        "models": [{"name": name, "uri": f"models:/fakescan-{name}@champion", "detector": detector, "version": "3",
                    "trained": True} for name, detector, _ in MODELS]}))
    return root


@pytest.fixture(scope="module")
def evaluation_seen(evaluation_dir, chromium, tmp_path_factory) -> dict:
    result = run_fakescan("report", str(evaluation_dir), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"fakescan: report written to {evaluation_dir}/report.html")
    return seen_by_chromium(chromium, evaluation_dir / "report.html", tmp_path_factory.mktemp("chromium"))


def test_protocol_table_shows_every_models_accuracy_auc_and_ece_from_metrics(evaluation_seen, evaluation_dir):
    overall = pq.read_table(evaluation_dir / "metrics.parquet").filter(pc.field("stream") == "all").to_pylist()
    shown = {(c["model"], c["metric"], c["scenario"]): c["text"] for c in evaluation_seen["protocol"]}
    assert len(shown) == len(overall) * 3
    for row in overall:
        for metric in ("accuracy", "auc", "ece"):
            want = "n/a" if np.isnan(row[metric]) else f"{row[metric]:.3f}"
            assert shown[(row["model"], metric, row["scenario"])] == want, (row, metric)
    # Rows in the protocol's order, like the paper's table.
    assert [c["scenario"] for c in evaluation_seen["protocol"]][::len(MODELS) * 3] == SCENARIOS


def test_undefined_auc_is_explained(evaluation_seen):
    assert f"AUC undefined for robust on {FAKES_ONLY}: its crops are of one class only" in evaluation_seen["text"]


def test_ensemble_has_a_per_stream_table(evaluation_seen, evaluation_dir):
    metrics = pq.read_table(evaluation_dir / "metrics.parquet").to_pylist()
    want = {(r["stream"], r["scenario"]): r["accuracy"] for r in metrics if r["model"] == "ensemble"}
    shown = {(c["stream"], c["scenario"]): c["text"] for c in evaluation_seen["streams"] if c["metric"] == "accuracy"}
    assert shown == {key: f"{value:.3f}" for key, value in want.items()}


def test_roc_and_reliability_plots_show_every_model_in_every_scenario(evaluation_seen):
    plots = evaluation_seen["plots"]
    for kind in ("roc", "reliability"):
        drawn = {p["scenario"]: p for p in plots if p["kind"] == kind}
        assert sorted(drawn) == sorted(SCENARIOS)
        assert all(p["shown"] for p in drawn.values())
        for scenario, plot in drawn.items():
            models = [name for name, _, _ in MODELS]
            # One class only: no ROC curve can be drawn, but calibration still can.
            assert plot["models"] == ([] if kind == "roc" and scenario == FAKES_ONLY else models), (kind, scenario)


def test_analysis_table_shows_feature_drift_and_entropy(evaluation_seen, evaluation_dir):
    rows = pq.read_table(evaluation_dir / "analysis.parquet").to_pylist()
    shown = [c for c in evaluation_seen["analysis"] if c.get("metric")]
    assert len(shown) == 3 * len(rows)
    for metric in ("feature_cosine", "entropy_clean", "entropy_degraded"):
        texts = sorted(c["text"] for c in shown if c["metric"] == metric)
        assert texts == sorted("n/a" if r[metric] is None else f"{r[metric]:.3f}" for r in rows), metric


def test_gallery_crops_and_heatmaps_are_decoded_images(evaluation_seen):
    images = evaluation_seen["images"]
    crops = [i for i in images if i["cls"] == "crop"]
    heatmaps = [i for i in images if i["cls"] == "heatmap"]
    assert len(crops) == 4 and len(heatmaps) == 3  # every crop once; only the first three rows have heatmaps
    assert all(i["complete"] and (i["width"], i["height"]) == (224, 224) for i in crops)
    assert all(i["complete"] and (i["width"], i["height"]) == (448, 224) for i in heatmaps)
    assert "no heatmap for this crop" in evaluation_seen["text"]  # c006


def test_the_page_loads_nothing_from_elsewhere(evaluation_dir):
    page = (evaluation_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", page, re.I)
    assert "<script" not in page and "<link" not in page


# ---- scans -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scan_out(ray_cluster, short_face_video, odd_media_dir, tmp_path_factory) -> Path:
    """A real scan of two face videos and three broken files, with the random tiny hybrid: untrained, it
    calls every face video uncertain, so what the page flags does not hang on a trained model's judgement."""
    src = tmp_path_factory.mktemp("report-src")
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(short_face_video, src / name)
    for name in ("notes.mp4", "empty.mp4", "truncated.mp4"):
        shutil.copy(odd_media_dir / name, src / name)
    out = tmp_path_factory.mktemp("report-scan") / "out"
    result = run_fakescan("scan", str(src), "--out", str(out), "--model", "hybrid_tiny", "--detectors", "hybrid",
                          "--frames", "4", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_scan_report_counts_flags_thumbnails_and_errors(scan_out, chromium, tmp_path):
    result = run_fakescan("report", str(scan_out), "--out", str(tmp_path / "scan.html"), "--top", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report written to {tmp_path / 'scan.html'}" in result.stdout
    seen = seen_by_chromium(chromium, tmp_path / "scan.html", tmp_path)
    verdicts = pq.read_table(scan_out / "verdicts").to_pylist()

    for column in ("status", "label"):
        want = {}
        for row in verdicts:
            want[row[column]] = want.get(row[column], 0) + 1
        assert {c[column]: int(c["text"]) for c in seen[column] if column in c} == want

    assert seen["flagged"] == ["uncertain"]  # --top 1 of the two face videos
    (thumbnail,) = [i for i in seen["images"] if i["cls"] == "thumbnail"]
    assert thumbnail["complete"] and thumbnail["width"] == 360 and abs(thumbnail["height"] - 360 * 9 / 16) <= 1  # 16:9
    assert "run the scan with --explain for heatmaps" in seen["text"]

    errors = [row for row in verdicts if row["status"] == "error"]
    assert len(errors) == 3 and {g["stage"] for g in seen["errors"]} == {"decode"}
    assert sum(int(g["cells"][2]) for g in seen["errors"]) == 3
    assert {g["cells"][1] for g in seen["errors"]} == {row["error_message"] for row in errors}


@pytest.mark.slow
def test_scan_report_shows_heatmaps_and_survives_a_vanished_video(scan_out, tmp_path):
    """Faces with a heatmap_uri (what scan --explain adds) show it; a video gone since the scan gets a placeholder."""
    copy = tmp_path / "out"
    shutil.copytree(scan_out, copy)
    heatmap = tmp_path / "heatmap.png"
    Image.new("RGB", (448, 224), (200, 40, 40)).save(heatmap)
    for part in (copy / "faces").glob("*.parquet"):
        faces = pq.read_table(part)
        uris = pa.array([str(heatmap)] * faces.num_rows)
        if "heatmap_uri" in faces.column_names:  # null without --explain
            faces = faces.set_column(faces.schema.get_field_index("heatmap_uri"), "heatmap_uri", uris)
        else:
            faces = faces.append_column("heatmap_uri", uris)
        pq.write_table(faces, part)
    for part in (copy / "verdicts").glob("*.parquet"):
        verdicts = pq.read_table(part)
        moved = pc.replace_substring(verdicts["uri"], "/b.mp4", "/gone.mp4")
        pq.write_table(verdicts.set_column(verdicts.schema.get_field_index("uri"), "uri", moved), part)

    report = load_report(str(copy), top=5)
    by_name = {Path(v.verdict["uri"]).name: v for v in report.flagged}
    assert sorted(by_name) == ["a.mp4", "gone.mp4"]
    assert by_name["gone.mp4"].thumbnail.data is None
    assert "thumbnail unavailable: cannot read" in by_name["gone.mp4"].thumbnail.missing
    assert Image.open(io.BytesIO(by_name["a.mp4"].thumbnail.data)).width == 360
    page = render(report)
    embedded = re.findall(r'class="heatmap" alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    assert embedded and all(base64.b64decode(e) == heatmap.read_bytes() for e in embedded)
    assert "thumbnail unavailable: cannot read" in page and "--explain" not in page


# ---- command line ------------------------------------------------------------------------------------------

def test_a_folder_that_is_neither_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("not an output folder")
    result = run_fakescan("report", str(tmp_path))
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path} is neither an evaluation's output" in result.stderr
    with pytest.raises(FileNotFoundError, match="no such folder"):  # the CLI's other one-line error
        load_report(str(tmp_path / "missing"))


@pytest.mark.s3
def test_report_of_an_evaluation_on_s3_is_written_beside_it(evaluation_dir, s3_server, s3fs_client, s3_bucket):
    for path in evaluation_dir.rglob("*"):
        if path.is_file() and path.name != "report.html":
            s3fs_client.put_file(str(path), f"{s3_bucket}/eval/{path.relative_to(evaluation_dir).as_posix()}")
    result = run_fakescan("report", f"s3://{s3_bucket}/eval", "--s3-endpoint", s3_server.endpoint_url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report written to s3://{s3_bucket}/eval/report.html" in result.stdout
    page = s3fs_client.cat_file(f"{s3_bucket}/eval/report.html").decode()
    assert page.count('class="crop"') == 4 and 'class="protocol"' in page
