"""`mspider add-model`: add PTMs to a trained Model Spider ranker without retraining it."""

import argparse
import json

HELP = ("add PTMs to a trained Model Spider run: fit only their tokens and projections, the rest "
        "frozen; writes a new run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="the trained run's workdir")
    parser.add_argument("--models", required=True,
                        help="comma-separated names of the PTMs to add (appended to the zoo)")
    parser.add_argument("--workdir", required=True, help="directory of the new run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a field of the run's config, e.g. "
                             "data.train.ground_truth=gt.csv or data.targets.store=STORE "
                             "(repeatable; the value is read as JSON, else as a string)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the fit")
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate")
    parser.add_argument("--enrich-probability", type=float, default=None,
                        help="per task, probability that a new PTM gets its own tokens in a batch")
    parser.add_argument("--seed", type=int, default=None, help="initialisation and batch order")
    parser.add_argument("--no-eval", action="store_true",
                        help="do not evaluate the grown ranker on the run's targets")


def _parse_override(text: str) -> tuple[str, object]:
    field, sep, value = text.partition("=")
    if not sep or not field:
        raise ValueError(f"--set {text!r}: expected FIELD=VALUE")
    try:
        return field.strip(), json.loads(value)
    except json.JSONDecodeError:
        return field.strip(), value


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from absl import logging

    from mspider_jax.spider import grow

    logging.set_verbosity(logging.INFO)
    new_models = [m.strip() for m in args.models.split(",") if m.strip()]
    overrides = dict(_parse_override(text) for text in args.set)
    changes = {name: getattr(args, name) for name in ("epochs", "lr", "enrich_probability", "seed")
               if getattr(args, name) is not None}
    options = dataclasses.replace(grow.GrowOptions(), **changes)
    summary = grow.add_models_to_run(args.checkpoint, new_models, args.workdir,
                                     overrides=overrides, options=options,
                                     evaluate=not args.no_eval)
    print(f"added {', '.join(new_models)} in {summary['seconds']:.1f} s "
          f"({summary['num_tasks']} tasks, best epoch {summary['best_epoch']}); wrote "
          f"{args.workdir}")
    for name, tau in summary.get("weighted_tau", {}).items():
        print(f"  {name:<60} weighted tau {tau:.3f}")
    return 0
