"""converters/: zoo registry, feature extraction into the store, resume, sharding and the CLI.

Everything runs offline on random-weight torchvision models and mock / synthetic images.
"""

import csv
import hashlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
import torch.nn.functional as F  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from converters import extract, zoo  # noqa: E402
from converters.zoo import ModelEntry, Preprocessing  # noqa: E402
from mspider_jax import cli  # noqa: E402
from mspider_jax.features import FeatureStore  # noqa: E402

pytestmark = pytest.mark.torch

REPO = pathlib.Path(__file__).resolve().parents[1]
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# specs/model_spider.md §1.1, canonical order.
SPEC_DIMS = [("googlenet", 1024), ("inception_v3", 2048), ("resnet50", 2048), ("resnet101", 2048),
             ("resnet152", 2048), ("densenet121", 1024), ("densenet169", 1664),
             ("densenet201", 1920), ("mobilenet_v2", 1280), ("mnasnet1_0", 1280)]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # On the shared 2-core test machine, torch's 2 intra-op threads contend with other processes
    # and a tiny forward pass becomes ~40x slower; one thread keeps these tests fast.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny_entry(name="resnet18_tiny", architecture="resnet18", preprocessing=None, **kwargs):
    return ModelEntry(name=name, architecture=architecture, feature_dim=None, num_source_classes=10,
                      preprocessing=preprocessing or Preprocessing(image_size=32),
                      weights="test", **kwargs)


def _normalise(images_uint8):
    """[B, H, W, 3] uint8 -> [B, 3, H, W] float32 tensor, ImageNet-normalised (numpy float64)."""
    x = (images_uint8.astype(np.float64) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))


def _resnet_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_builds_every_single_source_architecture():
    entries = zoo.get_zoo("single_source")
    assert [(e.name, e.feature_dim) for e in entries] == SPEC_DIMS
    for entry in entries:
        # "meta" builds the real module structure without allocating or initialising weights.
        model = entry.build(random_weights=True, device="meta")
        layer = model.get_submodule(entry.feature_layer)
        assert isinstance(layer, torch.nn.Linear)
        assert layer.in_features == dict(SPEC_DIMS)[entry.name], entry.name
        assert layer.out_features == entry.num_source_classes == 1000
        assert entry.preprocessing.name == "square"
        assert entry.preprocessing.image_size == (299 if entry.name == "inception_v3" else 224)
        assert entry.weights.startswith("torchvision:") and entry.weights.endswith("IMAGENET1K_V1")
        assert entry.weights_file().parent == pathlib.Path(torch.hub.get_dir()) / "checkpoints"
    assert {e.feature_layer for e in entries} == {"fc", "classifier", "classifier.1"}
    standard = zoo.get_zoo("single_source", preprocessing="standard")
    assert [(e.preprocessing.resize_size, e.preprocessing.image_size) for e in standard][:3] == [
        (256, 224), (342, 299), (256, 224)]
    generic = zoo.generic_encoder()
    assert (generic.name, generic.feature_dim, generic.feature_layer) == ("swin_b", 1024, "head")
    assert zoo.get_zoo("generic") == [generic]
    assert zoo.generic_encoder("resnet50") == zoo.get_model("resnet50")


def test_multi_source_zoo_order_and_missing_checkpoints(tmp_path):
    published = REPO / "data" / "published" / "multi_source_finetune.csv"
    if not published.is_file():
        pytest.skip("data/published/multi_source_finetune.csv is not shipped in this checkout")
    with open(published) as f:
        rows = list(csv.DictReader(f))
    entries = zoo.get_zoo("multi_source", checkpoint_dir=tmp_path)
    assert [e.name for e in entries] == [row["model"] for row in rows[:42]]
    assert [(e.architecture, e.feature_dim) for e in entries[::14]] == [
        ("densenet201", 1920), ("inception_v3", 2048), ("resnet50", 2048)]
    with pytest.raises(zoo.WeightsNotFoundError, match=str(tmp_path / "FTD_densenet201_AID.pth")):
        entries[0].build()
    assert zoo.get_model("FTD_resnet50_Cars", checkpoint_dir=tmp_path).weights_path == str(
        tmp_path / "FTD_resnet50_Cars.pth")


def test_missing_weights_offline_names_the_file_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    entry = zoo.get_model("resnet50")
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert entry.weights_file() == expected
    with pytest.raises(zoo.WeightsNotFoundError) as err:
        entry.build(offline=True)
    assert str(expected) in str(err.value)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in str(err.value)
    monkeypatch.setenv("MSPIDER_OFFLINE", "1")
    with pytest.raises(zoo.WeightsNotFoundError):
        entry.build()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown zoo 'nope'.*single_source"):
        zoo.get_zoo("nope")
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*resnet50"):
        zoo.get_model("nope")
    with pytest.raises(ValueError, match="not in the zoo"):
        zoo.select_models(zoo.get_zoo("single_source"), ["resnet50", "vgg16"])


def test_register_model_from_checkpoint(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.shufflenet_v2_x0_5(num_classes=5)
    # A DataParallel-style checkpoint nested under "state_dict".
    state = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    path = tmp_path / "mine.pth"
    torch.save(state, path)
    try:
        entry = zoo.register_model("my_shufflenet", architecture="shufflenet_v2_x0_5",
                                   checkpoint=path)
        assert zoo.get_model("my_shufflenet") is entry
        assert entry in zoo.get_zoo("user")
        assert (entry.feature_dim, entry.feature_layer) == (1024, "fc")
        assert entry.num_source_classes is None  # read from the checkpoint when built
        assert entry.weights_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
        model = entry.build()
        assert model.fc.out_features == 5 and not model.training
        for key, value in source.state_dict().items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
        with pytest.raises(ValueError, match="already registered"):
            zoo.register_model("my_shufflenet", architecture="resnet18", checkpoint=path)
        with pytest.raises(ValueError, match="exactly one of"):
            zoo.register_model("x", architecture="resnet18")
    finally:
        zoo.unregister("my_shufflenet")
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    wrong = zoo.ModelEntry(name="w", architecture="resnet18", feature_dim=512,
                           num_source_classes=None, preprocessing=Preprocessing(), weights="x",
                           weights_path=str(bad), feature_layer="fc")
    with pytest.raises(ValueError, match="does not fit torchvision resnet18"):
        wrong.build()


def test_zoo_providers_and_register_zoo(tmp_path, monkeypatch):
    (tmp_path / "my_provider.py").write_text(
        "from converters.zoo import ModelEntry, Preprocessing\n"
        "def entries(size=32):\n"
        "    return [ModelEntry(name=f'p{i}', architecture='resnet18', feature_dim=512,\n"
        "                       num_source_classes=10,\n"
        "                       preprocessing=Preprocessing(image_size=size),\n"
        "                       weights='none') for i in range(2)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(zoo.ZOO_PROVIDERS, "tmpzoo", "my_provider:entries")
    assert "tmpzoo" in zoo.zoo_names()
    assert [e.name for e in zoo.get_zoo("tmpzoo")] == ["p0", "p1"]
    assert zoo.get_zoo("tmpzoo", size=64)[0].preprocessing.image_size == 64
    assert [e.name for e in zoo.get_zoo("my_provider:entries")] == ["p0", "p1"]
    monkeypatch.setitem(zoo.ZOO_PROVIDERS, "broken", "no_such_module_xyz:entries")
    with pytest.raises(ValueError, match="not importable"):
        zoo.get_zoo("broken")
    try:
        zoo.register_zoo("two", zoo.get_zoo("tmpzoo"))
        assert [e.name for e in zoo.get_zoo("two")] == ["p0", "p1"]
        assert zoo.get_model("p1").name == "p1"
        with pytest.raises(ValueError, match="already registered"):
            zoo.register_zoo("two", zoo.get_zoo("tmpzoo"))
    finally:
        zoo.unregister("two")


# --------------------------------------------------------------------------------------------------
# Extraction


def test_extraction_equals_a_manual_forward_pass(tmp_path):
    resnet = _tiny_entry()  # square 32: cifar10 images need no resizing
    mobilenet = _tiny_entry(name="mobilenet_tiny", architecture="mobilenet_v2",
                            preprocessing=Preprocessing(name="standard", image_size=48,
                                                        resize_size=56))
    store = FeatureStore(tmp_path / "store")
    with tfds.testing.mock_data(num_examples=10):
        source = extract.open_dataset("tfds:cifar10", "train")
        results = extract.extract_to_store([resnet, mobilenet], source, store, batch_size=4,
                                           random_weights=True, random_seed=5, progress=False)
        raw = tfds.data_source("cifar10", split="train", download=False)
        images = np.stack([raw[i]["image"] for i in range(len(raw))])
        labels = np.array([raw[i]["label"] for i in range(len(raw))])
    assert [(r.model, r.status, r.num_examples) for r in results] == [
        ("resnet18_tiny", "written", 10), ("mobilenet_tiny", "written", 10)]
    assert store.entries() == [("tfds:cifar10", "train", "mobilenet_tiny"),
                               ("tfds:cifar10", "train", "resnet18_tiny")]

    # ResNet: the hook's input of `fc` vs the network recomputed by hand, layer by layer.
    torch.manual_seed(5)
    model = torchvision.models.resnet18(num_classes=10).eval()
    entry = store.read("tfds:cifar10", "train", "resnet18_tiny", verify=True)
    with torch.no_grad():
        features = _resnet_features(model, _normalise(images))
        logits = model.fc(features)
    np.testing.assert_allclose(entry.features, features.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entry.logits, logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(entry.labels, labels)
    manifest = entry.manifest
    assert manifest["weights"] == "random-init(seed=5)" and manifest["weights_sha256"] is None
    assert manifest["layer"] == "fc" and manifest["architecture"] == "resnet18"
    assert manifest["preprocessing"]["image_size"] == 32
    assert manifest["dataset_version"] == "3.0.2" and manifest["class_subset"] is None
    assert len(manifest["class_names"]) == 10  # the mock's metadata names them "0".."9"

    # MobileNetV2 with "standard" preprocessing: resize the shorter side 32 -> 56 (bilinear,
    # antialiased), centre crop 48 (offset (56 - 48) / 2 = 4), normalise, then features -> pool.
    torch.manual_seed(5)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = F.interpolate(torch.from_numpy(images.transpose(0, 3, 1, 2)).float() / 255.0, size=(56, 56),
                      mode="bilinear", antialias=True, align_corners=False)[:, :, 4:52, 4:52]
    x = (x - torch.tensor(MEAN, dtype=torch.float32)[:, None, None]) / torch.tensor(
        STD, dtype=torch.float32)[:, None, None]
    with torch.no_grad():
        features = torch.flatten(F.adaptive_avg_pool2d(model.features(x), 1), 1)
        logits = model.classifier[1](features)
    entry = store.read("tfds:cifar10", "train", "mobilenet_tiny")
    assert entry.manifest["layer"] == "classifier.1" and entry.feature_dim == 1280
    np.testing.assert_allclose(entry.features, features.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(entry.logits, logits.numpy(), rtol=1e-4, atol=1e-4)


def _npz_dataset(path, rng, n=18, classes=6, size=32, gray=False):
    shape = (n, size, size) if gray else (n, size, size, 3)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    labels = np.arange(n) % classes
    np.savez(path, images=images, labels=labels)
    return images, labels


def test_subsampling_is_deterministic_and_recorded(tmp_path, rng):
    labels = np.repeat(np.arange(7), [5, 3, 6, 5, 5, 2, 8])
    first = extract.select_examples(labels, ways=4, shots=3, seed=1)
    again = extract.select_examples(labels, ways=4, shots=3, seed=1)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert first.class_subset == again.class_subset and len(first.class_subset) == 4
    assert np.all(np.diff(first.indices) > 0)
    kept = labels[first.indices]
    assert set(kept) == set(first.class_subset)
    for cls in first.class_subset:  # 3 shots, or the whole class when it is smaller
        assert np.sum(kept == cls) == min(3, np.sum(labels == cls))
    np.testing.assert_array_equal(np.asarray(first.class_subset)[first.remap(kept)], kept)
    draws = {tuple(extract.select_examples(labels, ways=4, seed=s).class_subset) for s in range(8)}
    assert len(draws) > 1
    everything = extract.select_examples(labels)
    np.testing.assert_array_equal(everything.indices, np.arange(len(labels)))
    assert everything.class_subset is None
    with pytest.raises(ValueError, match="integer class labels"):
        extract.select_examples(labels.astype(float), ways=2)

    path = tmp_path / "toy.npz"
    _, npz_labels = _npz_dataset(path, rng)
    store = FeatureStore(tmp_path / "store")
    source = extract.open_dataset(str(path), "train")
    extract.extract_to_store([_tiny_entry()], source, store, ways=3, shots=2, seed=4,
                             random_weights=True, progress=False)
    assert store.datasets() == ["npz:toy@w3-s2-seed4"]
    entry = store.read("npz:toy@w3-s2-seed4", "train", "resnet18_tiny")
    selection = extract.select_examples(npz_labels, ways=3, shots=2, seed=4)
    assert entry.manifest["class_subset"] == selection.class_subset
    assert entry.manifest["selection"]["indices_sha256"] == selection.indices_sha256()
    np.testing.assert_array_equal(np.sort(entry.labels), [0, 0, 1, 1, 2, 2])  # 3 ways x 2 shots
    np.testing.assert_array_equal(np.asarray(selection.class_subset)[entry.labels],
                                  npz_labels[selection.indices])


def test_second_run_skips_and_a_crash_leaves_no_complete_entry(tmp_path, rng):
    path = tmp_path / "toy.npz"
    _npz_dataset(path, rng, n=8, gray=True)
    source = extract.open_dataset(f"npz:{path}", "val")
    store = FeatureStore(tmp_path / "store")
    good = _tiny_entry(builder=lambda: torchvision.models.resnet18(num_classes=10))

    class Boom(RuntimeError):
        pass

    calls = {"n": 0}

    def exploding_builder():
        model = torchvision.models.resnet18(num_classes=10)

        def fail_on_second_batch(module, inputs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise Boom("killed midway")

        model.register_forward_pre_hook(fail_on_second_batch)
        return model

    bad = ModelEntry(name="exploding", architecture="resnet18", feature_dim=512,
                     num_source_classes=10, preprocessing=Preprocessing(image_size=32),
                     weights="test", builder=exploding_builder)
    with pytest.raises(Boom):
        extract.extract_to_store([good, bad], source, store, batch_size=4, progress=False)
    assert store.has("npz:toy", "val", "resnet18_tiny")
    assert not store.has("npz:toy", "val", "exploding")
    assert store.entries() == [("npz:toy", "val", "resnet18_tiny")]
    split_dir = store.entry_path("npz:toy", "val", "x").parent
    assert sorted(p.name for p in split_dir.iterdir()) == ["resnet18_tiny"]

    written = store.entry_path("npz:toy", "val", "resnet18_tiny") / "features.npy"
    mtime = written.stat().st_mtime_ns
    results = extract.extract_to_store([good, bad], source, store, batch_size=4, progress=False)
    assert [(r.model, r.status) for r in results] == [("resnet18_tiny", "skipped"),
                                                      ("exploding", "written")]
    assert written.stat().st_mtime_ns == mtime
    assert store.read("npz:toy", "val", "exploding").features.shape == (8, 512)
    # An existing entry made with other settings is an error, not a silent skip.
    other = _tiny_entry(preprocessing=Preprocessing(image_size=40), builder=good.builder)
    with pytest.raises(ValueError, match=r"different \['preprocessing'\]"):
        extract.extract_to_store([other], source, store, progress=False)


def test_shards_split_the_zoo(tmp_path, rng):
    assert extract.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            extract.parse_shard(bad)
    path = tmp_path / "toy.npz"
    _npz_dataset(path, rng, n=4)
    source = extract.open_dataset(str(path))
    entries = [_tiny_entry(name=f"m{i}") for i in range(5)]
    done = []
    for index in range(2):
        results = extract.extract_to_store(entries, source, tmp_path / "s", shard=(index, 2),
                                           random_weights=True, progress=False)
        done.append([r.model for r in results])
    assert done == [["m0", "m2", "m4"], ["m1", "m3"]]
    assert FeatureStore(tmp_path / "s").models("npz:toy", "train") == [f"m{i}" for i in range(5)]


def test_regression_targets_are_stored_as_floats(tmp_path, rng):
    path = tmp_path / "ages.npz"
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    targets = rng.normal(size=(5, 2))
    np.savez(path, images=images, labels=targets)
    source = extract.open_dataset(str(path))
    extract.extract_to_store([_tiny_entry()], source, tmp_path / "s", random_weights=True,
                             progress=False)
    entry = FeatureStore(tmp_path / "s").read("npz:ages", "train", "resnet18_tiny")
    assert entry.is_regression and entry.labels.dtype == np.float64
    np.testing.assert_array_equal(entry.labels, targets)
    with pytest.raises(ValueError, match="integer class labels"):
        extract.extract_to_store([_tiny_entry()], source, tmp_path / "s", ways=2, progress=False)


def test_folder_source(tmp_path):
    from PIL import Image

    for class_name, color in (("cat", 10), ("dog", 200)):
        (tmp_path / "imgs" / "train" / class_name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (20 + i, 16), (color, 0, 0)).save(
                tmp_path / "imgs" / "train" / class_name / f"{i}.png")
    Image.new("L", (8, 8), 77).save(tmp_path / "imgs" / "train" / "dog" / "gray.png")
    source = extract.open_dataset(f"folder:{tmp_path / 'imgs'}", "train")
    assert (source.name, len(source), source.class_names) == ("folder:imgs", 5, ["cat", "dog"])
    np.testing.assert_array_equal(source.labels(), [0, 0, 1, 1, 1])
    image, label = source.example(4)
    assert image.shape == (8, 8) and label == 1
    x = extract.preprocess_image(image, Preprocessing(image_size=4))
    expected = (77 / 255 - MEAN) / STD  # a constant image stays constant after resizing
    np.testing.assert_allclose(x.numpy(), np.broadcast_to(expected[:, None, None], (3, 4, 4)),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="cannot open dataset"):
        extract.open_dataset(str(tmp_path / "nothing"))


def test_cli_and_script_agree(tmp_path, rng):
    path = tmp_path / "toy.npz"
    _npz_dataset(path, rng, n=6, classes=3, size=40)
    flags = ["--zoo", "single_source", "--models", "mobilenet_v2", "--random-weights",
             "--seed", "2",
             "--dataset", f"npz:{path}", "--split", "test", "--batch-size", "4",
             "--storage-dtype", "float16", "--quiet"]
    assert cli.main(["extract", *flags, "--store", str(tmp_path / "a")]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "converters/extract.py", *flags,
                             "--store", str(tmp_path / "b")], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "written" in result.stdout and "mobilenet_v2" in result.stdout
    a = FeatureStore(tmp_path / "a").read("npz:toy", "test", "mobilenet_v2")
    b = FeatureStore(tmp_path / "b").read("npz:toy", "test", "mobilenet_v2")
    assert a.features.dtype == np.float16 and a.features.shape == (6, 1280)
    np.testing.assert_allclose(a.features.astype(np.float32), b.features.astype(np.float32),
                               rtol=1e-3, atol=1e-3)
    for field in ("weights", "preprocessing", "layer", "selection", "storage_dtype"):
        assert a.manifest[field] == b.manifest[field]
    assert a.manifest["preprocessing"]["image_size"] == 224
    # Errors are reported, not raised as tracebacks.
    assert cli.main(["extract", "--zoo", "nope", "--dataset", str(path), "--store",
                     str(tmp_path / "c")]) == 1


def test_torchvision_weights_load_from_the_hub_cache(tmp_path, monkeypatch):
    # googlenet: the published checkpoint carries the auxiliary heads and transform_input=True.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    entry = zoo.get_model("googlenet")
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True,
                                             init_weights=False).eval()
    entry.weights_file().parent.mkdir(parents=True)
    torch.save(reference.state_dict(), entry.weights_file())
    model = entry.build(offline=True)
    assert model.aux1 is None and model.aux2 is None and model.transform_input
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    assert entry.provenance()["weights_sha256"] == hashlib.sha256(
        entry.weights_file().read_bytes()).hexdigest()
