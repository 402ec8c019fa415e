"""`mspider rank`: rank a zoo for a task of the feature store with a trained Model Spider ranker."""

import argparse
import json
import sys

HELP = "rank the zoo for a task of the feature store with a trained Model Spider run (two stages)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir (its best/ checkpoint) or a checkpoint directory")
    parser.add_argument("--store", required=True, help="feature store root directory")
    parser.add_argument("--dataset", required=True, help="the task's dataset name in the store")
    parser.add_argument("--split", default="train", help="split in the store (default: train)")
    parser.add_argument("--rerank-k", type=int, default=None,
                        help="re-rank the stage-1 top K with their own features (default: the "
                             "run's config.eval.rerank_k; 0 = stage 1 only)")
    parser.add_argument("--generic-model", default=None,
                        help="store model name of the generic encoder (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from mspider_jax.spider import inference

    if args.rerank_k is not None and args.rerank_k < 0:
        print("error: --rerank-k must be >= 0", file=sys.stderr)
        return 2
    ranking = inference.rank_store_task(args.checkpoint, args.store, args.dataset,
                                        split=args.split, k=args.rerank_k,
                                        generic_model=args.generic_model)
    if args.json:
        record = {"dataset": args.dataset, "split": args.split, **inference.ranking_record(ranking)}
        print(json.dumps(record, indent=1))
    else:
        print(inference.format_ranking(ranking))
    return 0
