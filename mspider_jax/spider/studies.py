"""Issue 7's measurements on the offline mini zoo: adding PTMs, and labels without fine-tuning.

Both studies train Model Spider (Zhang et al., NeurIPS 2023) with the mini-zoo config
(`configs/spider_minizoo.py`) and report the weighted tau on the held-out TARGET tasks, whose
ground truth is measured fine-tuning accuracy (raw form, truth first; mean over targets,
`spider.evaluate`). Each is repeated over seeds (the seed sets the ranker's initialisation, the
validation tasks and the batches); cells are means over seeds, with the per-seed values in the JSON.

`add_models_study`: (a) a ranker trained on the whole zoo, (b) the same config on the zoo without
the `held_out` PTMs, (c) ranker (b) with the held-out PTMs added by `grow.add_models_to_run`
(their tokens and projections fitted, everything else frozen).

`label_sources_study`: rankers trained on each label source of `label_sources` (same config
otherwise; validation on the held-out training tasks uses the same source's labels, as a user
without fine-tuning results would), next to the transferability metrics computed directly on the
targets (which must run every PTM on each target) and their Borda count.

Runs are cached in `workdir` (a finished run's results.json is reused), so an interrupted study
resumes.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from mspider_jax.spider import evaluate as evaluate_lib
from mspider_jax.spider import grow
from mspider_jax.spider import label_sources
from mspider_jax.spider import linear_probe
from mspider_jax.spider import train_lib

TARGET_METRICS = ("logme", "nce", "hscore", "leep")
BORDA_ROW = "Borda(" + ", ".join(TARGET_METRICS) + ")"
PROBE_ROW = "linear probe (JAX)"


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """train_and_evaluate, or the results of a finished run in `workdir`."""
    path = workdir / "results.json"
    if path.exists():
        logging.info("Reusing %s", path)
        return json.loads(path.read_text())
    return train_lib.train_and_evaluate(copy.deepcopy(config), workdir)


def _taus(results: dict) -> dict[str, float]:
    """{row name: mean weighted tau}, with the stage-2 rows renamed to fixed keys."""
    out = {}
    for name, row in results["rows"].items():
        key = name
        if name.startswith("Model Spider (stage 2") and "validation" in name:
            key = "stage 2 (k on validation)"
        elif name.startswith("Model Spider (stage 2"):
            key = "stage 2 (k fixed)"
        elif name == evaluate_lib.STAGE1:
            key = "stage 1"
        elif name.startswith("Model Spider paper_compat"):
            continue
        out[key] = row["weighted_tau"]["mean"]
    return out


def _mean_cells(per_seed: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """{key: (mean, std over seeds)} of the keys present in every seed."""
    keys = [k for k in per_seed[0] if all(k in record for record in per_seed)]
    return {k: (float(np.mean([r[k] for r in per_seed])),
                float(np.std([r[k] for r in per_seed]))) for k in keys}


def _cell(value: tuple[float, float] | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    mean, std = value
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _seconds(value: tuple[float, float] | None) -> str:
    return "—" if value is None else f"{value[0]:.0f}"


def _with(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    config = copy.deepcopy(config)
    for dotted, value in fields.items():
        grow._set_field(config, dotted.replace("__", "."), value)
    return config


# --------------------------------------------------------------------------------------------------
# Adding PTMs


def add_models_study(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                     held_out: Sequence[str], *, seeds: Sequence[int] = (0,),
                     options: grow.GrowOptions = grow.GrowOptions()) -> dict:
    """Full zoo vs. zoo without `held_out` vs. `held_out` added to it (module docstring).

    Returns:
      {"per_seed": [...], "table": markdown}; also writes workdir/add_models.{json,md}.
    """
    workdir = pathlib.Path(workdir)
    model_names = list(train_lib.load_data(config).model_names)
    unknown = [m for m in held_out if m not in model_names]
    if unknown:
        raise ValueError(f"held-out models {unknown} are not in the zoo")
    reduced = [m for m in model_names if m not in set(held_out)]
    per_seed = []
    for seed in seeds:
        base = _with(config, seed=seed, data__models=tuple(model_names))
        full = _run(base, workdir / f"seed{seed}" / "full")
        without = _run(_with(base, data__models=tuple(reduced)),
                       workdir / f"seed{seed}" / "without")
        grown_dir = workdir / f"seed{seed}" / "grown"
        if (grown_dir / "grow.json").exists() and (grown_dir / "results.json").exists():
            summary = json.loads((grown_dir / "grow.json").read_text())
            grown_results = json.loads((grown_dir / "results.json").read_text())
        else:
            summary = grow.add_models_to_run(workdir / f"seed{seed}" / "without", held_out,
                                             grown_dir,
                                             options=dataclasses.replace(options, seed=seed))
            grown_results = json.loads((grown_dir / "results.json").read_text())
        per_seed.append({
            "seed": seed,
            "full": {**_taus(full), "seconds": full["training_seconds"]},
            "without": {**_taus(without), "seconds": without["training_seconds"]},
            "grown": {**_taus(grown_results), "seconds": summary["seconds"],
                      "best_epoch": summary["best_epoch"]},
        })
    rows = {name: _mean_cells([record[name] for record in per_seed])
            for name in ("full", "without", "grown")}
    held = ", ".join(held_out)
    lines = [
        f"Adding PTMs: {len(model_names)}-PTM mini zoo, {held} held out; weighted tau on the "
        f"targets, mean ± std over seeds {list(seeds)}.", "",
        "| ranker | PTMs | stage 1 | stage 2 (k fixed) | stage 2 (k on validation) | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"full": f"trained on all {len(model_names)} PTMs from the start",
              "without": f"trained without {held}",
              "grown": f"previous + {held} added (token + projection fitted, rest frozen)"}
    sizes = {"full": len(model_names), "without": len(reduced), "grown": len(model_names)}
    for name in ("full", "without", "grown"):
        cells = rows[name]
        time_note = _seconds(cells.get("seconds"))
        if name == "grown":
            time_note += " (fit only)"
        lines.append(f"| {labels[name]} | {sizes[name]} | {_cell(cells.get('stage 1'))} | "
                     f"{_cell(cells.get('stage 2 (k fixed)'))} | "
                     f"{_cell(cells.get('stage 2 (k on validation)'))} | {time_note} |")
    prior = rows["full"].get(evaluate_lib.CONSTANT_PRIOR)
    lines.append(f"| {evaluate_lib.CONSTANT_PRIOR} | {len(model_names)} | {_cell(prior)} | | | |")
    table = "\n".join(lines) + "\n"
    workdir.mkdir(parents=True, exist_ok=True)
    result = {"held_out": list(held_out), "seeds": list(seeds),
              "options": dataclasses.asdict(options), "per_seed": per_seed, "table": table}
    train_lib._write_text_atomic(workdir / "add_models.json", json.dumps(result, indent=2))
    train_lib._write_text_atomic(workdir / "add_models.md", table)
    return result


# --------------------------------------------------------------------------------------------------
# Label sources


def write_target_metric_scores(store, targets: Sequence[str], model_names: Sequence[str],
                               path: pathlib.Path, *, split: str = "train") -> dict[str, float]:
    """Scores of TARGET_METRICS, their Borda count and the JAX linear probe on every target
    (`evaluate.read_metric_scores` CSV). Returns the seconds spent per row."""
    rows, seconds = [], {}
    for target in targets:
        start = time.time()
        scores = label_sources.task_metric_scores(store, target, model_names, split=split,
                                                  metrics=TARGET_METRICS)
        seconds[BORDA_ROW] = seconds.get(BORDA_ROW, 0.0) + time.time() - start
        table = {metric: scores[i] for i, metric in enumerate(TARGET_METRICS)}
        table[BORDA_ROW] = label_sources.borda_count(scores)
        start = time.time()
        entries = [store.read(target, split, m) for m in model_names]
        table[PROBE_ROW] = linear_probe.linear_probe_accuracies(
            [np.asarray(e.features, np.float32) for e in entries], np.asarray(entries[0].labels))
        seconds[PROBE_ROW] = seconds.get(PROBE_ROW, 0.0) + time.time() - start
        for metric, values in table.items():
            rows += [(target, model, metric, repr(float(v))) for model, v in
                     zip(model_names, values)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "model", "metric", "score"])
        writer.writerows(rows)
    return seconds


def label_sources_study(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                        label_store: str | os.PathLike, *, seeds: Sequence[int] = (0,),
                        finetune_seconds: float | None = None) -> dict:
    """Rankers trained on each label source vs. the metrics on the targets (module docstring).

    Args:
      config: the mini-zoo config (its targets must be in `label_store` too, or set
        config.data.targets.store to a store that has them).
      label_store: feature store with every training task's features (the build's WORKDIR/store).
      finetune_seconds: what the measured fine-tuning labels cost (the build's finetune_tasks
        stage), shown in the table.
    """
    from mspider_jax.features import FeatureStore

    workdir = pathlib.Path(workdir)
    store = FeatureStore(label_store)
    data = train_lib.load_data(config)
    model_names = list(data.model_names)
    metric_csv = workdir / "target_metric_scores.csv"
    timing_path = workdir / "target_metric_seconds.json"
    if not metric_csv.exists():
        seconds = write_target_metric_scores(store, data.targets.names, model_names, metric_csv)
        train_lib._write_text_atomic(timing_path, json.dumps(seconds))
    # Label computation time: the training (and validation) tasks' labels from scratch.
    task_names = data.train.names + data.val.names
    label_options = label_sources.options_from_config(config.data.label_options)
    label_seconds = {}
    for source in ("linear_probe", "metrics_borda"):
        timing = workdir / f"labels_{source}.json"
        if not timing.exists():
            _, info = label_sources.compute_labels(store, task_names, model_names, source,
                                                   options=label_options,
                                                   cache_dir=workdir / "label_cache")
            train_lib._write_text_atomic(timing, json.dumps(info))
        label_seconds[source] = json.loads(timing.read_text())["seconds"]
    variants = {
        "fine-tuning accuracy (measured)": {},
        "linear probe, JAX (train split, 30% held out)": {"data__label_source": "linear_probe"},
        "Borda(" + ", ".join(label_options.metrics) + ")": {"data__label_source": "metrics_borda"},
        "linear probe, build's column (test split)": {"data__train__value_column": "linear_probe"},
    }
    costs = {"fine-tuning accuracy (measured)": finetune_seconds,
             "linear probe, JAX (train split, 30% held out)": label_seconds["linear_probe"],
             "Borda(" + ", ".join(label_options.metrics) + ")": label_seconds["metrics_borda"],
             "linear probe, build's column (test split)": None}
    per_seed = []
    for seed in seeds:
        record = {"seed": seed}
        for index, (name, fields) in enumerate(variants.items()):
            run_config = _with(config, seed=seed, data__label_options__store=str(label_store),
                               data__label_options__cache_dir=str(workdir / "label_cache"),
                               eval__metric_scores=str(metric_csv), **fields)
            results = _run(run_config, workdir / f"seed{seed}" / f"source{index}")
            record[name] = {**_taus(results), "seconds": results["training_seconds"]}
        per_seed.append(record)
    rows = {name: _mean_cells([record[name] for record in per_seed]) for name in variants}
    first = rows["fine-tuning accuracy (measured)"]
    metric_seconds = json.loads(timing_path.read_text())
    lines = [
        f"Training labels without fine-tuning: {len(model_names)}-PTM mini zoo, "
        f"{len(task_names)} training tasks; weighted tau on the {len(data.targets)} targets, "
        f"mean ± std over seeds {list(seeds)}.", "",
        "| training labels | label cost (s) | train (s) | stage 1 | stage 2 (k fixed) | "
        "stage 2 (k on validation) |",
        "|---|---|---|---|---|---|",
    ]
    for name in variants:
        cells = rows[name]
        cost = costs[name]
        lines.append(f"| Model Spider on {name} | {'—' if cost is None else f'{cost:.0f}'} | "
                     f"{_seconds(cells.get('seconds'))} | {_cell(cells.get('stage 1'))} | "
                     f"{_cell(cells.get('stage 2 (k fixed)'))} | "
                     f"{_cell(cells.get('stage 2 (k on validation)'))} |")
    for metric in (*TARGET_METRICS, BORDA_ROW, PROBE_ROW):
        seconds = metric_seconds.get(metric)
        note = "" if seconds is None else f"{seconds:.0f} (all targets)"
        lines.append(f"| {metric} on the targets (all PTMs run) | {note} | | "
                     f"{_cell(first.get(metric))} | | |")
    lines.append(f"| {evaluate_lib.CONSTANT_PRIOR} | | | "
                 f"{_cell(first.get(evaluate_lib.CONSTANT_PRIOR))} | | |")
    table = "\n".join(lines) + "\n"
    result = {"seeds": list(seeds), "label_seconds": label_seconds,
              "finetune_seconds": finetune_seconds, "per_seed": per_seed, "table": table}
    train_lib._write_text_atomic(workdir / "label_sources.json", json.dumps(result, indent=2))
    train_lib._write_text_atomic(workdir / "label_sources.md", table)
    return result


def run_studies(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                label_store: str | os.PathLike, *, held_out: Sequence[str],
                seeds: Sequence[int] = (0, 1, 2), studies: Sequence[str] = ("add_models",
                                                                            "label_sources"),
                finetune_seconds: float | None = None,
                out: str | os.PathLike | None = None) -> str:
    """Both studies; returns (and writes to `out`, if given) their markdown tables."""
    workdir = pathlib.Path(workdir)
    unknown = set(studies) - {"add_models", "label_sources"}
    if unknown:
        raise ValueError(f"unknown studies {sorted(unknown)}")
    parts = []
    if "add_models" in studies:
        parts.append(add_models_study(config, workdir / "add_models", held_out,
                                      seeds=seeds)["table"])
    if "label_sources" in studies:
        parts.append(label_sources_study(config, workdir / "label_sources", label_store,
                                         seeds=seeds, finetune_seconds=finetune_seconds)["table"])
    text = "\n".join(parts)
    if out is not None:
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        train_lib._write_text_atomic(pathlib.Path(out), text)
    return text
