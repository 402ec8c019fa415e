"""Where a task to rank comes from: raw images (extracted on demand) or precomputed features.

Model Spider (Zhang et al., NeurIPS 2023; spec model_spider.md §7) needs, for a new task, only the
generic encoder's features (stage 1) and then the features of the k stage-1 leaders (stage 2). A
`TaskFeatures` provides exactly that: `generic` [N, Dg] and `labels` [N] up front, and `fetch(model)`
-> [N, d_m] called by `inference.rank_features` for the re-ranked PTMs only. Sources:

  * an image dataset: "folder:PATH" or an image folder (PATH/[split/]<class>/<image>), "tfds:NAME",
    "npz:PATH" or a PATH.npz holding `images` (uint8 [N, H, W(, 3)]) and `labels`. The networks are
    the zoo's PyTorch models (`converters/`, torch imported lazily): the generic encoder is run
    first, then each requested PTM. Features go into a cache feature store (default
    ~/.cache/mspider_jax/rank_store, dataset "<source name>@<content fingerprint>"), so asking
    again costs nothing, and the time of every extraction is recorded (`extraction_seconds`).
  * an .npz of precomputed features: `generic_features` (or `features`) [N, Dg] under the ranker's
    generic encoder, `labels` [N], and optionally `features_<model>` [N, d_m] for stage 2.
  * a feature store entry (dataset, split): the generic encoder's and the PTMs' stored features.

Labels are integer class ids in every case (samples in the same order for every network).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np

FEATURE_CACHE_ENV = "MSPIDER_RANK_CACHE"
GENERIC_KEYS = ("generic_features", "features")
MODEL_PREFIX = "features_"


def default_feature_cache() -> pathlib.Path:
    """$MSPIDER_RANK_CACHE, else ~/.cache/mspider_jax/rank_store."""
    override = os.environ.get(FEATURE_CACHE_ENV)
    if override:
        return pathlib.Path(override).expanduser()
    return pathlib.Path.home() / ".cache" / "mspider_jax" / "rank_store"


@dataclasses.dataclass
class TaskFeatures:
    """A task's generic features and labels, and how to get a PTM's features on demand.

    Attributes:
      name: a description of the task (for messages).
      generic: [N, Dg] features under the ranker's generic encoder.
      labels: [N] integer class ids.
      fetch: model name -> [N, d_m] features of that PTM on the same samples (may run the model).
      extraction_seconds: network name -> seconds its features cost (measured now, or recorded in
        the feature store's manifest when they were cached); absent when unknown. The generic
        encoder's entry is under `generic_name`.
      generic_name: the generic encoder's name in `extraction_seconds`.
      all_models_seconds: model name -> recorded extraction seconds of EVERY PTM when known (a
        store that holds the whole zoo), for the cost of scoring every PTM.
    """

    name: str
    generic: np.ndarray
    labels: np.ndarray
    fetch: Callable[[str], np.ndarray]
    extraction_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    generic_name: str = "generic"
    all_models_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def _manifest_seconds(manifest: dict) -> float | None:
    seconds = (manifest.get("extraction") or {}).get("seconds")
    return None if seconds is None else float(seconds)


def from_store(store, dataset: str, model_names: Sequence[str], *, split: str = "train",
               generic_model: str = "generic") -> TaskFeatures:
    """A task of a feature store; labels of fetched PTMs must equal the generic entry's."""
    from mspider_jax.spider import inference

    entry = store.read(dataset, split, generic_model)
    labels = np.asarray(entry.labels)
    task = TaskFeatures(f"{dataset}/{split}", np.asarray(entry.features), labels,
                        inference.store_fetcher(store, dataset, split, labels),
                        generic_name=generic_model)
    seconds = _manifest_seconds(store.manifest(dataset, split, generic_model))
    if seconds is not None:
        task.extraction_seconds[generic_model] = seconds
    recorded = {}
    for model in model_names:
        if store.has(dataset, split, model):
            value = _manifest_seconds(store.manifest(dataset, split, model))
            if value is not None:
                recorded[model] = value
    if len(recorded) == len(model_names):
        task.all_models_seconds = recorded
    fetch = task.fetch

    def fetch_and_record(model: str) -> np.ndarray:
        features = fetch(model)
        if model in recorded:
            task.extraction_seconds[model] = recorded[model]
        return features

    task.fetch = fetch_and_record
    return task


def from_feature_npz(path: str | os.PathLike) -> TaskFeatures:
    """An .npz of precomputed features (see the module docstring)."""
    path = pathlib.Path(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    generic_key = next((key for key in GENERIC_KEYS if key in arrays), None)
    if generic_key is None or "labels" not in arrays:
        raise ValueError(f"{path}: a feature .npz needs 'labels' and one of {GENERIC_KEYS} (the "
                         f"generic encoder's features); it has {sorted(arrays)}")
    labels = arrays["labels"]
    per_model = {key[len(MODEL_PREFIX):]: value for key, value in arrays.items()
                 if key.startswith(MODEL_PREFIX)}

    def fetch(model: str) -> np.ndarray:
        if model not in per_model:
            raise ValueError(f"{path}: stage 2 needs the features of {model!r} (array "
                             f"'{MODEL_PREFIX}{model}'); the file has "
                             f"{sorted(per_model) or 'none'}. Add them, or rank with --rerank-k 0")
        return per_model[model]

    return TaskFeatures(str(path), arrays[generic_key], labels, fetch)


def is_feature_npz(path: str | os.PathLike) -> bool:
    """True for an .npz of precomputed features (no `images` array)."""
    with np.load(path, allow_pickle=False) as data:
        return "images" not in data.files


def _fingerprint(source) -> str:
    """16 hex digits identifying the source's content (its files, or a tfds name/version)."""
    digest = hashlib.sha256(f"{source.kind}|{source.name}|{source.split}|{source.version}".encode())
    location = pathlib.Path(source.location) if source.location else None
    if source.kind == "npz" and location is not None and location.is_file():
        with open(location, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    elif source.kind == "folder" and location is not None and location.is_dir():
        for file in sorted(p for p in location.rglob("*") if p.is_file()):
            stat = file.stat()
            digest.update(f"{file.relative_to(location)}|{stat.st_size}|{stat.st_mtime_ns}"
                          .encode())
    return digest.hexdigest()[:16]


def zoo_entries(zoo: str, model_names: Sequence[str], generic: str | None = None):
    """(generic encoder entry, {model: entry}) of a converters zoo for a ranker's model names.

    Args:
      zoo: a `converters.zoo.get_zoo` name ("minizoo", "single_source", "package.module:fn", ...).
      generic: the generic encoder: a `converters.zoo.get_model` name; default the mini zoo's own
        encoder for "minizoo", else `converters.zoo.generic_encoder()` (swin_b).
    """
    try:
        from converters import zoo as zoo_lib
    except ImportError as err:
        raise ImportError("extracting features from images needs PyTorch (pip install "
                          "'mspider-jax[torch]'); or give precomputed features") from err
    entries = {entry.name: entry for entry in zoo_lib.get_zoo(zoo)}
    missing = [m for m in model_names if m not in entries]
    if missing:
        raise ValueError(f"zoo {zoo!r} has no models {missing} of the ranker; give the zoo the "
                         "ranker was trained for (--zoo)")
    if generic in (None, "", "generic") and zoo == "minizoo":
        from converters.minizoo import zoo as minizoo_zoo

        generic_entry = minizoo_zoo.generic_entry()
    elif generic in (None, "", "generic"):
        generic_entry = zoo_lib.generic_encoder()
    else:
        generic_entry = zoo_lib.get_model(generic)
    return generic_entry, {m: entries[m] for m in model_names}


def from_images(spec: str, model_names: Sequence[str], *, zoo: str, split: str = "train",
                generic: str | None = None, cache: str | os.PathLike | None = None,
                batch_size: int = 128, device: str | None = None, offline: bool | None = None,
                progress: bool = True) -> TaskFeatures:
    """An image dataset (`converters.extract.open_dataset` spec); features extracted on demand.

    The generic encoder runs now; `fetch(model)` runs that PTM when stage 2 asks for it. Both go
    through a cache feature store (`cache`, default `default_feature_cache()`).
    """
    generic_entry, entries = zoo_entries(zoo, model_names, generic)
    import torch

    from converters import extract

    torch.set_flush_denormal(True)  # small CPU models run 10-50x faster without denormals
    from mspider_jax.features import FeatureStore

    source = extract.open_dataset(spec, split)
    store = FeatureStore(default_feature_cache() if cache is None else cache)
    dataset = f"{source.name}@{_fingerprint(source)}"
    seconds: dict[str, float] = {}

    def extract_one(entry) -> np.ndarray:
        start = time.perf_counter()
        (result,) = extract.extract_to_store([entry], source, store, dataset_name=dataset,
                                             batch_size=batch_size, device=device,
                                             offline=offline, progress=progress)
        manifest = store.manifest(dataset, source.split, entry.name)
        recorded = _manifest_seconds(manifest)
        seconds[entry.name] = (recorded if result.status == "skipped" and recorded is not None
                               else time.perf_counter() - start)
        return np.asarray(store.read(dataset, source.split, entry.name).features)

    generic_features = extract_one(generic_entry)
    labels = np.asarray(store.read(dataset, source.split, generic_entry.name).labels)

    def fetch(model: str) -> np.ndarray:
        features = extract_one(entries[model])
        stored = np.asarray(store.read(dataset, source.split, model).labels)
        if not np.array_equal(stored, labels):
            raise ValueError(f"{dataset}: the labels extracted with {model} differ from the "
                             "generic encoder's")
        return features

    return TaskFeatures(f"{spec} ({len(labels)} images)", generic_features, labels, fetch,
                        seconds, generic_entry.name)


def open_task(spec: str, model_names: Sequence[str], *, zoo: str = "", split: str = "train",
              generic: str | None = None, cache: str | os.PathLike | None = None,
              offline: bool | None = None, progress: bool = True) -> TaskFeatures:
    """A task given as "folder:PATH", "tfds:NAME", "npz:PATH", an image folder or an .npz file.

    An .npz without `images` is read as precomputed features (`from_feature_npz`); everything else
    is an image dataset (`from_images`, which needs `zoo`).
    """
    kind, _, rest = spec.partition(":")
    npz_path = rest if kind == "npz" else spec
    if (kind == "npz" or spec.endswith(".npz")) and pathlib.Path(npz_path).is_file() \
            and is_feature_npz(npz_path):
        return from_feature_npz(npz_path)
    if not zoo:
        raise ValueError(f"ranking images ({spec}) needs the zoo to extract features with; the "
                         "ranker's config names none: give --zoo")
    return from_images(spec, model_names, zoo=zoo, split=split, generic=generic, cache=cache,
                       offline=offline, progress=progress)


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    """What ranking paid versus scoring every PTM with a transferability metric.

    forward_passes / metric_forward_passes: networks run over the task's data (k + 1 vs M).
    seconds: extraction seconds of the networks run (None if unknown).
    metric_seconds: extraction seconds of every PTM (recorded, or the run PTMs' mean times M; None
      if unknown). estimated: True when metric_seconds is extrapolated.
    """

    forward_passes: int
    metric_forward_passes: int
    seconds: float | None
    metric_seconds: float | None
    estimated: bool

    @property
    def saved_fraction(self) -> float | None:
        if self.seconds is None or not self.metric_seconds:
            return None
        return 1.0 - self.seconds / self.metric_seconds

    def describe(self) -> str:
        """One line on the extraction time saved ("" when the times are unknown)."""
        if self.seconds is None or self.metric_seconds is None:
            return ""
        how = "estimated" if self.estimated else "recorded"
        return (f"feature extraction: {self.seconds:.1f} s for these {self.forward_passes} "
                f"networks vs {self.metric_seconds:.1f} s ({how}) for all "
                f"{self.metric_forward_passes} PTMs: {100 * self.saved_fraction:.0f}% saved")


def estimate_cost(task: TaskFeatures, ranking) -> CostEstimate:
    """The cost of `ranking` (a `rank.Ranking` of `task`) against scoring every PTM."""
    reranked = [ranking.model_names[m] for m in ranking.enriched]
    run = [task.generic_name, *reranked]
    known = [task.extraction_seconds.get(name) for name in run]
    seconds = None if any(value is None for value in known) else float(sum(known))
    metric_seconds, estimated = None, False
    if task.all_models_seconds:
        metric_seconds = float(sum(task.all_models_seconds.values()))
    elif seconds is not None and reranked:
        per_model = np.mean([task.extraction_seconds[name] for name in reranked])
        metric_seconds, estimated = float(per_model * len(ranking.model_names)), True
    return CostEstimate(ranking.forward_passes, ranking.metric_forward_passes, seconds,
                        metric_seconds, estimated)
