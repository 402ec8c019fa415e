"""Registry of model zoos: which PyTorch models to run, how to load them, where their feature is.

Model Spider (Zhang et al., NeurIPS 2023; specs/model_spider.md §1) ranks models of a fixed zoo:
  * ``single_source``: 10 ImageNet-1k torchvision models (canonical order of the spec, §1.1);
  * ``multi_source``: 42 models ``FTD_<arch>_<source>`` (resnet50 / densenet201 / inception_v3
    fine-tuned on 14 source datasets, §1.2), loaded from user-supplied checkpoint files;
  * ``generic``: the task encoder whose class prototypes are the generic task tokens (§1.3). The
    paper uses EsViT Swin-B (3072-d, self-supervised, not in torchvision); the default here is
    torchvision's supervised ``swin_b`` (1024-d). Any registered model can serve instead
    (`generic_encoder(name)`).
Users add models (`register_model`: a Python builder, or a checkpoint + torchvision architecture)
and zoos (`register_zoo`). Zoo names that are not registered are looked up in `ZOO_PROVIDERS`
("module:function" returning the entries), and any "module:function" string works as a zoo name,
so a zoo defined in another package needs no edit here.

Conventions:
  * A model's *feature* is the INPUT of its final classifier layer and its *logits* the OUTPUT
    (`feature_layer`, a dotted module path: ``fc``, ``classifier``, ``classifier.1``, ``head``).
  * Preprocessing ``square`` (the benchmark's): resize to image_size x image_size (224; 299 for
    inception_v3), no crop, ImageNet mean/std. ``standard``: resize the shorter side to
    round(image_size * 256 / 224), centre crop image_size.
  * Weights come from the torch hub cache (``torch.hub.get_dir()/checkpoints/<file>``) or a given
    file; with ``offline=True`` (or MSPIDER_OFFLINE=1) a missing file is an error naming the file
    and where to put it, never a download. ``random_weights=True`` builds the same architecture
    untrained (tests).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from mspider_jax.features import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESSING_NAMES = ("square", "standard")

# Spec §1.1: canonical order and penultimate feature dimensions.
SINGLE_SOURCE_DIMS = {
    "googlenet": 1024, "inception_v3": 2048, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
    "densenet121": 1024, "densenet169": 1664, "densenet201": 1920, "mobilenet_v2": 1280,
    "mnasnet1_0": 1280,
}
SINGLE_SOURCE = tuple(SINGLE_SOURCE_DIMS)

# Spec §1.2 (copied from data/published/multi_source_finetune.csv): 3 architectures x 14 sources,
# the zoo order is alphabetical by architecture, then by source (byte order: "CIFAR100" <
# "Caltech101").
MULTI_SOURCE_ARCHS = ("densenet201", "inception_v3", "resnet50")
MULTI_SOURCE_SOURCES = ("AID", "CIFAR10", "CIFAR100", "Caltech101", "Cars", "Dogs", "EuroSAT",
                        "Flowers", "Food", "NABirds", "PACS", "Resisc45", "SUN397", "SmallNORB")
MULTI_SOURCE = tuple(f"FTD_{arch}_{source}" for arch in MULTI_SOURCE_ARCHS
                     for source in MULTI_SOURCE_SOURCES)
MULTI_SOURCE_DIR_ENV = "MSPIDER_MULTI_SOURCE_DIR"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pth.tar")

GENERIC_DEFAULT = "swin_b"

# Zoos defined outside this module: imported on first use.
ZOO_PROVIDERS: dict[str, str] = {"minizoo": "converters.minizoo.zoo:entries"}

# torchvision builds googlenet / inception_v3 with these settings when it loads ImageNet weights
# (the checkpoints include the auxiliary heads, which are dropped after loading).
_PRETRAINED_KWARGS = {
    "googlenet": {"transform_input": True, "init_weights": False},
    "inception_v3": {"transform_input": True, "init_weights": False},
}
_AUX_MODULES = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}
# Final classifiers of the built-in architectures (others are found by building a skeleton).
_CLASSIFIER_PATHS = {
    "googlenet": "fc", "inception_v3": "fc", "resnet50": "fc", "resnet101": "fc", "resnet152": "fc",
    "densenet121": "classifier", "densenet169": "classifier", "densenet201": "classifier",
    "mobilenet_v2": "classifier.1", "mnasnet1_0": "classifier.1", "swin_b": "head",
}


class WeightsNotFoundError(FileNotFoundError):
    """A weight/checkpoint file is missing and may not (or cannot) be downloaded."""


def is_offline() -> bool:
    """True when MSPIDER_OFFLINE is set to a true value: never download weights."""
    return os.environ.get("MSPIDER_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------------------------------
# Preprocessing


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How images are turned into the model's input (see the module docstring).

    Attributes:
      name: "square" (resize to image_size x image_size) or "standard" (resize + centre crop).
      image_size: side of the model input.
      resize_size: shorter side before the crop ("standard" only).
      mean, std: per-channel normalisation of [0, 1] RGB values.
    """

    name: str = "square"
    image_size: int = 224
    resize_size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.name not in PREPROCESSING_NAMES:
            raise ValueError(f"preprocessing must be one of {PREPROCESSING_NAMES}, "
                             f"got {self.name!r}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.name == "standard" and self.resize_size is None:
            object.__setattr__(self, "resize_size", round(self.image_size * 256 / 224))
        if self.name == "square" and self.resize_size is not None:
            raise ValueError("resize_size only applies to 'standard' preprocessing")

    def variant(self, name: str) -> Preprocessing:
        """The same input size and normalisation with another resizing rule."""
        return Preprocessing(name=name, image_size=self.image_size, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "image_size": self.image_size, "resize_size": self.resize_size,
                "mean": list(self.mean), "std": list(self.std), "interpolation": "bilinear",
                "antialias": True}


def imagenet_preprocessing(architecture: str, name: str = "square") -> Preprocessing:
    """The benchmark's preprocessing for an ImageNet architecture (299 for inception_v3, else 224).
    """
    return Preprocessing(name="square", image_size=299 if architecture == "inception_v3" else 224
                         ).variant(name)


# --------------------------------------------------------------------------------------------------
# Model entries


def find_feature_layer(model: nn.Module) -> str:
    """The dotted name of the final classifier: fc, classifier (or its last Linear), head, ...

    Falls back to the last nn.Linear registered in the model.
    """
    modules = dict(model.named_modules())
    for name in ("fc", "classifier", "head", "heads.head"):
        module = modules.get(name)
        if isinstance(module, nn.Linear):
            return name
        if isinstance(module, nn.Sequential):
            linear = [i for i, child in enumerate(module) if isinstance(child, nn.Linear)]
            if linear:
                return f"{name}.{linear[-1]}"
    linear = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier; pass feature_layer=")
    return linear[-1]


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    """`model.get_submodule` with an error that lists the top-level children."""
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        children = [child for child, _ in model.named_children()]
        raise ValueError(f"{type(model).__name__} has no module {name!r} "
                         f"(children: {children})") from err


def _torchvision_skeleton(architecture: str, num_classes: int, aux_logits: bool,
                          extra_kwargs: Mapping[str, Any]) -> nn.Module:
    kwargs = dict(_PRETRAINED_KWARGS.get(architecture, {}))
    if architecture in _AUX_MODULES:
        kwargs["aux_logits"] = aux_logits
    kwargs.update(extra_kwargs)
    try:
        return torchvision.models.get_model(architecture, weights=None, num_classes=num_classes,
                                            **kwargs)
    except ValueError as err:
        if architecture not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision architecture {architecture!r}; known: "
                             f"{torchvision.models.list_models(torchvision.models)}") from err
        raise


def _drop_aux_heads(model: nn.Module, architecture: str) -> None:
    # Eval-mode forward passes never run them; dropping them saves memory and time.
    if architecture in _AUX_MODULES:
        model.aux_logits = False
        for name in _AUX_MODULES[architecture]:
            setattr(model, name, None)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a state dict from a checkpoint file.

    The dict may be plain or nested under state_dict/model_state_dict/model; DataParallel "module."
    prefixes are removed. Pickled whole modules are refused (they can run arbitrary code).
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types here; all mean "unreadable"
        raise ValueError(f"cannot read a state dict from {path} ({type(err).__name__}: {err}); "
                         "save checkpoints with torch.save(model.state_dict(), path)") from err
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of a zoo.

    Attributes:
      name: unique model name (the store's model key).
      architecture: torchvision architecture name (or a free label for custom builders).
      feature_dim: D, the input size of the final classifier (None if unknown until built).
      num_source_classes: Cs, its output size (None: read from the checkpoint).
      preprocessing: how images become its input.
      weights: weights identifier recorded in manifests
        (e.g. "torchvision:ResNet50_Weights.IMAGENET1K_V1").
      feature_layer: dotted name of the final classifier ("" = `find_feature_layer`).
      weights_path: the weight file (its sha256 is recorded); None = derived from weights_url.
      weights_url: where torchvision publishes the file (download when not offline).
      builder: custom zero-argument builder returning the model with its weights loaded; None =
        build the torchvision architecture and load the weight file.
      arch_kwargs: extra keyword arguments of the torchvision constructor.
      missing_hint: appended to the error raised when the weight file is missing.
    """

    name: str
    architecture: str
    feature_dim: int | None
    num_source_classes: int | None
    preprocessing: Preprocessing
    weights: str
    feature_layer: str = ""
    weights_path: str | None = None
    weights_url: str | None = None
    builder: Callable[[], nn.Module] | None = dataclasses.field(default=None, compare=False)
    arch_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    missing_hint: str = ""

    def weights_file(self) -> pathlib.Path | None:
        """The local weight file: weights_path, or the torch hub cache path of weights_url."""
        if self.weights_path is not None:
            return pathlib.Path(self.weights_path).expanduser()
        if self.weights_url is not None:
            return (pathlib.Path(torch.hub.get_dir()) / "checkpoints"
                    / os.path.basename(self.weights_url))
        return None

    def weights_sha256(self) -> str | None:
        """sha256 of the weight file (None for custom builders without a file)."""
        path = self.weights_file()
        if path is None or not path.is_file():
            return None
        return _cached_sha256(str(path), path.stat().st_mtime_ns)

    def with_preprocessing(self, name: str) -> ModelEntry:
        return dataclasses.replace(self, preprocessing=self.preprocessing.variant(name))

    def build(self, *, random_weights: bool = False, offline: bool | None = None,
              device: str | torch.device | None = None) -> nn.Module:
        """The model in eval mode.

        Args:
          random_weights: build the architecture untrained (seed with torch.manual_seed first).
          offline: never download (default: MSPIDER_OFFLINE); a missing file raises
            WeightsNotFoundError.
          device: where to build; "meta" builds the structure only (no memory, no weights).
        """
        offline = is_offline() if offline is None else offline
        with torch.device(device) if device is not None else contextlib.nullcontext():
            if random_weights:
                model = self._random_model()
            elif self.builder is not None:
                model = self.builder()
            else:
                model = self._load_pretrained(offline)
        layer = self.resolve_feature_layer(model)
        if not isinstance(get_submodule(model, layer), nn.Module):
            raise ValueError(f"{self.name}: feature layer {layer!r} is not a module")
        return model.eval()

    def resolve_feature_layer(self, model: nn.Module) -> str:
        return self.feature_layer or find_feature_layer(model)

    def _random_model(self) -> nn.Module:
        if self.architecture not in torchvision.models.list_models():
            raise ValueError(f"{self.name}: random weights need a torchvision architecture, "
                             f"{self.architecture!r} is not one")
        num_classes = self.num_source_classes or 1000
        model = _torchvision_skeleton(self.architecture, num_classes, False, self.arch_kwargs)
        _drop_aux_heads(model, self.architecture)
        return model

    def _load_pretrained(self, offline: bool) -> nn.Module:
        path = self.weights_file()
        if path is None:
            raise ValueError(f"{self.name}: no weights file, URL or builder given")
        if not path.is_file():
            if offline or self.weights_url is None:
                where = f" (download {self.weights_url})" if self.weights_url else ""
                raise WeightsNotFoundError(
                    f"{self.name}: weights file {path} not found{where}. Put the file there"
                    + (" or set TORCH_HOME to the directory holding hub/checkpoints/"
                       if self.weights_path is None else "")
                    + ("; downloads are off (offline)" if offline and self.weights_url else "")
                    + (f". {self.missing_hint}" if self.missing_hint else ""))
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(self.weights_url, str(path), progress=True)
        state = load_state_dict_file(path)
        layer = self.feature_layer or _default_classifier_path(self.architecture)
        num_classes = self.num_source_classes
        if f"{layer}.weight" in state:
            num_classes = int(state[f"{layer}.weight"].shape[0])
        if num_classes is None:
            raise ValueError(f"{self.name}: cannot find {layer}.weight in {path} to read the "
                             "number of classes; pass num_classes")
        has_aux = any(key.startswith(prefix + ".") for key in state
                      for prefix in _AUX_MODULES.get(self.architecture, ()))
        model = _torchvision_skeleton(self.architecture, num_classes, has_aux, self.arch_kwargs)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"{self.name}: {path} does not fit torchvision {self.architecture} "
                             f"({err})") from err
        if missing or unexpected:
            raise ValueError(f"{self.name}: {path} does not fit torchvision {self.architecture} "
                             f"(missing keys {missing[:5]}..., unexpected {unexpected[:5]}...)")
        _drop_aux_heads(model, self.architecture)
        return model

    def provenance(self, *, layer: str | None = None, random_weights: bool = False,
                   random_seed: int | None = None) -> dict[str, Any]:
        """Manifest fields describing this model (mspider_jax.features.PROVENANCE_FIELDS).

        Args:
          layer: the feature layer resolved on the built model (default: `feature_layer`).
        """
        return {
            "architecture": self.architecture,
            "weights": f"random-init(seed={random_seed})" if random_weights else self.weights,
            "weights_sha256": None if random_weights else self.weights_sha256(),
            "layer": layer or self.feature_layer or None,
            "preprocessing": self.preprocessing.to_dict(),
        }


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str, mtime_ns: int) -> str:
    del mtime_ns  # part of the cache key: a rewritten file is hashed again
    return sha256_file(path)


@functools.lru_cache(maxsize=None)
def _default_classifier_path(architecture: str) -> str:
    if architecture in _CLASSIFIER_PATHS:
        return _CLASSIFIER_PATHS[architecture]
    with torch.device("meta"):
        return find_feature_layer(_torchvision_skeleton(architecture, 10, False, {}))


@functools.lru_cache(maxsize=None)
def _feature_dim_of(architecture: str, feature_layer: str) -> int:
    with torch.device("meta"):
        model = _torchvision_skeleton(architecture, 10, False, {})
    layer = get_submodule(model, feature_layer or find_feature_layer(model))
    return int(layer.in_features)


def torchvision_entry(architecture: str, *, name: str | None = None, weights: str = "IMAGENET1K_V1",
                      preprocessing: str = "square", feature_dim: int | None = None) -> ModelEntry:
    """A torchvision model with its published ImageNet weights (from the torch hub cache)."""
    enum = torchvision.models.get_model_weights(architecture)
    weight = enum[weights]
    return ModelEntry(
        name=name or architecture, architecture=architecture,
        feature_dim=feature_dim or _feature_dim_of(architecture, ""),
        num_source_classes=len(weight.meta["categories"]),
        preprocessing=imagenet_preprocessing(architecture, preprocessing),
        weights=f"torchvision:{enum.__name__}.{weights}", weights_url=weight.url,
        feature_layer=_default_classifier_path(architecture))


# --------------------------------------------------------------------------------------------------
# Built-in zoos


def single_source_zoo(preprocessing: str = "square") -> list[ModelEntry]:
    """The 10 ImageNet torchvision models of the single-source zoo, in the canonical order."""
    return [torchvision_entry(arch, preprocessing=preprocessing, feature_dim=dim)
            for arch, dim in SINGLE_SOURCE_DIMS.items()]


def multi_source_checkpoint(name: str, checkpoint_dir: str | os.PathLike) -> pathlib.Path:
    """The checkpoint file of a multi-source model.

    The first existing <dir>/<name>{.pth,.pt,.pth.tar}, else <dir>/<name>.pth (whose absence the
    build reports).
    """
    directory = pathlib.Path(checkpoint_dir).expanduser()
    for suffix in CHECKPOINT_SUFFIXES:
        if (directory / (name + suffix)).is_file():
            return directory / (name + suffix)
    return directory / (name + CHECKPOINT_SUFFIXES[0])


def default_multi_source_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(MULTI_SOURCE_DIR_ENV)
                        or pathlib.Path(torch.hub.get_dir()) / "mspider_multi_source")


def multi_source_zoo(checkpoint_dir: str | os.PathLike | None = None,
                     preprocessing: str = "square") -> list[ModelEntry]:
    """The 42 fine-tuned models FTD_<arch>_<source> (spec §1.2).

    Loaded from <checkpoint_dir>/FTD_<arch>_<source>.pth (state dicts; default dir:
    $MSPIDER_MULTI_SOURCE_DIR or <torch hub dir>/mspider_multi_source). Checkpoints are not
    distributed with torchvision: a missing one is reported when the model is built. They are
    assumed to keep torchvision's ImageNet-pretrained settings (transform_input=True for
    inception_v3).
    """
    directory = checkpoint_dir or default_multi_source_dir()
    entries = []
    for arch in MULTI_SOURCE_ARCHS:
        for source in MULTI_SOURCE_SOURCES:
            name = f"FTD_{arch}_{source}"
            path = multi_source_checkpoint(name, directory)
            entries.append(ModelEntry(
                name=name, architecture=arch, feature_dim=SINGLE_SOURCE_DIMS[arch],
                num_source_classes=None, preprocessing=imagenet_preprocessing(arch, preprocessing),
                weights=f"checkpoint:{path.name}", weights_path=str(path),
                feature_layer=_default_classifier_path(arch),
                missing_hint=(f"The 42 multi-source checkpoints (state dicts named "
                              f"FTD_<arch>_<source>.pth) are not distributed with torchvision; "
                              f"point checkpoint_dir / --checkpoint-dir / "
                              f"${MULTI_SOURCE_DIR_ENV} at the folder that holds them")))
    return entries


def generic_encoder(name: str | None = None, **options: Any) -> ModelEntry:
    """The task encoder for Model Spider's generic task tokens: torchvision swin_b (default) or any
    registered model."""
    if name is None or name == GENERIC_DEFAULT:
        return torchvision_entry(GENERIC_DEFAULT,
                                 preprocessing=options.get("preprocessing", "square"))
    return get_model(name, **options)


# --------------------------------------------------------------------------------------------------
# The registry

_BUILTIN_ZOOS: dict[str, Callable[..., list[ModelEntry]]] = {
    "single_source": single_source_zoo,
    "multi_source": multi_source_zoo,
    "generic": lambda preprocessing="square": [generic_encoder(preprocessing=preprocessing)],
}
_REGISTERED_ZOOS: dict[str, list[ModelEntry]] = {}
_REGISTERED_MODELS: dict[str, ModelEntry] = {}
USER_ZOO = "user"  # every model added with register_model


def zoo_names() -> list[str]:
    """Built-in, registered and provider zoo names."""
    return sorted(set(_BUILTIN_ZOOS) | set(_REGISTERED_ZOOS) | set(ZOO_PROVIDERS)
                  | ({USER_ZOO} if _REGISTERED_MODELS else set()))


def register_zoo(name: str, entries: Iterable[ModelEntry], *, overwrite: bool = False) -> None:
    """Registers a zoo (an ordered list of models; the order is the zoo's canonical order)."""
    entries = list(entries)
    if not name or name in _BUILTIN_ZOOS or name == USER_ZOO:
        raise ValueError(f"cannot register a zoo named {name!r} (built-in or reserved)")
    if name in _REGISTERED_ZOOS and not overwrite:
        raise ValueError(f"zoo {name!r} is already registered; pass overwrite=True")
    if not entries or not all(isinstance(e, ModelEntry) for e in entries):
        raise ValueError(f"zoo {name!r} needs a non-empty list of ModelEntry")
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"zoo {name!r} has duplicate model names {duplicates}")
    _REGISTERED_ZOOS[name] = entries


def _from_provider(name: str, target: str, options: Mapping[str, Any]) -> list[ModelEntry]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            raise ValueError(f"zoo {name!r}: provider module {module_name!r} is not "
                             "importable") from err
        raise
    if name in _REGISTERED_ZOOS and not options:  # the module registered the zoo when imported
        return list(_REGISTERED_ZOOS[name])
    provider = getattr(module, attr or "entries", None)
    if provider is None:
        raise ValueError(f"zoo {name!r}: {module_name} has no {attr or 'entries'!r}")
    entries = provider(**options) if callable(provider) else provider
    entries = list(entries)
    if not entries or not all(isinstance(e, ModelEntry) for e in entries):
        raise ValueError(f"zoo {name!r}: {target} did not return a list of ModelEntry")
    return entries


def get_zoo(name: str, **options: Any) -> list[ModelEntry]:
    """The models of a zoo, in order.

    Args:
      name: "single_source", "multi_source", "generic", "user" (models from register_model), a
        registered zoo, a ZOO_PROVIDERS name, or "package.module:function".
      **options: passed to the zoo's builder, e.g. preprocessing="standard" (built-in zoos) or
        checkpoint_dir=... (multi_source).
    """
    if name in _BUILTIN_ZOOS:
        return _BUILTIN_ZOOS[name](**options)
    if name in _REGISTERED_ZOOS and not options:
        return list(_REGISTERED_ZOOS[name])
    if name == USER_ZOO and _REGISTERED_MODELS:
        return list(_REGISTERED_MODELS.values())
    if name in ZOO_PROVIDERS:
        return _from_provider(name, ZOO_PROVIDERS[name], options)
    if name in _REGISTERED_ZOOS:
        raise ValueError(f"zoo {name!r} was registered as a list and takes no options ({options})")
    if ":" in name:
        return _from_provider(name, name, options)
    raise ValueError(f"unknown zoo {name!r}; known zoos: {zoo_names()} "
                     "(or give 'package.module:function')")


def get_model(name: str, **options: Any) -> ModelEntry:
    """A model by name: registered models, then the built-in and registered zoos."""
    if name in _REGISTERED_MODELS:
        return _REGISTERED_MODELS[name]
    if name in SINGLE_SOURCE_DIMS:
        return torchvision_entry(name, **options)
    if name == GENERIC_DEFAULT:
        return generic_encoder(**options)
    if name in MULTI_SOURCE:
        return next(e for e in multi_source_zoo(**options) if e.name == name)
    for entries in _REGISTERED_ZOOS.values():
        for entry in entries:
            if entry.name == name:
                return entry
    known = sorted(set(_REGISTERED_MODELS) | set(SINGLE_SOURCE) | {GENERIC_DEFAULT}
                   | {e.name for entries in _REGISTERED_ZOOS.values() for e in entries})
    raise ValueError(f"unknown model {name!r}; known models: {known} and the 42 multi_source "
                     "FTD_<arch>_<source> names")


def register_model(name: str, *, builder: Callable[[], nn.Module] | None = None,
                   architecture: str | None = None, checkpoint: str | os.PathLike | None = None,
                   num_classes: int | None = None, feature_dim: int | None = None,
                   feature_layer: str = "", preprocessing: Preprocessing | str = "square",
                   weights: str | None = None, arch_kwargs: Mapping[str, Any] | None = None,
                   overwrite: bool = False) -> ModelEntry:
    """Registers a user model and returns its entry (also part of the "user" zoo).

    Either `builder` (a zero-argument callable returning the model with its weights loaded), or
    `architecture` (a torchvision name) + `checkpoint` (a state-dict file; the number of classes is
    read from it unless `num_classes` is given). `preprocessing`: a Preprocessing, or "square" /
    "standard" at the architecture's ImageNet input size.
    """
    if not name:
        raise ValueError("model name must be non-empty")
    if name in _REGISTERED_MODELS and not overwrite:
        raise ValueError(f"model {name!r} is already registered; pass overwrite=True")
    if (builder is None) == (checkpoint is None):
        raise ValueError("register_model needs exactly one of builder= or checkpoint=")
    if checkpoint is not None and not architecture:
        raise ValueError("a checkpoint needs architecture= (a torchvision architecture name)")
    architecture = architecture or "custom"
    if isinstance(preprocessing, str):
        preprocessing = imagenet_preprocessing(architecture, preprocessing)
    if checkpoint is not None:
        if architecture not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision architecture {architecture!r}; known: "
                             f"{torchvision.models.list_models(torchvision.models)}")
        feature_layer = feature_layer or _default_classifier_path(architecture)
        if feature_dim is None:
            feature_dim = _feature_dim_of(architecture, feature_layer)
        path = pathlib.Path(checkpoint).expanduser()
        entry = ModelEntry(name=name, architecture=architecture, feature_dim=feature_dim,
                           num_source_classes=num_classes, preprocessing=preprocessing,
                           weights=weights or f"checkpoint:{path.name}", weights_path=str(path),
                           feature_layer=feature_layer, arch_kwargs=dict(arch_kwargs or {}))
    else:
        entry = ModelEntry(name=name, architecture=architecture, feature_dim=feature_dim,
                           num_source_classes=num_classes, preprocessing=preprocessing,
                           weights=weights or f"builder:{getattr(builder, '__qualname__', '?')}",
                           feature_layer=feature_layer, builder=builder,
                           arch_kwargs=dict(arch_kwargs or {}))
    _REGISTERED_MODELS[name] = entry
    return entry


def unregister(name: str) -> None:
    """Removes a registered model or zoo (tests, notebooks)."""
    if _REGISTERED_MODELS.pop(name, None) is None and _REGISTERED_ZOOS.pop(name, None) is None:
        raise ValueError(f"{name!r} is not a registered model or zoo")


def select_models(entries: Sequence[ModelEntry], names: Sequence[str] | None) -> list[ModelEntry]:
    """The entries named in `names` (in the zoo's order); all when names is None."""
    if not names:
        return list(entries)
    known = [e.name for e in entries]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"models {unknown} are not in the zoo; it has {known}")
    return [e for e in entries if e.name in set(names)]
