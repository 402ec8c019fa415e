"""The benchmark of a model zoo: transferability metrics and Model Spider on held-out targets.

`run_benchmark(config, workdir)` (configs/benchmark_*.py, `mspider benchmark`) scores every target
task of a feature store with every metric (cached) and with a trained Model Spider ranker, evaluates
all of them with `mspider_jax.evaluation` and writes report.md, results.csv, scores.csv and plots.
Modules: `runner` (the pipeline), `metric_scores` (batched, cached metric scores), `report` (tables,
files, plots), `synthetic` (a tiny synthetic benchmark for smoke runs and tests).
"""

from mspider_jax.benchmark.runner import collect, run_benchmark

__all__ = ["collect", "run_benchmark"]
