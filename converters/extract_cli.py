"""Flags of feature extraction, shared by `mspider extract` and `python converters/extract.py`.

This module does not import torch (the `mspider` CLI builds its parser without it); `run` imports
`converters.extract` and reports clearly when PyTorch is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys

HELP = "run a PyTorch model zoo once over a dataset and write its features into a feature store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the extraction flags to `parser`."""
    what = parser.add_argument_group("models")
    what.add_argument(
        "--zoo", default=None,
        help="zoo name: single_source (default), multi_source, generic, user, minizoo, a "
             "registered zoo or package.module:function")
    what.add_argument("--models", default=None,
                      help="comma-separated subset of the zoo's models (default: all)")
    what.add_argument(
        "--add-model", action="append", default=[], metavar="NAME:ARCH:CHECKPOINT",
        help="also extract a user model: torchvision architecture ARCH loaded from the state-dict "
             "file CHECKPOINT (repeatable; without --zoo only these run)")
    what.add_argument(
        "--checkpoint-dir", default=None,
        help="folder of the multi_source checkpoints FTD_<arch>_<source>.pth (default "
             "$MSPIDER_MULTI_SOURCE_DIR or <torch hub dir>/mspider_multi_source)")
    what.add_argument(
        "--preprocessing", choices=("square", "standard"), default=None,
        help="square: resize to 224 (299 for inception_v3), the benchmark's; standard: resize 256 "
             "+ centre crop 224 (default: the zoo's own, square)")
    what.add_argument("--random-weights", action="store_true",
                      help="untrained models (seeded by --seed); for smoke tests only")
    what.add_argument(
        "--offline", action="store_true",
        help="never download weights; a missing file is an error naming where to put it")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset", required=True,
        help="tfds:NAME[:VERSION], folder:PATH (class sub-folders), npz:PATH, or a path")
    data.add_argument("--split", default="train", help="split name (default train)")
    data.add_argument(
        "--dataset-name", default=None,
        help="name in the store (default: tfds:NAME etc., with @w<ways>-s<shots>-seed<seed> for "
             "subsets)")
    data.add_argument("--data-dir", default=None, help="tfds data_dir")
    data.add_argument("--tfds-download", action="store_true",
                      help="let tfds download and prepare a missing dataset (off by default)")
    data.add_argument("--image-key", default="image", help="tfds image feature (default image)")
    data.add_argument("--label-key", default="label", help="tfds label feature (default label)")
    data.add_argument("--ways", type=int, default=None,
                      help="keep this many classes (deterministic)")
    data.add_argument("--shots", type=int, default=None,
                      help="keep at most this many images per class")
    data.add_argument("--seed", type=int, default=0, help="seed of the class/shot draw (default 0)")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--store", required=True, help="feature store root directory")
    run_group.add_argument("--batch-size", type=int, default=64)
    run_group.add_argument("--workers", type=int, default=0,
                           help="data loading processes (default 0)")
    run_group.add_argument("--device", default="auto",
                           help="auto (cuda if available), cpu, cuda, cuda:1")
    run_group.add_argument("--shard", default="0/1", metavar="I/N",
                           help="run models I, I+N, I+2N, ... of the zoo (N machines share a zoo)")
    run_group.add_argument("--storage-dtype", choices=("float32", "float16"), default="float32")
    run_group.add_argument("--overwrite", action="store_true", help="redo complete entries")
    run_group.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Runs an extraction from parsed flags; returns the exit status."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: feature extraction needs PyTorch; install it with "
              "pip install 'mspider-jax[torch]' (torch and torchvision)", file=sys.stderr)
        return 2
    from converters import extract, zoo
    from mspider_jax.features import StoreError

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        entries = resolve_models(args)
        source = extract.open_dataset(args.dataset, args.split, data_dir=args.data_dir,
                                      image_key=args.image_key, label_key=args.label_key,
                                      tfds_download=args.tfds_download)
        results = extract.extract_to_store(
            entries, source, args.store, ways=args.ways, shots=args.shots, seed=args.seed,
            dataset_name=args.dataset_name, batch_size=args.batch_size,
            shard=extract.parse_shard(args.shard), storage_dtype=args.storage_dtype,
            device=args.device, random_weights=args.random_weights, random_seed=args.seed,
            offline=True if args.offline else None, overwrite=args.overwrite,
            num_workers=args.workers, progress=not args.quiet)
    except (ValueError, StoreError, zoo.WeightsNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for result in results:
        shape = f"[{result.num_examples}, {result.feature_dim}]"
        print(f"{result.status:8s} {result.model:40s} {shape} {result.seconds:.1f}s")
    return 0


def resolve_models(args: argparse.Namespace) -> list:
    """The ModelEntry list selected by --zoo / --models / --add-model."""
    from converters import zoo

    added = []
    for spec in args.add_model:
        name, sep, rest = spec.partition(":")
        architecture, sep2, checkpoint = rest.partition(":")
        if not (name and sep and architecture and sep2 and checkpoint):
            raise ValueError(f"--add-model wants NAME:ARCH:CHECKPOINT, got {spec!r}")
        added.append(zoo.register_model(name, architecture=architecture, checkpoint=checkpoint,
                                        preprocessing=args.preprocessing or "square",
                                        overwrite=True))
    zoo_name = args.zoo or (None if added else "single_source")
    entries = []
    if zoo_name is not None:
        options = {}
        if args.preprocessing and zoo_name in ("single_source", "multi_source", "generic"):
            options["preprocessing"] = args.preprocessing
        if args.checkpoint_dir:
            if zoo_name != "multi_source":
                raise ValueError("--checkpoint-dir only applies to --zoo multi_source")
            options["checkpoint_dir"] = args.checkpoint_dir
        entries = zoo.get_zoo(zoo_name, **options)
        if args.preprocessing and "preprocessing" not in options:
            entries = [entry.with_preprocessing(args.preprocessing) for entry in entries]
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    entries = zoo.select_models(entries, names) if names else entries
    entries += [e for e in added if e.name not in {x.name for x in entries}]
    return entries
