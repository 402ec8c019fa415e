"""Issue 7: ranking a new task (API and CLI), adding PTMs to a trained ranker, label sources."""

import json
import math

import jax
import numpy as np
import pytest
import scipy.optimize
from flax import nnx

from configs import spider_minizoo
from mspider_jax import checkpointing
from mspider_jax import cli
from mspider_jax.features import FeatureStore
from mspider_jax.spider import data as data_lib
from mspider_jax.spider import inference
from mspider_jax.spider import label_sources
from mspider_jax.spider import linear_probe
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import prototypes
from mspider_jax.spider import rank as rank_lib
from mspider_jax.spider import synthetic

ZOO = ("m0", "m1", "m2", "m3")
ZOO_DIMS = (6, 8, 5, 9)  # m3 is wider than the others: adding it grows the projection's Dmax
GENERIC_DIM = 12
SPECIFIC_LENGTH = 9
RANKER = dict(generic_dim=GENERIC_DIM, width=8, num_heads=1, depth=1, dropout=0.1)


def _kwargs(num_models):
    return dict(num_models=num_models, model_dims=list(ZOO_DIMS[:num_models]), **RANKER)


def _flat(ranker):
    params = nnx.to_pure_dict(nnx.split(ranker)[1])
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def task_store(tmp_path_factory):
    """A store with one task: 3 classes x 5 samples, the generic encoder and the 4 PTMs."""
    root = tmp_path_factory.mktemp("store")
    store = FeatureStore(root)
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 5)
    for model, dim in (("generic", GENERIC_DIM), *zip(ZOO, ZOO_DIMS)):
        features = rng.normal(size=(labels.size, dim)) + labels[:, None]
        store.write("task", "train", model, features=features.astype(np.float32), labels=labels)
    return store


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 'trained' run of the zoo m0..m2: a randomly initialised ranker saved like training does."""
    workdir = tmp_path_factory.mktemp("run")
    ranker = model_lib.Ranker(**_kwargs(3), rngs=nnx.Rngs(params=4))
    config = spider_minizoo.get_config("smoke")
    config.data.models = ZOO[:3]
    config.model.specific_length = SPECIFIC_LENGTH
    config.eval.rerank_k = 2
    checkpointing.save_ranker(workdir, ranker, model_kwargs=_kwargs(3), model_names=list(ZOO[:3]),
                              config=config)
    return workdir


# --------------------------------------------------------------------------------------------------
# Ranking a new task


def test_rank_api_and_cli_agree_and_only_the_top_k_are_fetched(task_store, run_dir, capsys):
    ranker, config = checkpointing.load_ranker(run_dir)
    names = list(config.model_names)
    generic = task_store.read("task", "train", "generic")
    features = np.asarray(generic.features)
    labels = np.asarray(generic.labels)
    calls = []

    def fetch(model):
        calls.append(model)
        return task_store.read("task", "train", model).features

    # Labels are any integers (remapped in sorted order): 7 < 30 < 40 are classes 0, 1, 2.
    ranking = inference.rank_features(ranker, names, features, np.array([30, 7, 40])[labels],
                                      specific_length=SPECIFIC_LENGTH, k=2, fetch_features=fetch)
    leaders = [names[i] for i in np.argsort(-ranking.stage1_scores, kind="stable")[:2]]
    assert sorted(calls) == sorted(leaders)  # stage 2 ran only the stage-1 top-k
    np.testing.assert_array_equal(ranking.stages, [2 if n in leaders else 1 for n in names])
    assert (ranking.forward_passes, ranking.metric_forward_passes) == (3, 3)

    # The same as rank_task on class means computed here (class c = the c-th smallest label).
    order = [1, 0, 2]
    means = lambda x: np.stack([np.asarray(x)[labels == c].mean(0) for c in order])  # noqa: E731
    direct = rank_lib.rank_task(
        ranker, names, means(features), specific_length=SPECIFIC_LENGTH, k=2,
        model_prototypes=lambda m: means(task_store.read("task", "train", m).features))
    np.testing.assert_allclose(ranking.scores, direct.scores, rtol=1e-5, atol=1e-6)
    assert ranking.enriched == direct.enriched

    # The CLI (store fetcher, the run's P_h and generic encoder) prints the same ranking.
    assert cli.main(["rank", "--checkpoint", str(run_dir), "--store", str(task_store.root),
                     "--dataset", "task", "--rerank-k", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    api = inference.ranking_record(ranking)
    assert [row["model"] for row in printed["ranking"]] == [row["model"] for row in api["ranking"]]
    np.testing.assert_allclose([row["score"] for row in printed["ranking"]],
                               [row["score"] for row in api["ranking"]], rtol=1e-5, atol=1e-6)
    assert [row["stage"] for row in printed["ranking"]] == [row["stage"] for row in api["ranking"]]
    assert (printed["forward_passes"], printed["metric_forward_passes"]) == (3, 3)
    # Stage 1 only: no PTM is run.
    calls.clear()
    stage1 = inference.rank_features(ranker, names, features, labels,
                                     specific_length=SPECIFIC_LENGTH, k=0, fetch_features=fetch)
    assert calls == [] and stage1.forward_passes == 1 and set(stage1.stages) == {1}
    assert cli.main(["rank", "--checkpoint", str(run_dir), "--store", str(task_store.root),
                     "--dataset", "task", "--rerank-k", "0"]) == 0
    table = capsys.readouterr().out
    assert "cost: 1 forward passes" in table and "needs 3" in table


def test_rank_features_rejects_bad_input(run_dir):
    ranker, config = checkpointing.load_ranker(run_dir)
    names = list(config.model_names)
    features = np.zeros((4, GENERIC_DIM), np.float32)
    with pytest.raises(ValueError, match="integer class ids"):
        inference.rank_features(ranker, names, features, np.array([0.5, 1, 1, 0]),
                                specific_length=SPECIFIC_LENGTH)
    with pytest.raises(ValueError, match="columns"):
        inference.rank_features(ranker, names, features[:, :3], np.array([0, 1, 1, 0]),
                                specific_length=SPECIFIC_LENGTH)
    with pytest.raises(ValueError, match="needs model_prototypes"):
        inference.rank_features(ranker, names, features, np.array([0, 1, 1, 0]),
                                specific_length=SPECIFIC_LENGTH, k=1)


# --------------------------------------------------------------------------------------------------
# Adding a PTM


def test_add_model_cli_fits_only_the_new_rows(tmp_path, run_dir):
    """m3 joins the run of m0..m2: every old parameter is bit-identical, the new rows are fitted."""
    tasks, accuracy = synthetic.synthetic_tasks(10, ZOO_DIMS, generic_dim=GENERIC_DIM, seed=5)
    bank, truth = tmp_path / "train.npz", tmp_path / "train.csv"
    prototypes.save_prototype_bank(bank, tasks, dtype=np.float32)
    synthetic.write_ground_truth_csv(truth, [t.name for t in tasks], ZOO, accuracy)
    out = tmp_path / "grown"
    assert cli.main(["add-model", "--checkpoint", str(run_dir), "--models", "m3",
                     "--workdir", str(out), "--set", f"data.train.bank={bank}",
                     "--set", f"data.train.ground_truth={truth}", "--epochs", "2",
                     "--no-eval"]) == 0
    old, _ = checkpointing.load_ranker(run_dir)
    grown, config = checkpointing.load_ranker(out)
    assert list(config.model_names) == list(ZOO) and grown.model_dims == ZOO_DIMS
    before, after = _flat(old), _flat(grown)
    assert set(before) == set(after)
    per_model = {"['model_tokens']['embedding']", "['model_projections']['kernel']",
                 "['model_projections']['bias']"}
    for name, value in before.items():
        if name in per_model:
            assert after[name].shape[0] == 4
            kept = after[name][tuple(slice(0, s) for s in value.shape)]
            np.testing.assert_array_equal(kept, value, err_msg=name)
        else:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    kernel = after["['model_projections']['kernel']"]
    assert kernel.shape == (4, 9, 8)
    assert not kernel[:3, 8:].any()  # old models' new padding column is zero
    assert not kernel[3, 9:].any() and kernel[3].any()
    # The new rows moved away from their initialisation (same seed as the fit).
    from mspider_jax.spider import grow

    initial, _, paths = grow.grow_ranker(old, _kwargs(3), [ZOO_DIMS[3]], seed=0)
    assert set(paths) == per_model
    assert not np.array_equal(_flat(initial)["['model_tokens']['embedding']"][3],
                              after["['model_tokens']['embedding']"][3])
    summary = json.loads((out / "grow.json").read_text())
    assert summary["added_models"] == ["m3"] and len(summary["history"]) == 2
    with pytest.raises(ValueError, match="already in the zoo"):
        grow.add_models_to_run(run_dir, ["m1"], tmp_path / "again")


# --------------------------------------------------------------------------------------------------
# Label sources


def test_borda_count_by_hand():
    scores = np.array([[0.1, 0.5, 0.5, 0.9, np.nan],   # points 0, 1.5, 1.5, 3
                       [3.0, 1.0, 2.0, 0.0, np.nan],   # points 3, 1, 2, 0
                       [-1.0, -2.0, -4.0, -3.0, np.nan]])  # points 3, 2, 0, 1
    np.testing.assert_array_equal(label_sources.borda_count(scores)[:4], [6.0, 4.5, 3.5, 4.0])
    assert np.isnan(label_sources.borda_count(scores)[4])
    with pytest.raises(ValueError, match="same models"):
        label_sources.borda_count(np.array([[1.0, 2.0, np.nan], [1.0, 2.0, 3.0]]))


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    """4 classes x 2 samples; the source logits of 4 models make NCE and LEEP known by hand.

    Logits are 200 * indicator rows: the softmax is exactly one-hot (or 50/50 on a tie), the argmax
    picks the first maximum. Source class z of each sample:
      best  : z = y                                   NCE 0,          LEEP 0
      split : z = y, but sample 0 is 50/50 on z 0|1   NCE 0,          LEEP (log .6 + 2 log .8) / 8
      merge : classes 2 and 3 both map to z = 2       NCE -log(2)/2,  LEEP log(.5) / 2
      const : z = 0 for every sample                  NCE -log 4,     LEEP -log 4
    (split: p(y=0|z=1) = .5/2.5 = .2, p(y=1|z=1) = .8; sample 0 expects .5*1 + .5*.2 = .6.)
    """
    root = tmp_path_factory.mktemp("hand")
    store = FeatureStore(root)
    labels = np.repeat(np.arange(4), 2)
    one_hot = lambda z: 200.0 * np.eye(4)[z]  # noqa: E731
    logits = {"best": one_hot(labels), "merge": one_hot([0, 0, 1, 1, 2, 2, 2, 2]),
              "const": one_hot(np.zeros(8, int))}
    logits["split"] = one_hot(labels)
    logits["split"][0, 1] = 200.0
    rng = np.random.default_rng(0)
    for model, model_logits in logits.items():
        store.write("hand", "train", model, features=rng.normal(size=(8, 3)).astype(np.float32),
                    labels=labels, logits=model_logits.astype(np.float32))
    return store


def test_metrics_borda_labels_on_a_hand_made_store(hand_store, tmp_path):
    models = ["const", "best", "merge", "split", "absent"]
    scores = label_sources.task_metric_scores(hand_store, "hand", models, metrics=("nce", "leep"))
    expected = np.array([[-math.log(4), 0.0, -math.log(2) / 2, 0.0, np.nan],
                         [-math.log(4), 0.0, math.log(0.5) / 2,
                          (math.log(0.6) + 2 * math.log(0.8)) / 8, np.nan]])
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    # Borda: NCE gives const 0, merge 1, best and split 2.5 each (tie); LEEP 0, 3, 1, 2.
    options = label_sources.LabelOptions(metrics=("nce", "leep"))
    labels, info = label_sources.compute_labels(hand_store, ["hand"], models, "metrics_borda",
                                                options=options, cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(labels[0, :4], [0.0, 5.5, 2.0, 4.5], atol=1e-9)
    assert np.isnan(labels[0, 4]) and info["computed"] == 1
    # Cached per task: the second call reads the file; other options are another entry.
    again, info = label_sources.compute_labels(hand_store, ["hand"], models, "metrics_borda",
                                               options=options, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again, labels)
    assert info["computed"] == 0 and len(list(tmp_path.glob("metrics_borda-*.json"))) == 1
    nce_only = label_sources.LabelOptions(metrics=("nce",))
    _, info = label_sources.compute_labels(hand_store, ["hand"], models, "metrics_borda",
                                           options=nce_only, cache_dir=tmp_path, progress=False)
    assert info["computed"] == 1
    # relabel (what train_lib.load_data calls) replaces the training labels, and rank labels
    # keep the tie of equal Borda totals.
    task = prototypes.TaskPrototypes("hand", np.zeros((4, 2), np.float32), np.full(4, 2))
    taskset = data_lib.TaskSet(tuple(models), [task], np.zeros((1, 5)))
    data_config = {"label_source": "metrics_borda",
                   "label_options": {"store": str(hand_store.root), "split": "train",
                                     "store_prefix": "", "cache_dir": str(tmp_path),
                                     "metrics": ("nce", "leep"), "convention": "paper"}}
    relabelled = label_sources.relabel(taskset, data_config)
    np.testing.assert_array_equal(relabelled.performance, labels)
    with pytest.raises(ValueError, match="label_options.store"):
        label_sources.relabel(taskset, {**data_config, "label_options": {"store": ""}})
    with pytest.raises(ValueError, match="needs"):
        label_sources.task_metric_scores(hand_store, "hand", models, metrics=("otce",))


def _reference_probe(features, labels, regularization):
    """float64 scipy L-BFGS-B fit of the probe objective (module docstring of linear_probe)."""
    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    num, dim = z.shape
    classes = labels.max() + 1
    one_hot = np.eye(classes)[labels]
    penalty = 1.0 / (2.0 * regularization * num)

    def objective(theta):
        w, b = theta[:dim * classes].reshape(dim, classes), theta[dim * classes:]
        logits = z @ w + b
        top = logits.max(1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(1))
        probabilities = np.exp(logits - log_norm[:, None])
        value = np.mean(log_norm - logits[np.arange(num), labels]) + penalty * np.sum(w ** 2)
        residual = (probabilities - one_hot) / num
        grad = np.concatenate([(z.T @ residual + 2 * penalty * w).ravel(), residual.sum(0)])
        return value, grad

    result = scipy.optimize.minimize(objective, np.zeros(dim * classes + classes), jac=True,
                                     method="L-BFGS-B",
                                     options=dict(gtol=1e-12, ftol=1e-15, maxiter=10000))
    return (result.x[:dim * classes].reshape(dim, classes), result.x[dim * classes:], result.fun,
            (z, features.mean(0), features.std(0) + 1e-6))


@pytest.mark.parametrize("spread", [4.0, 0.3], ids=["separable", "overlapping"])
def test_linear_probe_matches_a_scipy_reference(spread):
    rng = np.random.default_rng(3)
    labels = np.arange(30) % 3
    features = spread * rng.normal(size=(3, 4))[labels] + rng.normal(size=(30, 4))
    w, b, value = linear_probe.fit_softmax_regression(features, labels, regularization=0.5)
    w_ref, b_ref, value_ref, _ = _reference_probe(features, labels, 0.5)
    assert value == pytest.approx(value_ref, rel=1e-5)
    np.testing.assert_allclose(w, w_ref, atol=2e-3)
    np.testing.assert_allclose(b - b.mean(), b_ref - b_ref.mean(), atol=2e-3)
    # Held-out accuracy: fit on the split's fitting part, score the held-out part.
    held_out = linear_probe.held_out_split(labels, 0.3, seed=2)
    w_fit, b_fit, _, (_, mean, scale) = _reference_probe(features[~held_out], labels[~held_out],
                                                         0.5)
    predicted = (((features[held_out] - mean) / scale) @ w_fit + b_fit).argmax(1)
    expected = 100.0 * np.mean(predicted == labels[held_out])
    if spread > 1:
        assert expected == 100.0
    # The fit's tolerance: one compiled program for the whole test.
    accuracy = linear_probe.linear_probe_accuracies([features], labels, held_out_fraction=0.3,
                                                    regularization=0.5, seed=2, tol=1e-5,
                                                    max_iter=500)
    np.testing.assert_allclose(accuracy, [expected])


def test_held_out_split_is_stratified():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1 + [3] * 2)
    held_out = linear_probe.held_out_split(labels, 0.3, seed=0)
    # round(3.0) = 3, round(0.9) = 1, a lone sample is only fitted, round(0.6) = 1.
    assert [int(held_out[labels == c].sum()) for c in range(4)] == [3, 1, 0, 1]
    np.testing.assert_array_equal(held_out, linear_probe.held_out_split(labels, 0.3, seed=0))
    with pytest.raises(ValueError, match="held_out_fraction"):
        linear_probe.held_out_split(labels, 1.0)
