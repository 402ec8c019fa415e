"""Score every model of a zoo with several metrics: the library side of `mspider metrics`.

Inputs come from an `.npz` file or from the feature store (`mspider_jax.features.FeatureStore`), as a
`Zoo`: per-model arrays (features, logits, source features) and the shared labels. `score_table` runs
each metric once over the whole zoo with `score_zoo` (one batched call per group of equal shapes).

npz layout (one model):   features [N, D], labels [N], optional logits [N, Cs],
                          optional source_features [Ns, D] and source_labels [Ns]
npz layout (several):     features_<model>, optional logits_<model> / source_features_<model>,
                          plus the shared labels (and source_labels)
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mspider_jax import metrics as M

PER_MODEL_KEYS = ("features", "logits", "source_features")


@dataclasses.dataclass
class Zoo:
    """Models of one target task. `inputs[model]` maps "features"/"logits"/"source_features" to arrays."""

    labels: np.ndarray
    inputs: dict[str, dict[str, np.ndarray]]
    source_labels: np.ndarray | None = None

    @property
    def models(self) -> list[str]:
        return list(self.inputs)

    def available(self, key: str) -> bool:
        if key == "source_labels":
            return self.source_labels is not None
        return all(key in arrays for arrays in self.inputs.values())


def load_npz(path: str | os.PathLike) -> Zoo:
    """Reads a zoo from an .npz file (see the module docstring for the layout)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if "labels" not in arrays:
        raise ValueError(f"{path}: no 'labels' array (found {sorted(arrays)})")
    labels = arrays.pop("labels")
    source_labels = arrays.pop("source_labels", None)
    inputs: dict[str, dict[str, np.ndarray]] = {}
    if "features" in arrays or "logits" in arrays:
        inputs["model"] = {k: arrays.pop(k) for k in PER_MODEL_KEYS if k in arrays}
    for name in sorted(arrays):
        # Longest prefix first: "source_features_x" must not be read as "features" of "source_x".
        for key in sorted(PER_MODEL_KEYS, key=len, reverse=True):
            if name.startswith(key + "_"):
                inputs.setdefault(name[len(key) + 1:], {})[key] = arrays[name]
                break
        else:
            raise ValueError(f"{path}: unexpected array {name!r}; expected features[_<model>], logits[_<model>], source_features[_<model>], labels, source_labels")
    if not inputs:
        raise ValueError(f"{path}: no model arrays (features, logits or features_<model>)")
    return Zoo(labels=labels, inputs=inputs, source_labels=source_labels)


def load_store(root: str | os.PathLike, dataset: str, split: str = "train") -> Zoo:
    """Reads every model of (dataset, split) from the feature store; their labels must agree."""
    from mspider_jax.features import FeatureStore

    store = FeatureStore(root)
    models = store.models(dataset, split)
    if not models:
        raise ValueError(f"feature store {root}: no models for dataset {dataset!r}, split {split!r} (datasets: {store.datasets()})")
    labels = None
    inputs = {}
    for model in models:
        entry = store.read(dataset, split, model)
        if labels is None:
            labels = np.asarray(entry.labels)
        elif not np.array_equal(labels, np.asarray(entry.labels)):
            raise ValueError(f"feature store {root}: labels of model {model!r} differ from those of {models[0]!r} for {dataset}/{split}")
        inputs[model] = {"features": np.asarray(entry.features, dtype=np.float32)}
        if entry.logits is not None:
            inputs[model]["logits"] = np.asarray(entry.logits, dtype=np.float32)
    return Zoo(labels=labels, inputs=inputs)


def applicable_metrics(zoo: Zoo, metrics: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Splits metrics into those the zoo can be scored with and the others (with the reason).

    Explicitly requested metrics that cannot run are returned as skipped too; callers report them.
    """
    from mspider_jax.metrics._validation import infer_target_type

    target = infer_target_type(zoo.labels)
    chosen, skipped = [], {}
    for name in metrics if metrics is not None else M.names():
        spec = M.get(name)
        missing = sorted(k for k in spec.needs if not zoo.available(k))
        if missing:
            skipped[name] = f"needs {', '.join(missing)}"
        elif target not in spec.targets:
            skipped[name] = f"does not support {target} targets"
        else:
            chosen.append(name)
    return chosen, skipped


def score_table(
    zoo: Zoo,
    metrics: Sequence[str],
    *,
    convention: str = "paper",
    progress: Callable[[str], None] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Scores every model with every metric (`metric_options`: metric -> its options, e.g.
    {"otce": {"solver": "exact"}}).

    Returns:
      (scores: metric -> [M] float64 in `zoo.models` order, errors: metric -> message for metrics
      that raised; their scores are NaN).
    """
    scores, errors = {}, {}
    models = zoo.models
    for index, name in enumerate(metrics):
        start = time.perf_counter()
        spec = M.get(name)
        kwargs: dict[str, Any] = {
            key: [zoo.inputs[m][key] for m in models] for key in PER_MODEL_KEYS if key in spec.needs
        }
        if "source_labels" in spec.needs:
            kwargs["source_labels"] = zoo.source_labels
        try:
            options = dict((metric_options or {}).get(name, {}))
            scores[name] = M.score_zoo(name, labels=zoo.labels, convention=convention, **kwargs, **options)
        except ValueError as err:
            errors[name] = str(err)
            scores[name] = np.full(len(models), np.nan)
        if progress is not None:
            status = "failed" if name in errors else "done"
            progress(f"[{index + 1}/{len(metrics)}] {name} {status} in {time.perf_counter() - start:.1f}s")
    return scores, errors


def format_table(models: Sequence[str], scores: dict[str, np.ndarray]) -> str:
    """A markdown table: one row per model, one column per metric."""
    names = list(scores)
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, model in enumerate(models):
        cells = [f"{scores[n][i]:.6g}" if np.isfinite(scores[n][i]) else "error" for n in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str | os.PathLike, models: Sequence[str], scores: dict[str, np.ndarray]) -> None:
    """CSV with columns model, <metric>...: written atomically (temp file + rename)."""
    from mspider_jax.evaluation._io import write_csv_atomic

    names = list(scores)
    rows = [[model, *(repr(float(scores[n][i])) for n in names)] for i, model in enumerate(models)]
    write_csv_atomic(path, ["model", *names], rows)
