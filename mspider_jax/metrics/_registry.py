"""The metric registry: which metrics exist, what inputs each needs, which targets it supports.

Every metric module calls `register(MetricSpec(...))` at import time. The public entry points
(`names`, `score`, `score_zoo`) live in `mspider_jax.metrics` and look metrics up here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# Inputs a metric may need besides `labels` (always required).
INPUTS = ("features", "logits", "source_features", "source_labels")
TARGET_TYPES = ("classification", "regression")
CONVENTIONS = ("paper", "model_spider")


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """Declaration of one metric.

    Attributes:
      name: registry name (lower case, e.g. "logme").
      fn: the metric function. Called as
        `fn(*, labels, num_classes, convention, key, <needed inputs>, **options)` with JAX arrays
        already validated (labels int32 contiguous 0..C-1 for classification; float [N, K] for
        regression, where `num_classes` is None); returns a scalar (larger = more transferable), or
        for zoo-relative metrics a vector of components. `num_classes`, `convention` and scalar
        options are static; array options are traced. When `source_labels` is needed, fn also gets
        `num_source_classes` (static) if its signature accepts it. `key` is a PRNG key for
        randomized metrics (`jax.random.key(0)` when the caller gives none), else None or the
        caller's key.
      needs: the inputs of `INPUTS` the metric requires.
      targets: supported target types (subset of `TARGET_TYPES`).
      conventions: conventions the metric distinguishes (all metrics accept both names; a metric
        whose two conventions coincide lists both and documents that they are equal).
      is_randomized: True if the result depends on `key` (e.g. k-means++ seeding, random init).
      is_zoo_relative: True if the published score is only defined relative to a zoo (NCTI, ETran):
        `fn` then returns the per-model components and `combine_zoo` turns [M, K] components into
        [M] scores.
      combine_zoo: see `is_zoo_relative`.
      paper: short citation shown in tables.
      min_samples: smallest N accepted (checked before tracing; a clear ValueError below it).
      min_classes: smallest number of distinct classes accepted (classification).
      min_class_size: smallest per-class count accepted (2 by default: one-sample classes have no
        spread; a metric with a documented guard may lower it).
      check_inputs: optional extra host-side check `check_inputs(inputs, num_classes)` with `inputs`
        the validated NumPy arrays by name (features, logits, labels, ...); raise ValueError.
      label_statics: optional `label_statics(labels, num_classes) -> dict` computed on the host from
        the validated labels and passed to `fn` as extra *static* keyword options (e.g. the largest
        class size, for padded per-class blocks). Labels are shared by a zoo, so these are too.
      jittable: False for a metric whose fn cannot be traced (it is then called eagerly, per model).
      streaming: optional `streaming(stream, *, num_classes, convention, key, **options)` that
        computes the same score from row chunks (`mspider_jax.metrics.streaming.Stream`: one or more
        passes over a memory-mapped store, accumulating `_stats` statistics), with peak memory
        independent of N. None: the metric does not stream (`score_streaming` says why not).
      host_reduce: optional `host_reduce(inputs, convention, where) -> dict | None` run on the host
        before anything is copied to the device: given one model's raw per-model inputs (by name), it
        returns smaller arrays (names `fn` accepts, first axis N) that replace them, validating what it
        reads, or None to take the normal path. NCE uses it to send [N] pseudo-labels instead of the
        [N, Cs] logits.
      reduced_signature: with `host_reduce`, `reduced_signature(signature, convention)` maps the
        (name, shape, dtype) signature of the raw inputs to that of the arrays `host_reduce` returns,
        so that callers which group models before loading them (the store grid) can plan batches.
      row_subset: optional `row_subset(n, key, static_options) -> indices [n'] | None`, for a metric
        that reads only a random subset of the N samples (OTCE's `max_target_samples`): drawn once
        per call on the host, exactly as `fn` would draw it, so that only those rows of the labels
        and of each model's per-sample inputs (features, logits) are copied to the device (a
        10000 x 2048 float32 input is 80 MB; 2000 rows are 16 MB). `fn` then gets n' rows and draws
        nothing. Inputs are still validated whole. None: every row.
    """

    name: str
    fn: Callable[..., Any]
    needs: frozenset[str]
    targets: frozenset[str] = frozenset({"classification"})
    conventions: tuple[str, ...] = CONVENTIONS
    is_randomized: bool = False
    is_zoo_relative: bool = False
    combine_zoo: Callable[[Any], Any] | None = None
    paper: str = ""
    min_samples: int = 2
    min_classes: int = 2
    min_class_size: int = 2
    check_inputs: Callable[[dict[str, Any], int | None], None] | None = None
    label_statics: Callable[[Any, int], dict[str, Any]] | None = None
    jittable: bool = True
    streaming: Callable[..., Any] | None = None
    host_reduce: Callable[[dict[str, Any], str, str], dict[str, Any] | None] | None = None
    reduced_signature: Callable[[tuple, str], tuple] | None = None
    row_subset: Callable[[int, Any, dict[str, Any]], Any] | None = None

    def model_signature(self, signature: tuple, convention: str) -> tuple:
        """The signature of one model's arrays as the metric receives them (after `host_reduce`)."""
        return signature if self.reduced_signature is None else self.reduced_signature(signature, convention)

    def __post_init__(self) -> None:
        unknown = set(self.needs) - set(INPUTS)
        if unknown:
            raise ValueError(f"metric {self.name}: unknown inputs {sorted(unknown)}")
        if not set(self.targets) <= set(TARGET_TYPES):
            raise ValueError(f"metric {self.name}: unknown target types {sorted(self.targets)}")
        if self.is_zoo_relative and self.combine_zoo is None:
            raise ValueError(f"metric {self.name}: zoo-relative metrics need combine_zoo")


_REGISTRY: dict[str, MetricSpec] = {}


def register(spec: MetricSpec) -> MetricSpec:
    """Adds a metric to the registry (idempotent for the same spec object)."""
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing is not spec:
        raise ValueError(f"metric {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> MetricSpec:
    """Returns the spec of `name`; a clear error lists the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(_REGISTRY))}") from None


def registered_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)
