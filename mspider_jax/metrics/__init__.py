"""Transferability metrics in pure JAX, batched over a model zoo.

Scores how well a pre-trained model's features (or source-head logits) suit a target task; larger is
more transferable for every metric. The formulas follow the project's spec (the Model Spider
benchmark, Zhang et al., NeurIPS 2023, and the papers of each metric); each metric module cites its
paper and states its conventions and precision policy.

Public API:
  names() -> tuple[str, ...]                       registered metrics, in table order
  score(name, *, features=None, logits=None, labels, source_features=None, source_labels=None,
        convention="paper", key=None, **options) -> float
  score_components(...same...) -> np.ndarray       raw output for one model (zoo-relative metrics)
  score_zoo(name, *, features=[F_1..F_M] | [M,N,D], labels, logits=None, ...) -> np.ndarray[M]
  get(name) -> MetricSpec                          what a metric needs and supports

Conventions: `convention="paper"` is the method as published, `"model_spider"` reproduces the
benchmark code. Integer labels mean classification, float labels [N] or [N, K] regression.
Classification labels are remapped to 0..C-1 (with a warning when needed). Zoo-relative metrics
(NCTI, ETran) only have scores inside `score_zoo`; `score` raises for them.

Writing a metric: a module here calls `register(MetricSpec(name, fn, needs, ...))` at import time and
is listed in `_METRIC_MODULES`. `fn(*, labels, num_classes, convention, key, <needs>, **options)` must
be jit-able with static shapes and vmap-able over a leading model axis; it uses `_linalg` for the
shared numerics and precision policy.
"""

from __future__ import annotations

import importlib

from mspider_jax.metrics._dispatch import check_options, clear_compiled, compiled_program_count, score, score_components, score_zoo
from mspider_jax.metrics._registry import MetricSpec, get, register, registered_names

# One module per metric family; importing a module registers its metric(s). One name per line so
# that engineers adding modules do not edit the same line.
_METRIC_MODULES: tuple[str, ...] = (
    "hscore",
    "leep",
    "logme",
    "nce",
    "pactran",
    "lfc",
    "transrate",
    "emms",
    "nleep",
    "otce",
    "pactran_gauss",
    "gbc",
    "sfda",
    "ncti",
    "etran",
    "ped",
)

# The order of the metrics table (README, CLI output, benchmark). Registered names not listed here
# come after, in registration order.
TABLE_ORDER: tuple[str, ...] = (
    "hscore", "leep", "logme", "nce", "nleep", "otce", "pactran_dirichlet", "pactran_gamma",
    "pactran_gauss", "gbc", "lfc", "sfda", "transrate", "ncti", "etran", "ped", "emms",
)

for _module in _METRIC_MODULES:
    importlib.import_module(f"mspider_jax.metrics.{_module}")


def names() -> tuple[str, ...]:
    """The registered metric names, in table order."""
    registered = registered_names()
    ordered = [n for n in TABLE_ORDER if n in registered]
    return tuple(ordered + [n for n in registered if n not in TABLE_ORDER])


__all__ = ["MetricSpec", "TABLE_ORDER", "check_options", "clear_compiled", "compiled_program_count", "get", "names", "register", "score", "score_components", "score_zoo"]
