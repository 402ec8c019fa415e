"""Ensembles of rankers (spider/ensemble.py): mean scores, the manifest, loading everywhere."""

import json

import numpy as np
import pytest
from flax import nnx

from configs import spider_minizoo
from mspider_jax import checkpointing
from mspider_jax import cli
from mspider_jax.features import FeatureStore
from mspider_jax.spider import ensemble as ensemble_lib
from mspider_jax.spider import inference
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import rank as rank_lib

ZOO = ("m0", "m1", "m2")
ZOO_DIMS = (6, 8, 5)
GENERIC_DIM = 12
SPECIFIC_LENGTH = 9
KWARGS = dict(num_models=3, model_dims=list(ZOO_DIMS), generic_dim=GENERIC_DIM, width=8, num_heads=1,
              depth=1, dropout=0.1)


def _config(specific_length=SPECIFIC_LENGTH):
    config = spider_minizoo.get_config("smoke")
    config.data.models = ZOO
    config.model.specific_length = specific_length
    config.eval.rerank_k = 2
    return config


def _save(workdir, seed, **config_changes):
    ranker = model_lib.Ranker(**KWARGS, rngs=nnx.Rngs(params=seed))
    checkpointing.save_ranker(workdir, ranker, model_kwargs=KWARGS, model_names=list(ZOO),
                              config=_config(**config_changes))
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    return root, [_save(root / f"seed{s}", s) for s in range(3)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 6)
    store = FeatureStore(tmp_path_factory.mktemp("store"))
    for model, dim in (("generic", GENERIC_DIM), *zip(ZOO, ZOO_DIMS)):
        features = rng.normal(size=(labels.size, dim)) + labels[:, None]
        store.write("task", "train", model, features=features.astype(np.float32), labels=labels)
    return store


def _prototypes(store, model):
    entry = store.read("task", "train", model)
    features, labels = np.asarray(entry.features), np.asarray(entry.labels)
    return np.stack([features[labels == c].mean(0) for c in range(3)])


def test_ensemble_scores_are_the_mean_of_its_members_at_both_stages(runs, store):
    root, members = runs
    rankers = [checkpointing.load_ranker(m)[0] for m in members]
    ensemble = ensemble_lib.RankerEnsemble(tuple(rankers))
    generic = _prototypes(store, "generic")
    rank = lambda r, k: rank_lib.rank_task(r, ZOO, generic, specific_length=SPECIFIC_LENGTH, k=k,  # noqa: E731
                                           model_prototypes=lambda m: _prototypes(store, m))
    singles = [rank(r, 0).stage1_scores for r in rankers]
    assert not np.allclose(singles[0], singles[1])  # different seeds: different scores
    np.testing.assert_allclose(rank(ensemble, 0).stage1_scores, np.mean(singles, axis=0), rtol=1e-6)

    ranked = rank(ensemble, 2)
    leaders = set(np.argsort(-ranked.stage1_scores, kind="stable")[:2].tolist())
    assert set(ranked.enriched) == leaders  # stage 2 re-ranks the ensemble's own top-k
    mask = np.zeros((1, 3), bool)
    mask[0, sorted(leaders)] = True
    task = rank_lib._one_task(ZOO, rank_lib.prototypes_lib.TaskPrototypes(
        "task", generic.astype(np.float32), np.ones(3, np.int64),
        {ZOO[i]: _prototypes(store, ZOO[i]).astype(np.float32) for i in leaders}))
    stage2 = np.mean([rank_lib.score_tasks(r, task, enriched=mask, specific_length=SPECIFIC_LENGTH,
                                           batch_size=1)[0] for r in rankers], axis=0)
    expected = np.where(mask[0], stage2, np.mean(singles, axis=0))
    np.testing.assert_allclose(ranked.scores, expected, rtol=1e-5, atol=1e-6)

    one = ensemble_lib.RankerEnsemble((rankers[1],))
    np.testing.assert_array_equal(rank(one, 0).stage1_scores, singles[1])


def test_manifest_round_trip_and_every_loader_takes_an_ensemble(runs, store, tmp_path, capsys):
    root, members = runs
    inside = ensemble_lib.write_ensemble(root, members)  # members under the ensemble directory
    assert json.loads(inside.read_text()) == {"members": ["seed0", "seed1", "seed2"]}
    outside = tmp_path / "ens"
    path = ensemble_lib.write_ensemble(outside, members[:2])
    assert json.loads(path.read_text())["members"] == [str(m.resolve()) for m in members[:2]]

    assert checkpointing.load_ranker_config(members[0]).to_dict() == checkpointing.load_ranker(members[0])[1].to_dict()
    ensemble, config = checkpointing.load_ranker(root)
    assert isinstance(ensemble, ensemble_lib.RankerEnsemble) and len(ensemble.members) == 3
    assert list(config.model_names) == list(ZOO)
    ranking = inference.rank_store_task(root, store, "task", k=2)
    rankers = [checkpointing.load_ranker(m)[0] for m in members]
    generic = _prototypes(store, "generic")
    stage1 = np.mean([rank_lib.rank_task(r, ZOO, generic, specific_length=SPECIFIC_LENGTH).stage1_scores
                      for r in rankers], axis=0)
    np.testing.assert_allclose(ranking.stage1_scores, stage1, rtol=1e-5, atol=1e-6)

    assert cli.main(["rank", "--checkpoint", str(root), "--store", str(store.root), "--dataset", "task",
                     "--rerank-k", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    api = inference.ranking_record(ranking)
    assert [row["model"] for row in printed["ranking"]] == [row["model"] for row in api["ranking"]]


def test_members_must_agree_and_exist(runs, tmp_path):
    root, members = runs
    other = _save(tmp_path / "other", 7, specific_length=SPECIFIC_LENGTH + 1)
    with pytest.raises(ValueError, match="model.specific_length"):
        ensemble_lib.write_ensemble(tmp_path / "bad", [members[0], other])
    assert not (tmp_path / "bad" / ensemble_lib.MANIFEST).exists()
    with pytest.raises(ValueError, match="repeat"):
        ensemble_lib.write_ensemble(tmp_path / "twice", [members[0], members[0]])
    with pytest.raises(ValueError, match="at least one"):
        ensemble_lib.write_ensemble(tmp_path / "none", [])
    narrow = model_lib.Ranker(**{**KWARGS, "generic_dim": GENERIC_DIM + 1}, rngs=nnx.Rngs(params=0))
    with pytest.raises(ValueError, match="generic_dim"):
        ensemble_lib.RankerEnsemble((checkpointing.load_ranker(members[0])[0], narrow))

    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / ensemble_lib.MANIFEST).write_text(json.dumps({"members": ["missing_run"]}))
    with pytest.raises(FileNotFoundError, match="missing_run"):
        checkpointing.load_ranker(gone)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / ensemble_lib.MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt ensemble manifest"):
        checkpointing.load_ranker(corrupt)
    with pytest.raises(ValueError, match="is an ensemble"):
        checkpointing.load_ranker_meta(gone)


def test_cli_writes_an_ensemble_that_ranks(runs, store, tmp_path, capsys):
    _, members = runs
    out = tmp_path / "cli_ensemble"
    assert cli.main(["ensemble", "--out", str(out), *map(str, members[1:])]) == 0
    assert "an ensemble of 2 rankers" in capsys.readouterr().out
    ensemble, _ = checkpointing.load_ranker(out)
    assert len(ensemble.members) == 2
    assert cli.main(["rank", "--checkpoint", str(out), "--store", str(store.root), "--dataset", "task",
                     "--json"]) == 0
    assert [row["model"] for row in json.loads(capsys.readouterr().out)["ranking"]] == [
        ZOO[i] for i in np.argsort(-inference.rank_store_task(out, store, "task", k=0).scores, kind="stable")]
