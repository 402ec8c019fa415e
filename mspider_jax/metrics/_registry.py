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
        `fn(*, labels, convention, key, <needed inputs>, **options)` with JAX/NumPy arrays already
        validated (labels contiguous 0..C-1 for classification); returns a scalar (larger = more
        transferable). `num_classes` (static int) is passed for classification.
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
