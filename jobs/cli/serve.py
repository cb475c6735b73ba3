"""The ``fakescan serve`` subcommand: its arguments, and running it."""
from __future__ import annotations

import argparse
import sys

from jobs.cli.arguments import EXIT_USAGE, add_s3_endpoint, byte_size, name_list, positive_float, positive_int


def add_parser(commands: argparse._SubParsersAction) -> None:
    from detector.verdict import AGGREGATIONS

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
    add_s3_endpoint(serve)
    serve.add_argument("--uri-prefix", dest="uri_prefixes", action="append", default=[], metavar="PREFIX",
                       help="let {\"uri\": ...} read only under this folder or s3:// prefix (repeatable; default: "
                            "anything this server can read)")
    serve.add_argument("--frames", type=positive_int, default=32, help="frames sampled per video (default 32)")
    serve.add_argument("--aggregation", default="max_face_mean", choices=sorted(AGGREGATIONS),
                       help="frame → video rule (default max_face_mean)")
    serve.add_argument("--replicas", type=positive_int, default=1, help="replicas, each with its own models "
                       "(default 1)")
    serve.add_argument("--replica-cpus", type=positive_float, default=0.5, help="CPUs reserved per replica, fractions "
                       "allowed (default 0.5)")
    serve.add_argument("--max-ongoing-requests", type=positive_int, default=8,
                       help="requests a replica holds at once; more wait in the proxy (default 8)")
    serve.add_argument("--max-batch-size", type=positive_int, default=4,
                       help="decoded videos per pass through the model stages (default 4)")
    serve.add_argument("--batch-wait-s", type=float, default=0.05,
                       help="longest wait for a batch to fill, in seconds (default 0.05)")
    serve.add_argument("--max-upload-bytes", type=byte_size, default="200MB",
                       help="largest upload (default 200MB); a URI's video is opened where it lives, at any size")


def run(args: argparse.Namespace) -> int:
    from jobs.serve.app import ServeConfig, serve_until_stopped

    if args.max_batch_size > args.max_ongoing_requests:
        print(f"fakescan: error: --max-batch-size {args.max_batch_size} can never fill with "
              f"--max-ongoing-requests {args.max_ongoing_requests}", file=sys.stderr)
        return EXIT_USAGE
    if args.batch_wait_s < 0:
        print("fakescan: error: --batch-wait-s must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    config = ServeConfig(
        host=args.host, port=args.port, model=args.model,
        ensemble_model=args.ensemble_model, detectors=args.detectors,
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
