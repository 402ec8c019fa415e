"""The feature store: features of a model zoo over datasets, written once, read by later stages.

Model Spider (Zhang et al., NeurIPS 2023) and the transferability metrics it is compared with never
look at images: they consume, per (dataset, split, model), the input of the model's final classifier
("features", [N, D]), optionally its output ("logits", [N, Cs]) and the labels. `converters/` runs
the PyTorch zoo once and writes them here; metrics and the ranker read them with memory mapping.

Layout (one directory per entry):

    <root>/<dataset>/<split>/<model>/features.npy   [N, D]   float32 or float16
                                     logits.npy     [N, Cs]  same dtype as features (optional)
                                     labels.npy     [N] int64 (classes), or [N] / [N, K] float
                                                    (regression)
                                     manifest.json  provenance + integrity data, written last

Names may contain any character (e.g. ``tfds:cifar10``, ``org/model``): each path component is the
name percent-encoded (bytes outside ``[A-Za-z0-9_.-]``, and a leading ``.``, become ``%XX``), so the
encoding is reversible and never yields a hidden or ``..`` directory; the real names are also kept
in the manifest. Names starting with ``.`` at any level of the tree are temporary/leftover
directories and are ignored by every listing.

Atomicity: an entry is written into a temporary sibling directory (arrays, then ``manifest.json``,
each fsync-ed) that is renamed into place in one step, so a crash never leaves a directory that
reads as complete. An entry is *complete* when its directory holds a manifest; reads additionally
check files, shapes, dtypes and sizes against it (and, with ``verify=True``, the sha256 of every
file) and raise `StoreError` naming the path and the problem.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

import mspider_jax

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
STORAGE_DTYPES = ("float32", "float16")
LABEL_KINDS = ("class", "regression")

# Provenance fields every manifest carries (None when the writer does not know them). Writers pass
# them (and any extra keys) through `write(..., provenance=...)`.
PROVENANCE_FIELDS = (
    "architecture",      # e.g. "resnet50"
    "weights",           # weights identifier, e.g. "torchvision:ResNet50_Weights.IMAGENET1K_V1"
    "weights_sha256",    # sha256 of the weight file the model was loaded from
    "layer",             # the module whose input was read, e.g. "fc"
    "preprocessing",     # e.g. {"name": "square", "image_size": 224, "mean": [...], "std": [...]}
    "dataset_version",   # e.g. tfds version "3.0.2"
    "class_subset",      # original class ids kept (label i = class_subset[i]), None = all classes
)

# Fields computed by the store; provenance may not set them.
_RESERVED_FIELDS = (
    "format_version", "dataset", "split", "model", "num_examples", "feature_dim", "num_logits",
    "label_kind", "label_shape", "dtype", "storage_dtype", "files", "created",
    "mspider_jax_version",
)
_ARRAY_FILES = ("features.npy", "logits.npy", "labels.npy")
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_CHUNK_ROWS = 8192
_HASH_BLOCK = 1 << 22


class StoreError(ValueError):
    """A store entry is missing, incomplete or corrupt, or a write would clobber one."""


class EntryKey(NamedTuple):
    """Identifies one entry; sorts by dataset, then split, then model."""

    dataset: str
    split: str
    model: str


@dataclasses.dataclass
class Entry:
    """One (dataset, split, model) entry as read from the store.

    Attributes:
      key: which entry.
      path: its directory.
      features: [N, D] float32 or float16 (np.memmap when read with mmap=True).
      labels: [N] int64 class ids, or [N] / [N, K] float targets for regression.
      logits: [N, Cs] source-classifier outputs, or None when not stored.
      manifest: the parsed manifest.json (provenance, shapes, checksums).
    """

    key: EntryKey
    path: pathlib.Path
    features: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None
    manifest: dict[str, Any]

    @property
    def num_examples(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def is_regression(self) -> bool:
        return self.manifest["label_kind"] == "regression"

    def iter_chunks(self, chunk_size: int = _CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (features [n, D] float32, labels [n, ...]) chunks, reading only those rows."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        for start in range(0, self.num_examples, chunk_size):
            stop = start + chunk_size
            yield (np.asarray(self.features[start:stop], dtype=np.float32),
                   np.asarray(self.labels[start:stop]))


# --------------------------------------------------------------------------------------------------
# Name encoding


def encode_name(name: str) -> str:
    """A reversible, filesystem-safe directory name for `name` (see the module docstring)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"store names must be non-empty strings, got {name!r}")
    if "\x00" in name:
        raise ValueError(f"store names may not contain NUL characters: {name!r}")
    parts = []
    for position, char in enumerate(name):
        if char in _SAFE_CHARS and not (position == 0 and char == "."):
            parts.append(char)
        else:
            parts.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(parts)


def decode_name(encoded: str) -> str:
    """Inverse of `encode_name`."""
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            raw.append(int(encoded[i + 1:i + 3], 16))
            i += 3
        else:
            raw.extend(encoded[i].encode("utf-8"))
            i += 1
    return raw.decode("utf-8")


def _is_listed(dirname: str) -> bool:
    # Temporary and leftover directories start with "."; encoded names never do.
    return not dirname.startswith(".")


# --------------------------------------------------------------------------------------------------
# File helpers


def _fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _write_npy(path: pathlib.Path, array: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Writes `array` cast to `dtype` as .npy in row chunks (works on memmaps).

    Refuses NaN/inf and values that overflow `dtype` (ValueError naming `what`).
    """
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=array.shape)
    try:
        for start in range(0, max(array.shape[0], 1), _CHUNK_ROWS):
            chunk = np.asarray(array[start:start + _CHUNK_ROWS])
            if np.issubdtype(dtype, np.floating):
                if not np.all(np.isfinite(chunk)):
                    raise ValueError(f"{what} contains NaN or inf values (rows {start}..)")
                if chunk.size and np.abs(chunk).max() > np.finfo(dtype).max:
                    raise ValueError(f"{what} overflows {np.dtype(dtype).name} (|value| > "
                                     f"{np.finfo(dtype).max:g}); store it as float32")
            cast = chunk.astype(dtype)
            out[start:start + _CHUNK_ROWS] = cast
        out.flush()
    finally:
        del out
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _npy_header(path: pathlib.Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header; ValueError when it is not a valid .npy."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if fortran:
            raise ValueError("Fortran-ordered arrays are not written by the store")
        return tuple(shape), np.dtype(dtype), f.tell()


# --------------------------------------------------------------------------------------------------
# Input validation for writes


def _as_features(array: Any, what: str, num_rows: int | None) -> np.ndarray:
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{what} must be 2-D [N, D], got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what} must be floating point, got dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(array.shape)}")
    if num_rows is not None and array.shape[0] != num_rows:
        raise ValueError(f"{what} has {array.shape[0]} rows but features have {num_rows}")
    return array


def _as_labels(labels: Any, num_rows: int) -> tuple[np.ndarray, str, np.dtype]:
    labels = np.asarray(labels)
    if labels.shape[:1] != (num_rows,) or labels.ndim > 2:
        raise ValueError(f"labels must be [N] or [N, K] with N = {num_rows}, got shape "
                         f"{labels.shape}")
    if np.issubdtype(labels.dtype, np.bool_):
        raise ValueError("labels must be integer class ids or float regression targets, got bool")
    if np.issubdtype(labels.dtype, np.integer):
        if labels.ndim != 1:
            raise ValueError(f"class labels must be 1-D [N], got shape {labels.shape}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"class labels must be non-negative, found {int(labels.min())}")
        return labels, "class", np.dtype(np.int64)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)):
            raise ValueError("regression labels contain NaN or inf")
        dtype = np.dtype(np.float64) if labels.dtype == np.float64 else np.dtype(np.float32)
        return labels, "regression", dtype
    raise ValueError(f"labels must be integer or float, got dtype {labels.dtype}")


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (pathlib.Path, os.PathLike)):
        return os.fspath(value)
    raise TypeError(f"provenance value {value!r} of type {type(value).__name__} is not "
                    "JSON-serialisable")


# --------------------------------------------------------------------------------------------------
# The store


class FeatureStore:
    """A directory of feature entries, one per (dataset, split, model). See the module docstring."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    def entry_path(self, dataset: str, split: str, model: str) -> pathlib.Path:
        """The directory an entry lives in (whether or not it exists)."""
        return self.root / encode_name(dataset) / encode_name(split) / encode_name(model)

    # -- writing -----------------------------------------------------------------------------------

    def write(self, dataset: str, split: str, model: str, *, features: Any, labels: Any,
              logits: Any = None, provenance: Mapping[str, Any] | None = None,
              storage_dtype: str = "float32", overwrite: bool = False) -> EntryKey:
        """Writes one entry atomically.

        Args:
          dataset, split, model: the entry's names (any non-empty strings).
          features: [N, D] floating point (may be a memmap; written in chunks).
          labels: [N] integer class ids (stored int64), or [N] / [N, K] float regression targets.
          logits: optional [N, Cs] floating point.
          provenance: manifest fields (see PROVENANCE_FIELDS) and any extra JSON-serialisable keys.
          storage_dtype: "float32" or "float16" for features and logits.
          overwrite: replace an existing entry; otherwise an existing entry raises StoreError.

        Returns:
          The entry's key.
        """
        key = EntryKey(dataset, split, model)
        final = self.entry_path(dataset, split, model)  # validates the names
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, "
                             f"got {storage_dtype!r}")
        features = _as_features(features, "features", None)
        num_rows, feature_dim = (int(d) for d in features.shape)
        labels, label_kind, label_dtype = _as_labels(labels, num_rows)
        if logits is not None:
            logits = _as_features(logits, "logits", num_rows)
        provenance = dict(provenance or {})
        clashing = sorted(set(provenance) & set(_RESERVED_FIELDS))
        if clashing:
            raise ValueError(f"provenance may not set fields computed by the store: {clashing}")
        try:
            json.dumps(provenance, default=_json_default)
        except (TypeError, ValueError) as err:
            raise ValueError(f"provenance must be JSON-serialisable: {err}") from err
        if final.exists() and not overwrite:
            state = "complete" if (final / MANIFEST).exists() else "incomplete"
            raise StoreError(f"{final}: a {state} entry for {key} already exists; "
                             "pass overwrite=True to replace it")

        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name[:40]}-"))
        try:
            files: dict[str, dict[str, Any]] = {}
            arrays = [("features.npy", features, np.dtype(storage_dtype)),
                      ("labels.npy", labels, label_dtype)]
            if logits is not None:
                arrays.append(("logits.npy", logits, np.dtype(storage_dtype)))
            for filename, array, dtype in arrays:
                _write_npy(tmp / filename, array, dtype, filename[:-4])
                files[filename] = {"shape": [int(d) for d in array.shape], "dtype": dtype.name,
                                   "sha256": sha256_file(tmp / filename)}
            manifest = {field: None for field in PROVENANCE_FIELDS}
            manifest.update(provenance)
            manifest.update(
                format_version=FORMAT_VERSION, dataset=dataset, split=split, model=model,
                num_examples=num_rows, feature_dim=feature_dim,
                num_logits=None if logits is None else int(logits.shape[1]),
                label_kind=label_kind, label_shape=[int(d) for d in labels.shape],
                dtype=features.dtype.name, storage_dtype=storage_dtype, files=files,
                created=_utc_now(), mspider_jax_version=mspider_jax.__version__)
            text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default)
            with open(tmp / MANIFEST, "w", encoding="utf-8") as f:  # last: marks the entry complete
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            self._move_into_place(tmp, final, key, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return key

    def _move_into_place(self, tmp: pathlib.Path, final: pathlib.Path, key: EntryKey,
                         overwrite: bool) -> None:
        old = None
        if final.exists():
            if not overwrite:  # another writer finished first
                raise StoreError(f"{final}: an entry for {key} appeared while writing; "
                                 "pass overwrite=True to replace it")
            # Move the old entry aside first: renaming onto a non-empty directory is not allowed,
            # and a crash between the two renames leaves no entry rather than a mixed one.
            old = final.parent / f".old-{final.name[:40]}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError as err:
            if old is not None:
                os.rename(old, final)
            raise StoreError(f"{final}: could not move the new entry into place ({err})") from err
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------------------

    def read(self, dataset: str, split: str, model: str, *, mmap: bool = True,
             verify: bool = False) -> Entry:
        """Reads one entry, checking it against its manifest.

        Args:
          mmap: memory-map the arrays (read lazily; slice for chunked reading).
          verify: also recompute the sha256 of every file (reads everything once).

        Raises:
          StoreError: the entry does not exist (the message lists what does), is incomplete, or a
            file or the manifest is corrupt or inconsistent.
        """
        key = EntryKey(dataset, split, model)
        path = self._existing_entry_path(key)
        manifest = self._load_manifest(path, key)
        arrays = {}
        for filename, spec in manifest["files"].items():
            file_path = path / filename
            shape, dtype, _ = self._check_file(file_path, spec)
            try:
                arrays[filename] = np.load(file_path, mmap_mode="r" if mmap else None,
                                           allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise StoreError(f"{file_path}: cannot load the array ({err})") from err
            if arrays[filename].shape != shape or arrays[filename].dtype != dtype:
                raise StoreError(f"{file_path}: loaded array does not match its header")
        if verify:
            self._verify_checksums(path, manifest)
        return Entry(key=key, path=path, features=arrays["features.npy"],
                     labels=arrays["labels.npy"], logits=arrays.get("logits.npy"),
                     manifest=manifest)

    def has(self, dataset: str, split: str, model: str) -> bool:
        """True only for an existing, complete entry that passes the read checks (no checksums)."""
        try:
            self.read(dataset, split, model, mmap=True)
        except StoreError:
            return False
        return True

    def manifest(self, dataset: str, split: str, model: str) -> dict[str, Any]:
        """The entry's validated manifest, without opening the arrays."""
        key = EntryKey(dataset, split, model)
        return self._load_manifest(self._existing_entry_path(key), key)

    def verify(self, dataset: str, split: str, model: str) -> None:
        """Recomputes the sha256 of every array file; StoreError if one differs from the manifest.
        """
        key = EntryKey(dataset, split, model)
        path = self._existing_entry_path(key)
        manifest = self._load_manifest(path, key)
        for filename, spec in manifest["files"].items():
            self._check_file(path / filename, spec)
        self._verify_checksums(path, manifest)

    # -- listing -----------------------------------------------------------------------------------

    def entries(self, dataset: str | None = None, split: str | None = None,
                model: str | None = None) -> list[EntryKey]:
        """Sorted keys of the complete entries (with a manifest), optionally filtered by name."""
        keys = []
        for ds_dir in self._subdirs(self.root):
            ds_name = decode_name(ds_dir.name)
            if dataset is not None and ds_name != dataset:
                continue
            for split_dir in self._subdirs(ds_dir):
                split_name = decode_name(split_dir.name)
                if split is not None and split_name != split:
                    continue
                for model_dir in self._subdirs(split_dir):
                    model_name = decode_name(model_dir.name)
                    if model is not None and model_name != model:
                        continue
                    if (model_dir / MANIFEST).is_file():
                        keys.append(EntryKey(ds_name, split_name, model_name))
        return sorted(keys)

    def datasets(self) -> list[str]:
        """Datasets with at least one complete entry."""
        return sorted({key.dataset for key in self.entries()})

    def splits(self, dataset: str) -> list[str]:
        """Splits of `dataset` with at least one complete entry."""
        return sorted({key.split for key in self.entries(dataset=dataset)})

    def models(self, dataset: str, split: str) -> list[str]:
        """Models with a complete entry for (dataset, split)."""
        return sorted({key.model for key in self.entries(dataset=dataset, split=split)})

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _subdirs(path: pathlib.Path) -> list[pathlib.Path]:
        if not path.is_dir():
            return []
        return sorted(p for p in path.iterdir() if p.is_dir() and _is_listed(p.name))

    def _existing_entry_path(self, key: EntryKey) -> pathlib.Path:
        path = self.entry_path(*key)
        if path.is_dir():
            return path
        # Say which level is unknown and what exists there.
        if not self.root.is_dir():
            raise StoreError(f"no feature store at {self.root}")
        datasets = self.datasets()
        if key.dataset not in datasets:
            raise StoreError(f"{self.root}: unknown dataset {key.dataset!r}; the store has "
                             f"{datasets}")
        splits = self.splits(key.dataset)
        if key.split not in splits:
            raise StoreError(f"{self.root}: dataset {key.dataset!r} has no split {key.split!r}; "
                             f"it has {splits}")
        models = self.models(key.dataset, key.split)
        raise StoreError(f"{self.root}: no model {key.model!r} for {key.dataset!r}/{key.split!r}; "
                         f"models there: {models}")

    def _load_manifest(self, path: pathlib.Path, key: EntryKey) -> dict[str, Any]:
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise StoreError(f"{path}: incomplete entry (no {MANIFEST}); rewrite it with "
                             "overwrite=True")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise StoreError(f"{manifest_path}: invalid JSON ({err})") from err
        if not isinstance(manifest, dict):
            raise StoreError(f"{manifest_path}: expected a JSON object")
        missing = [f for f in _RESERVED_FIELDS + PROVENANCE_FIELDS if f not in manifest]
        if missing:
            raise StoreError(f"{manifest_path}: missing fields {missing}")

        def fail(problem: str) -> StoreError:
            return StoreError(f"{manifest_path}: {problem}")

        if manifest["format_version"] != FORMAT_VERSION:
            raise fail(f"format_version {manifest['format_version']!r}, this reader knows "
                       f"{FORMAT_VERSION}")
        for field, expected in zip(("dataset", "split", "model"), key):
            if manifest[field] != expected:
                raise fail(f"{field} is {manifest[field]!r} but the entry's directory is "
                           f"{expected!r}")
        n, d = manifest["num_examples"], manifest["feature_dim"]
        for field in ("num_examples", "feature_dim"):
            if not isinstance(manifest[field], int) or isinstance(manifest[field], bool) \
                    or manifest[field] <= 0:
                raise fail(f"{field} must be a positive integer, got {manifest[field]!r}")
        storage = manifest["storage_dtype"]
        if storage not in STORAGE_DTYPES:
            raise fail(f"storage_dtype {storage!r} is not one of {STORAGE_DTYPES}")
        if manifest["label_kind"] not in LABEL_KINDS:
            raise fail(f"label_kind {manifest['label_kind']!r} is not one of {LABEL_KINDS}")
        files = manifest["files"]
        if not isinstance(files, dict) or not set(files) <= set(_ARRAY_FILES) \
                or not {"features.npy", "labels.npy"} <= set(files):
            raise fail(f"files must list features.npy, labels.npy and optionally logits.npy, got "
                       f"{sorted(files) if isinstance(files, dict) else files!r}")
        for filename, spec in files.items():
            if not isinstance(spec, dict) or not {"shape", "dtype", "sha256"} <= set(spec):
                raise fail(f"files[{filename!r}] needs shape, dtype and sha256")
        expected_specs = {"features.npy": ([n, d], storage)}
        num_logits = manifest["num_logits"]
        if ("logits.npy" in files) != (num_logits is not None):
            raise fail(f"num_logits is {num_logits!r} but logits.npy is "
                       f"{'listed' if 'logits.npy' in files else 'not listed'}")
        if num_logits is not None:
            expected_specs["logits.npy"] = ([n, num_logits], storage)
        label_shape = manifest["label_shape"]
        if not isinstance(label_shape, list) or not label_shape or label_shape[0] != n:
            raise fail(f"label_shape {label_shape!r} does not start with num_examples {n}")
        if manifest["label_kind"] == "class":
            expected_specs["labels.npy"] = (label_shape, "int64")
            if len(label_shape) != 1:
                raise fail(f"class labels must be [N], label_shape is {label_shape}")
        elif files["labels.npy"]["dtype"] not in ("float32", "float64"):
            raise fail("regression labels must be float32/float64, got "
                       f"{files['labels.npy']['dtype']}")
        else:
            expected_specs["labels.npy"] = (label_shape, files["labels.npy"]["dtype"])
        for filename, (shape, dtype) in expected_specs.items():
            if list(files[filename]["shape"]) != list(shape) or files[filename]["dtype"] != dtype:
                raise fail(f"files[{filename!r}] says shape {files[filename]['shape']} dtype "
                           f"{files[filename]['dtype']}, expected shape {shape} dtype {dtype}")
        return manifest

    @staticmethod
    def _check_file(file_path: pathlib.Path, spec: Mapping[str, Any]
                    ) -> tuple[tuple[int, ...], np.dtype, int]:
        if not file_path.is_file():
            raise StoreError(f"{file_path}: missing file")
        try:
            shape, dtype, offset = _npy_header(file_path)
        except (ValueError, OSError, EOFError, SyntaxError) as err:
            raise StoreError(f"{file_path}: not a valid .npy file ({err})") from err
        if list(shape) != list(spec["shape"]) or dtype.name != spec["dtype"]:
            raise StoreError(f"{file_path}: array is shape {list(shape)} dtype {dtype.name}, the "
                             f"manifest says shape {spec['shape']} dtype {spec['dtype']}")
        expected_size = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        actual_size = file_path.stat().st_size
        if actual_size != expected_size:
            state = "truncated" if actual_size < expected_size else "has trailing bytes"
            raise StoreError(f"{file_path}: file {state} ({actual_size} bytes, expected "
                             f"{expected_size})")
        return shape, dtype, offset

    @staticmethod
    def _verify_checksums(path: pathlib.Path, manifest: Mapping[str, Any]) -> None:
        for filename, spec in manifest["files"].items():
            actual = sha256_file(path / filename)
            if actual != spec["sha256"]:
                raise StoreError(f"{path / filename}: sha256 {actual} does not match the "
                                 "manifest's "
                                 f"{spec['sha256']} (the file was modified or corrupted)")
