"""Model Spider training: sharding, checkpoints, resuming, and the smoke run of scripts/train.py."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import spider_minizoo
from mspider_jax import checkpointing
from mspider_jax import sharding
from mspider_jax.spider import coverage
from mspider_jax.spider import data as data_lib
from mspider_jax.spider import losses
from mspider_jax.spider import model as model_lib
from mspider_jax.spider import prototypes
from mspider_jax.spider import rank
from mspider_jax.spider import synthetic
from mspider_jax.spider import train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL_DIMS = (6, 8, 5, 7)  # the synthetic zoo (same shapes as the other spider tests)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return synthetic.write_synthetic_zoo(tmp_path_factory.mktemp("zoo"), model_dims=MODEL_DIMS)


def _smoke_config(zoo, **fields):
    """configs/spider_minizoo.py:smoke on the synthetic zoo (training tasks only), plus `fields`."""
    config = spider_minizoo.get_config("smoke")
    config.data.models = tuple(zoo["models"].split(","))
    config.data.train.bank = zoo["train_bank"]
    config.data.train.ground_truth = zoo["train_ground_truth"]
    for key, value in fields.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


@pytest.fixture(scope="module", autouse=True)
def smoke_process(request, zoo, tmp_path_factory):
    """Starts the smoke run through the script when this module starts (if the smoke test is
    selected), so that it runs beside the in-process tests of the module (2 cores)."""
    if not any(item.name == "test_smoke_run_end_to_end" for item in request.session.items):
        yield None
        return
    directory = tmp_path_factory.mktemp("smoke")
    models = "(" + ",".join(repr(m) for m in zoo["models"].split(",")) + ")"
    overrides = {
        "data.models": models,
        "data.train.bank": zoo["train_bank"],
        "data.train.ground_truth": zoo["train_ground_truth"],
        "data.targets.bank": zoo["targets_bank"],
        "data.targets.ground_truth": zoo["targets_ground_truth"],
    }
    command = [sys.executable, "scripts/train.py", "--config=configs/spider_minizoo.py:smoke",
               f"--workdir={directory / 'workdir'}",
               *(f"--config.{k}={v}" for k, v in overrides.items())]
    # LLVM optimisation level 0: a third less compile time (the process inherits 4 fake devices).
    xla_flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    with open(directory / "log.txt", "w") as log:
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    yield directory, process
    if process.poll() is None:
        process.kill()
        process.wait()


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_a_kill_reaches_the_uninterrupted_result(zoo, tmp_path):
    # The uninterrupted reference runs in this process too, so both use the same compiled programs.
    reference = train_lib.train_and_evaluate(_smoke_config(zoo), tmp_path / "reference")
    assert reference["best"]["val_weighted_tau"] is not None  # no targets: validation summary only
    workdir = tmp_path / "resumed"
    # "Kill" after step 3: the last checkpoint is step 2 (checkpoint_every_steps = 2).
    killed = train_lib.train_and_evaluate(_smoke_config(zoo, **{"train.stop_after_step": 3}),
                                          workdir)
    assert killed == {"stopped_at": 3}
    latest = checkpointing.Checkpoints(workdir / "ckpt")
    assert latest.latest_step() == 2
    latest.close()
    train_lib.train_and_evaluate(_smoke_config(zoo), workdir)
    # The killed run's record of step 3 is dropped; the resumed run logs 3 and 4 once.
    assert [r["step"] for r in _records(workdir) if "loss" in r] == [1, 2, 3, 4]

    def final_params(directory):
        checkpoints = checkpointing.Checkpoints(directory / "ckpt")
        params, _, meta = checkpoints.restore_raw(4)
        checkpoints.close()
        return params, meta

    resumed, meta = final_params(workdir)
    expected, _ = final_params(tmp_path / "reference")
    assert meta["step"] == 4
    jax.tree.map(np.testing.assert_array_equal, resumed, expected)
    losses_of = lambda d: [r["loss"] for r in _records(d) if "loss" in r]
    np.testing.assert_array_equal(losses_of(workdir)[2:], losses_of(tmp_path / "reference")[2:])


def test_sharded_batch_gives_the_same_loss_and_gradients(zoo):
    assert len(jax.devices()) == 4
    bank = prototypes.load_prototype_bank(zoo["train_bank"])
    performance = np.random.default_rng(0).normal(size=(len(bank), 4))
    taskset = data_lib.taskset_from_bank(bank, zoo["models"].split(","), performance)
    enriched = data_lib.sample_enrichment(np.random.default_rng(1), taskset.has_prototypes()[:8],
                                          2, 2)
    batch = data_lib.make_batch(taskset, range(8), model_dims=MODEL_DIMS, specific_length=5,
                                enriched=enriched)
    ranker = model_lib.Ranker(num_models=4, generic_dim=12, model_dims=MODEL_DIMS, width=16,
                              num_heads=2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(ranker)
    params = nnx.to_pure_dict(state)

    # Deterministic mode (no dropout): dropout would only add its random-bit program to compile.
    def objective(params, batch):
        return train_lib.batch_objective(graphdef, params, batch, None, losses.plackett_luce)

    grad_fn = jax.jit(jax.value_and_grad(objective))
    loss_1, grads_1 = grad_fn(*jax.device_put((params, batch), jax.devices()[0]))
    mesh = sharding.mesh()
    sharded_batch = sharding.shard_batch(batch, mesh)
    assert len(sharded_batch.generic.sharding.device_set) == 4
    loss_4, grads_4 = grad_fn(sharding.replicate(params, mesh), sharded_batch)
    assert len(loss_4.sharding.device_set) == 4  # really computed on the 4 devices
    np.testing.assert_allclose(float(loss_4), float(loss_1), rtol=1e-5)
    same = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    jax.tree.map(same, grads_4, grads_1)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.shard_batch(np.zeros((6, 2)), mesh)


def test_learning_rate_is_cosine_annealed_per_epoch():
    optim = ml_collections.ConfigDict(dict(lr=2.5e-4, final_lr=5e-6))
    schedule = train_lib.learning_rate_schedule(optim, steps_per_epoch=3, epochs=30)
    for step in (0, 2, 3, 44, 89):
        epoch = step // 3 + 1  # the spec's 1-based epoch
        expected = 5e-6 + (2.5e-4 - 5e-6) * (1 + np.cos(np.pi * (epoch - 1) / 30)) / 2
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)


def test_checkpoints_round_trip_and_best_tracking(tmp_path):
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones(2, np.float32)}}
    opt_state = (np.zeros(3, np.float32), {"count": np.array(7, np.int32)})
    checkpoints = checkpointing.Checkpoints(tmp_path / "ckpt", max_to_keep=2)
    for step in (1, 2, 3):
        checkpoints.save(step, jax.tree.map(lambda x: x * step, params), {"step": step}, opt_state)
    checkpoints.wait()
    assert checkpoints.all_steps() == [2, 3] and checkpoints.latest_step() == 3
    restored, restored_opt, meta = checkpoints.restore(params, opt_state)
    assert meta == {"step": 3}
    np.testing.assert_array_equal(restored["w"], params["w"] * 3)
    assert int(restored_opt[1]["count"]) == 7
    checkpoints.close()

    best = checkpointing.BestCheckpoint(tmp_path / "best", "tau")
    assert best.value is None
    assert best.maybe_save(1, params, {"step": 1}, 0.5)
    assert not best.maybe_save(2, params, {"step": 2}, 0.4)
    assert not best.maybe_save(3, params, {"step": 3}, float("nan"))
    assert best.maybe_save(4, params, {"step": 4}, 0.7)
    best.close()
    reopened = checkpointing.BestCheckpoint(tmp_path / "best", "tau")
    assert reopened.value == 0.7 and reopened.checkpoints.all_steps() == [4]
    reopened.close()
    with pytest.raises(FileNotFoundError):
        checkpointing.load_ranker(tmp_path / "nothing_here")


def test_paper_zoo_configs_match_the_published_tables():
    from configs import spider_multi_source, spider_single_source

    single = spider_single_source.get_config("store=/features")
    assert len(single.data.models) == 10 and single.data.train.store == "/features"
    # Validation tasks are held-out training tasks; no target is a training task.
    assert not set(single.data.val_tasks) - set(single.data.train.tasks)
    assert not set(single.data.train.tasks) & set(single.data.targets.tasks)
    multi = spider_multi_source.get_config()
    assert len(multi.data.models) == 42 and len(multi.data.train.tasks) == 96
    for config in (single, multi):
        protocol = (config.model.width, config.optim.lr, config.train.epochs,
                    config.train.batch_size)
        assert protocol == (1024, 2.5e-4, 30, 16)
        train = config.data.train
        truth = data_lib.performance_from_csv(train.ground_truth, list(train.tasks),
                                              config.data.models, task_column=train.task_column,
                                              value_column=train.value_column,
                                              where=train_lib.csv_filter(train.where))
        assert (~np.isnan(truth)).sum(axis=1).min() >= 2
        targets = data_lib.performance_from_csv(config.data.targets.ground_truth,
                                                list(config.data.targets.tasks), config.data.models)
        assert not np.isnan(targets).any()


def test_smoke_run_end_to_end(smoke_process, zoo):
    """scripts/train.py --config=configs/spider_minizoo.py:smoke end to end (started by the fixture;
    the last test of the module)."""
    directory, process = smoke_process
    process.wait(timeout=600)
    log = (directory / "log.txt").read_text()
    assert process.returncode == 0, log[-3000:]
    workdir = directory / "workdir"
    results = json.loads((workdir / "results.json").read_text())
    rows = results["rows"]
    assert "Model Spider (stage 1)" in rows and "Model Spider (stage 2, k=3)" in rows
    assert "constant prior (training tasks)" in rows
    assert any(name.startswith("Model Spider paper_compat (OPTIMISTIC") for name in rows)
    assert any("chosen on validation" in name for name in rows)
    assert results["tasks"] == ["target0", "target1", "target2"]
    for row in rows.values():
        tau = row["weighted_tau"]
        assert -1.0 <= tau["low"] <= tau["mean"] <= tau["high"] <= 1.0
    assert "latency_per_task" not in results  # smoke skips the timing (rank_task has its own tests)
    assert "| Model Spider (stage 1) |" in (workdir / "results.md").read_text()
    config = json.loads((workdir / "config.json").read_text())
    # Resolved P_h: the largest class count of the training tasks.
    assert config["model"]["specific_length"] == 9
    records = _records(workdir)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert [r["step"] for r in records if "val_weighted_tau" in r] == [2, 4]
    assert "ETA" in log and "validation weighted tau" in log
    # The validation tasks are held-out TRAINING tasks, never targets.
    assert set(results["validation_tasks"]) <= {f"train{i}" for i in range(10)}
    # Inference from the best checkpoint reproduces the stage-1 scores of the evaluation.
    ranker, loaded = checkpointing.load_ranker(workdir)
    assert loaded.model_names == list(zoo["models"].split(","))
    targets = data_lib.taskset_from_bank(prototypes.load_prototype_bank(zoo["targets_bank"]),
                                         loaded.model_names, np.zeros((3, 4)))
    stage1 = rank.score_tasks(ranker, targets, specific_length=loaded.model.specific_length)
    np.testing.assert_allclose(stage1, results["scores"]["Model Spider (stage 1)"], atol=1e-5)
    # Beside best/: the coverage reference of every task it trained or validated on (train0..9).
    reference = coverage.load_reference(workdir)
    bank = {t.name: t for t in prototypes.load_prototype_bank(zoo["train_bank"])}
    assert len(reference.task_coverage) == len(bank) == 10
    assert all(reference.assess(task.generic).value == pytest.approx(1.0, abs=1e-6) for task in bank.values())


def test_ensemble_seeds_train_members_on_shared_validation_and_evaluate_their_mean(zoo, tmp_path):
    workdir = tmp_path / "ensemble"
    config = _smoke_config(zoo, **{"train.ensemble_seeds": (3, 5),
                                   "data.targets.bank": zoo["targets_bank"],
                                   "data.targets.ground_truth": zoo["targets_ground_truth"]})
    results = train_lib.train_and_evaluate(config, workdir)
    assert json.loads((workdir / "ensemble.json").read_text()) == {"members": ["seed3", "seed5"]}
    member_configs = [json.loads((workdir / f"seed{s}" / "config.json").read_text()) for s in (3, 5)]
    assert [c["seed"] for c in member_configs] == [3, 5]
    assert member_configs[0]["data"]["val_tasks"] == member_configs[1]["data"]["val_tasks"]
    assert member_configs[0]["data"]["val_tasks"] == results["validation_tasks"]

    # The ensemble's stage-1 scores on the targets are the mean of its members' scores.
    members = [checkpointing.load_ranker(workdir / f"seed{s}") for s in (3, 5)]
    names = members[0][1].model_names
    targets = data_lib.taskset_from_bank(prototypes.load_prototype_bank(zoo["targets_bank"]), names,
                                         np.zeros((3, 4)))
    specific_length = members[0][1].model.specific_length
    mean = np.mean([rank.score_tasks(r, targets, specific_length=specific_length) for r, _ in members], axis=0)
    assert not np.allclose(*[rank.score_tasks(r, targets, specific_length=specific_length) for r, _ in members])
    np.testing.assert_allclose(results["scores"]["Model Spider (stage 1)"], mean, rtol=1e-5, atol=1e-5)
    assert (workdir / "results.md").exists()

    with pytest.raises(ValueError, match="repeats a seed"):
        train_lib.train_and_evaluate(_smoke_config(zoo, **{"train.ensemble_seeds": (1, 1)}), tmp_path / "x")
