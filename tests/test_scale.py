"""Batch evaluation at scale: device-sharded zoo scoring, streaming statistics, multi-process runs.

* with 4 (fake CPU) devices, `score_zoo` over the 4-device mesh (model axis split, padded 3 -> 4)
  equals `score_zoo` on a 1-device mesh for every registered metric;
* `score_streaming` equals the in-memory `score` to 1e-6 relative in float64 on feature-store entries
  whose row count leaves a ragged final chunk, for every metric with a streaming path, and never
  reads more than a chunk of rows at once;
* two processes joined by `jax.distributed` on localhost (2 CPU devices each) give the same grid as
  this process with its 4 devices.
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest

from mspider_jax import metrics as M
from mspider_jax import sharding
from mspider_jax.features import FeatureStore
from mspider_jax.metrics import grid
from mspider_jax.metrics import streaming as S
from mspider_jax.metrics.synthetic import make_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough to compile fast; N >= 200 for ETran's energy term, D small (PCA options below).
N, D, C, CS = 203, 12, 4, 9
TASK = make_task(N, D, C, CS, seed=11, separation=1.5)
LABELS = TASK.labels
# Options that let the PCA-based metrics run at D = 12 (their default is 64 components).
SMALL_OPTIONS = {"gbc": {"num_components": 6}, "ncti": {"num_components": 6}}
# Fewer iterations for the slow iterative metrics in the sharding test (same code paths).
FAST_OPTIONS = {"nleep": {"num_components": 4, "max_iter": 5}, "pactran_gauss": {"max_iterations": 5}}


@pytest.fixture(autouse=True, scope="module")
def unoptimised_compiles():
    """XLA without most optimisations: programs compile several times faster. Every comparison here is
    between two paths compiled the same way (sharded vs one device, streamed vs in memory)."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _zoo(num_models: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Per-model inputs of a zoo sharing TASK's labels: noised, rescaled copies of its arrays."""
    rng = np.random.default_rng(seed)
    zoo = {"features": [], "logits": [], "source_features": []}
    for m in range(num_models):
        scale = np.float32(1.0 + 0.2 * m)
        zoo["features"].append((TASK.features * scale + 0.1 * m * rng.standard_normal(TASK.features.shape)).astype(np.float32))
        zoo["logits"].append((TASK.logits + 0.3 * m * rng.standard_normal(TASK.logits.shape)).astype(np.float32))
        zoo["source_features"].append((TASK.source_features * scale).astype(np.float32))
    return zoo


def _zoo_kwargs(name: str, zoo: dict[str, list[np.ndarray]]) -> dict:
    spec = M.get(name)
    kwargs = {k: v for k, v in zoo.items() if k in spec.needs}
    if "source_labels" in spec.needs:
        kwargs["source_labels"] = TASK.source_labels
    return {**kwargs, **SMALL_OPTIONS.get(name, {}), **FAST_OPTIONS.get(name, {})}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


# ------------------------------------------------------------------------------------------------
# Streaming statistics.

# (metric, options): every streaming metric, conventions and options that change the streamed path.
STREAM_CASES = [(name, {}) for name in S.streaming_names()] + [
    ("leep", {"convention": "model_spider"}),
    ("lfc", {"convention": "model_spider", "max_samples": 150}),  # subset drawn as a row mask
    ("transrate", {"form": "official"}),
    ("gbc", {"convention": "model_spider", "pca_solver": "eigh"}),  # full class scatters, exact PCA
]


class _RecordingRows:
    """An array-like over a memmap that records how many rows each read asks for."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, index):
        block = self.array[index]
        self.reads.append(len(block))
        return block


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    store = FeatureStore(tmp_path_factory.mktemp("store"))
    store.write("task", "train", "model", features=TASK.features, labels=LABELS, logits=TASK.logits)
    return store.read("task", "train", "model")


@pytest.mark.parametrize("name, options", STREAM_CASES, ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in STREAM_CASES])
def test_streaming_equals_in_memory_float64(name, options, entry):
    options = {**SMALL_OPTIONS.get(name, {}), **options}
    spec = M.get(name)
    inputs = {k: _RecordingRows(getattr(entry, k)) for k in ("features", "logits") if k in spec.needs}
    chunk = 64  # 203 rows: chunks of 64, 64, 64 and a ragged 11
    progress = []
    streamed = S.score_streaming(name, labels=entry.labels, chunk_size=chunk, dtype=np.float64, progress=progress.append, **inputs, **options)
    in_memory = M.score(name, labels=np.asarray(entry.labels), **{k: np.asarray(v.array, np.float64) for k, v in inputs.items()}, **options)
    assert _rel(streamed, in_memory) < 1e-6, (streamed, in_memory)
    reads = [r for v in inputs.values() for r in v.reads]
    assert max(reads) <= chunk and progress  # row chunks only, one progress line per pass


def test_streaming_default_dtype_and_sample_axis_mesh(entry):
    # float32 chunks (the store's dtype) agree with the float32 in-memory path to float32 rounding,
    # and splitting each chunk's rows over 4 devices gives the same statistics.
    in_memory = M.score("hscore", features=np.asarray(entry.features), labels=LABELS)
    assert _rel(S.score_streaming("hscore", entry, chunk_size=50), in_memory) < 1e-6
    assert _rel(S.score_streaming("hscore", entry, chunk_size=50, mesh=sharding.mesh()), in_memory) < 1e-6


def test_streaming_logme_regression_and_wide_fallback(rng):
    targets = (TASK.features[:, :2] @ rng.standard_normal((2, 3)) + rng.standard_normal((N, 3))).astype(np.float64)
    features = TASK.features.astype(np.float64)
    assert _rel(S.score_streaming("logme", features=features, labels=targets, chunk_size=64), M.score("logme", features=features, labels=targets)) < 1e-6
    wide = rng.standard_normal((20, 30))  # N <= D: read whole (N·D <= D²), the kernel path
    labels = np.arange(20) % 3
    assert _rel(S.score_streaming("logme", features=wide, labels=labels, chunk_size=8), M.score("logme", features=wide, labels=labels)) < 1e-9


def test_streaming_errors(entry):
    with pytest.raises(ValueError, match="no streaming path.*hscore"):
        S.score_streaming("nleep", entry)
    with pytest.raises(ValueError, match="non-finite"):
        bad = np.asarray(entry.features).copy()
        bad[150, 3] = np.nan
        S.score_streaming("hscore", features=bad, labels=LABELS, chunk_size=64)
    with pytest.raises(ValueError, match="rows but labels"):
        S.score_streaming("hscore", features=np.asarray(entry.features)[:-1], labels=LABELS)
    with pytest.raises(ValueError, match="randomized"):
        S.score_streaming("gbc", entry, num_components=6, pca_solver="randomized")


# ------------------------------------------------------------------------------------------------
# Sharded zoo scoring.


def test_four_fake_devices_are_available():
    assert jax.device_count() == 4  # tests/conftest.py sets the XLA flag before jax is imported


@pytest.mark.parametrize("name", M.names())
def test_sharded_zoo_equals_single_device(name):
    # float64 inputs: float32 products of different batch sizes may round differently (LogME turns
    # that into ~3e-6); in float64 the sharded and single-device paths agree to rounding.
    # 3 models, padded to 4; N-LEEP (not jittable: lone models, one per device, each compiling its
    # own eager ops) gets 2 to keep the test quick.
    num_models = 2 if name == "nleep" else 3
    zoo = {k: [a.astype(np.float64) for a in v] for k, v in _zoo(num_models).items()}
    kwargs = _zoo_kwargs(name, zoo)
    sharded = M.score_zoo(name, labels=LABELS, mesh=sharding.mesh(), **kwargs)
    assert sharded.shape == (num_models,)
    assert np.all(np.isfinite(sharded))
    if M.get(name).is_zoo_relative:  # only defined across the zoo: the zoo on one device
        single = M.score_zoo(name, labels=LABELS, mesh=sharding.mesh(jax.devices()[:1]), **kwargs)
    else:  # one model at a time on the default device (shares compilations with the streaming tests)
        per_model = {k: v for k, v in kwargs.items() if k in ("features", "logits", "source_features")}
        shared = {k: v for k, v in kwargs.items() if k not in per_model}
        single = [M.score(name, labels=LABELS, **{k: v[m] for k, v in per_model.items()}, **shared) for m in range(num_models)]
    assert _rel(sharded, single) < 1e-9, (sharded, single)



_SEVERAL_MODELS_PER_DEVICE = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import numpy as np
    from mspider_jax import metrics as M, sharding
    import jax
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 50, 1000)
    zoo = [rng.normal(size=(1000, 64)).astype(np.float32) for m in range(8)]
    for name in ("hscore", "logme", "sfda"):
        sharded = M.score_zoo(name, features=zoo, labels=labels, mesh=sharding.mesh())
        single = M.score_zoo(name, features=zoo, labels=labels, mesh=sharding.mesh(jax.devices()[:1]))
        assert np.allclose(sharded, single, rtol=1e-5), (name, sharded, single)
    print("ok")
""")


def test_several_models_per_fake_cpu_device_do_not_deadlock():
    """8 models on 4 CPU devices of one host (2 per device): batched LAPACK calls on every
    device at once deadlocked the shared thread pool; a subprocess turns a hang into a failure."""
    result = subprocess.run([sys.executable, "-c", _SEVERAL_MODELS_PER_DEVICE], capture_output=True,
                            text=True, timeout=180, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]

def test_model_axis_is_split_over_the_mesh():
    mesh = sharding.mesh()
    assert sharding.round_up(3, mesh) == 4
    np.testing.assert_array_equal(sharding.local_rows(8, mesh), np.arange(8))  # one process: every row
    seen = []
    array = sharding.array_from_rows((8, 2), np.float32, mesh, lambda rows: (seen.append(rows.tolist()), np.repeat(rows[:, None], 2, 1))[1])
    assert sorted(seen) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # one call per device, whole rows
    assert {shard.device for shard in array.addressable_shards} == set(jax.devices())
    np.testing.assert_array_equal(sharding.gather(array)[:, 0], np.arange(8))


def test_rows_sent_one_by_one_are_stacked_on_their_devices():
    mesh = sharding.mesh()
    seen = []
    array = sharding.array_from_row_arrays(
        (8, 3), np.float32, mesh, lambda row: (seen.append(row), np.full(3, row, np.float64))[1]
    )
    assert sorted(seen) == list(range(8))  # each row loaded once
    assert array.dtype == np.float32 and array.shape == (8, 3)
    for shard in array.addressable_shards:  # each device holds its own contiguous rows
        rows = np.arange(8)[shard.index[0]]
        np.testing.assert_array_equal(np.asarray(shard.data), np.repeat(rows[:, None], 3, 1).astype(np.float32))
    assert {shard.device for shard in array.addressable_shards} == set(jax.devices())


def test_lone_models_spread_over_devices_and_match_score():
    # Two different feature dims: two lone models on devices 0 and 1, each bit-identical to `score`.
    features = [TASK.features, TASK.features[:, : D - 2]]
    zoo = M.score_zoo("hscore", features=features, labels=LABELS)
    loop = [M.score("hscore", features=f, labels=LABELS) for f in features]
    np.testing.assert_array_equal(zoo, loop)


# ------------------------------------------------------------------------------------------------
# The grid and a two-process jax.distributed run.


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    store = FeatureStore(root)
    zoo = _zoo(4, seed=5)
    for m in range(4):
        # Models 0-2 share a shape (a sharded group); model 3 has its own (a lone model).
        features = zoo["features"][m] if m < 3 else zoo["features"][m][:, : D - 2]
        store.write("task", "train", f"m{m}", features=features, labels=LABELS, logits=zoo["logits"][m])
    return root


GRID_METRICS = ["hscore", "nce"]

_WORKER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mspider_jax import sharding
    sharding.initialize_distributed()  # from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
    from mspider_jax.metrics import grid
    root, out = sys.argv[1], sys.argv[2]
    metrics = ["hscore", "nce"]
    in_memory = grid.score_grid(root, ["task"], metrics=metrics)
    streamed = grid.score_grid(root, ["task"], metrics=metrics, stream=True, chunk_size=64)
    if sharding.is_main_process():
        np.savez(out, **{f"{m}_memory": in_memory.scores[("task", m)] for m in metrics},
                 **{f"{m}_stream": streamed.scores[("task", m)] for m in metrics})
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two_processes(grid_store, out: pathlib.Path, log_dir: pathlib.Path) -> tuple[list, list[str]]:
    """Runs _WORKER as processes 0 and 1 of one JAX run; returns (processes, logs), or raises
    subprocess.TimeoutExpired (after killing both) when they do not finish in 240 s."""
    port = _free_port()
    log_dir.mkdir()
    procs, log_paths = [], []
    # Logs go to files, not pipes: waiting on process 0 must not leave process 1 blocked on a full
    # pipe (and process 0 then waiting for it in a collective).
    for process_id in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id),
                   JAX_DISABLE_MOST_OPTIMIZATIONS="1", PYTHONPATH=REPO)
        log_paths.append(log_dir / f"process{process_id}.log")
        with open(log_paths[-1], "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, str(grid_store), str(out)], env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
    try:
        for p in procs:
            p.wait(timeout=240)
    finally:
        for p in procs:  # never leave a hung pair behind for the rest of the suite
            if p.poll() is None:
                p.kill()
    return procs, [path.read_text() for path in log_paths]


def test_two_process_distributed_run_matches_one_process(grid_store, tmp_path):
    out = tmp_path / "scores.npz"
    try:
        procs, logs = _run_two_processes(grid_store, out, tmp_path / "first")
        first_failure = None if all(p.returncode == 0 for p in procs) else "\n".join(log[-2000:] for log in logs)
    except subprocess.TimeoutExpired:
        first_failure = "timed out"
    if first_failure is not None:
        # Two rare failures of jax.distributed itself, each seen once in a full-suite CI run after
        # the processes had done their work: a hang after both had connected (2026-11-26), and a
        # crash of process 0 while tearing down the coordination service at exit (2026-11-27:
        # "Check failed: queue.Pop() == nullptr" in grpc_core::Server::~Server under
        # xla::DistributedRuntimeService::Shutdown). One retry on a fresh port; a second failure
        # of any kind fails the test.
        warnings.warn(f"two-process run failed once; retrying on a fresh port:\n{first_failure}")
        out.unlink(missing_ok=True)
        procs, logs = _run_two_processes(grid_store, out, tmp_path / "retry")
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    assert out.exists()  # written by process 0 only (process 1 has no file to write)
    got = np.load(out)

    # The same grid in this process: 4 local devices, so the same per-device batches.
    in_memory = grid.score_grid(grid_store, ["task"], metrics=GRID_METRICS)
    streamed = grid.score_grid(grid_store, ["task"], metrics=GRID_METRICS, stream=True, chunk_size=64)
    for m in GRID_METRICS:
        assert _rel(got[f"{m}_memory"], in_memory.scores[("task", m)]) < 1e-9, m
        assert _rel(got[f"{m}_stream"], streamed.scores[("task", m)]) < 1e-6, m
        assert _rel(streamed.scores[("task", m)], in_memory.scores[("task", m)]) < 1e-5, m


def test_grid_csv_and_cli(grid_store, tmp_path, capsys):
    from mspider_jax import cli

    out = tmp_path / "grid.csv"
    assert cli.main(["metrics", "--store", str(grid_store), "--dataset", "task", "--metrics", "hscore,leep", "--stream", "--chunk-size", "64", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "dataset,model,hscore,leep" and len(lines) == 5
    values = [float(line.split(",")[2]) for line in lines[1:]]
    entries = [FeatureStore(grid_store).read("task", "train", f"m{m}") for m in range(4)]
    expected = [M.score("hscore", features=np.asarray(e.features), labels=LABELS) for e in entries]
    assert _rel(values, expected) < 1e-5
    assert "| m3 |" in capsys.readouterr().out


def test_benchmark_scale_script_streaming_part(tmp_path):
    """scripts/benchmark_scale.py (b) at a tiny size: both paths run in their own process, give the
    same LogME and H-Score, and the report has the memory columns."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_scale", os.path.join(REPO, "scripts", "benchmark_scale.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "scale.md"
    assert script.main(["--parts", "streaming", "--rows", "2500", "--dim", "16", "--chunk", "1000",
                        "--repeats", "1", "--store", str(tmp_path / "store"), "--out", str(out)]) == 0
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith(("| logme | ", "| hscore | "))]
    scores = {(r[1].strip(), r[2].strip()): r[6].strip() for r in rows if r[2].strip() in ("in_memory", "streaming")}
    assert scores[("logme", "in_memory")] == scores[("logme", "streaming")]
    assert scores[("hscore", "in_memory")] == scores[("hscore", "streaming")]
    assert "peak anonymous RSS" in out.read_text()
