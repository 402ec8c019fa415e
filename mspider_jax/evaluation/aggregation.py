"""Aggregation of a per-task measure over tasks: the mean and a bootstrap confidence interval.

The published tables report the plain mean over test datasets. With 8 datasets that mean is noisy,
so every summary here also carries a percentile-bootstrap interval *over tasks*: tasks are resampled
with replacement, the mean is recomputed, and the (1-c)/2 and (1+c)/2 quantiles of those means are
reported. The interval describes how much the mean depends on which tasks were chosen; it says
nothing about noise inside a task.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean of a measure over n tasks with a bootstrap interval [low, high]."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def aggregate(values, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Summary:
    """Mean over tasks and its percentile-bootstrap confidence interval.

    Args:
      values: [T] one value per task, finite.
      n_boot: number of bootstrap resamples (>= 1).
      confidence: coverage of the interval, in (0, 1).
      seed: seed of the resampling (the result is deterministic given the seed).

    Returns:
      Summary(mean, low, high, n). With a single task the interval collapses to the mean.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty [T] vector, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"values is not finite at task {bad[0]} (value {values[bad[0]]})")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    mean = float(values.mean())
    if values.size == 1:
        return Summary(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    resampled = rng.integers(0, values.size, size=(n_boot, values.size))
    boot_means = values[resampled].mean(axis=1)
    low, high = np.quantile(boot_means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Summary(mean, float(low), float(high), int(values.size))
