"""`mspider ensemble`: combine trained Model Spider runs into one ranker (mean of their scores)."""

import argparse

HELP = ("combine trained Model Spider runs (e.g. several seeds) into an ensemble that every "
        "command taking a --checkpoint accepts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory to write ensemble.json into")
    parser.add_argument("runs", nargs="+", help="trained runs (workdirs or exported rankers)")


def run(args: argparse.Namespace) -> int:
    from mspider_jax.spider import ensemble

    path = ensemble.write_ensemble(args.out, args.runs)
    print(f"wrote {path}: an ensemble of {len(args.runs)} rankers")
    return 0
