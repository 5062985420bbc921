"""CLI: ``python -m pipelines.samples --out DIR [--set default|motion] [--only NAME ...] [--seed N]``."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from .corpus import generate_corpus
from .specs import COLLECTIONS, spec_names


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the corpus and print one line per video; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.samples", description=__doc__)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--set",
        dest="collection",
        choices=list(COLLECTIONS),
        default="default",
        help="which videos: default (the sample corpus) or motion (objects under each camera motion)",
    )
    names = [n for c in COLLECTIONS for n in spec_names(c)]
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=names, help="subset of videos (any set)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log per-video progress")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    started = time.perf_counter()
    paths = generate_corpus(args.out, only=args.only, seed=args.seed, collection=args.collection)
    for path in paths:
        print(path)
    print(f"{len(paths)} videos in {args.out} ({time.perf_counter() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
