"""Runs zoo models once over a dataset and writes their features into the feature store.

Model Spider (Zhang et al., NeurIPS 2023; specs/model_spider.md §1) and the transferability metrics
consume, per model, the INPUT of its final classifier ("features", read with a forward hook) and its
OUTPUT ("logits"). This module produces them:

  source = open_dataset("tfds:cifar10", "train")          # or "folder:PATH", "npz:PATH"
  extract_to_store(get_zoo("single_source"), source, FeatureStore("store/"), ways=10, shots=50)

Conventions:
  * Images are uint8 RGB [H, W, 3] (grayscale [H, W] or [H, W, 1] is replicated to 3 channels,
    an alpha channel is dropped); each model's `Preprocessing` resizes them (bilinear, antialiased,
    on [0, 1] floats) and normalises with its mean/std.
  * Class/shot subsampling (`select_examples`) is deterministic in (labels, ways, shots, seed):
    `ways` classes drawn without replacement, then at most `shots` examples per class, kept in
    dataset order. With `ways`, labels are renumbered 0..ways-1 in increasing original class id
    and the manifest's `class_subset` maps them back (label i = class_subset[i]).
  * Extraction runs in float32 on CUDA when available. Entries already complete in the store are
    skipped (resume) after checking that they were made with the same settings; `shard=(i, n)` keeps
    models i, i+n, i+2n, ... of the zoo so that n machines share a zoo.

Command line: `mspider extract ...` or `python converters/extract.py ...` (same flags, see
converters/extract_cli.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

if __name__ == "__main__" and not __package__:  # `python converters/extract.py`: find the package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from converters.zoo import ModelEntry, Preprocessing  # noqa: E402
from mspider_jax.features import FeatureStore  # noqa: E402

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# --------------------------------------------------------------------------------------------------
# Dataset sources


class DatasetSource:
    """Random access to (image, label) pairs of one split.

    Attributes:
      name: the dataset's name in the store (e.g. "tfds:cifar10").
      split: split name.
      version: dataset version when known.
      kind: "tfds", "folder" or "npz".
      location: where it was read from.
      class_names: names of the classes when known.
    """

    name: str
    split: str
    version: str | None = None
    kind: str = ""
    location: str = ""
    class_names: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def example(self, index: int) -> tuple[np.ndarray, Any]:
        """(image uint8 [H, W, C] or [H, W], label) of example `index`."""
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        """[N] labels of every example (may read the whole split once)."""
        return np.asarray([self.example(i)[1] for i in range(len(self))])

    def provenance(self) -> dict[str, Any]:
        return {"dataset_version": self.version, "dataset_source": self.kind,
                "dataset_location": self.location}


class TfdsSource(DatasetSource):
    """A tensorflow-datasets split read with `tfds.data_source` (array_record; no TensorFlow)."""

    def __init__(self, tfds_name: str, split: str, *, data_dir: str | None = None,
                 image_key: str = "image", label_key: str = "label", download: bool = False):
        import tensorflow_datasets as tfds  # heavy; only needed for this source

        try:
            self._source = tfds.data_source(tfds_name, split=split, data_dir=data_dir,
                                            download=download)
        except Exception as err:  # noqa: BLE001 - tfds raises many types; all mean "not available"
            raise ValueError(
                f"cannot open tfds dataset {tfds_name!r} split {split!r} "
                f"({type(err).__name__}: {err}). tfds.data_source needs the dataset prepared in "
                f"array_record format, e.g. `tfds build {tfds_name} --file_format=array_record` "
                "(or pass --tfds-download)") from err
        self.name, self.split, self.kind = f"tfds:{tfds_name}", split, "tfds"
        self.image_key, self.label_key = image_key, label_key
        info = getattr(self._source, "dataset_info", None)
        self.version = str(info.version) if info is not None else None
        self.location = str(getattr(info, "data_dir", "")) if info is not None else ""
        has_label = info is not None and label_key in info.features
        label_feature = info.features[label_key] if has_label else None
        self.class_names = list(getattr(label_feature, "names", None) or []) or None

    def __len__(self) -> int:
        return len(self._source)

    def example(self, index: int) -> tuple[np.ndarray, Any]:
        record = self._source[int(index)]
        for key in (self.image_key, self.label_key):
            if key not in record:
                raise ValueError(f"{self.name}: examples have no {key!r} feature; they have "
                                 f"{sorted(record)} (use --image-key / --label-key)")
        return np.asarray(record[self.image_key]), record[self.label_key]


class FolderSource(DatasetSource):
    """Images in class sub-folders <root>/[<split>/]<class>/<image>; classes in sorted name order.
    """

    def __init__(self, root: str | os.PathLike, split: str):
        root = pathlib.Path(root).expanduser().resolve()
        if (root / split).is_dir():
            root = root / split
        if not root.is_dir():
            raise ValueError(f"image folder {root} does not exist")
        classes = sorted(p.name for p in root.iterdir()
                         if p.is_dir() and not p.name.startswith("."))
        self._files: list[pathlib.Path] = []
        labels = []
        for label, class_name in enumerate(classes):
            files = sorted(p for p in (root / class_name).rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            self._files.extend(files)
            labels.extend([label] * len(files))
        if not self._files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in class sub-folders of "
                             f"{root}")
        self._labels = np.asarray(labels, dtype=np.int64)
        base = root.parent.name if root.name == split else root.name
        self.name, self.split, self.kind = f"folder:{base}", split, "folder"
        self.location, self.class_names = str(root), classes

    def __len__(self) -> int:
        return len(self._files)

    def example(self, index: int) -> tuple[np.ndarray, Any]:
        from PIL import Image

        with Image.open(self._files[index]) as image:
            image = image.convert("L" if image.mode in ("L", "I", "I;16", "1") else "RGB")
            return np.asarray(image), self._labels[index]

    def labels(self) -> np.ndarray:
        return self._labels.copy()


class NpzSource(DatasetSource):
    """An .npz with `images` uint8 [N, H, W, 3] or [N, H, W] and `labels` [N] (int) or [N] / [N, K]
    (float, regression); optional `class_names` [C]."""

    def __init__(self, path: str | os.PathLike, split: str):
        path = pathlib.Path(path).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"npz file {path} does not exist")
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("images", "labels") if k not in data.files]
            if missing:
                raise ValueError(f"{path} lacks arrays {missing}; it has {data.files}")
            self._images, self._labels = data["images"], data["labels"]
            names = data["class_names"] if "class_names" in data.files else None
        if self._images.dtype != np.uint8 or self._images.ndim not in (3, 4):
            raise ValueError(f"{path}: images must be uint8 [N, H, W, 3] or [N, H, W], got "
                             f"{self._images.dtype} {self._images.shape}")
        if self._labels.shape[:1] != self._images.shape[:1]:
            raise ValueError(f"{path}: {len(self._labels)} labels for {len(self._images)} images")
        self.name, self.split, self.kind = f"npz:{path.stem}", split, "npz"
        self.location = str(path)
        self.class_names = [str(n) for n in names] if names is not None else None

    def __len__(self) -> int:
        return len(self._images)

    def example(self, index: int) -> tuple[np.ndarray, Any]:
        return self._images[index], self._labels[index]

    def labels(self) -> np.ndarray:
        return self._labels.copy()


def open_dataset(spec: str, split: str = "train", *, data_dir: str | None = None,
                 image_key: str = "image", label_key: str = "label",
                 tfds_download: bool = False) -> DatasetSource:
    """Opens "tfds:NAME[:VERSION]", "folder:PATH", "npz:PATH", or a PATH (folder or .npz)."""
    kind, _, rest = spec.partition(":")
    if kind == "tfds" and rest:
        return TfdsSource(rest, split, data_dir=data_dir, image_key=image_key, label_key=label_key,
                          download=tfds_download)
    if kind == "folder" and rest:
        return FolderSource(rest, split)
    if kind == "npz" and rest:
        return NpzSource(rest, split)
    path = pathlib.Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(path, split)
    if path.suffix == ".npz" and path.is_file():
        return NpzSource(path, split)
    raise ValueError(f"cannot open dataset {spec!r}: give tfds:NAME, folder:PATH, npz:PATH, an "
                     "image folder or an .npz file")


# --------------------------------------------------------------------------------------------------
# Class / shot subsampling


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which examples of a split are used.

    Attributes:
      indices: [n] increasing example indices into the source.
      class_subset: original class ids kept, in increasing order (new label i = class_subset[i]);
        None when no `ways` was asked for (labels are kept as they are).
      ways, shots, seed: the request.
    """

    indices: np.ndarray
    class_subset: list[int] | None
    ways: int | None
    shots: int | None
    seed: int

    def remap(self, labels: np.ndarray) -> np.ndarray:
        """Original labels of the selected examples -> stored labels."""
        if self.class_subset is None:
            return labels
        return np.searchsorted(np.asarray(self.class_subset), labels).astype(np.int64)

    def indices_sha256(self) -> str:
        data = np.ascontiguousarray(self.indices, dtype=np.int64).tobytes()
        return hashlib.sha256(data).hexdigest()

    def provenance(self) -> dict[str, Any]:
        return {"ways": self.ways, "shots": self.shots, "seed": self.seed,
                "num_selected": int(len(self.indices)), "indices_sha256": self.indices_sha256()}


def select_examples(labels: np.ndarray, *, ways: int | None = None, shots: int | None = None,
                    seed: int = 0) -> Selection:
    """Deterministic class (`ways`) and per-class (`shots`) subsampling; see the module docstring.

    Args:
      labels: [N] labels of the whole split.
      ways: number of classes to keep (all when None or >= the number of classes).
      shots: examples kept per class (all when None or when a class has fewer).
      seed: seed of the draw.
    """
    labels = np.asarray(labels)
    if ways is None and shots is None:
        return Selection(np.arange(len(labels)), None, None, None, seed)
    for name, value in (("ways", ways), ("shots", shots)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"ways/shots need integer class labels, got {labels.dtype} {labels.shape}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if ways is not None and ways < len(classes):
        classes = np.sort(rng.choice(classes, size=ways, replace=False))
    kept = []
    for cls in classes:
        members = np.flatnonzero(labels == cls)
        if shots is not None and shots < len(members):
            members = rng.choice(members, size=shots, replace=False)
        kept.append(members)
    indices = np.sort(np.concatenate(kept))
    class_subset = [int(c) for c in classes] if ways is not None else None
    return Selection(indices, class_subset, ways, shots, seed)


# --------------------------------------------------------------------------------------------------
# Preprocessing and the forward hook


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] from [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"images must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def preprocess_image(image: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
    """One image -> [3, S, S] float32 model input."""
    # np.array copies: torch warns about (and must not write into) read-only source arrays.
    x = torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1).float() / 255.0
    if preprocessing.name == "square":
        x = TF.resize(x, [preprocessing.image_size] * 2, antialias=True)
    else:  # "standard": shorter side to resize_size, centre crop
        x = TF.resize(x, preprocessing.resize_size, antialias=True)
        x = TF.center_crop(x, [preprocessing.image_size] * 2)
    return TF.normalize(x, list(preprocessing.mean), list(preprocessing.std))


class _Examples(torch.utils.data.Dataset):
    def __init__(self, source: DatasetSource, indices: np.ndarray, preprocessing: Preprocessing):
        self.source, self.indices, self.preprocessing = source, indices, preprocessing

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.source.example(int(self.indices[i]))
        return preprocess_image(image, self.preprocessing), np.asarray(label)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None -> cuda when available, else cpu."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def extract_features(model_entry: ModelEntry, source: DatasetSource, *,
                     indices: np.ndarray | None = None, batch_size: int = 64,
                     device: str | torch.device | None = None, model: torch.nn.Module | None = None,
                     random_weights: bool = False, offline: bool | None = None,
                     num_workers: int = 0, progress: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs one model over (a subset of) a dataset.

    Args:
      model_entry: the model (its preprocessing and feature layer).
      source: the dataset.
      indices: [n] examples to use (default: all, in order).
      model: an already built model (default: model_entry.build(...)).
      random_weights, offline: passed to `ModelEntry.build`.

    Returns:
      features [n, D] float32 (input of the final classifier), logits [n, Cs] float32 (its output),
      labels [n] as stored in the source (not remapped).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    if len(indices) == 0:
        raise ValueError(f"no examples selected from {source.name}/{source.split}")
    device = resolve_device(device)
    if model is None:
        model = model_entry.build(random_weights=random_weights, offline=offline)
    model = model.to(device).eval()
    layer_name = model_entry.resolve_feature_layer(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        del module
        captured["features"], captured["logits"] = inputs[0], output

    loader = torch.utils.data.DataLoader(
        _Examples(source, indices, model_entry.preprocessing), batch_size=batch_size,
        shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    features, logits, labels = [], [], []
    handle = model.get_submodule(layer_name).register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for images, batch_labels in tqdm(loader, desc=model_entry.name, unit="batch",
                                             disable=not progress, leave=False):
                model(images.to(device, non_blocking=True))
                if "features" not in captured:
                    raise RuntimeError(f"{model_entry.name}: the forward pass did not reach "
                                       f"{layer_name!r}")
                features.append(captured["features"].flatten(1).float().cpu().numpy())
                logits.append(captured["logits"].flatten(1).float().cpu().numpy())
                labels.append(batch_labels.numpy())
                captured.clear()
    finally:
        handle.remove()
    return np.concatenate(features), np.concatenate(logits), np.concatenate(labels)


# --------------------------------------------------------------------------------------------------
# Zoo -> store


@dataclasses.dataclass
class ExtractionResult:
    """What happened to one model: status "written" or "skipped" (already complete)."""

    model: str
    status: str
    num_examples: int
    feature_dim: int
    seconds: float


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from err
    if count <= 0 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def default_dataset_name(source: DatasetSource, selection: Selection) -> str:
    """The store name of a dataset: the source name, plus "@w<ways>-s<shots>-seed<seed>" for
    subsets."""
    if selection.ways is None and selection.shots is None:
        return source.name
    return (f"{source.name}@w{selection.ways or 'all'}-s{selection.shots or 'all'}"
            f"-seed{selection.seed}")


# Manifest fields that must agree for an existing entry to count as "already done".
# (Not weights_sha256: a weight file deleted after its entry was written must not block a resume.)
_RESUME_FIELDS = ("weights", "preprocessing", "dataset_version", "class_subset",
                  "selection")


def extract_to_store(entries: Sequence[ModelEntry], source: DatasetSource,
                     store: FeatureStore | str | os.PathLike, *, ways: int | None = None,
                     shots: int | None = None, seed: int = 0, dataset_name: str | None = None,
                     batch_size: int = 64, shard: tuple[int, int] = (0, 1),
                     storage_dtype: str = "float32", device: str | torch.device | None = None,
                     random_weights: bool = False, random_seed: int = 0,
                     offline: bool | None = None, overwrite: bool = False, num_workers: int = 0,
                     progress: bool = True) -> list[ExtractionResult]:
    """Extracts the features of every model of a zoo (this shard's share) into the store.

    Args:
      entries: the zoo's models, in zoo order.
      source: the dataset split.
      store: a FeatureStore or its root directory.
      ways, shots, seed: task construction (`select_examples`).
      dataset_name: name in the store (default `default_dataset_name`).
      shard: (i, n): only models i, i+n, ... of `entries`.
      storage_dtype: "float32" or "float16" for features and logits.
      random_weights, random_seed: untrained models (tests, smoke runs), seeded per model.
      overwrite: redo complete entries (otherwise they are skipped when made with the same settings,
        and an error when made with different ones).

    Returns:
      One ExtractionResult per model of the shard.
    """
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    shard_index, shard_count = shard
    if shard_count <= 0 or not 0 <= shard_index < shard_count:
        raise ValueError(f"shard {shard} must satisfy 0 <= i < n")
    mine = list(entries)[shard_index::shard_count]
    labels_all = source.labels() if (ways is not None or shots is not None) else None
    selection = (select_examples(labels_all, ways=ways, shots=shots, seed=seed)
                 if labels_all is not None else select_examples(np.zeros(len(source), np.int64)))
    dataset = dataset_name or default_dataset_name(source, selection)
    device = resolve_device(device)
    class_names = source.class_names
    if class_names is not None and selection.class_subset is not None:
        class_names = [class_names[c] for c in selection.class_subset]
    common = {**source.provenance(), "class_subset": selection.class_subset,
              "selection": selection.provenance(), "class_names": class_names}
    results = []
    log.info("extracting %d models (shard %d/%d) over %s/%s (%d examples) into %s", len(mine),
             shard_index, shard_count, dataset, source.split, len(selection.indices), store.root)
    for position, entry in enumerate(mine):
        start = time.time()
        if not overwrite and store.has(dataset, source.split, entry.name):
            manifest = store.manifest(dataset, source.split, entry.name)
            wanted = {**entry.provenance(random_weights=random_weights, random_seed=random_seed),
                      **common}
            differing = [f for f in _RESUME_FIELDS if _comparable(manifest.get(f))
                         != _comparable(wanted.get(f))]
            if differing:
                raise ValueError(
                    f"{store.entry_path(dataset, source.split, entry.name)} exists but was made "
                    f"with different {differing}; use another store or dataset name, or "
                    "overwrite=True")
            results.append(ExtractionResult(entry.name, "skipped", manifest["num_examples"],
                                            manifest["feature_dim"], time.time() - start))
            log.info("[%d/%d] %s: complete entry found, skipped", position + 1, len(mine),
                     entry.name)
            continue
        if random_weights:
            torch.manual_seed(random_seed)
        model = entry.build(random_weights=random_weights, offline=offline)
        layer = entry.resolve_feature_layer(model)
        features, logits, labels = extract_features(
            entry, source, indices=selection.indices, batch_size=batch_size, device=device,
            model=model, num_workers=num_workers, progress=progress)
        del model
        seconds = time.time() - start
        provenance = {
            **entry.provenance(layer=layer, random_weights=random_weights, random_seed=random_seed),
            **common,
            "extraction": {"device": str(device), "batch_size": batch_size,
                           "seconds": round(seconds, 2), "torch": torch.__version__,
                           "torchvision": torchvision.__version__},
        }
        store.write(dataset, source.split, entry.name, features=features,
                    labels=selection.remap(labels), logits=logits, provenance=provenance,
                    storage_dtype=storage_dtype, overwrite=overwrite)
        results.append(ExtractionResult(entry.name, "written", len(features), features.shape[1],
                                        seconds))
        log.info("[%d/%d] %s: wrote %s in %.1fs", position + 1, len(mine), entry.name,
                 features.shape, seconds)
    return results


def _comparable(value: Any) -> Any:
    # JSON turns tuples into lists; compare in that form.
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """`python converters/extract.py ...`: the same flags as `mspider extract`."""
    import argparse

    from converters import extract_cli

    parser = argparse.ArgumentParser(prog="python converters/extract.py",
                                     description=extract_cli.HELP)
    extract_cli.add_arguments(parser)
    return extract_cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
