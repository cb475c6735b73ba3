"""The ``fakescan serve`` subcommand: its arguments, and running it."""
from __future__ import annotations

import argparse
import os
import re
import sys

BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def byte_size(text: str) -> int:
    """A size such as 200MB, 512k or 1048576 (units are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in BYTE_UNITS or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"not a size such as 200MB, 512KB or 1048576: {text!r}")
    return int(match.group(1)) * BYTE_UNITS[unit]


def cpu_share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1024:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def add_parser(commands: argparse._SubParsersAction) -> None:
    # jobs.cli imports this module to build its parser: import its helpers here, not at the top.
    from detector.verdict import AGGREGATIONS
    from jobs.cli import name_list, positive_int

    serve = commands.add_parser(
        "serve", help="serve verdicts for single videos over HTTP (Ray Serve)",
        description="Serve the scan's models over HTTP: POST /v1/scan takes a video (multipart field 'file') or "
                    "JSON {\"uri\": \"s3://... or a path\"} and answers with its verdicts row and face rows; "
                    "GET /healthz and GET /v1/models. Attaches to RAY_ADDRESS when set, else starts a local "
                    "cluster; runs until SIGINT or SIGTERM.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for "
                       "every interface)")
    serve.add_argument("--port", type=positive_int, default=8000, help="HTTP port (default 8000)")
    serve.add_argument("--model", default=None, help="the hybrid model, as for fakescan scan (default: the bundled "
                       "starter model)")
    serve.add_argument("--ensemble-model", default=None, help="the ensemble's model, as for fakescan scan (default: "
                       "the bundled starter ensemble)")
    serve.add_argument("--detectors", type=name_list, default=None, metavar="NAMES",
                       help="detectors to run, e.g. hybrid,ensemble (default: every detector that has a model)")
    serve.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ (default "
                       "$MLFLOW_TRACKING_URI)")
    serve.add_argument("--s3-endpoint", default=os.environ.get("FAKESCAN_S3_ENDPOINT"), metavar="URL",
                       help="S3 endpoint for {\"uri\": \"s3://...\"} on non-AWS stores; credentials come from the "
                            "standard AWS_* environment variables")
    serve.add_argument("--uri-prefix", dest="uri_prefixes", action="append", default=[], metavar="PREFIX",
                       help="let {\"uri\": ...} read only under this folder or s3:// prefix (repeatable; default: "
                            "anything this server can read)")
    serve.add_argument("--frames", type=positive_int, default=32, help="frames sampled per video (default 32)")
    serve.add_argument("--aggregation", default="max_face_mean", choices=sorted(AGGREGATIONS),
                       help="frame → video rule (default max_face_mean)")
    serve.add_argument("--replicas", type=positive_int, default=1, help="replicas, each with its own models "
                       "(default 1)")
    serve.add_argument("--replica-cpus", type=cpu_share, default=0.5, help="CPUs reserved per replica, fractions "
                       "allowed (default 0.5)")
    serve.add_argument("--max-ongoing-requests", type=positive_int, default=8,
                       help="requests a replica holds at once; more wait in the proxy (default 8)")
    serve.add_argument("--max-batch-size", type=positive_int, default=4,
                       help="decoded videos per pass through the model stages (default 4)")
    serve.add_argument("--batch-wait-s", type=float, default=0.05,
                       help="longest wait for a batch to fill, in seconds (default 0.05)")
    serve.add_argument("--max-upload-bytes", type=byte_size, default="200MB",
                       help="largest upload, and largest file read from a URI (default 200MB)")


def run(args: argparse.Namespace) -> int:
    from jobs.cli import EXIT_USAGE
    from jobs.scan import default_ensemble_model, default_model
    from jobs.serve import ServeConfig, serve_until_stopped

    if args.max_batch_size > args.max_ongoing_requests:
        print(f"fakescan: error: --max-batch-size {args.max_batch_size} can never fill with "
              f"--max-ongoing-requests {args.max_ongoing_requests}", file=sys.stderr)
        return EXIT_USAGE
    if args.batch_wait_s < 0:
        print("fakescan: error: --batch-wait-s must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    config = ServeConfig(
        host=args.host, port=args.port, model=args.model or default_model(),
        ensemble_model=args.ensemble_model or default_ensemble_model(), detectors=args.detectors,
        tracking_uri=args.tracking_uri, s3_endpoint=args.s3_endpoint, frames=args.frames,
        aggregation=args.aggregation, replicas=args.replicas, replica_cpus=args.replica_cpus,
        max_ongoing_requests=args.max_ongoing_requests, max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_s, max_upload_bytes=args.max_upload_bytes,
        uri_prefixes=tuple(args.uri_prefixes),
    )
    try:
        serve_until_stopped(config, on_ready=lambda url: print(
            f"fakescan: serving {url} (POST /v1/scan, GET /healthz, GET /v1/models); Ctrl-C or SIGTERM stops it",
            flush=True))
    except KeyboardInterrupt:
        print("fakescan: interrupted while starting; the app was removed", file=sys.stderr)
        return 130
    return 0
