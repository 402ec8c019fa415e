"""Tests of the offline mini zoo: shipped artifact, library side, builders, and a tiny full build."""

import csv
import hashlib
import itertools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mspider_jax import minizoo

REPO = pathlib.Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "data" / "minizoo"


# ----------------------------------------------------------------------------------------------
# The shipped artifact (data/minizoo) and the library side (no torch).


def _manifest() -> dict:
    return json.loads((ARTIFACT / "manifest.json").read_text())


def test_shipped_files_match_manifest_hashes():
    listed = _manifest()["files"]
    on_disk = {str(p.relative_to(ARTIFACT)) for p in ARTIFACT.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == set(listed)
    for name, expected in listed.items():
        assert hashlib.sha256((ARTIFACT / name).read_bytes()).hexdigest() == expected, name
    assert minizoo.verify_artifact() == []


def test_artifact_budget_and_contents():
    manifest = _manifest()
    total = sum(p.stat().st_size for p in ARTIFACT.rglob("*") if p.is_file())
    assert total <= 40 * 2 ** 20
    names = minizoo.model_names()
    assert len(names) >= 24 and len(set(names)) == len(names)
    archs = {m["arch"] for m in manifest["models"]}
    sources = {m["source"] for m in manifest["models"]}
    assert len(archs) >= 4 and len(sources) >= 6
    for model in manifest["models"]:
        assert model["name"] == f"{model['arch']}_{model['source']}" == model["name"].lower()
        # Clearly above chance on its own source's test split.
        assert model["source_test_accuracy"] > 2 * model["chance_accuracy"], model["name"]
    assert "generic" not in names and manifest["generic"]["name"] == "generic"
    assert len(minizoo.target_names()) >= 8
    assert all(manifest["versions"].get(k) for k in ("python", "torch", "torchvision", "numpy"))


def test_ground_truth_tables_are_complete_and_consistent():
    models = minizoo.model_names()
    for kind, min_datasets in (("targets", 8), ("training", 100)):
        records = minizoo.ground_truth(kind)
        datasets = sorted({r["dataset"] for r in records})
        assert len(datasets) >= min_datasets
        assert sorted((r["dataset"], r["model"]) for r in records) == sorted(
            itertools.product(datasets, models))
        for record in records:
            seeds = np.asarray(record["seed_accuracies"], np.float64)
            assert len(seeds) == record["num_seeds"]
            assert 0 <= record["accuracy"] <= 100 and 0 <= record["linear_probe"] <= 100
            assert record["accuracy"] == pytest.approx(seeds.mean(), abs=1e-3)
            if record["num_seeds"] > 1:
                assert record["accuracy_std"] == pytest.approx(seeds.std(ddof=1), abs=1e-3)
    assert min(r["num_seeds"] for r in minizoo.ground_truth("targets")) >= 3
    # Raw CSV column names are part of the contract read by the Model Spider code.
    with open(ARTIFACT / "ground_truth_targets.csv", newline="") as handle:
        assert csv.DictReader(handle).fieldnames[:3] == ["dataset", "model", "accuracy"]
    datasets, table = minizoo.ground_truth_table("targets")
    assert table.shape == (len(datasets), len(models))
    assert datasets == [minizoo.target_dataset(t) for t in minizoo.target_names()]


def test_training_bank_has_every_task_and_model():
    bank = minizoo.training_bank()
    assert [t.name for t in bank] == minizoo.training_task_names()
    models = set(minizoo.model_names())
    manifest_tasks = {t["name"]: t for t in _manifest()["training_tasks"]}
    for task in bank:
        assert set(task.per_model) == models
        assert task.num_classes == len(manifest_tasks[task.name]["classes"])
        assert (task.counts > 0).all()
        for protos in task.per_model.values():
            assert protos.shape[0] == task.num_classes and np.isfinite(protos).all()


def test_load_target_images():
    target = minizoo.target_names()[0]
    images, labels, class_names = minizoo.load_target(target)
    entry = next(t for t in _manifest()["targets"] if t["name"] == target)
    assert images.shape == (entry["num_train"], 32, 32, 3) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < len(class_names) == entry["num_classes"]
    with pytest.raises(ValueError, match="unknown target"):
        minizoo.load_target("no_such_target")


@pytest.mark.torch
def test_registry_provider_builds_the_shipped_models():
    import torch

    from converters import zoo

    entries = zoo.get_zoo("minizoo")
    assert [e.name for e in entries] == minizoo.model_names()
    entry = entries[0]
    model = entry.build()
    images, _, _ = minizoo.load_target(minizoo.target_names()[0])
    with torch.no_grad():
        x = torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float() / 255.0
        logits = model((x - 0.5) / 0.25)
    assert logits.shape == (4, entry.num_source_classes)
    assert model.get_submodule(entry.feature_layer).in_features == entry.feature_dim
    generic = zoo.get_zoo("minizoo", include_generic=True)[-1]
    assert generic.name == "generic"


def test_missing_artifact_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no mini-zoo artifact"):
        minizoo.load_manifest(tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        minizoo.ground_truth("nonsense")


def test_acceptance_summary_on_hand_made_records():
    models = ["a", "b", "c"]
    # Target t1 ranks a < b < c, t2 reverses it: tau(t1, t2) = -1. Seeds agree exactly on t1 (tau 1);
    # on t2 seed 1 swaps b and c: concordant pairs (a,b),(a,c), discordant (b,c) -> tau = 1/3.
    seeds = {("t1", "a"): [10, 10], ("t1", "b"): [20, 20], ("t1", "c"): [30, 30],
             ("t2", "a"): [30, 30], ("t2", "b"): [22, 19], ("t2", "c"): [18, 21]}
    records = [dict(dataset=d, model=m, accuracy=float(np.mean(v)), seed_accuracies=v)
               for (d, m), v in seeds.items()]
    summary = minizoo.acceptance_summary(records, models)
    assert summary["best_model"] == {"t1": "c", "t2": "a"}
    assert summary["max_wins"] == 1 and summary["num_targets"] == 2
    # Mean accuracies t2: a 30, b 20.5, c 19.5 -> exactly reversed w.r.t. t1.
    assert summary["mean_between_target_tau"] == pytest.approx(-1.0)
    assert summary["mean_seed_tau"] == pytest.approx((1.0 + 1.0 / 3.0) / 2)


def test_records_to_table_reports_missing_pairs():
    records = [dict(dataset="d", model="a", accuracy=1.0)]
    with pytest.raises(ValueError, match="no accuracy for dataset d, model b"):
        minizoo.records_to_table(records, ["a", "b"])


# ----------------------------------------------------------------------------------------------
# Builders and architectures (torch side).


def test_derive_seed_is_sha256_of_the_joined_names():
    from converters.minizoo import datasets

    expected = int.from_bytes(hashlib.sha256(b"0/pretrain/resnet_latin").digest()[:4], "little")
    assert datasets.derive_seed(0, "pretrain", "resnet_latin") == expected


@pytest.mark.parametrize("name", ["shapes", "textures", "orientation"])
def test_procedural_domains_are_deterministic(name):
    from converters.minizoo import datasets

    first = datasets.build_domain(name, 6, seed=3)
    again = datasets.build_domain(name, 6, seed=3)
    other = datasets.build_domain(name, 6, seed=4)
    assert first.images.shape == (6 * first.num_classes, 32, 32, 3) and first.images.dtype == np.uint8
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(np.bincount(first.labels), np.full(first.num_classes, 6))
    assert not np.array_equal(first.images, other.images)


def test_split_is_stratified_shuffled_and_disjoint():
    from converters.minizoo import datasets

    images = np.zeros((40, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(40)  # tag each image to follow it through the split
    labels = np.repeat(np.arange(4), 10)
    image_set = datasets.ImageSet(images, labels, list("abcd"))
    train, test = image_set.split(0.3, seed=0)
    assert np.bincount(test.labels).tolist() == [3, 3, 3, 3]
    tags = np.concatenate([train.images[:, 0, 0, 0], test.images[:, 0, 0, 0]])
    assert sorted(tags.tolist()) == list(range(40))
    np.testing.assert_array_equal(labels[train.images[:, 0, 0, 0]], train.labels)
    assert not np.all(np.diff(train.images[:, 0, 0, 0].astype(int)) > 0)  # shuffled


def test_image_set_rejects_bad_input():
    from converters.minizoo import datasets

    with pytest.raises(ValueError, match="uint8"):
        datasets.ImageSet(np.zeros((2, 32, 32, 3), np.float32), np.zeros(2), ["a"])
    with pytest.raises(ValueError, match="labels outside"):
        datasets.ImageSet(np.zeros((2, 32, 32, 3), np.uint8), np.array([0, 3]), ["a", "b"])
    with pytest.raises(ValueError, match="unknown domain"):
        datasets.build_domain("nope", 2, 0)


def test_glyph_check_against_the_missing_glyph_rendering():
    from converters.minizoo import datasets

    font = datasets.FONT_ROOT / "truetype" / "dejavu" / "DejaVuSans.ttf"
    if not font.is_file():
        pytest.skip("fonts-dejavu-core is not installed")
    assert datasets.has_glyph(str(font), "A")
    assert not datasets.has_glyph(str(font), "\u0905")  # DejaVu has no Devanagari
    assert not datasets.has_glyph(str(font), " ")  # blank


@pytest.mark.parametrize("arch", ["resnet", "densenet", "shufflenet", "mobilenet"])
def test_architectures_features_feed_the_classifier(arch):
    import torch

    from converters.minizoo import architectures, train

    torch.manual_seed(0)
    model = architectures.build_model(arch, 7).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    features, logits = train.predict(model, images)
    head = architectures.classifier_of(model)
    assert features.shape == (5, architectures.feature_dim(model)) and logits.shape == (5, 7)
    expected = features.astype(np.float64) @ head.weight.detach().numpy().T.astype(np.float64) \
        + head.bias.detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert architectures.num_parameters(model) < 400_000


def test_linear_probe_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    from converters.minizoo import train

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 6)) * 1.5
    y_train, y_test = rng.integers(0, 4, 300), rng.integers(0, 4, 200)
    x_train = (centers[y_train] + rng.normal(size=(300, 6))).astype(np.float32)
    x_test = (centers[y_test] + rng.normal(size=(200, 6))).astype(np.float32)
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6
    reference = LogisticRegression(C=1.0, max_iter=2000, tol=1e-8).fit((x_train - mean) / scale, y_train)
    expected = 100.0 * np.mean(reference.predict((x_test - mean) / scale) == y_test)
    assert train.linear_probe(x_train, y_train, x_test, y_test) == pytest.approx(expected, abs=1.0)


# ----------------------------------------------------------------------------------------------
# The whole build on the tiny config (procedural data only), then a resumed second run.


def _run_build(workdir, output, *extra):
    env = dict(os.environ, MSPIDER_FONT_ROOT="/nonexistent/fonts",
               MSPIDER_FASHION_MNIST_ROOT="/nonexistent/fmnist")
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_minizoo.py"), "--config",
         str(REPO / "configs" / "minizoo.py") + ":tiny", "--workdir", str(workdir), "--output",
         str(output), *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _item_mtimes(workdir: pathlib.Path) -> dict[str, int]:
    """Modification times of the cached items (the package stage re-copies the artifact each run)."""
    rewritten = ("timings.json", "config.json", "artifact/models", "artifact/targets", "artifact/README",
                 "artifact/manifest", "artifact/ground_truth")
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for p in workdir.rglob("*")
            if p.is_file() and not str(p.relative_to(workdir)).startswith(rewritten)}


@pytest.mark.slow
@pytest.mark.torch
def test_tiny_build_end_to_end_and_resume(tmp_path):
    from mspider_jax.features import FeatureStore

    repo_manifest = ARTIFACT / "manifest.json"
    repo_mtime = repo_manifest.stat().st_mtime_ns if repo_manifest.exists() else None
    workdir, output = tmp_path / "work", tmp_path / "out"
    # An interrupted build: only the first two stages ran.
    first = _run_build(workdir, output, "--stages", "data,pretrain")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not output.exists()
    full = _run_build(workdir, output)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "pretrain: 2 items, 2 already done, 0 to do" in full.stderr

    manifest = json.loads((output / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((output / name).read_bytes()).hexdigest() == digest
    assert minizoo.model_names(output) == ["resnet_shapes", "mobilenet_shapes"]
    assert minizoo.target_names(output) == ["orientation"]
    [target] = manifest["targets"]
    # 160 arrows, half for testing, the training split capped at 60: 100 test images, all classes.
    assert (target["num_train"], target["num_test"], target["num_classes"]) == (60, 100, 8)
    with np.load(workdir / "data" / "targets" / "orientation_test.npz") as test:
        counts = np.bincount(test["labels"])
    assert len(counts) == 8 and counts.sum() == 100 and counts.min() >= 10
    targets = minizoo.ground_truth("targets", output)
    assert [(r["dataset"], r["model"]) for r in targets] == [
        ("mz_orientation", "resnet_shapes"), ("mz_orientation", "mobilenet_shapes")]
    assert all(r["num_seeds"] == 2 and len(r["seed_accuracies"]) == 2 for r in targets)
    training = minizoo.ground_truth("training", output)
    assert [r["dataset"] for r in training] == ["mz_task000"] * 2

    # The bank's prototypes are the class means of the features kept in the work directory.
    store = FeatureStore(workdir / "store")
    [task] = minizoo.training_bank(output)
    for model in ("generic", "resnet_shapes", "mobilenet_shapes"):
        entry = store.read("mz_task000", "train", model)
        features = np.asarray(entry.features, np.float64)
        labels = np.asarray(entry.labels)
        expected = np.stack([features[labels == c].mean(0) for c in range(task.num_classes)])
        got = task.generic if model == "generic" else task.per_model[model]
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)  # float16 storage
    np.testing.assert_array_equal(task.counts, np.bincount(labels))

    # The sources' generic prototypes (for the source-affinity prior): class means of the generic
    # encoder's features of each source's training split, here extracted independently by the
    # converters from the shipped generic weights.
    from converters import extract
    from converters.minizoo import zoo as minizoo_zoo

    with np.load(output / "source_prototypes.npz") as shipped:
        assert sorted(shipped.files) == ["shapes"]
        source_protos = shipped["shapes"]
    extract.extract_to_store([minizoo_zoo.generic_entry(output)],
                             extract.NpzSource(str(workdir / "data" / "sources" / "shapes_train.npz"), "train"),
                             store, dataset_name="src_shapes", batch_size=250, device="cpu", offline=True,
                             progress=False)
    entry = store.read("src_shapes", "train", "generic")
    features, labels = np.asarray(entry.features, np.float64), np.asarray(entry.labels)
    expected = np.stack([features[labels == c].mean(0) for c in range(labels.max() + 1)])
    assert source_protos.shape == expected.shape and source_protos.dtype == np.float32
    np.testing.assert_allclose(source_protos, expected, rtol=1e-4, atol=1e-4)

    # First use: the converters extract the shipped target images; same features as the build.
    user_store = minizoo.ensure_target_store(tmp_path / "cache", root=output, progress=False)
    for model in ("resnet_shapes", "mobilenet_shapes", "generic"):
        ours = user_store.read("mz_orientation", "train", model)
        build = store.read("mz_orientation", "train", model)
        np.testing.assert_allclose(np.asarray(ours.features), np.asarray(build.features),
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(ours.labels), np.asarray(build.labels))

    # A second run recomputes nothing.
    before = _item_mtimes(workdir)
    again = _run_build(workdir, output)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _item_mtimes(workdir) == before
    assert "finetune: 4 items, 4 already done, 0 to do" in again.stderr
    if repo_mtime is not None:
        assert repo_manifest.stat().st_mtime_ns == repo_mtime


def _sampled_task_domains(tmp_path, domain_groups) -> list[set[str]]:
    from configs import minizoo as minizoo_config
    from converters.minizoo import build

    config = minizoo_config.get_config("tiny")
    config.tasks.num_tasks = 40
    config.tasks.domains = ("shapes", "textures", "orientation")
    config.tasks.domain_groups = domain_groups
    config.tasks.max_domains = 2
    config.tasks.train_per_class, config.tasks.test_per_class = 2, 2
    builder = build.Builder(config, tmp_path / "work", tmp_path / "out")
    builder._make_tasks()
    return [{domain for domain, _, _ in spec["classes"]} for spec in builder.task_specs()]


def test_training_tasks_draw_one_domain_per_group(tmp_path):
    grouped = _sampled_task_domains(tmp_path / "grouped", (("shapes", "textures"), ("orientation",)))
    # Two groups: a task never mixes shapes with textures, and both members of a group are drawn.
    assert not any({"shapes", "textures"} <= domains for domains in grouped)
    assert {"shapes", "textures"} <= set().union(*grouped)
    assert any(len(domains) == 2 for domains in grouped)
    # Without groups (every domain its own group) shapes and textures do meet.
    ungrouped = _sampled_task_domains(tmp_path / "ungrouped", ())
    assert any({"shapes", "textures"} <= domains for domains in ungrouped)


def test_domain_groups_must_partition_the_domains(tmp_path):
    with pytest.raises(ValueError, match="partition"):
        _sampled_task_domains(tmp_path, (("shapes",), ("orientation",)))


def test_stage_times_keep_cpu_unknown_for_stages_that_predate_its_accounting(tmp_path):
    from configs import minizoo as minizoo_config
    from converters.minizoo import build

    builder = build.Builder(minizoo_config.get_config("tiny"), tmp_path, tmp_path / "out")
    (tmp_path / "timings.json").write_text(json.dumps({"wall": {"pretrain": 100.0}, "cpu": {}}))
    builder._add_time("pretrain", 1.0, 2.0)
    builder._add_time("features", 3.0, 5.0)
    builder._add_time("features", 3.0, 5.0)
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["wall"] == {"pretrain": 101.0, "features": 6.0}
    assert timings["cpu"] == {"features": 10.0}  # not pretrain: 2 s of CPU for 101 s would mislead
