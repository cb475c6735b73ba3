"""``fakescan calibrate``: fit a detector's streams on a labelled split."""
from __future__ import annotations

import argparse

from jobs.cli.arguments import add_s3_endpoint


def add_parser(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser("calibrate", help="calibrate a detector's streams on a labelled split",
                                    description="Fit each stream's temperature, bands and reliability weight on the "
                                                "validation split of a prepared dataset; write calibrated weights, "
                                                "calibration.json and reliability.json to OUT and record them in "
                                                "MLflow.")
    calibrate.add_argument("--model", required=True, help="weights (.safetensors path or s3://) or models:/NAME@ALIAS")
    calibrate.add_argument("--data", required=True, help="a dataset written by fakescan prepare")
    calibrate.add_argument("--out", required=True, help="local folder for the calibrated weights and reports")
    calibrate.add_argument("--split", default="val", help="split to fit on (default val)")
    calibrate.add_argument("--target-error", type=float, default=0.1,
                           help="share of reals allowed in the high band, and of fakes in the low band (default 0.1)")
    calibrate.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite under OUT)")
    calibrate.add_argument("--register-as", default=None, help="register the calibrated weights under this name "
                           "(default: the --model's registered name, if it has one)")
    calibrate.add_argument("--alias", default=None, help="registry alias for the calibrated version")
    add_s3_endpoint(calibrate)


def run(args: argparse.Namespace) -> int:
    from jobs.calibrate import CalibrateConfig, run_calibrate

    result = run_calibrate(CalibrateConfig(
        model=args.model, data=args.data.rstrip("/"), out=args.out, split=args.split, target_error=args.target_error,
        tracking_uri=args.tracking_uri, register_as=args.register_as, alias=args.alias, s3_endpoint=args.s3_endpoint))
    streams = "; ".join(f"{name}: T {s.temperature:.2f}, bands {s.low:.2f}/{s.high:.2f}, AUC {s.auc:.3f}, "
                        f"ECE {s.ece:.3f}, weight {s.weight}" for name, s in result["calibration"].streams.items())
    registered = f" | registered {result['model']}" if result["model"] else ""
    print(f"fakescan: calibrated {result['calibration'].detector} on {result['samples']} crops | {streams} | "
          f"weights: {result['weights']}{registered}")
    return 0
