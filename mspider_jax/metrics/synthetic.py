"""Seeded synthetic transfer tasks for tests and benchmarks of the metrics.

`make_task` imitates what a zoo model produces on a labelled target set: non-negative pooled features
(ReLU-like, with a decaying spectrum and a large common offset, which is what makes float32 Gram
matrices delicate), class structure of adjustable strength, and source-head logits from a random
linear head on those features.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    features: np.ndarray  # [N, D] float32
    logits: np.ndarray  # [N, Cs] float32
    labels: np.ndarray  # [N] int64 in 0..C-1, every class present
    source_features: np.ndarray  # [Ns, D] float32 (the same "model" on a source set)
    source_labels: np.ndarray  # [Ns] int64 in 0..Cs'-1


def make_task(
    num_samples: int,
    dim: int,
    num_classes: int,
    num_source_classes: int,
    *,
    seed: int = 0,
    separation: float = 1.0,
    num_source_samples: int | None = None,
    logit_scale: float = 4.0,
) -> SyntheticTask:
    """A synthetic target task.

    Args:
      num_samples: N target samples (classes are balanced up to one sample; every class is present).
      dim: D feature dimension.
      num_classes: C target classes.
      num_source_classes: Cs source-head classes (width of the logits).
      seed: NumPy seed; equal arguments give equal arrays.
      separation: scale of the class means relative to the within-class noise.
      num_source_samples: Ns rows of the source set (default min(5·Cs, 2000)).
      logit_scale: standard deviation of the logits (sets how peaked the source softmax is).
    """
    if num_samples < num_classes:
        raise ValueError(f"need at least one sample per class: N={num_samples} < C={num_classes}")
    rng = np.random.default_rng(seed)
    # Decaying spectrum: a few strong directions and a long tail, like penultimate-layer features.
    # Generated in float32 (it is what models emit, and it keeps large tasks quick to build).
    spectrum = (1.0 / np.sqrt(1.0 + np.arange(dim) / 8.0)).astype(np.float32)
    mixing = rng.standard_normal((dim, dim), dtype=np.float32) * (spectrum / np.sqrt(dim, dtype=np.float32))

    def sample(labels: np.ndarray, means: np.ndarray) -> np.ndarray:
        latent = separation * means[labels] + rng.standard_normal((len(labels), dim), dtype=np.float32)
        return np.maximum(latent @ mixing.T + 0.5, 0.0).astype(np.float32)

    labels = rng.permutation(np.arange(num_samples) % num_classes)
    features = sample(labels, rng.standard_normal((num_classes, dim), dtype=np.float32))
    head = rng.standard_normal((dim, num_source_classes), dtype=np.float32) / np.float32(np.sqrt(dim))
    raw = (features - features.mean(0)) @ head
    bias = rng.standard_normal(num_source_classes, dtype=np.float32)
    logits = (np.float32(logit_scale) * raw / (raw.std() + np.float32(1e-12)) + bias).astype(np.float32)

    ns = num_source_samples if num_source_samples is not None else min(5 * num_source_classes, 2000)
    source_classes = min(num_source_classes, ns // 2) or 1
    source_labels = rng.permutation(np.arange(ns) % source_classes)
    source_features = sample(source_labels, rng.standard_normal((source_classes, dim), dtype=np.float32))
    return SyntheticTask(features, logits, labels.astype(np.int64), source_features, source_labels.astype(np.int64))
