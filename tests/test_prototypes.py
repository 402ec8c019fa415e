"""Class prototypes and the prototype bank file."""

import numpy as np
import pytest

from mspider_jax.spider.prototypes import (TaskPrototypes, class_prototypes, load_prototype_bank,
                                           save_prototype_bank)


def test_class_prototypes_are_class_means_even_in_small_chunks(rng):
    features = rng.standard_normal((50, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 50)
    protos, counts = class_prototypes(features, labels, chunk_size=7)
    for c in range(3):
        np.testing.assert_allclose(protos[c], features[labels == c].astype(np.float64).mean(0), rtol=1e-6)
        assert counts[c] == (labels == c).sum()


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 0, 2]), "without samples"),
    (np.array([0, -1, 1]), ">= 0"),
    (np.array([0.0, 1.0, 1.0]), "integers"),
    (np.array([0, 1]), "need features"),
])
def test_class_prototypes_bad_input(labels, message):
    with pytest.raises(ValueError, match=message):
        class_prototypes(np.ones((3, 2)), labels)


def test_class_prototypes_rejects_nan():
    features = np.ones((3, 2))
    features[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 row.*first at row 1$"):
        class_prototypes(features, np.array([0, 1, 1]))


def test_bank_round_trip_and_corruption(tmp_path, rng):
    task = TaskPrototypes("t0", rng.standard_normal((3, 5)), np.array([4, 5, 6]),
                          {"m1": rng.standard_normal((3, 2))})
    path = tmp_path / "bank.npz"
    save_prototype_bank(path, [task], dtype=np.float32)
    (loaded,) = load_prototype_bank(path)
    assert loaded.name == "t0"
    np.testing.assert_allclose(loaded.generic, task.generic, rtol=1e-6)
    np.testing.assert_array_equal(loaded.counts, task.counts)
    np.testing.assert_allclose(loaded.per_model["m1"], task.per_model["m1"], rtol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt"):
        load_prototype_bank(path)
    with pytest.raises(FileNotFoundError):
        load_prototype_bank(tmp_path / "missing.npz")


def test_bank_rejects_bad_names(tmp_path):
    task = TaskPrototypes("a/b", np.ones((1, 1)), np.array([1]))
    with pytest.raises(ValueError, match="no '/'"):
        save_prototype_bank(tmp_path / "b.npz", [task])
