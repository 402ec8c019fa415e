"""The public metrics API: registry, validation errors, label remapping, jit, score_zoo, the CLI."""

import csv
import re

import jax
import numpy as np
import pytest

from mspider_jax import cli
from mspider_jax import metrics as M
from mspider_jax import sharding
from mspider_jax.metrics import _registry
from mspider_jax.metrics.synthetic import make_task

# Same shapes as test_metrics_core's TALL task, so the two files share compilations in one run.
TASK = make_task(240, 24, 5, 30, seed=3)
OTHER = make_task(240, 16, 5, 30, seed=4)  # another feature dim (its own labels are not used)
FEATURES, LOGITS, LABELS = TASK.features, TASK.logits, TASK.labels


def test_names_in_table_order_and_specs():
    names = M.names()
    mine = ["hscore", "leep", "logme", "nce", "pactran_dirichlet", "pactran_gamma", "lfc", "transrate", "emms"]
    assert [n for n in names if n in mine] == mine
    assert M.get("logme").targets == {"classification", "regression"}
    assert M.get("leep").needs == {"logits"}


def test_unknown_metric_lists_names():
    with pytest.raises(ValueError, match="unknown metric 'nope'.*hscore"):
        M.score("nope", features=FEATURES, labels=LABELS)


def test_missing_input_is_named():
    with pytest.raises(ValueError, match="'logits' is required"):
        M.score("leep", features=FEATURES, labels=LABELS)
    with pytest.raises(ValueError, match="'features' is required"):
        M.score("hscore", logits=LOGITS, labels=LABELS)


def test_bad_convention_and_option():
    with pytest.raises(ValueError, match="convention"):
        M.score("hscore", features=FEATURES, labels=LABELS, convention="google")
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        M.score("hscore", features=FEATURES, labels=LABELS, bogus=1)


def test_wrong_target_type():
    with pytest.raises(ValueError, match="regression targets are not supported"):
        M.score("hscore", features=FEATURES, labels=LABELS.astype(np.float32))
    with pytest.raises(ValueError, match="dtype"):
        M.score("hscore", features=FEATURES, labels=LABELS.astype(str))


def test_wrong_shapes():
    with pytest.raises(ValueError, match="240 rows but labels have 239"):
        M.score("hscore", features=FEATURES, labels=LABELS[:-1])
    with pytest.raises(ValueError, match="expected 2 dimensions"):
        M.score("hscore", features=FEATURES[:, 0], labels=LABELS)
    with pytest.raises(ValueError, match="1-D"):
        M.score("hscore", features=FEATURES, labels=LABELS[:, None])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs(bad):
    features = FEATURES.copy()
    features[3, 2] = bad
    with pytest.raises(ValueError, match="non-finite"):
        M.score("hscore", features=features, labels=LABELS)
    logits = LOGITS.copy()
    logits[0, 0] = bad
    with pytest.raises(ValueError, match="logits: contains 1 non-finite"):
        M.score("leep", logits=logits, labels=LABELS)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # checking a NaN or an overflow stays silent
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_all_finite_detects_every_nan_and_inf(dtype, order):
    from mspider_jax.metrics import _validation as V

    rng = np.random.default_rng(0)
    x = np.asarray(rng.standard_normal((64, 33)), dtype=dtype, order=order)
    assert V.all_finite(x)
    # Finite values whose row sums overflow to inf (in float32 and in float64) are still finite.
    huge = np.full((4, 8), np.finfo(dtype).max / 2, dtype=dtype)
    with np.errstate(over="ignore"):
        assert np.isinf(huge.sum(axis=1)).all()
    assert V.all_finite(huge)
    for where in [(0, 0), (63, 32), (17, 5)]:
        for bad in [np.nan, np.inf, -np.inf]:
            y = x.copy(order=order)
            y[where] = bad
            assert not V.all_finite(y), (where, bad)
    # +inf and -inf in one row sum to NaN: still caught; so are non-contiguous views and 1-D arrays.
    y = x.copy(order=order)
    y[2, 3], y[2, 4] = np.inf, -np.inf
    assert not V.all_finite(y)
    assert not V.all_finite(y[:, ::2]) and V.all_finite(x[:, ::2])
    assert not V.all_finite(y[2]) and V.all_finite(x[2])


def test_one_sample_class_and_too_few_classes():
    labels = LABELS.copy()
    labels[0] = 9  # a class with a single sample
    with pytest.warns(UserWarning, match="not contiguous"):
        with pytest.raises(ValueError, match="fewer than 2 samples"):
            M.score("hscore", features=FEATURES, labels=labels)
    # LEEP documents that one-sample classes are fine.
    with pytest.warns(UserWarning, match="not contiguous"):
        assert np.isfinite(M.score("leep", logits=LOGITS, labels=labels))
    with pytest.raises(ValueError, match="at least 2 classes"):
        M.score("hscore", features=FEATURES, labels=np.zeros(240, np.int64))


def test_non_contiguous_labels_are_remapped_with_a_warning():
    # Sorted-order remap: 10 < 20 < ... < 50 -> 0..4 gives the same partition and the same score.
    labels = (LABELS + 1) * 10
    with pytest.warns(UserWarning, match="remapped to 0..4"):
        remapped = M.score("hscore", features=FEATURES, labels=labels)
    assert remapped == M.score("hscore", features=FEATURES, labels=LABELS)


def test_non_finite_result_is_an_error():
    # All-zero features: LogME's evidence has log(α = 0) -> a clear error, not a NaN/inf score.
    with pytest.raises(ValueError, match="not finite"):
        M.score("logme", features=np.zeros_like(FEATURES), labels=LABELS)


@pytest.mark.parametrize("name", ["hscore"])
def test_jit_and_eager_agree(name):
    jitted = M.score(name, features=FEATURES, logits=LOGITS, labels=LABELS)
    with jax.disable_jit():
        eager = M.score(name, features=FEATURES, logits=LOGITS, labels=LABELS)
    assert eager == pytest.approx(jitted, rel=1e-6)


def test_clear_compiled_drops_the_programs_and_scores_stay_equal():
    from mspider_jax.metrics import _dispatch

    before = M.score("hscore", features=FEATURES, labels=LABELS)
    assert _dispatch._COMPILED
    M.clear_compiled()
    assert not _dispatch._COMPILED
    assert M.score("hscore", features=FEATURES, labels=LABELS) == before
    assert _dispatch._COMPILED


def test_compiled_programs_are_bounded(monkeypatch):
    from mspider_jax.metrics import _dispatch

    M.clear_compiled()
    monkeypatch.setattr(_dispatch, "MAX_COMPILED_PROGRAMS", 3)
    expected, counts = [], []
    for rows in (40, 41, 42, 43, 44):  # every N is a new specialisation of the same function
        expected.append(M.score("hscore", features=FEATURES[:rows], labels=LABELS[:rows]))
        counts.append(M.compiled_program_count())
    assert counts == [1, 2, 3, 1, 2]  # the 4th call found 3 programs cached and dropped them
    again = [M.score("hscore", features=FEATURES[:rows], labels=LABELS[:rows]) for rows in (40, 41)]
    assert again == expected[:2]
    M.score_zoo("hscore", features=[FEATURES[:45], FEATURES[:45]], labels=LABELS[:45])
    assert M.compiled_program_count() <= 3


@pytest.mark.parametrize("name", ["hscore", "logme"])
def test_score_zoo_equals_loop_and_groups_dims(name):
    zoo = [FEATURES, OTHER.features, FEATURES * np.float32(0.5) + np.float32(1.0)]
    values = M.score_zoo(name, features=zoo, labels=LABELS)
    loop = [M.score(name, features=f, labels=LABELS) for f in zoo]
    assert values.shape == (3,)
    # The lone 16-dim model takes score's own path (bit-identical); the vmapped pair may differ by the
    # float32 rounding of batched matmuls only (LogME's evidence amplifies it: its terms cancel).
    assert values[1] == loop[1]
    np.testing.assert_allclose(values, loop, rtol=1e-5)
    stacked = M.score_zoo(name, features=np.stack([zoo[0], zoo[2]]), labels=LABELS)
    np.testing.assert_allclose(stacked, [loop[0], loop[2]], rtol=1e-5)


def test_score_zoo_logits_and_bad_model():
    zoo = [LOGITS, OTHER.logits]
    loop = [M.score("leep", logits=z, labels=LABELS) for z in zoo]
    np.testing.assert_allclose(M.score_zoo("leep", logits=zoo, labels=LABELS), loop, rtol=2e-6)
    with pytest.raises(ValueError, match=r"\(model 1\).*non-finite"):
        M.score_zoo("hscore", features=[FEATURES, np.full_like(FEATURES, np.nan)], labels=LABELS)
    with pytest.raises(ValueError, match="list of"):
        M.score_zoo("hscore", features=FEATURES, labels=LABELS)  # one model must be a list or [M, N, D]


@pytest.fixture
def zoo_relative_metric():
    """A throw-away zoo-relative metric (components = mean feature, max feature), removed afterwards."""

    def components(*, features, labels, num_classes, convention, key):
        del labels, num_classes, convention, key
        return jax.numpy.stack([features.mean(), features.max()])

    spec = M.register(M.MetricSpec(
        name="_test_zoo_relative", fn=components, needs=frozenset({"features"}), is_zoo_relative=True,
        combine_zoo=lambda c: c[:, 0] - c[:, 1].min(),
    ))
    yield spec.name
    _registry._REGISTRY.pop(spec.name)


@pytest.fixture
def two_input_metric():
    """A throw-away metric needing features and logits (for per-model input checks), removed afterwards."""

    def fn(*, features, logits, labels, num_classes, convention, key):
        del labels, num_classes, convention, key
        return features.mean() + logits.mean()

    spec = M.register(M.MetricSpec(name="_test_two_inputs", fn=fn, needs=frozenset({"features", "logits"})))
    yield spec.name
    _registry._REGISTRY.pop(spec.name)


def test_score_zoo_checks_model_counts(two_input_metric):
    with pytest.raises(ValueError, match="number of models"):
        M.score_zoo(two_input_metric, features=[FEATURES], logits=[LOGITS, LOGITS], labels=LABELS)
    values = M.score_zoo(two_input_metric, features=[FEATURES, OTHER.features], logits=[LOGITS, OTHER.logits], labels=LABELS)
    np.testing.assert_allclose(values, [FEATURES.mean() + LOGITS.mean(), OTHER.features.mean() + OTHER.logits.mean()], rtol=1e-5)


def test_zoo_relative_metrics(zoo_relative_metric):
    with pytest.raises(ValueError, match="score_zoo"):
        M.score(zoo_relative_metric, features=FEATURES, labels=LABELS)
    parts = M.score_components(zoo_relative_metric, features=FEATURES, labels=LABELS)
    np.testing.assert_allclose(parts, [FEATURES.mean(), FEATURES.max()], rtol=1e-6)
    zoo = [FEATURES, OTHER.features]
    expected = np.array([f.mean() for f in zoo]) - min(f.max() for f in zoo)
    np.testing.assert_allclose(M.score_zoo(zoo_relative_metric, features=zoo, labels=LABELS), expected, rtol=1e-6)


def test_cli_npz_zoo_writes_csv(tmp_path, capsys):
    path = tmp_path / "zoo.npz"
    np.savez(path, labels=LABELS, features_a=FEATURES, logits_a=LOGITS, features_b=OTHER.features, logits_b=OTHER.logits)
    out = tmp_path / "scores.csv"
    assert cli.main(["metrics", "--npz", str(path), "--metrics", "hscore,leep", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model | hscore | leep |" in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["model"] for r in rows] == ["a", "b"]
    assert float(rows[1]["hscore"]) == pytest.approx(M.score("hscore", features=OTHER.features, labels=LABELS), rel=1e-12)
    assert float(rows[0]["leep"]) == pytest.approx(M.score("leep", logits=LOGITS, labels=LABELS), rel=2e-6)


def test_cli_reports_skipped_metrics(tmp_path, capsys):
    path = tmp_path / "one.npz"
    np.savez(path, labels=LABELS, features=FEATURES)
    assert cli.main(["metrics", "--npz", str(path), "--metrics", "hscore,leep"]) == 1  # leep needs logits
    captured = capsys.readouterr()
    assert "skipping leep: needs logits" in captured.err
    assert "| model | 2." in captured.out.replace(f"{M.score('hscore', features=FEATURES, labels=LABELS):.6g}", "2.")


def test_cli_reads_the_feature_store(tmp_path, capsys):
    from mspider_jax.features import FeatureStore

    store = FeatureStore(tmp_path / "store")
    store.write("toy", "train", "m1", features=FEATURES, labels=LABELS, logits=LOGITS)
    store.write("toy", "train", "m2", features=OTHER.features, labels=LABELS, logits=OTHER.logits)
    out = tmp_path / "s.csv"
    assert cli.main(["metrics", "--store", str(tmp_path / "store"), "--dataset", "toy", "--metrics", "hscore", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["model"] for r in rows] == ["m1", "m2"]
    assert float(rows[0]["hscore"]) == pytest.approx(M.score("hscore", features=FEATURES, labels=LABELS), rel=1e-12)


def _unaligned(x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of x whose data start 4 bytes past a 64-byte boundary."""
    buffer = np.empty(x.nbytes + 128, np.uint8)
    start = (-buffer.ctypes.data) % 64 + 4
    out = buffer[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


def test_zero_copy_ready_aligns_only_what_needs_it():
    from mspider_jax.metrics import _validation as V

    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    unaligned = _unaligned(x)
    assert unaligned.ctypes.data % 64 != 0
    ready = V.zero_copy_ready(unaligned)
    assert ready.ctypes.data % 64 == 0 and ready.flags.c_contiguous
    assert ready.dtype == x.dtype and np.array_equal(ready, x)
    assert V.zero_copy_ready(ready) is ready  # already aligned: no copy
    transposed = V.zero_copy_ready(np.asarray(ready, np.float64).T)
    assert transposed.flags.c_contiguous and transposed.ctypes.data % 64 == 0
    assert np.array_equal(transposed, x.T.astype(np.float64))


def test_cpu_backend_adopts_aligned_host_buffers_without_a_copy():
    # The premise of zero_copy_ready: an aligned NumPy buffer becomes the device buffer itself.
    from mspider_jax.metrics import _validation as V

    if jax.default_backend() != "cpu":
        pytest.skip("host buffers are adopted by the CPU backend only")
    x = np.random.default_rng(1).standard_normal((40, 32)).astype(np.float32)
    ready = V.zero_copy_ready(_unaligned(x))
    assert np.shares_memory(np.asarray(jax.device_put(ready)), ready)
    assert not np.shares_memory(np.asarray(jax.device_put(_unaligned(x))), x)


def test_per_model_inputs_reach_the_metric_aligned_and_unchanged(monkeypatch):
    from mspider_jax.metrics import _dispatch

    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 10)
    features = rng.standard_normal((40, 12)).astype(np.float32)
    expected = [M.score("hscore", features=f, labels=labels) for f in (features, 2 * features)]
    offsets = []
    original = _dispatch._ready_for_device

    def spy(arrays):
        ready = original(arrays)
        offsets.append({name: x.ctypes.data % 64 for name, x in ready.items()})
        return ready

    monkeypatch.setattr(_dispatch, "_ready_for_device", spy)
    zoo = [_unaligned(features), _unaligned(2 * features)]
    assert M.score("hscore", features=zoo[0], labels=labels) == expected[0]
    one_device = sharding.mesh([jax.devices()[0]])
    np.testing.assert_allclose(M.score_zoo("hscore", features=zoo, labels=labels, mesh=one_device), expected,
                               rtol=1e-6)
    if jax.default_backend() == "cpu":
        # score, then each of the zoo's models right before its dispatch.
        assert offsets == [{"features": 0}] * 3


def test_zoo_on_one_cpu_device_readies_the_next_model_then_waits_for_the_last(monkeypatch):
    from mspider_jax.metrics import _dispatch

    if jax.default_backend() != "cpu":
        pytest.skip("the one-in-flight schedule is for CPU devices")
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), 8)
    zoo = [rng.standard_normal((24, 5)).astype(np.float32) for _ in range(3)]
    expected = [M.score("hscore", features=f, labels=labels) for f in zoo]
    events = []
    ready, wait = _dispatch._ready_for_device, jax.block_until_ready
    monkeypatch.setattr(_dispatch, "_ready_for_device", lambda arrays: (events.append("ready"), ready(arrays))[1])
    monkeypatch.setattr(jax, "block_until_ready", lambda x: (events.append("wait"), wait(x))[1])
    scores = M.score_zoo("hscore", features=zoo, labels=labels, mesh=sharding.mesh([jax.devices()[0]]))
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert events == ["ready", "ready", "wait", "ready", "wait"]


def test_cli_passes_options_to_one_metric_only(tmp_path):
    from mspider_jax.features import FeatureStore

    expected_alpha2 = M.score_zoo("pactran_dirichlet", logits=[LOGITS, OTHER.logits], labels=LABELS, alpha=2.0)
    default = M.score_zoo("pactran_dirichlet", logits=[LOGITS, OTHER.logits], labels=LABELS)
    assert not np.allclose(expected_alpha2, default)
    hscores = [M.score("hscore", features=f, labels=LABELS) for f in (FEATURES, OTHER.features)]
    # npz path
    path = tmp_path / "zoo.npz"
    np.savez(path, labels=LABELS, features_a=FEATURES, logits_a=LOGITS, features_b=OTHER.features, logits_b=OTHER.logits)
    out = tmp_path / "npz.csv"
    assert cli.main(["metrics", "--npz", str(path), "--metrics", "hscore,pactran_dirichlet",
                     "--option", "pactran_dirichlet.alpha=2.0", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    np.testing.assert_allclose([float(r["pactran_dirichlet"]) for r in rows], expected_alpha2, rtol=1e-6)
    np.testing.assert_allclose([float(r["hscore"]) for r in rows], hscores, rtol=1e-9)  # hscore takes no alpha
    # feature-store path (the grid)
    store = FeatureStore(tmp_path / "store")
    store.write("toy", "train", "a", features=FEATURES, labels=LABELS, logits=LOGITS)
    store.write("toy", "train", "b", features=OTHER.features, labels=LABELS, logits=OTHER.logits)
    out = tmp_path / "store.csv"
    assert cli.main(["metrics", "--store", str(tmp_path / "store"), "--dataset", "toy", "--metrics", "hscore,pactran_dirichlet",
                     "--option", "pactran_dirichlet.alpha=2.0", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    np.testing.assert_allclose([float(r["pactran_dirichlet"]) for r in rows], expected_alpha2, rtol=1e-6)
    np.testing.assert_allclose([float(r["hscore"]) for r in rows], hscores, rtol=1e-9)


@pytest.mark.parametrize("option, message", [
    ("otce.solver", "METRIC.NAME=VALUE"),
    ("solver=exact", "METRIC.NAME=VALUE"),
    ("otse.solver=exact", "unknown metric 'otse'"),
    ("hscore.alpha=2", "hscore: unknown option 'alpha'; options: rtol"),
    ("leep.alpha=2", "leep is not among --metrics hscore"),
])
def test_cli_option_errors(tmp_path, option, message):
    path = tmp_path / "one.npz"
    np.savez(path, labels=LABELS, features=FEATURES)
    with pytest.raises(ValueError, match=re.escape(message)):
        cli.main(["metrics", "--npz", str(path), "--metrics", "hscore", "--option", option])


def test_cli_option_values_are_literals_or_strings():
    from mspider_jax.commands.metrics import parse_metric_options

    parsed = parse_metric_options(["otce.solver=exact", "otce.max_target_samples=None", "pactran_dirichlet.alpha=2"], None)
    assert parsed == {"otce": {"solver": "exact", "max_target_samples": None}, "pactran_dirichlet": {"alpha": 2}}


def test_console_entry_reports_bad_input_without_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MSPIDER_TRACEBACK", raising=False)
    path = tmp_path / "one.npz"
    np.savez(path, labels=LABELS, features=FEATURES)
    assert cli.console_main(["metrics", "--npz", str(path), "--metrics", "hscre"]) == 2
    assert "mspider: error: unknown metric 'hscre'" in capsys.readouterr().err
    assert cli.console_main(["metrics", "--npz", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err
    monkeypatch.setenv("MSPIDER_TRACEBACK", "1")
    with pytest.raises(ValueError, match="hscre"):
        cli.console_main(["metrics", "--npz", str(path), "--metrics", "hscre"])
