"""``fakescan prepare``: labelled videos or photos → a face-crop dataset."""
from __future__ import annotations

import argparse

from jobs.cli.arguments import add_s3_endpoint, positive_int, split_ratios


def add_parser(commands: argparse._SubParsersAction) -> None:
    prepare = commands.add_parser("prepare", help="build a labelled face-crop dataset for training",
                                  description="Find every face in labelled videos or photos and write 224x224 crops "
                                              "with label, group and split to DEST/crops/ (Parquet), plus "
                                              "pseudo-fakes made from the real crops.")
    prepare.add_argument("source", metavar="SOURCE", help="a folder (local or s3://) holding real/ and fake/, or a "
                         "CSV of uri,label[,group][,split]")
    prepare.add_argument("--out", required=True, metavar="DEST", help="an empty local folder or s3:// prefix")
    prepare.add_argument("--frames", type=positive_int, default=16, help="frames sampled per video (default 16)")
    prepare.add_argument("--pseudo-fakes", default="sbi,swap", metavar="KINDS",
                         help="pseudo-fakes made from real crops, one per crop of a kind drawn per crop: any of "
                              "sbi, swap, morph (default sbi,swap), or none")
    prepare.add_argument("--every-kind", action="store_true",
                         help="one pseudo-fake of every kind per real crop, for sets that compare fake methods on "
                              "the same faces (fakescan evaluate reports each method)")
    prepare.add_argument("--split", default="0.8,0.1,0.1", type=split_ratios, metavar="TRAIN,VAL,TEST",
                         help="share of groups per split when the input names none (default 0.8,0.1,0.1)")
    prepare.add_argument("--seed", type=int, default=0, help="seed for splits' pseudo-fakes (default 0)")
    add_s3_endpoint(prepare)


def run(args: argparse.Namespace) -> int:
    from jobs.prepare import PrepareConfig, run_prepare

    kinds = () if args.pseudo_fakes in ("", "none") else tuple(k.strip() for k in args.pseudo_fakes.split(","))
    config = PrepareConfig(source=args.source.rstrip("/"), out=args.out.rstrip("/"), frames=args.frames,
                           pseudo_fakes=kinds, every_kind=args.every_kind, split_ratios=args.split, seed=args.seed,
                           s3_endpoint=args.s3_endpoint)
    print(run_prepare(config).line())
    return 0
