"""The feature store: round trips, listing, atomic writes and corruption detection (no torch)."""

import hashlib
import json
import os
import pathlib
import string
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mspider_jax
from mspider_jax.features import EntryKey, FeatureStore, StoreError, decode_name, encode_name
from mspider_jax.features import store as store_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _arrays(rng, n=23, d=5, classes=4, cs=7):
    features = rng.normal(size=(n, d)).astype(np.float32)
    labels = rng.integers(0, classes, size=n)
    logits = rng.normal(size=(n, cs)).astype(np.float32)
    return features, labels, logits


def _write(store, rng, dataset="tfds:cifar10", split="train", model="resnet50", **kwargs):
    features, labels, logits = _arrays(rng)
    store.write(dataset, split, model, features=features, labels=labels, logits=logits, **kwargs)
    return features, labels, logits


def test_round_trip_float32(tmp_path, rng):
    store = FeatureStore(tmp_path / "store")
    features, labels, logits = _arrays(rng)
    provenance = {"architecture": "resnet50", "weights": "torchvision:X", "layer": "fc",
                  "preprocessing": {"name": "square", "image_size": 224}, "my_extra": [1, 2]}
    key = store.write("tfds:cifar10", "train", "resnet50", features=features, labels=labels,
                      logits=logits, provenance=provenance)
    assert key == EntryKey("tfds:cifar10", "train", "resnet50")
    entry = store.read(*key)
    assert isinstance(entry.features, np.memmap)
    np.testing.assert_array_equal(entry.features, features)
    np.testing.assert_array_equal(entry.logits, logits)
    np.testing.assert_array_equal(entry.labels, labels)
    assert entry.labels.dtype == np.int64 and entry.features.dtype == np.float32
    assert (entry.num_examples, entry.feature_dim, entry.is_regression) == (23, 5, False)
    manifest = entry.manifest
    assert manifest["model"] == "resnet50" and manifest["dataset"] == "tfds:cifar10"
    assert manifest["architecture"] == "resnet50" and manifest["layer"] == "fc"
    assert manifest["my_extra"] == [1, 2]
    assert manifest["weights_sha256"] is None and manifest["class_subset"] is None
    assert (manifest["num_examples"], manifest["feature_dim"], manifest["num_logits"]) == (23, 5, 7)
    assert manifest["storage_dtype"] == "float32" and manifest["dtype"] == "float32"
    assert manifest["mspider_jax_version"] == mspider_jax.__version__
    for name in ("features.npy", "labels.npy", "logits.npy"):
        expected = hashlib.sha256((entry.path / name).read_bytes()).hexdigest()
        assert manifest["files"][name]["sha256"] == expected
    # A non-mmap read gives plain arrays with the same values; verify passes on an intact entry.
    eager = store.read(*key, mmap=False, verify=True)
    assert not isinstance(eager.features, np.memmap)
    np.testing.assert_array_equal(eager.features, features)
    store.verify(*key)


def test_float16_storage_and_chunks(tmp_path, rng):
    store = FeatureStore(tmp_path)
    features, labels, logits = _arrays(rng, n=50)
    features = features.astype(np.float64) * 100
    store.write("d", "s", "m", features=features, labels=labels, logits=logits,
                storage_dtype="float16")
    entry = store.read("d", "s", "m")
    assert entry.features.dtype == np.float16 and entry.logits.dtype == np.float16
    np.testing.assert_array_equal(entry.features, features.astype(np.float16))
    np.testing.assert_array_equal(entry.logits, logits.astype(np.float16))
    assert entry.manifest["dtype"] == "float64" and entry.manifest["storage_dtype"] == "float16"
    chunks = list(entry.iter_chunks(chunk_size=16))
    assert [len(c[0]) for c in chunks] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]),
                                  features.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), labels)


def test_bad_inputs_are_rejected(tmp_path, rng):
    store = FeatureStore(tmp_path)
    features, labels, _ = _arrays(rng)
    with pytest.raises(ValueError, match="overflows float16"):
        store.write("d", "s", "m", features=features * 1e6, labels=labels, storage_dtype="float16")
    bad = features.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        store.write("d", "s", "m", features=bad, labels=labels)
    with pytest.raises(ValueError, match="rows"):
        store.write("d", "s", "m", features=features, labels=labels, logits=features[:-1])
    with pytest.raises(ValueError, match="labels"):
        store.write("d", "s", "m", features=features, labels=labels[:-1])
    with pytest.raises(ValueError, match="computed by the store"):
        store.write("d", "s", "m", features=features, labels=labels, provenance={"num_examples": 3})
    with pytest.raises(ValueError, match="storage_dtype"):
        store.write("d", "s", "m", features=features, labels=labels, storage_dtype="int8")
    with pytest.raises(ValueError, match="non-empty"):
        store.write("", "s", "m", features=features, labels=labels)
    # Nothing was left behind by the failed writes, not even a temporary directory.
    assert store.entries() == []
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp")]
    assert leftovers == []


def test_regression_labels(tmp_path, rng):
    store = FeatureStore(tmp_path)
    features, _, _ = _arrays(rng)
    targets_1d = rng.normal(size=23)
    targets_2d = rng.normal(size=(23, 3)).astype(np.float32)
    store.write("utk", "train", "a", features=features, labels=targets_1d)
    store.write("utk", "train", "b", features=features, labels=targets_2d)
    a, b = store.read("utk", "train", "a"), store.read("utk", "train", "b")
    assert a.is_regression and b.is_regression and a.logits is None
    np.testing.assert_array_equal(a.labels, targets_1d)
    assert a.labels.dtype == np.float64
    np.testing.assert_array_equal(b.labels, targets_2d)
    assert b.labels.shape == (23, 3) and b.labels.dtype == np.float32


def test_listing_and_name_encoding(tmp_path, rng):
    store = FeatureStore(tmp_path)
    names = ["tfds:cifar10", "a/b", "..", ".hidden", "100%", "ünïcode", "plain_name-1.0"]
    for name in names:
        assert decode_name(encode_name(name)) == name
        encoded = encode_name(name)
        assert "/" not in encoded and not encoded.startswith(".")
        assert set(encoded) <= set(string.ascii_letters + string.digits + "_.-%")
    assert encode_name("tfds:cifar10") == "tfds%3Acifar10"
    assert encode_name("a/b") != encode_name("a%2Fb")
    _write(store, rng, "tfds:cifar10", "train", "resnet50")
    _write(store, rng, "tfds:cifar10", "train", "org/model")
    _write(store, rng, "tfds:cifar10", "test", "resnet50")
    _write(store, rng, "..", "train", ".hidden")
    # A leftover temporary directory and an entry without a manifest are not listed.
    (tmp_path / encode_name("tfds:cifar10") / "train" / ".tmp-resnet18-x").mkdir()
    (tmp_path / encode_name("tfds:cifar10") / "train" / "halfway").mkdir()
    assert store.entries() == sorted([
        EntryKey("tfds:cifar10", "train", "resnet50"),
        EntryKey("tfds:cifar10", "train", "org/model"),
        EntryKey("tfds:cifar10", "test", "resnet50"), EntryKey("..", "train", ".hidden")])
    assert store.datasets() == ["..", "tfds:cifar10"]
    assert store.splits("tfds:cifar10") == ["test", "train"]
    assert store.models("tfds:cifar10", "train") == ["org/model", "resnet50"]
    assert store.entries(model="resnet50") == [EntryKey("tfds:cifar10", "test", "resnet50"),
                                               EntryKey("tfds:cifar10", "train", "resnet50")]
    assert store.has("..", "train", ".hidden") and store.read("..", "train", ".hidden").labels.size
    assert not store.has("tfds:cifar10", "train", "halfway")
    with pytest.raises(StoreError, match="incomplete entry"):
        store.read("tfds:cifar10", "train", "halfway")


def test_unknown_names_list_what_exists(tmp_path, rng):
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(StoreError, match="no feature store"):
        store.read("d", "s", "m")
    _write(store, rng, "cifar", "train", "resnet50")
    with pytest.raises(StoreError, match=r"unknown dataset 'cifra'.*\['cifar'\]"):
        store.read("cifra", "train", "resnet50")
    with pytest.raises(StoreError, match=r"no split 'test'.*\['train'\]"):
        store.read("cifar", "test", "resnet50")
    with pytest.raises(StoreError, match=r"no model 'vgg'.*\['resnet50'\]"):
        store.read("cifar", "train", "vgg")
    assert not store.has("cifar", "train", "vgg")


def test_overwrite(tmp_path, rng):
    store = FeatureStore(tmp_path)
    _write(store, rng)
    with pytest.raises(StoreError, match="already exists"):
        _write(store, rng)
    new_features, _, _ = _write(store, rng, overwrite=True)
    np.testing.assert_array_equal(store.read("tfds:cifar10", "train", "resnet50").features,
                                  new_features)
    assert [p.name for p in (tmp_path / "tfds%3Acifar10" / "train").iterdir()] == ["resnet50"]


def test_failed_overwrite_keeps_the_old_entry(tmp_path, rng, monkeypatch):
    store = FeatureStore(tmp_path)
    old_features, _, _ = _write(store, rng)
    real_rename = os.rename

    def rename_failing_for_new_entry(src, dst):
        if pathlib.Path(src).name.startswith(".tmp"):
            raise OSError("disk full (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(store_lib.os, "rename", rename_failing_for_new_entry)
    with pytest.raises(StoreError, match="could not move"):
        _write(store, rng, overwrite=True)
    monkeypatch.undo()
    entry = store.read("tfds:cifar10", "train", "resnet50", verify=True)
    np.testing.assert_array_equal(entry.features, old_features)
    assert store.entries() == [EntryKey("tfds:cifar10", "train", "resnet50")]


def test_crash_before_rename_leaves_no_complete_entry(tmp_path):
    # A separate process dies (os._exit, no cleanup) after the arrays and the manifest are written
    # into the temporary directory but before it is renamed into place: the hardest crash point.
    code = textwrap.dedent(f"""
        import os, numpy as np
        from mspider_jax.features import FeatureStore, store
        store.FeatureStore._move_into_place = lambda *args: os._exit(17)
        FeatureStore({str(tmp_path)!r}).write(
            "tfds:cifar10", "train", "resnet50", features=np.ones((4, 3), np.float32),
            labels=np.arange(4))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 17, result.stderr
    split_dir = tmp_path / "tfds%3Acifar10" / "train"
    leftovers = list(split_dir.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp")
    assert (leftovers[0] / "manifest.json").is_file()  # complete inside, but never renamed
    store = FeatureStore(tmp_path)
    assert store.entries() == [] and store.datasets() == []
    assert not store.has("tfds:cifar10", "train", "resnet50")
    with pytest.raises(StoreError):
        store.read("tfds:cifar10", "train", "resnet50")
    # The store still accepts the entry afterwards.
    store.write("tfds:cifar10", "train", "resnet50", features=np.ones((4, 3), np.float32),
                labels=np.arange(4))
    assert store.has("tfds:cifar10", "train", "resnet50")


def test_truncated_npy_is_reported(tmp_path, rng):
    store = FeatureStore(tmp_path)
    _write(store, rng)
    path = store.entry_path("tfds:cifar10", "train", "resnet50") / "features.npy"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert not store.has("tfds:cifar10", "train", "resnet50")
    for mmap in (True, False):
        with pytest.raises(StoreError, match=r"features\.npy: file truncated"):
            store.read("tfds:cifar10", "train", "resnet50", mmap=mmap)
    path.write_bytes(data[:20])  # header cut short
    with pytest.raises(StoreError, match=r"features\.npy: not a valid \.npy"):
        store.read("tfds:cifar10", "train", "resnet50")
    path.unlink()
    with pytest.raises(StoreError, match=r"features\.npy: missing file"):
        store.read("tfds:cifar10", "train", "resnet50")


def _edit_manifest(store, edit):
    path = store.entry_path("tfds:cifar10", "train", "resnet50") / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(num_examples=22), r"num_examples 22"),
    (lambda m: m.update(feature_dim=4), r"expected shape \[23, 4\]"),
    (lambda m: m.update(model="resnet101"), r"model is 'resnet101' but the entry's directory"),
    (lambda m: m["files"]["logits.npy"].update(shape=[23, 6]), r"logits\.npy"),
    (lambda m: m.update(num_logits=None), "num_logits"),
    (lambda m: m.update(storage_dtype="float16"), r"features\.npy"),
    (lambda m: m.pop("created"), r"missing fields \['created'\]"),
    (lambda m: m.update(label_kind="ordinal"), "label_kind"),
])
def test_edited_manifest_is_reported(tmp_path, rng, edit, message):
    store = FeatureStore(tmp_path)
    _write(store, rng)
    _edit_manifest(store, edit)
    with pytest.raises(StoreError, match=message) as err:
        store.read("tfds:cifar10", "train", "resnet50")
    assert "manifest.json" in str(err.value)
    assert not store.has("tfds:cifar10", "train", "resnet50")


def test_invalid_json_manifest_is_reported(tmp_path, rng):
    store = FeatureStore(tmp_path)
    _write(store, rng)
    path = store.entry_path("tfds:cifar10", "train", "resnet50") / "manifest.json"
    path.write_text(path.read_text()[:-30])
    with pytest.raises(StoreError, match="manifest.json: invalid JSON"):
        store.read("tfds:cifar10", "train", "resnet50")


def test_checksums_catch_silent_changes(tmp_path, rng):
    store = FeatureStore(tmp_path)
    _write(store, rng)
    key = ("tfds:cifar10", "train", "resnet50")
    path = store.entry_path(*key) / "logits.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size and header, different value
    path.write_bytes(bytes(data))
    store.read(*key)  # the cheap checks cannot see it ...
    with pytest.raises(StoreError, match=r"logits\.npy: sha256 .* does not match"):
        store.read(*key, verify=True)  # ... the checksums do
    with pytest.raises(StoreError, match="sha256"):
        store.verify(*key)
