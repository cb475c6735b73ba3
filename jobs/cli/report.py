"""``fakescan report PATH``: the command-line glue for ``jobs.report``.

``add_parser`` registers the subcommand on the CLI's subparsers; ``run`` writes the page and
prints one line. A PATH that is neither an evaluation nor a scan raises ``SourceError`` (or
``FileNotFoundError``), which the CLI turns into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from jobs.cli.arguments import add_s3_endpoint, positive_int

if TYPE_CHECKING:
    from jobs.report.data import EvaluationReport, ScanReport


def add_parser(commands: argparse._SubParsersAction) -> None:

    report = commands.add_parser(
        "report", help="write a self-contained HTML report of an evaluation or a scan",
        description="Write one HTML file (pictures and plots embedded, nothing loaded from elsewhere) from an "
                    "evaluation's output folder (evaluation.json) or a scan's (verdicts/, faces/).")
    report.add_argument("path", metavar="PATH", help="the output folder of fakescan evaluate or fakescan scan "
                        "(local or s3://bucket/prefix)")
    report.add_argument("--out", default=None, metavar="FILE",
                        help="where to write the report, local or s3:// (default PATH/report.html)")
    report.add_argument("--top", type=positive_int, default=20, metavar="N",
                        help="flagged videos shown for a scan, fake first then uncertain, by p_fake (default 20)")
    add_s3_endpoint(report)


def run(args: argparse.Namespace) -> int:
    from jobs.report.data import default_out, load_report, write_page
    from jobs.report.html import render

    report = load_report(args.path, args.s3_endpoint, args.top)
    out = args.out or default_out(args.path)
    write_page(render(report), out, args.s3_endpoint)
    print(f"fakescan: report written to {out} | {describe(report)}")
    return 0


def describe(report: EvaluationReport | ScanReport) -> str:
    """What the page shows, in a few words."""
    from jobs.report.data import EvaluationReport

    if isinstance(report, EvaluationReport):
        cases = sum(len(c) for c in report.gallery.values())
        return (f"evaluation of {len(report.models)} models ({', '.join(report.models)}) on "
                f"{len(report.scenarios)} scenarios: protocol table, {len(report.plots)} ROC and "
                f"{len(report.plots)} reliability plots, {len(report.analysis)} analysis rows, "
                f"{cases} gallery crops, {len(report.notes)} notes")
    status = ", ".join(f"{k} {v}" for k, v in report.by_status.items()) or "none"
    thumbnails = sum(v.thumbnail.data is not None for v in report.flagged)
    heatmaps = sum(p.data is not None for v in report.flagged for p in v.heatmaps)
    return (f"scan of {report.n_videos} videos (status: {status}): {len(report.flagged)} of {report.n_flaggable} "
            f"flagged videos with {thumbnails} thumbnails and {heatmaps} heatmaps, {len(report.errors)} error groups")
