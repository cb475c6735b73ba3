"""Argument types and the parser class every ``fakescan`` command shares."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2
EXIT_FAILED = 1
BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


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


def _float(text: str, what: str = "a number") -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def positive_float(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1024:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def share(text: str) -> float:
    value = _float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text}")
    return value


def seconds(text: str) -> float:
    value = _float(text, "a number of seconds")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text}")
    return value


def split_ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not three numbers: {text!r}") from None
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"need three shares that add up to 1, e.g. 0.8,0.1,0.1: {text!r}")
    return values[0], values[1], values[2]


def name_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"need at least one name: {text!r}")
    return names


def byte_size(text: str) -> int:
    """A size such as 200MB, 512k or 1048576 (units are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in BYTE_UNITS or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"not a size such as 200MB, 512KB or 1048576: {text!r}")
    return int(match.group(1)) * BYTE_UNITS[unit]


def absolute(uri: str | None) -> str | None:
    """Local paths made absolute: Ray workers do not run in the caller's directory."""
    return uri if uri is None or "://" in uri else str(Path(uri).absolute())


def add_s3_endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint", default=os.environ.get("FAKESCAN_S3_ENDPOINT"), metavar="URL",
                        help="S3 endpoint for non-AWS stores (Ceph, MinIO; default $FAKESCAN_S3_ENDPOINT); "
                             "credentials and region come from the standard AWS_* environment variables")
