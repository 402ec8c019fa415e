"""`mspider table`: a results table (methods x datasets) from scores and ground-truth CSVs."""

import argparse
import sys

HELP = "tabulate ranking quality (weighted tau, ...) of methods from scores and ground-truth CSVs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True,
                        help="CSV with columns dataset, model, and one column per method")
    parser.add_argument("--truth", required=True,
                        help="CSV with columns dataset, model, accuracy (higher = better)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="method columns to show, in this order (default: all)")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="datasets to show, in this order (default: all scored datasets)")
    parser.add_argument("--form", choices=("raw", "ranks"), default="raw",
                        help="raw values with ties (published baselines) or integer ranks "
                             "(released Model Spider code)")
    parser.add_argument("--tie-break", default=None,
                        help="with --form ranks: CSV dataset, model, <value> breaking ties of "
                             "the truth (e.g. data/published/single_source_ftrank.csv)")
    parser.add_argument("--measure", default="weighted_tau",
                        choices=("weighted_tau", "kendall_tau", "spearman_rho", "pearson_r",
                                 "top1_hit", "top3_hit", "regret"))
    parser.add_argument("--priors", default=None,
                        help="CSV model, <prior>, ...: task-agnostic scores shown as reference "
                             "rows")
    parser.add_argument("--no-loo-prior", action="store_true",
                        help="omit the constant prior fitted on the other datasets")
    parser.add_argument("--no-random", action="store_true", help="omit the random-ranking row")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--title", default=None, help="title of the markdown file and the plot")
    parser.add_argument("--out", required=True,
                        help="output prefix: writes PREFIX.md, PREFIX.csv and PREFIX.png")


def _read_priors(path: str) -> dict[str, dict[str, float]]:
    from mspider_jax.evaluation import _io

    header, lines = _io.read_csv_rows(path)
    model_column = _io.find_column(header, "model", path)
    names = [c for c in header if c != model_column]
    if not names:
        raise ValueError(f"{path}: no prior columns besides model")
    priors: dict[str, dict[str, float]] = {name: {} for name in names}
    for line_number, fields in lines:
        model = fields[model_column]
        if model in priors[names[0]]:
            raise ValueError(f"{path}:{line_number}: duplicate model {model!r}")
        for name in names:
            where = f"{path}:{line_number} column {name!r}"
            priors[name][model] = _io.parse_float(fields[name], where)
    return priors


def run(args: argparse.Namespace) -> int:
    from mspider_jax.evaluation import table as tb

    try:
        methods, records = tb.read_scores_csv(args.scores)
        truth = tb.read_truth_csv(args.truth)
        tie_break = None if args.tie_break is None else tb.read_truth_csv(args.tie_break)
        priors = None if args.priors is None else _read_priors(args.priors)
        table = tb.results_table(records, truth, methods=args.methods or methods,
                                 datasets=args.datasets, measure=args.measure, form=args.form,
                                 tie_break=tie_break, reference_priors=priors,
                                 loo_prior=not args.no_loo_prior, include_random=not args.no_random,
                                 n_boot=args.n_boot, seed=args.seed)
        paths = tb.write_table_files(table, args.out, title=args.title)
    except ValueError as err:
        print(f"mspider table: error: {err}", file=sys.stderr)
        return 2
    print(table.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
