"""`mspider rank`: rank a zoo for a task with a trained Model Spider ranker (two stages).

The task is a feature-store entry (--store/--dataset), or --task: an image folder, a tfds name or an
.npz (images + labels, or precomputed generic features + labels). Images are run through the
generic encoder first, then only through the k re-ranked PTMs (`spider.task_sources`).
"""

import argparse
import json
import sys

HELP = ("rank the zoo for a task (feature store, image folder, tfds, .npz) with a trained Model "
        "Spider ranker (two stages)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir (its best/ checkpoint) or a checkpoint directory, "
                             "e.g. data/minizoo_ranker")
    parser.add_argument("--task", default=None,
                        help="the task: folder:PATH or an image folder (PATH/[split/]<class>/*), "
                             "tfds:NAME, npz:PATH or PATH.npz (images + labels, or "
                             "generic_features + labels [+ features_<model>])")
    parser.add_argument("--store", default=None, help="feature store root (with --dataset)")
    parser.add_argument("--dataset", default=None, help="the task's dataset name in the store")
    parser.add_argument("--split", default="train", help="split (default: train)")
    parser.add_argument("--rerank-k", type=int, default=None,
                        help="re-rank the stage-1 top K with their own features (default: the "
                             "run's config.eval.rerank_k; 0 = stage 1 only)")
    parser.add_argument("--generic-model", default=None,
                        help="the generic encoder: its store model name (default: the run's), or "
                             "with --task a converters model name (default: the zoo's)")
    parser.add_argument("--zoo", default=None,
                        help="with --task: the converters zoo that runs the PTMs (default: the "
                             "run's config.data.zoo, e.g. minizoo)")
    parser.add_argument("--feature-cache", default=None,
                        help="with --task: feature store caching the extracted features (default "
                             "$MSPIDER_RANK_CACHE or ~/.cache/mspider_jax/rank_store)")
    parser.add_argument("--offline", action="store_true",
                        help="with --task: never download weights")
    parser.add_argument("--ground-truth", default=None,
                        help="long CSV dataset,model,accuracy: also print how good the ranking is "
                             "(weighted tau, top-1 hit, regret)")
    parser.add_argument("--truth-dataset", default=None,
                        help="the task's name in --ground-truth (default: --dataset)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _evaluate(path: str, dataset: str, ranking) -> dict:
    """The evaluation layer's measures of the ranking against the task's ground truth."""
    import numpy as np

    from mspider_jax import evaluation as ev
    from mspider_jax.spider import data as data_lib

    truth = data_lib.performance_from_csv(path, [dataset], ranking.model_names)[0]
    measures = ev.evaluate_task(truth, ranking.scores, names=list(ranking.model_names))
    return {"dataset": dataset, "num_models": int((~np.isnan(truth)).sum()), **measures}


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mspider_jax import checkpointing
    from mspider_jax.spider import coverage as coverage_lib
    from mspider_jax.spider import inference, task_sources

    if args.rerank_k is not None and args.rerank_k < 0:
        print("error: --rerank-k must be >= 0", file=sys.stderr)
        return 2
    if (args.task is None) == (args.store is None):
        print("error: give either --task or --store with --dataset", file=sys.stderr)
        return 2
    if args.store is not None and not args.dataset:
        print("error: --store needs --dataset", file=sys.stderr)
        return 2
    truth_dataset = args.truth_dataset or args.dataset
    if args.ground_truth and not truth_dataset:
        print("error: --ground-truth needs --truth-dataset (the task's name in the CSV)",
              file=sys.stderr)
        return 2
    ranker, config = checkpointing.load_ranker(args.checkpoint)
    names = list(config.model_names)
    k = int(config.eval.get("rerank_k", 0)) if args.rerank_k is None else args.rerank_k
    k = min(k, ranker.num_models)
    if args.store is not None:
        from mspider_jax.features import FeatureStore

        task = task_sources.from_store(
            FeatureStore(args.store), args.dataset, names, split=args.split,
            generic_model=args.generic_model or config.data.get("generic_model", "generic"))
    else:
        task = task_sources.open_task(
            args.task, names, zoo=args.zoo or config.data.get("zoo", ""), split=args.split,
            generic=args.generic_model, cache=args.feature_cache, offline=args.offline or None,
            progress=not args.json)
    ranking = inference.rank_features(ranker, names, task.generic, task.labels,
                                      specific_length=int(config.model.specific_length), k=k,
                                      fetch_features=task.fetch)
    cost = task_sources.estimate_cost(task, ranking)
    reference = coverage_lib.load_reference(args.checkpoint)
    coverage = (inference.assess_coverage(reference, task.generic, task.labels)
                if reference is not None else None)
    evaluation = _evaluate(args.ground_truth, truth_dataset, ranking) if args.ground_truth else None
    if args.json:
        record = {"task": task.name, "split": args.split, **inference.ranking_record(ranking),
                  "extraction_seconds": cost.seconds,
                  "metric_extraction_seconds": cost.metric_seconds}
        if args.dataset:
            record["dataset"] = args.dataset
        if evaluation is not None:
            record["evaluation"] = evaluation
        if coverage is not None:
            record["coverage"] = coverage.record()
        print(json.dumps(record, indent=1))
        return 0
    print(f"task: {task.name}")
    print(inference.format_ranking(ranking))
    if ranking.enriched:
        print("re-ranked with their own features: "
              + ", ".join(names[m] for m in ranking.enriched))
    if cost.describe():
        print(cost.describe())
    if coverage is not None:
        print(coverage.describe(class_names=np.unique(task.labels).tolist()))
    if evaluation is not None:
        print(f"against the ground truth of {evaluation['dataset']} ({evaluation['num_models']} "
              f"PTMs): weighted tau {evaluation['weighted_tau']:.4f}, top-1 hit "
              f"{evaluation['top1_hit']:.3f}, top-3 hit {evaluation['top3_hit']:.3f}, regret "
              f"{evaluation['regret']:.3f}")
    return 0
