"""`mspider metrics`: transferability scores of every model of a zoo on one target task."""

import argparse
import sys

HELP = "score models with transferability metrics (H-Score, LogME, LEEP, ...) from an npz or the feature store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--npz", help="npz with features, labels, optional logits (one model) or features_<model>/logits_<model> (several)")
    source.add_argument("--store", help="feature store root directory (use with --dataset)")
    parser.add_argument("--dataset", help="dataset name in the feature store")
    parser.add_argument("--split", default="train", help="split in the feature store (default: train)")
    parser.add_argument("--metrics", default=None, help="comma-separated metric names (default: every metric the inputs allow)")
    parser.add_argument("--convention", choices=("paper", "model_spider"), default="paper")
    parser.add_argument("--out", default=None, help="write the scores to this CSV (model, <metric>...)")


def run(args: argparse.Namespace) -> int:
    from mspider_jax import metrics as M
    from mspider_jax.metrics import report

    if args.store is not None:
        if not args.dataset:
            print("error: --store needs --dataset", file=sys.stderr)
            return 2
        zoo = report.load_store(args.store, args.dataset, args.split)
    else:
        zoo = report.load_npz(args.npz)
    requested = None
    if args.metrics:
        requested = [m.strip() for m in args.metrics.split(",") if m.strip()]
        for name in requested:
            M.get(name)  # unknown name -> ValueError listing the known ones
    metrics, skipped = report.applicable_metrics(zoo, requested)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    if not metrics:
        print("error: no metric can run on these inputs", file=sys.stderr)
        return 2
    progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    scores, errors = report.score_table(zoo, metrics, convention=args.convention, progress=progress)
    print(report.format_table(zoo.models, scores))
    for name, message in errors.items():
        print(f"error in {name}: {message}", file=sys.stderr)
    if args.out:
        report.write_csv(args.out, zoo.models, scores)
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if errors or (requested and skipped) else 0
