"""Transferability metrics in pure JAX, batched over a model zoo.

Public API:
  names() -> tuple[str, ...]
  score(name, *, features=None, logits=None, labels, source_features=None, source_labels=None,
        convention="paper", key=None, **options) -> float
  score_zoo(name, features=..., labels=..., logits=..., ...) -> np.ndarray[M]

Each metric lives in its own module (listed in `_METRIC_MODULES`), which registers a `MetricSpec`
with `mspider_jax.metrics._registry` when imported.
"""

from __future__ import annotations

import importlib

from mspider_jax.metrics._registry import MetricSpec, get, register, registered_names

# One module per metric family; importing a module registers its metric(s). Order = table order.
_METRIC_MODULES: tuple[str, ...] = ()

for _module in _METRIC_MODULES:
    importlib.import_module(f"mspider_jax.metrics.{_module}")


def names() -> tuple[str, ...]:
    """The registered metric names, in table order."""
    return registered_names()


__all__ = ["MetricSpec", "get", "names", "register"]
