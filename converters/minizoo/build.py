"""Builds the offline mini zoo: data -> PTMs -> generic encoder -> features -> ground truth -> artifact.

Issue 11 / specs/model_spider.md §1-2: a multi-source zoo (architectures x source domains) at laptop
scale, with measured fine-tuning ground truth on held-out targets (3 seeds) and on the ranker's
training tasks (1 seed), a linear-probe label beside it, and the training tasks' class prototypes.

Every stage caches its items in the work directory and skips the ones already there, so an interrupted
build resumes where it stopped (an item is one file, written atomically). Work directory layout:

  config.json                        the config of the build (a later run must use the same one)
  data/sources/<domain>_{train,test}.npz     pretraining data (ImageSet arrays)
  data/targets/<target>_{train,test}.npz     held-out targets
  data/tasks/<task>.npz + tasks.json         training tasks (train_*/test_* arrays; class list)
  models/<model>.npz, <model>.json   float16 weights + metadata (source test accuracy, time)
  store/                             FeatureStore: every (dataset, split, model) of targets and tasks,
                                     models = the zoo + "generic" (dataset mz_<target>, mz_task<k>)
  probes/<dataset>.json              linear-probe accuracy of every model
  finetune/<dataset>/<model>_seed<k>.json    fine-tuning test accuracy
  timings.json                       seconds spent per stage (summed over resumed runs)
  artifact/                          what is shipped, copied to the output directory at the end

Seeds are derived from names (sha256 of "<config seed>/<purpose>/<names>"), so an item's result does
not depend on which other items exist or on the order they run in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

log = logging.getLogger("minizoo")

ARTIFACT_FORMAT = 1
GENERIC = "generic"
TARGET_PREFIX = "mz_"
TASK_PREFIX = "mz_task"
STAGES = ("data", "pretrain", "generic", "features", "probes", "finetune_targets", "finetune_tasks",
          "prototypes", "package")


# ----------------------------------------------------------------------------------------------
# Small helpers: atomic writes, config, progress.


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; shipped files must be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: pathlib.Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def atomic_save_npz(path: pathlib.Path, compress: bool = True, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (worker processes)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def config_to_dict(config) -> dict:
    """A ConfigDict (or dict) as plain JSON-able Python (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config,
                                 default=list))


def _progress(items: Iterable, desc: str, total: int | None = None):
    from tqdm.auto import tqdm

    # A log file (nohup) gets a line every ~30 s; a terminal gets the usual live bar.
    interval = 0.5 if sys.stderr.isatty() else 30.0
    return tqdm(items, desc=desc, total=total, mininterval=interval, maxinterval=interval * 4,
                smoothing=0.05, dynamic_ncols=True)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One PTM of the zoo."""

    name: str
    arch: str
    source: str


def zoo_models(config) -> list[ModelSpec]:
    """The zoo in canonical order: by source (config order), then architecture (config order)."""
    return [ModelSpec(f"{arch}_{source}", arch, source)
            for source in config.sources for arch in config.architectures]


def target_dataset(target: str) -> str:
    return f"{TARGET_PREFIX}{target}"


def task_domain_groups(tasks) -> list[tuple[str, ...]]:
    """The groups a training task draws its 1..max_domains domains from (one domain per group).

    Without `tasks.domain_groups` every domain is its own group. With groups, a family of similar
    domains (the unused scripts, say) is drawn as often as one source domain, so that every
    pretraining source is the best fit of a fair share of the tasks.
    """
    groups = [tuple(g) for g in tasks.get("domain_groups", ())] or [(d,) for d in tasks.domains]
    grouped = [d for g in groups for d in g]
    if sorted(grouped) != sorted(tasks.domains):
        raise ValueError(f"tasks.domain_groups must partition tasks.domains; groups hold {grouped}, "
                         f"domains are {list(tasks.domains)}")
    return groups


def task_dataset(index: int) -> str:
    return f"{TASK_PREFIX}{index:03d}"


# ----------------------------------------------------------------------------------------------
# The builder.


class Builder:
    """Runs the stages of one mini-zoo build in `workdir` and writes the artifact to `output`."""

    def __init__(self, config, workdir: str | os.PathLike, output: str | os.PathLike,
                 allow_config_change: bool = False, check_config: bool = True):
        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.output = pathlib.Path(output)
        self.models = zoo_models(config)
        if check_config:
            self._check_config(allow_config_change)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _check_config(self, allow_change: bool) -> None:
        path = self.workdir / "config.json"
        current = config_to_dict(self.config)
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != current:
                differing = sorted(k for k in set(previous) | set(current)
                                   if previous.get(k) != current.get(k))
                if not allow_change:
                    raise ValueError(
                        f"{self.workdir} was built with another config (differs in {differing}); use "
                        "a new --workdir, or delete the affected stage folders and pass "
                        "--allow_config_change")
                log.warning("config differs in %s; continuing (--allow_config_change)", differing)
        atomic_write_json(path, current)

    def seed(self, *parts: object) -> int:
        from converters.minizoo.datasets import derive_seed

        return derive_seed(self.config.seed, *parts)

    def _add_time(self, stage: str, wall: float, cpu: float) -> None:
        """Accumulates a stage's wall-clock and process CPU seconds (all threads) in timings.json;
        CPU time does not depend on what else runs on the machine."""
        path = self.workdir / "timings.json"
        timings = json.loads(path.read_text()) if path.exists() else {}
        if timings and "wall" not in timings:  # first format: {stage: wall seconds}
            timings = dict(wall=timings, cpu={})
        timings.setdefault("wall", {})
        timings.setdefault("cpu", {})
        # A stage whose earlier runs predate the CPU accounting keeps "n/a": a partial sum would lie.
        if stage in timings["cpu"] or stage not in timings["wall"]:
            timings["cpu"][stage] = round(timings["cpu"].get(stage, 0.0) + cpu, 1)
        timings["wall"][stage] = round(timings["wall"].get(stage, 0.0) + wall, 1)
        atomic_write_json(path, timings)

    def run(self, stages: Sequence[str] = STAGES) -> pathlib.Path:
        """Runs the given stages in order (each skips its finished items); returns the output folder."""
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; known: {STAGES}")
        from converters.minizoo import train

        train.configure_torch(self.config.threads)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for stage in STAGES:
            if stage not in stages:
                continue
            start, cpu_start = time.time(), cpu_seconds()
            log.info("=== stage %s ===", stage)
            try:
                getattr(self, f"stage_{stage}")()
            finally:  # an interrupted stage's time counts too (its finished items are kept)
                elapsed, cpu = time.time() - start, cpu_seconds() - cpu_start
                self._add_time(stage, elapsed, cpu)
            log.info("=== stage %s done in %.0f s (CPU %.0f s) ===", stage, elapsed, cpu)
        return self.output

    def _items(self, stage: str, items: Sequence, done: Callable[[Any], bool],
               work: Callable[[Any], None]) -> None:
        todo = [item for item in items if not done(item)]
        log.info("%s: %d items, %d already done, %d to do", stage, len(items), len(items) - len(todo),
                 len(todo))
        for item in _progress(todo, stage):
            work(item)

    # -- data ----------------------------------------------------------------------------------

    def _data_path(self, kind: str, name: str) -> pathlib.Path:
        return self.workdir / "data" / kind / f"{name}.npz"

    def load_set(self, kind: str, name: str):
        from converters.minizoo.datasets import ImageSet

        with np.load(self._data_path(kind, name)) as arrays:
            return ImageSet.from_arrays(arrays)

    def _save_set(self, kind: str, name: str, image_set) -> None:
        atomic_save_npz(self._data_path(kind, name), **image_set.to_arrays())

    def stage_data(self) -> None:
        from converters.minizoo import datasets

        config = self.config

        def source_done(name):
            return self._data_path("sources", f"{name}_test").exists()

        def make_source(name):
            full = datasets.build_domain(name, config.sources[name], self.seed("source", name))
            train, test = full.split(config.source_test_fraction, self.seed("source_split", name))
            self._save_set("sources", f"{name}_train", train)
            self._save_set("sources", f"{name}_test", test)

        self._items("data/sources", list(config.sources), source_done, make_source)

        def target_done(name):
            return self._data_path("targets", f"{name}_test").exists()

        def make_target(name):
            full = datasets.build_domain(name, config.targets[name], self.seed("target", name))
            train, test = full.split(config.target_test_fraction, self.seed("target_split", name))
            if len(train) > config.target_train_size:  # extra images go to the test split
                extra = train.take(np.arange(config.target_train_size, len(train)))
                test = datasets.ImageSet(np.concatenate([test.images, extra.images]),
                                         np.concatenate([test.labels, extra.labels]),
                                         test.class_names, test.grayscale)
                train = train.take(np.arange(config.target_train_size))
            self._save_set("targets", f"{name}_train", train)
            self._save_set("targets", f"{name}_test", test)

        self._items("data/targets", list(config.targets), target_done, make_target)
        self._make_tasks()

    def _make_tasks(self) -> None:
        """Samples the training tasks (class subsets of 1..max_domains domains) from per-domain pools."""
        from converters.minizoo import datasets

        tasks = self.config.tasks
        spec_path = self.workdir / "data" / "tasks.json"
        per_class = tasks.train_per_class + tasks.test_per_class

        def pool_done(domain):
            return self._data_path("pools", domain).exists()

        def make_pool(domain):
            pool = datasets.build_domain(domain, per_class, self.seed("task_pool", domain))
            keep = list(range(min(pool.num_classes, tasks.max_classes_per_domain)))
            self._save_set("pools", domain, pool.select_classes(keep))

        self._items("data/task_pools", list(tasks.domains), pool_done, make_pool)
        if not spec_path.exists():
            pool_classes = {d: self.load_set("pools", d).class_names for d in tasks.domains}
            rng = np.random.default_rng(self.seed("task_sampling"))
            specs = []
            groups = task_domain_groups(tasks)
            for index in range(tasks.num_tasks):
                num_groups = int(rng.integers(1, min(tasks.max_domains, len(groups)) + 1))
                chosen_groups = sorted(rng.choice(len(groups), num_groups, replace=False).tolist())
                # A group of one domain draws no number, so without groups the sampling (and every
                # task of an artifact built before groups existed) is unchanged.
                domains = [groups[g][int(rng.integers(len(groups[g])))] if len(groups[g]) > 1
                           else groups[g][0] for g in chosen_groups]
                candidates = [(d, c) for d in domains for c in range(len(pool_classes[d]))]
                num_classes = int(rng.integers(tasks.min_classes, tasks.max_classes + 1))
                num_classes = min(num_classes, len(candidates))
                chosen = sorted(rng.choice(len(candidates), num_classes, replace=False).tolist())
                specs.append(dict(name=task_dataset(index),
                                  classes=[[candidates[i][0], pool_classes[candidates[i][0]][
                                      candidates[i][1]], candidates[i][1]] for i in chosen]))
            atomic_write_json(spec_path, specs)
        specs = json.loads(spec_path.read_text())

        def task_done(spec):
            return self._data_path("tasks", spec["name"]).exists()

        pools: dict[str, Any] = {}

        def make_task(spec):
            images, labels, grayscale = [], [], []
            for label, (domain, _, class_index) in enumerate(spec["classes"]):
                if domain not in pools:
                    pools[domain] = self.load_set("pools", domain)
                part = pools[domain].select_classes([class_index])
                images.append(part.images)
                labels.append(np.full(len(part), label))
                grayscale.append(part.grayscale)
            names = [f"{domain}:{name}" for domain, name, _ in spec["classes"]]
            full = datasets.ImageSet(np.concatenate(images), np.concatenate(labels), names,
                                     all(grayscale))
            test_fraction = tasks.test_per_class / per_class
            train, test = full.split(test_fraction, self.seed("task_split", spec["name"]))
            atomic_save_npz(self._data_path("tasks", spec["name"]),
                            **{f"train_{k}": v for k, v in train.to_arrays().items()},
                            **{f"test_{k}": v for k, v in test.to_arrays().items()})

        self._items("data/tasks", specs, task_done, make_task)

    def task_specs(self) -> list[dict]:
        return json.loads((self.workdir / "data" / "tasks.json").read_text())

    def load_task(self, name: str):
        from converters.minizoo.datasets import ImageSet

        with np.load(self._data_path("tasks", name)) as arrays:
            split = lambda prefix: ImageSet.from_arrays(  # noqa: E731
                {k[len(prefix):]: arrays[k] for k in arrays.files if k.startswith(prefix)})
            return split("train_"), split("test_")

    # -- models --------------------------------------------------------------------------------

    def _model_path(self, name: str, suffix: str = ".npz") -> pathlib.Path:
        return self.workdir / "models" / f"{name}{suffix}"

    def model_info(self, name: str) -> dict:
        return json.loads(self._model_path(name, ".json").read_text())

    def load_model(self, name: str):
        """The model `name` (a PTM or the generic encoder) from its float16 weights, eval mode."""
        from converters.minizoo import train

        info = self.model_info(name)
        with np.load(self._model_path(name)) as arrays:
            return train.load_float16_state(info["arch"], info["num_classes"], dict(arrays))

    def _train_and_save(self, name: str, arch: str, train_set, test_set, schedule, extra: dict) -> None:
        from converters.minizoo import architectures, train

        start = time.time()
        model = train.pretrain(arch, train_set.num_classes, train_set.images, train_set.labels,
                               train.TrainConfig(**schedule), self.seed("pretrain", name))
        arrays = train.state_dict_float16(model)
        # Everything downstream uses the rounded weights, exactly what is shipped.
        model = train.load_float16_state(arch, train_set.num_classes, arrays)
        test_accuracy = train.accuracy(model, test_set.images, test_set.labels)
        atomic_save_npz(self._model_path(name), compress=False, **arrays)
        info = dict(name=name, arch=arch, num_classes=train_set.num_classes,
                    class_names=train_set.class_names, feature_dim=architectures.feature_dim(model),
                    num_parameters=architectures.num_parameters(model), num_train=len(train_set),
                    num_test=len(test_set), source_test_accuracy=round(test_accuracy, 2),
                    chance_accuracy=round(100.0 * np.bincount(test_set.labels).max() / len(test_set), 2),
                    seconds=round(time.time() - start, 1), **extra)
        atomic_write_json(self._model_path(name, ".json"), info)
        log.info("%s: source test accuracy %.1f%% (chance %.1f%%) in %.0f s", name, test_accuracy,
                 info["chance_accuracy"], info["seconds"])

    def stage_pretrain(self) -> None:
        def work(spec: ModelSpec):
            self._train_and_save(spec.name, spec.arch, self.load_set("sources", f"{spec.source}_train"),
                                 self.load_set("sources", f"{spec.source}_test"),
                                 config_to_dict(self.config.pretrain), dict(source=spec.source))

        self._items("pretrain", self.models, lambda s: self._model_path(s.name, ".json").exists(), work)

    def stage_generic(self) -> None:
        from converters.minizoo import datasets

        def work(_):
            sources = list(self.config.sources)
            train_set = datasets.concatenate([self.load_set("sources", f"{s}_train") for s in sources],
                                             sources)
            test_set = datasets.concatenate([self.load_set("sources", f"{s}_test") for s in sources],
                                            sources)
            self._train_and_save(GENERIC, self.config.generic.architecture, train_set, test_set,
                                 config_to_dict(self.config.generic.schedule), dict(source="union"))

        self._items("generic", [GENERIC], lambda _: self._model_path(GENERIC, ".json").exists(), work)

    # -- features, probes ----------------------------------------------------------------------

    def store(self):
        from mspider_jax.features import FeatureStore

        return FeatureStore(self.workdir / "store")

    def datasets_and_splits(self) -> list[tuple[str, Callable[[], tuple[Any, Any]]]]:
        """(store dataset name, loader of (train, test)) for every target and training task."""
        out = [(target_dataset(t), (lambda t=t: (self.load_set("targets", f"{t}_train"),
                                                 self.load_set("targets", f"{t}_test"))))
               for t in self.config.targets]
        out += [(spec["name"], (lambda n=spec["name"]: self.load_task(n))) for spec in self.task_specs()]
        return out

    def model_names(self, with_generic: bool = True) -> list[str]:
        return [m.name for m in self.models] + ([GENERIC] if with_generic else [])

    def stage_features(self) -> None:
        from converters.minizoo import train

        store = self.store()
        names = self.model_names()

        def done(model_name):
            return all(store.has(d, s, model_name) for d, _ in self.datasets_and_splits()
                       for s in ("train", "test"))

        def work(model_name):
            model = self.load_model(model_name)
            info = self.model_info(model_name)
            provenance = dict(architecture=f"minizoo:{info['arch']}", weights=f"minizoo:{model_name}",
                              weights_sha256=sha256_of(self._model_path(model_name)),
                              layer="final Linear input", preprocessing=PREPROCESSING)
            for dataset, loader in self.datasets_and_splits():
                if store.has(dataset, "train", model_name) and store.has(dataset, "test", model_name):
                    continue
                for split, image_set in zip(("train", "test"), loader()):
                    features, logits = train.predict(model, image_set.images)
                    store.write(dataset, split, model_name, features=features, labels=image_set.labels,
                                logits=logits, provenance=dict(provenance,
                                                               class_names=image_set.class_names),
                                overwrite=True)

        self._items("features", names, done, work)

    def stage_probes(self) -> None:
        from converters.minizoo import train

        store = self.store()
        names = self.model_names(with_generic=False)

        def work(item):
            dataset, _ = item
            result = {}
            for name in names:
                tr, te = store.read(dataset, "train", name), store.read(dataset, "test", name)
                result[name] = round(train.linear_probe(
                    np.asarray(tr.features), np.asarray(tr.labels), np.asarray(te.features),
                    np.asarray(te.labels), self.config.probe_regularization), 2)
            atomic_write_json(self.workdir / "probes" / f"{dataset}.json", result)

        self._items("probes", self.datasets_and_splits(),
                    lambda item: (self.workdir / "probes" / f"{item[0]}.json").exists(), work)

    # -- fine-tuning ---------------------------------------------------------------------------

    def _finetune_path(self, dataset: str, model: str, seed: int) -> pathlib.Path:
        return self.workdir / "finetune" / dataset / f"{model}_seed{seed}.json"

    def load_splits(self, dataset: str):
        """(train, test) ImageSets of a store dataset name (mz_<target> or mz_task<k>)."""
        if dataset.startswith(TASK_PREFIX):
            return self.load_task(dataset)
        target = dataset[len(TARGET_PREFIX):]
        return self.load_set("targets", f"{target}_train"), self.load_set("targets", f"{target}_test")

    def finetune_one(self, dataset: str, model_name: str, seed: int, schedule: dict,
                     cache: dict[str, Any]) -> None:
        """Fine-tunes one PTM on one dataset with one seed and writes the accuracy (one item).

        `cache` keeps the current dataset and the loaded PTM states between calls (items come grouped
        by dataset)."""
        from converters.minizoo import train

        if cache.get("dataset") != dataset:
            cache.clear()
            cache.update(dataset=dataset, data=self.load_splits(dataset))
        if model_name not in cache:
            info = self.model_info(model_name)
            with np.load(self._model_path(model_name)) as arrays:
                state = train.load_float16_state(info["arch"], info["num_classes"],
                                                 dict(arrays)).state_dict()
            cache[model_name] = (info, state)
        info, state = cache[model_name]
        train_set, test_set = cache["data"]
        start = time.time()
        accuracy = train.finetune(info["arch"], state, info["num_classes"], train_set.images,
                                  train_set.labels, test_set.images, test_set.labels,
                                  train.TrainConfig(**schedule),
                                  self.seed("finetune", dataset, model_name, seed))
        atomic_write_json(self._finetune_path(dataset, model_name, seed),
                          dict(accuracy=round(accuracy, 3), seconds=round(time.time() - start, 2)))

    def _finetune_items(self, datasets: Sequence[str], seeds: int, schedule) -> None:
        schedule = config_to_dict(schedule)
        # Seed-major: after the first pass every dataset has one complete ranking.
        items = [(d, m, s) for s in range(seeds) for d in datasets for m in self.model_names(False)]
        todo = [item for item in items if not self._finetune_path(*item).exists()]
        workers = self.config.finetune_workers
        log.info("finetune: %d items, %d already done, %d to do (%d worker process(es))", len(items),
                 len(items) - len(todo), len(todo), workers)
        if workers <= 1:
            cache: dict[str, Any] = {}
            for item in _progress(todo, "finetune"):
                self.finetune_one(*item, schedule, cache)
            return
        # Independent single-threaded workers keep both cores busy; one process with two threads
        # idles one of them during the Python parts of these small trainings.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_finetune_worker,
                          initargs=(self.config, str(self.workdir), str(self.output))) as pool:
            jobs = pool.imap_unordered(_finetune_worker_item, [(*item, schedule) for item in todo],
                                       chunksize=8)
            for _ in _progress(jobs, "finetune", total=len(todo)):
                pass

    def stage_finetune_targets(self) -> None:
        self._finetune_items([target_dataset(t) for t in self.config.targets],
                             self.config.finetune_seeds, self.config.finetune)

    def stage_finetune_tasks(self) -> None:
        self._finetune_items([spec["name"] for spec in self.task_specs()], self.config.tasks.seeds,
                             self.config.tasks.finetune)

    # -- results -------------------------------------------------------------------------------

    def ground_truth(self, kind: str) -> list[dict]:
        """Long-format records of one kind ("targets" or "training"), in dataset then zoo order."""
        if kind == "targets":
            datasets, seeds = [target_dataset(t) for t in self.config.targets], self.config.finetune_seeds
        else:
            datasets, seeds = [s["name"] for s in self.task_specs()], self.config.tasks.seeds
        records = []
        for dataset in datasets:
            probes = json.loads((self.workdir / "probes" / f"{dataset}.json").read_text())
            for model in self.model_names(with_generic=False):
                values = [json.loads(self._finetune_path(dataset, model, s).read_text())["accuracy"]
                          for s in range(seeds)]
                records.append(dict(dataset=dataset, model=model,
                                    accuracy=round(float(np.mean(values)), 3),
                                    accuracy_std=round(float(np.std(values, ddof=1)), 3)
                                    if seeds > 1 else "",
                                    num_seeds=seeds, seed_accuracies=";".join(f"{v:.3f}" for v in values),
                                    linear_probe=probes[model]))
        return records

    def stage_prototypes(self) -> None:
        self._source_prototypes()
        self._training_bank()

    def _source_prototypes(self) -> None:
        """artifact/source_prototypes.npz: {source: [S, Dg] float32}, the generic encoder's class
        prototypes of each pretraining source's training split (read by the optional source-affinity
        prior, `mspider_jax.spider.source_affinity`; the classes are the source's, in label order)."""
        from converters.minizoo import train
        from mspider_jax.spider.prototypes import class_prototypes

        path = self.workdir / "artifact" / "source_prototypes.npz"
        if path.exists():
            log.info("prototypes: %s exists, skipped", path)
            return
        model = self.load_model(GENERIC)
        prototypes = {}
        for source in _progress(list(self.config.sources), "source prototypes"):
            image_set = self.load_set("sources", f"{source}_train")
            features, _ = train.predict(model, image_set.images)
            prototypes[source] = class_prototypes(features, image_set.labels)[0].astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_npz(path, **prototypes)

    def _training_bank(self) -> None:
        from mspider_jax.spider.prototypes import TaskPrototypes, class_prototypes, save_prototype_bank

        path = self.workdir / "artifact" / "training_tasks.npz"
        if path.exists():
            log.info("prototypes: %s exists, skipped", path)
            return
        store = self.store()
        tasks = []
        for spec in _progress(self.task_specs(), "prototypes"):
            name = spec["name"]
            generic = store.read(name, "train", GENERIC)
            protos, counts = class_prototypes(generic.features, np.asarray(generic.labels),
                                              len(spec["classes"]))
            per_model = {}
            for model in self.model_names(with_generic=False):
                entry = store.read(name, "train", model)
                per_model[model] = class_prototypes(entry.features, np.asarray(entry.labels),
                                                    len(spec["classes"]))[0]
            tasks.append(TaskPrototypes(name, protos, counts, per_model))
        save_prototype_bank(path, tasks)

    def stage_package(self) -> None:
        from converters.minizoo import package

        package.write_artifact(self)


# Fine-tuning worker processes (module level so that "spawn" can import them).
_WORKER: dict[str, Any] = {}


def _init_finetune_worker(config, workdir: str, output: str) -> None:
    from converters.minizoo import train

    train.configure_torch(threads=1)
    _WORKER["builder"] = Builder(config, workdir, output, check_config=False)
    _WORKER["cache"] = {}


def _finetune_worker_item(item: tuple) -> tuple:
    dataset, model_name, seed, schedule = item
    _WORKER["builder"].finetune_one(dataset, model_name, seed, schedule, _WORKER["cache"])
    return item


# The input convention of every mini-zoo model (also recorded in the store and the manifest).
PREPROCESSING = dict(name="square", image_size=32, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])


def build(config, workdir: str | os.PathLike, output: str | os.PathLike,
          stages: Sequence[str] = STAGES, allow_config_change: bool = False) -> pathlib.Path:
    """Builds (or resumes) the mini zoo described by `config`; returns the output folder."""
    return Builder(config, workdir, output, allow_config_change).run(stages)
