"""Registry provider of the mini zoo: `converters.zoo.get_zoo("minizoo")` returns `entries()`.

Each entry builds a shipped PTM (data/minizoo/models/<name>.npz, float16 weights, see
converters/minizoo/package.py) as its torchvision class in float32. The generic task encoder is
`generic_entry()` (model name "generic"; not part of the zoo, `entries(include_generic=True)` appends
it). `extract_targets` fills a feature store with every target of the artifact.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np

from converters.zoo import ModelEntry, Preprocessing
from mspider_jax import minizoo as library

# The input convention of every mini-zoo model: 32x32, (x / 255 - 0.5) / 0.25.
PREPROCESSING = Preprocessing(name="square", image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
_FEATURE_LAYERS = {"resnet": "fc", "shufflenet": "fc", "densenet": "classifier",
                   "mobilenet": "classifier.1"}


def _build(arch: str, num_classes: int, path: str):
    from converters.minizoo import train

    with np.load(path) as arrays:
        return train.load_float16_state(arch, num_classes, dict(arrays))


def _entry(info: dict, root: pathlib.Path) -> ModelEntry:
    path = root / info["file"]
    return ModelEntry(
        name=info["name"], architecture=f"minizoo_{info['arch']}", feature_dim=info["feature_dim"],
        num_source_classes=info["num_classes"], preprocessing=PREPROCESSING,
        weights=f"minizoo:{info['name']}", feature_layer=_FEATURE_LAYERS[info["arch"]],
        weights_path=str(path),
        builder=functools.partial(_build, info["arch"], info["num_classes"], str(path)))


def entries(root: str | os.PathLike | None = None, include_generic: bool = False) -> list[ModelEntry]:
    """The zoo's PTMs in canonical order (+ the generic encoder last when include_generic)."""
    root = library._root(root)
    manifest = library.load_manifest(root)
    out = [_entry(info, root) for info in manifest["models"]]
    if include_generic:
        out.append(_entry(manifest["generic"], root))
    return out


def generic_entry(root: str | os.PathLike | None = None) -> ModelEntry:
    """The generic task encoder (model name "generic")."""
    root = library._root(root)
    return _entry(library.load_manifest(root)["generic"], root)


def extract_targets(store, root: str | os.PathLike | None = None, progress: bool = True) -> None:
    """Extracts every PTM's and the generic encoder's features of every target's shipped training
    split into `store` (dataset "mz_<target>", split "train"); complete entries are skipped."""
    import torch

    from converters import extract

    torch.set_flush_denormal(True)  # 10-50x faster CPU inference on small models
    root = library._root(root)
    zoo = entries(root, include_generic=True)
    for target in library.load_manifest(root)["targets"]:
        source = extract.NpzSource(root / target["file"], "train")
        source.class_names = target["class_names"]
        extract.extract_to_store(zoo, source, store, dataset_name=target["dataset"], batch_size=250,
                                 device="cpu", offline=True, progress=progress)
