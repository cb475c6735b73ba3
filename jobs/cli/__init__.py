"""The ``fakescan`` command line: one module per command, each with ``add_parser`` and ``run``.

Mistakes in arguments end in one line on stderr and exit code 2; a job that fails exits 1; a
scan in which some videos are broken still exits 0, because those videos have their own
``error`` rows.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from jobs.cli.arguments import EXIT_FAILED, EXIT_USAGE, OneLineParser

COMMANDS = ("scan", "prepare", "train", "calibrate", "evaluate", "report", "serve", "samples")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fakescan", description="Find deepfakes in video archives with Ray.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        importlib.import_module(f"jobs.cli.{command}").add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.errors import JobFailed, UsageError

    args = build_parser().parse_args(argv)
    try:
        return importlib.import_module(f"jobs.cli.{args.command}").run(args)
    except (UsageError, FileNotFoundError, PermissionError) as exc:
        print(f"fakescan: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except JobFailed as exc:
        print(f"fakescan: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("fakescan: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # the job failed: say why in one line, keep details in the log
        print(f"fakescan: error: the job failed: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}",
              file=sys.stderr)
        if os.environ.get("FAKESCAN_DEBUG"):
            raise
        return EXIT_FAILED
