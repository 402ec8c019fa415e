"""`mspider extract`: run a PyTorch zoo once over a dataset into a feature store (converters/)."""

import argparse

from converters import extract_cli  # torch-free: flags only; torch is imported by run

HELP = extract_cli.HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    extract_cli.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return extract_cli.run(args)
