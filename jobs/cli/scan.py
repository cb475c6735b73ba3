"""The ``fakescan scan`` command line."""
from __future__ import annotations

import argparse
from dataclasses import fields

from jobs.cli.arguments import add_s3_endpoint, name_list, positive_int, seconds


def add_parser(commands: argparse._SubParsersAction) -> None:
    from detector.degrade import PROBES
    from detector.verdict import AGGREGATIONS

    scan = commands.add_parser("scan", help="scan videos and write Parquet verdicts",
                               description="Scan every video under SOURCE and write one verdict per video to "
                                           "DEST/verdicts/ and one row per face to DEST/faces/ (Parquet).")
    scan.add_argument("source", metavar="SOURCE",
                      help="a video file, a local folder, or s3://bucket/prefix (listed recursively)")
    scan.add_argument("--out", required=True, metavar="DEST", help="local folder or s3://bucket/prefix for results")
    scan.add_argument("--model", default=None,
                      help="models:/NAME@ALIAS or models:/NAME/VERSION from the MLflow registry, hybrid weights "
                           "(.safetensors path or s3:// URI), or a config name such as hybrid_b0 (random weights, "
                           "verdicts marked untrained); default: the bundled starter model")
    scan.add_argument("--ensemble-model", default=None,
                      help="the ensemble's model, in the same forms as --model (config names: ensemble_giant, "
                           "ensemble_small, ensemble_tiny); default: the bundled starter ensemble")
    scan.add_argument("--detectors", type=name_list, default=None, metavar="NAMES",
                      help="detectors to run, e.g. hybrid,ensemble (default: every detector that has a model)")
    scan.add_argument("--probes", type=name_list, default=(), metavar="NAMES",
                      help=f"also score every face under these degradations and report the spread of p_fake as "
                           f"'stability' (choose from {', '.join(PROBES)})")
    scan.add_argument("--explain", type=name_list, nargs="?", const=("fake",), default=(), metavar="LABELS",
                      help="write Score-CAM heatmaps of the most suspicious faces of videos with these labels (default "
                           "fake; e.g. fake,uncertain) to DEST/heatmaps/ and their URIs to faces/heatmap_uri")
    scan.add_argument("--tracking-uri", default=None, help="MLflow tracking URI: where models:/ are found and where "
                      "the scan records its run (default $MLFLOW_TRACKING_URI; none: nothing is recorded)")
    scan.add_argument("--frames", type=positive_int, default=32, help="frames sampled per video, evenly spaced "
                      "(default 32)")
    add_s3_endpoint(scan)
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
    scan.add_argument("--stall-warning", type=seconds, default=180.0, metavar="SECONDS",
                      help="when no video has finished for this long, say in one line which stage waits for what "
                           "(default 180)")
    scan.add_argument("--stall-timeout", type=seconds, default=None, metavar="SECONDS",
                      help="when no video has finished for this long, stop with exit code 1; the verdicts written "
                           "stay, and a rerun resumes (default: never)")

    gpu = scan.add_argument_group("on a GPU cluster", "ignored without GPUs; defaults in the README's 'On a GPU' table")
    gpu.add_argument("--detect-long-side", type=positive_int, help="long side of the frames MTCNN sees; "
                     "min_face_size scales with it")
    gpu.add_argument("--faces-gpus", type=float, metavar="F", help="GPU share of each MTCNN actor")
    gpu.add_argument("--faces-actors-per-gpu", type=positive_int, metavar="N", help="MTCNN actors per GPU")
    gpu.add_argument("--score-gpus", type=float, metavar="F", help="GPU share of each hybrid actor")
    gpu.add_argument("--ensemble-gpus", type=float, metavar="F", help="GPU share of each ensemble actor")
    gpu.add_argument("--gpu-detect-batch", type=positive_int, metavar="N", help="frames per MTCNN call")
    gpu.add_argument("--gpu-hybrid-batch", type=positive_int, metavar="N", help="face crops per hybrid forward pass")
    gpu.add_argument("--gpu-ensemble-batch", type=positive_int, metavar="N",
                     help="images per ensemble forward pass")
    gpu.add_argument("--gpu-videos-per-call", type=positive_int, metavar="N", help="videos per model-actor call")
    gpu.add_argument("--gpu-autocast", choices=("bf16", "off"), help="precision")
    gpu.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="channels-last memory layout")
    gpu.add_argument("--mps", action=argparse.BooleanOptionalAction, help="start CUDA MPS while actors share a GPU")


def run(args: argparse.Namespace) -> int:
    from jobs.devices import GpuSettings
    from jobs.scan.job import ScanConfig, run_scan

    # Only the GPU options given: GpuSettings holds the defaults.
    given = {f.name: getattr(args, f.name) for f in fields(GpuSettings)}
    gpu = GpuSettings(**{name: value for name, value in given.items() if value is not None})
    config = ScanConfig(
        source=args.source, out=args.out.rstrip("/"), model=args.model, ensemble_model=args.ensemble_model,
        detectors=args.detectors, probes=args.probes, frames=args.frames, s3_endpoint=args.s3_endpoint,
        resume=args.resume, limit=args.limit, aggregation=args.aggregation, rows_per_file=args.rows_per_file,
        flush_seconds=args.flush_seconds, progress=not args.no_progress, tracking_uri=args.tracking_uri,
        explain=args.explain, gpu=gpu, stall_warning_s=args.stall_warning, stall_timeout_s=args.stall_timeout,
        **({"detect_long_side": args.detect_long_side} if args.detect_long_side is not None else {}),
    )
    summary = run_scan(config)
    print(summary.line())
    return 0
