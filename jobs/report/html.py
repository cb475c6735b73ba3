"""Rendering for ``fakescan report``: one HTML page with its style inline, plots as inline SVG and
pictures as base64 data URIs. No script, no external resource, so it opens anywhere, offline.

Numbers keep their full precision in ``data-value`` attributes beside the rounded text, so a
reader (or a test) can check a cell against the Parquet it came from.
"""
from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from typing import Any

from jobs.report.data import (
    OVERALL,
    EvaluationReport,
    FlaggedVideo,
    GalleryCase,
    Picture,
    ScanReport,
    ScenarioPlots,
    Series,
)

SCENARIO_TITLES = {"clean": "Clean", "jpeg50": "JPEG 50", "h264": "H.264", "pgd": "PGD white box",
                   "unet": "Learned U-Net", "unet_jpeg50": "U-Net + JPEG 50", "unet_h264": "U-Net + H.264"}
ENSEMBLE_STREAMS = ("texture", "facial", "fusion", OVERALL)
GALLERY_TITLES = {"confident_fake": "Most confident fakes", "disagreement": "Where the detectors disagree"}
LABEL_NAMES = {1: "fake", 0: "real"}
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid #d8dbe0;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 8px}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px}
th,td{border:1px solid #d8dbe0;padding:4px 8px;text-align:left;vertical-align:top}
thead th{background:#eef0f4} td.num{text-align:right;font-variant-numeric:tabular-nums} td.best{font-weight:700}
.meta{color:#555} .notes li{margin:2px 0} .missing{color:#8a4b00}
.placeholder{display:inline-block;padding:10px;border:1px dashed #b9bec7;color:#666;background:#fafafa;max-width:340px}
.grid{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0;background:#fff;border:1px solid #d8dbe0;padding:8px}
figcaption{font-weight:600;margin-bottom:4px} .card{background:#fff;border:1px solid #d8dbe0;padding:8px;width:480px}
.card img{max-width:100%} .uri{word-break:break-all;font-family:ui-monospace,monospace;font-size:12px}
"""
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442")  # Okabe–Ito
PLOT_SIDE, PLOT_LEFT, PLOT_TOP, PLOT_RIGHT, LEGEND_ROW = 200, 46, 26, 14, 16


# ---- building blocks -----------------------------------------------------------------------------------------

def text(value: Any) -> str:
    return escape("" if value is None else str(value))


def number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def num_cell(value: Any, digits: int = 3, best: bool = False, **data: str) -> str:
    attributes = "".join(f' data-{k}="{text(v)}"' for k, v in data.items())
    raw = "" if value is None else repr(float(value)) if isinstance(value, float) else str(value)
    css = "num best" if best else "num"
    return f'<td class="{css}" data-value="{text(raw)}"{attributes}>{number(value, digits)}</td>'


def table(headers: Iterable[str], rows: Iterable[str], css: str = "") -> str:
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def picture(image: Picture, alt: str, css: str = "") -> str:
    if image.data is None:
        return f'<div class="placeholder {css}">{text(image.missing)}</div>'
    encoded = base64.b64encode(image.data).decode("ascii")
    return f'<img class="{css}" alt="{text(alt)}" src="data:{image.mime};base64,{encoded}">'


def notes(items: list[str]) -> str:
    if not items:
        return ""
    return '<h2>Notes</h2><ul class="notes">' + "".join(f"<li>{text(n)}</li>" for n in items) + "</ul>"


def page(title: str, subtitle: str, body: list[str]) -> str:
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{text(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><main><h1>{text(title)}</h1><p class="meta">{subtitle} · report made {made}</p>'
            f'{"".join(body)}</main></body></html>')


def scenario_title(name: str) -> str:
    return SCENARIO_TITLES.get(name, name)


def line_plot(series: list[Series], *, kind: str, scenario: str, title: str, x_label: str, y_label: str,
              figure_name: str, markers: bool = False) -> str:
    """A unit-square plot (both axes 0..1) with a dashed diagonal and one line per model; the legend
    quotes each model's figure (AUC, ECE) or says why it has no line."""
    def sx(x: float) -> float:
        return PLOT_LEFT + x * PLOT_SIDE

    def sy(y: float) -> float:
        return PLOT_TOP + (1.0 - y) * PLOT_SIDE

    width = PLOT_LEFT + PLOT_SIDE + PLOT_RIGHT
    legend_top = PLOT_TOP + PLOT_SIDE + 56
    height = legend_top + LEGEND_ROW * len(series) + 4
    parts = [f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-weight="600">{text(title)}</text>']
    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line x1="{sx(tick):.1f}" y1="{sy(0):.1f}" x2="{sx(tick):.1f}" y2="{sy(1):.1f}" '
                     f'stroke="#e4e6ea"/>'
                     f'<line x1="{sx(0):.1f}" y1="{sy(tick):.1f}" x2="{sx(1):.1f}" y2="{sy(tick):.1f}" '
                     f'stroke="#e4e6ea"/>'
                     f'<text x="{sx(tick):.1f}" y="{sy(0) + 14:.1f}" text-anchor="middle">{tick:.1f}</text>'
                     f'<text x="{sx(0) - 5:.1f}" y="{sy(tick) + 4:.1f}" text-anchor="end">{tick:.1f}</text>')
    parts.append(f'<rect x="{sx(0)}" y="{sy(1)}" width="{PLOT_SIDE}" height="{PLOT_SIDE}" fill="none" stroke="#888"/>'
                 f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#999" stroke-dasharray="4 3"/>'
                 f'<text x="{sx(0.5):.1f}" y="{sy(0) + 30:.1f}" text-anchor="middle">{text(x_label)}</text>'
                 f'<text transform="translate(12 {sy(0.5):.1f}) rotate(-90)" '
                 f'text-anchor="middle">{text(y_label)}</text>')
    for i, line in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        coordinates: list[str] = []
        for x, y in line.points:
            point = f"{sx(x):.1f},{sy(y):.1f}"
            if not coordinates or coordinates[-1] != point:  # thousands of ROC steps collapse to distinct pixels
                coordinates.append(point)
        if coordinates:
            parts.append(f'<polyline class="series" data-model="{text(line.model)}" fill="none" stroke="{color}" '
                         f'stroke-width="2" points="{" ".join(coordinates)}"/>')
        if markers:
            parts.extend(f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="3" fill="{color}"/>'
                         for c in coordinates)
        legend = f"{line.model}: {figure_name} {number(line.figure)}" + (f" ({line.note})" if line.note else "")
        y = legend_top + LEGEND_ROW * i
        parts.append(f'<rect x="{PLOT_LEFT}" y="{y - 9}" width="12" height="4" fill="{color}"/>'
                     f'<text x="{PLOT_LEFT + 18}" y="{y - 4}">{text(legend)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-kind="{kind}" data-scenario="{text(scenario)}" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{text(title)}" '
            f'font-size="11" font-family="system-ui,sans-serif">{"".join(parts)}</svg>')


# ---- evaluation ----------------------------------------------------------------------------------------------

def render_evaluation(report: EvaluationReport) -> str:
    info = report.info
    subtitle = (f"{text(info.get('data'))} · split <b>{text(info.get('split'))}</b> · n = {text(info.get('n'))} · "
                f"evaluated {text(info.get('created'))} · MLflow run {text(info.get('mlflow_run_id') or 'none')}")
    return page("Evaluation report", subtitle, [
        evaluation_models(info), protocol_table(report), methods_table(report), stream_tables(report),
        plots_section(report.plots),
        analysis_table(report), gallery_section(report.gallery), notes(report.notes)])


def evaluation_models(info: dict[str, Any]) -> str:
    rows = [f"<tr><td>{text(m['name'])}</td><td>{text(m.get('detector'))}</td><td>{text(m.get('version'))}</td>"
            f"<td>{'yes' if m.get('trained') else 'no (random weights)'}</td>"
            f"<td class=uri>{text(m.get('uri'))}</td></tr>"
            for m in info.get("models", [])]
    settings = "".join(f"<li><b>{text(k)}</b>: {text(v)}</li>" for k, v in sorted(info.get("settings", {}).items()))
    return ("<h2>Models</h2>" + table(["model", "detector", "version", "trained", "uri"], rows)
            + (f"<h3>Settings</h3><ul>{settings}</ul>" if settings else ""))


def metric_lookup(report: EvaluationReport) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(m["model"], m["stream"], m["scenario"]): m for m in report.metrics}


def protocol_table(report: EvaluationReport) -> str:
    """The paper's table: one row per scenario, accuracy then AUC then ECE for every model (stream "all")."""
    lookup = metric_lookup(report)
    columns = [(metric, model) for metric in ("accuracy", "auc", "ece") for model in report.models]
    names = {"accuracy": "Accuracy", "auc": "AUC", "ece": "ECE"}
    rows = []
    for scenario in report.scenarios:
        cells = []
        for metric, model in columns:
            value = lookup.get((model, OVERALL, scenario), {}).get(metric)
            values = [lookup.get((m, OVERALL, scenario), {}).get(metric) for m in report.models]
            finite = [v for v in values if v is not None and not math.isnan(v)]
            best = len(finite) > 1 and value in finite and value == (min(finite) if metric == "ece" else max(finite))
            cells.append(num_cell(value, best=best, model=model, metric=metric, scenario=scenario))
        rows.append(f'<tr data-scenario="{text(scenario)}"><th>{text(scenario_title(scenario))}</th>'
                    f'{"".join(cells)}</tr>')
    headers = ["Scenario"] + [f"{names[metric]} ({model})" for metric, model in columns]
    return ('<h2>Protocol</h2><p>Stream "all" (each detector\'s calibrated overall probability); best per row in '
            'bold; ECE: lower is better.</p>' + table(headers, rows, "protocol"))


def methods_table(report: EvaluationReport) -> str:
    """The cross-method protocol: per fake method and scenario, each model's AUC of that method's fakes against
    the real crops (stream "all")."""
    lookup = {(m["model"], m["method"], m["scenario"]): m for m in report.methods if m["stream"] == OVERALL}
    methods = sorted({method for _, method, _ in lookup})
    if not methods:
        return ""
    rows = []
    for method in methods:
        for scenario in report.scenarios:
            found = [lookup.get((model, method, scenario)) for model in report.models]
            n_fake = next((r["n_fake"] for r in found if r), None)
            cells = "".join(num_cell(r["auc"] if r else None, model=model, method=method, scenario=scenario)
                            for model, r in zip(report.models, found))
            rows.append(f'<tr data-method="{text(method)}" data-scenario="{text(scenario)}"><th>{text(method)}</th>'
                        f"<td>{text(scenario_title(scenario))}</td><td>{text(n_fake)}</td>{cells}</tr>")
    headers = ["Method", "Scenario", "fakes"] + [f"AUC ({model})" for model in report.models]
    return ("<h2>By fake method</h2><p>Each method's fakes against all the real crops (stream \"all\"): a method "
            "the model never trained on shows how far its detection transfers.</p>" + table(headers, rows, "methods"))


def stream_tables(report: EvaluationReport) -> str:
    lookup = metric_lookup(report)
    ensembles = [m["name"] for m in report.info.get("models", []) if m.get("detector") == "ensemble"]
    parts = []
    for model in ensembles:
        rows = []
        for scenario in report.scenarios:
            cells = "".join(num_cell(lookup.get((model, stream, scenario), {}).get(metric), model=model,
                                     stream=stream, metric=metric, scenario=scenario)
                            for stream in ENSEMBLE_STREAMS for metric in ("accuracy", "auc"))
            rows.append(f'<tr data-scenario="{text(scenario)}"><th>{text(scenario_title(scenario))}</th>{cells}</tr>')
        headers = ["Scenario"] + [f"{name} {stream}" for stream in ENSEMBLE_STREAMS for name in ("Accuracy", "AUC")]
        parts.append(f"<h3>{text(model)}</h3>" + table(headers, rows, "streams"))
    return ("<h2>Ensemble streams</h2>" + "".join(parts)) if parts else ""


def plots_section(plots: list[ScenarioPlots]) -> str:
    if not plots:
        return ""
    figures = []
    for plot in plots:
        title = scenario_title(plot.scenario)
        roc = line_plot(plot.roc, kind="roc", scenario=plot.scenario, title=f"ROC · {title}",
                        x_label="false positive rate", y_label="true positive rate", figure_name="AUC")
        reliability = line_plot(plot.reliability, kind="reliability", scenario=plot.scenario,
                                title=f"Reliability · {title}", x_label="mean predicted p_fake",
                                y_label="fraction fake", figure_name="ECE", markers=True)
        figures.append(f'<figure data-scenario="{text(plot.scenario)}"><figcaption>{text(title)}</figcaption>'
                       f"{roc}{reliability}</figure>")
    return ("<h2>ROC curves and reliability diagrams</h2><p>Every model on each plot (stream \"all\"). "
            "Reliability: 10 equal-width bins of p_fake; the diagonal is perfect calibration.</p>"
            f'<div class="grid">{"".join(figures)}</div>')


def analysis_table(report: EvaluationReport) -> str:
    if not report.analysis:
        return ""
    order = {name: i for i, name in enumerate(report.models)}
    scenario_order = {name: i for i, name in enumerate(report.scenarios)}
    rows = []
    for row in sorted(report.analysis, key=lambda r: (order.get(r["model"], 99), r["stream"],
                                                       scenario_order.get(r["scenario"], 99))):
        clean, degraded = row["entropy_clean"], row["entropy_degraded"]
        drift = None if clean is None or degraded is None else degraded - clean
        rows.append(f"<tr><td>{text(row['model'])}</td><td>{text(row['stream'])}</td>"
                    f"<td>{text(scenario_title(row['scenario']))}</td>{num_cell(row['n'])}"
                    f"{num_cell(row['feature_cosine'], metric='feature_cosine')}"
                    f"{num_cell(row['entropy_clean'], metric='entropy_clean')}"
                    f"{num_cell(row['entropy_degraded'], metric='entropy_degraded')}{num_cell(drift)}</tr>")
    return ("<h2>Robustness analysis</h2><p>Each degraded scenario against clean: mean cosine similarity of the "
            "features (1 = unchanged) and mean heatmap entropy in nats (lower = more focused; a rise under "
            "degradation means the attention spreads).</p>"
            + table(["model", "stream", "scenario", "n", "feature cosine", "entropy clean", "entropy degraded",
                     "Δ entropy"], rows, "analysis"))


def gallery_section(gallery: dict[str, list[GalleryCase]]) -> str:
    parts = []
    for kind, cases in gallery.items():
        cards = []
        for case in cases:
            verdicts = "".join(
                f"<p><b>{text(v.model)}</b> ({text(v.stream)}): p_fake {number(v.p_fake)}</p>"
                + (picture(v.heatmap, f"heatmap of {case.crop_id} by {v.model} {v.stream}", "heatmap")
                   if v.heatmap else "")
                for v in case.verdicts)
            if all(v.heatmap is None for v in case.verdicts):
                verdicts += picture(Picture(None, missing="no heatmap for this crop"), "")
            cards.append(f'<div class="card" data-crop="{text(case.crop_id)}"><p><b>{text(case.crop_id)}</b> · '
                         f"truth: {LABEL_NAMES.get(case.label, case.label)}</p>"
                         f'{picture(case.crop, f"crop {case.crop_id}", "crop")}{verdicts}</div>')
        parts.append(f'<h3>{text(GALLERY_TITLES.get(kind, kind))}</h3><div class="grid gallery" '
                     f'data-kind="{text(kind)}">{"".join(cards)}</div>')
    return ("<h2>Heatmap gallery</h2><p>Each heatmap: the crop | the detector's attention overlaid.</p>"
            + "".join(parts)) if parts else ""


# ---- scan ----------------------------------------------------------------------------------------------------

def render_scan(report: ScanReport) -> str:
    scanned = f"scanned {text(report.scanned[0])} – {text(report.scanned[1])}" if report.scanned else "nothing scanned"
    subtitle = (f"<span class=uri>{text(report.root)}</span> · {report.n_videos} videos · {scanned} · "
                f"runs {text(', '.join(report.run_ids) or 'none')}")
    return page("Scan report", subtitle, [scan_models(report), scan_counts(report), flagged_section(report),
                                          errors_section(report), notes(report.notes)])


def scan_models(report: ScanReport) -> str:
    rows = [f"<tr><td>{text(m['name'])}</td><td>{text(m['version'])}</td>"
            f"<td>{'yes' if m['trained'] else 'no (random weights)'}</td>{num_cell(m['videos'])}</tr>"
            for m in report.models]
    return "<h2>Models</h2>" + table(["model", "version", "trained", "videos"], rows) if rows else ""


def scan_counts(report: ScanReport) -> str:
    def counts(kind: str, values: dict[str, int]) -> str:
        # digits and best spelled out: mypy would match the ** dict against them too.
        rows = [f'<tr><td>{text(k)}</td>{num_cell(v, 3, False, **{kind: k})}</tr>' for k, v in values.items()]
        return table([kind, "videos"], rows, f"counts-{kind}")

    return (f'<h2>Videos</h2><div class="grid">{counts("status", report.by_status)}'
            f'{counts("label", report.by_label)}</div>')


def flagged_section(report: ScanReport) -> str:
    heading = (f"<h2>Flagged videos</h2><p>{len(report.flagged)} of {report.n_flaggable} labelled fake or uncertain, "
               "fake first, then by p_fake. The thumbnail is the frame of the highest-scoring face, "
               "its box in red.</p>")
    if not report.flagged:
        return heading + "<p>No video was labelled fake or uncertain.</p>"
    return heading + table(["#", "video", "thumbnail", "heatmaps"],
                           (flagged_row(i, v) for i, v in enumerate(report.flagged, 1)), "flagged")


def flagged_row(rank: int, video: FlaggedVideo) -> str:
    v, face = video.verdict, video.face
    where = (f"<br>face at {face['timestamp_s']:.2f}s, face p_fake {number(face['p_fake'])}"
             if face and face.get("timestamp_s") is not None else "")
    facts = (f'<p class=uri>{text(v["uri"])}</p><p>label <b>{text(v["label"])}</b> · p_fake {number(v["p_fake"])} '
             f'· hybrid raw score {number(v["hybrid_score"])} · {text(v["n_faces"])} faces{where}</p>')
    heatmaps = "".join(picture(h, f"heatmap {i}", "heatmap") for i, h in enumerate(video.heatmaps))
    return (f'<tr data-video="{text(v["video_id"])}" data-label="{text(v["label"])}"><td>{rank}</td><td>{facts}</td>'
            f'<td>{picture(video.thumbnail, "frame of the top face", "thumbnail")}</td><td>{heatmaps}</td></tr>')


def errors_section(report: ScanReport) -> str:
    if not report.errors:
        return "<h2>Errors</h2><p>No video failed.</p>"
    rows = [f'<tr data-stage="{text(e.stage)}"><td>{text(e.stage)}</td><td>{text(e.reason)}</td>{num_cell(e.count)}'
            f'<td class=uri>{"<br>".join(text(u) for u in e.examples)}</td></tr>' for e in report.errors]
    return ("<h2>Errors</h2><p>Grouped by the stage that failed and the reason.</p>"
            + table(["stage", "reason", "videos", "examples"], rows, "errors"))


def render(report: EvaluationReport | ScanReport) -> str:
    return render_evaluation(report) if isinstance(report, EvaluationReport) else render_scan(report)
