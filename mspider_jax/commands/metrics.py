"""`mspider metrics`: transferability scores of every model of a zoo on one target task (--npz), or of
a grid of tasks x models x metrics from the feature store (--store; sharded over every device and
process, optionally streamed)."""

import argparse
import ast
import sys
from typing import Any

HELP = "score models with transferability metrics (H-Score, LogME, LEEP, ...) from an npz or the feature store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--npz", help="npz with features, labels, optional logits (one model) or features_<model>/logits_<model> (several)")
    source.add_argument("--store", help="feature store root directory (use with --dataset)")
    parser.add_argument("--dataset", help="dataset name(s) in the feature store, comma-separated (a grid of tasks)")
    parser.add_argument("--models", default=None, help="comma-separated model names in the store (default: all of each dataset)")
    parser.add_argument("--split", default="train", help="split in the feature store (default: train)")
    parser.add_argument("--metrics", default=None, help="comma-separated metric names (default: every metric the inputs allow)")
    parser.add_argument("--convention", choices=("paper", "model_spider"), default="paper")
    parser.add_argument("--stream", action="store_true", help="with --store: score streaming metrics from row chunks of the memory-mapped store (memory independent of N)")
    parser.add_argument("--chunk-size", type=int, default=8192, help="rows per chunk with --stream (default: 8192)")
    parser.add_argument("--distributed", action="store_true", help="join a multi-process run (jax.distributed.initialize from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID or cluster auto-detection); process 0 prints and writes")
    parser.add_argument("--option", action="append", default=[], metavar="METRIC.NAME=VALUE",
                        help="an option of one metric, e.g. otce.solver=exact, gbc.pca_solver=eigh, "
                        "pactran_dirichlet.alpha=2 (VALUE is read as a Python literal, else as a string); repeatable")
    parser.add_argument("--out", default=None, help="write the scores to this CSV (model, <metric>...; with --store: dataset, model, <metric>...)")


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def parse_metric_options(items: list[str], requested: list[str] | None) -> dict[str, dict[str, Any]]:
    """["otce.solver=exact", ...] -> {"otce": {"solver": "exact"}, ...}, checked against the metrics'
    signatures. Raises ValueError for a malformed item, an unknown metric or option, or an option of a
    metric that `requested` (the --metrics list, if given) leaves out."""
    from mspider_jax import metrics as M

    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, text = item.partition("=")
        metric, dot, name = target.strip().partition(".")
        if not (sep and dot and metric and name):
            raise ValueError(f"--option {item!r}: expected METRIC.NAME=VALUE, e.g. otce.solver=exact")
        M.get(metric)  # unknown metric -> ValueError listing the known ones
        if requested is not None and metric not in requested:
            raise ValueError(f"--option {item!r}: {metric} is not among --metrics {','.join(requested)}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        options.setdefault(metric, {})[name.strip()] = value
    for metric, given in options.items():
        M.check_options(metric, given)
    return options


def _run_grid(args: argparse.Namespace, requested: list[str] | None, metric_options: dict[str, dict[str, Any]]) -> int:
    """--store: the (datasets x models x metrics) grid over every device (and process)."""
    from mspider_jax import sharding
    from mspider_jax.metrics import grid

    main = sharding.is_main_process()
    progress = (lambda message: print(message, file=sys.stderr, flush=True)) if main else None  # noqa: E731
    result = grid.score_grid(
        args.store, _split(args.dataset), _split(args.models), requested, split=args.split, convention=args.convention,
        stream=args.stream, chunk_size=args.chunk_size, progress=progress, metric_options=metric_options,
    )
    if main:
        for dataset in result.datasets:
            if len(result.datasets) > 1:
                print(f"\n## {dataset}\n")
            print(result.table(dataset))
        for (dataset, name), message in result.errors.items():
            print(f"error in {dataset} {name}: {message}", file=sys.stderr)
    if args.out and grid.write_grid_csv(args.out, result):
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if result.errors else 0


def run(args: argparse.Namespace) -> int:
    if args.distributed:
        from mspider_jax import sharding

        sharding.initialize_distributed()  # before anything else touches the devices
    from mspider_jax import metrics as M
    from mspider_jax.metrics import report

    requested = None
    if args.metrics:
        requested = _split(args.metrics)
        for name in requested:
            M.get(name)  # unknown name -> ValueError listing the known ones
    metric_options = parse_metric_options(args.option, requested)
    if args.store is not None:
        if not args.dataset:
            print("error: --store needs --dataset", file=sys.stderr)
            return 2
        return _run_grid(args, requested, metric_options)
    if args.stream or args.distributed:
        print("error: --stream and --distributed need --store", file=sys.stderr)
        return 2
    zoo = report.load_npz(args.npz)
    metrics, skipped = report.applicable_metrics(zoo, requested)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=sys.stderr)
    if not metrics:
        print("error: no metric can run on these inputs", file=sys.stderr)
        return 2
    progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    scores, errors = report.score_table(zoo, metrics, convention=args.convention, progress=progress, metric_options=metric_options)
    print(report.format_table(zoo.models, scores))
    for name, message in errors.items():
        print(f"error in {name}: {message}", file=sys.stderr)
    if args.out:
        report.write_csv(args.out, zoo.models, scores)
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if errors or (requested and skipped) else 0
