"""`mspider benchmark`: every metric and Model Spider on every target of a zoo, and the report."""

import argparse
import sys

HELP = ("benchmark a zoo: all metrics + Model Spider on every target task of a feature store; "
        "writes report.md, results.csv and plots")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="a configs/benchmark_*.py file, with an optional ':arg' (e.g. "
                             "configs/benchmark_minizoo.py:smoke); override fields with "
                             "--config.FIELD=VALUE (e.g. --config.spider.retrain=True)")
    parser.add_argument("--workdir", required=True,
                        help="output directory (report.md, results.csv, scores.csv, PNGs, score "
                             "cache, trained ranker)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(_extra_args=True)


def load_config(config_arg: str, overrides: list[str]):
    """The config of `--config PATH[:ARG]` with `--config.FIELD=VALUE` overrides (absl semantics,
    locked: a misspelt field is an error)."""
    from absl import flags
    from ml_collections import config_flags

    bad = [text for text in overrides if not text.startswith("--config.")]
    if bad:
        raise ValueError(f"unrecognized arguments: {' '.join(bad)} (only --config.FIELD=VALUE "
                         "overrides are accepted besides the options)")
    argv = ["mspider benchmark", f"--config={config_arg}", *overrides]
    values = flags.FlagValues()
    # sys_argv: the overrides are read from these arguments, not from the process's sys.argv.
    config_flags.DEFINE_config_file("config", None, "benchmark config", flag_values=values,
                                    lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except (flags.Error, AttributeError, KeyError) as err:  # a misspelt field: AttributeError
        raise ValueError(f"bad --config override: {err}") from None
    return values.config


def run(args: argparse.Namespace) -> int:
    import logging as std_logging

    from absl import logging

    from mspider_jax.benchmark import run_benchmark

    try:
        config = load_config(args.config, list(getattr(args, "extra_args", [])))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.INFO)  # training progress when the ranker is (re)trained
    # Orbax logs every checkpoint operation at INFO: keep its warnings only.
    from mspider_jax import checkpointing

    std_logging.getLogger("absl").addFilter(checkpointing.drop_orbax_info)
    library_log = std_logging.getLogger("mspider_jax")
    if not any(getattr(h, "is_benchmark_handler", False) for h in library_log.handlers):
        handler = std_logging.StreamHandler(sys.stderr)
        handler.setFormatter(std_logging.Formatter("[benchmark] %(message)s"))
        handler.is_benchmark_handler = True
        library_log.addHandler(handler)
        library_log.setLevel(std_logging.INFO)
        library_log.propagate = False  # no second copy through a root handler

    def progress(message: str) -> None:
        print(f"[benchmark] {message}", file=sys.stderr, flush=True)

    result = run_benchmark(config, args.workdir, progress=progress,
                           show_bars=not args.no_progress)
    print(result["summary"])
    print(f"\nreport: {result['report']}")
    return 0
