"""Scale benchmark: device-sharded zoo scoring and streaming vs in-memory statistics; markdown output.

  python scripts/benchmark_scale.py [--parts sharding,streaming] [--rows 100000] [--dim 2048]
                                    [--store DIR] [--out FILE]

(a) sharding: `score_zoo` time for zoos of 1, 4 and 8 models on a 1-device mesh and on a 4-device
    mesh (fake CPU devices, `--xla_force_host_platform_device_count=4`; on a GPU/TPU host the real
    devices). On this 2-core machine the 4 fake devices share 2 cores: the ratio shows the overhead
    (or the gain) of splitting the model axis, not a 4-device speed-up.
(b) streaming: LogME and H-Score at N = --rows, D = --dim, C = 100. The features are generated chunk
    by chunk into a memory map and written to a feature store (never held in memory at once); each
    path then runs in its own process, which reports its wall time (reading included) and its peak
    resident memory, total (VmHWM: includes the store's pages mapped from the page cache) and
    anonymous (sampled RssAnon: memory beyond the page cache).

Run it on a quiet machine: timings are wall-clock medians; compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
FAKE_DEVICES = 4

# Runs in a child process: one scoring path, its time and memory as JSON on the last stdout line.
_CHILD = r"""
import json, os, sys, threading, time
import numpy as np

def rss_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0

peak_anon = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak_anon[0] = max(peak_anon[0], rss_kib("RssAnon"))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()

import jax
jax.config.update("jax_enable_x64", True)
from mspider_jax import metrics as M
from mspider_jax.features import FeatureStore
from mspider_jax.metrics import streaming as S

store_root, metric, mode, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
baseline_anon = rss_kib("RssAnon")
start = time.perf_counter()
entry = FeatureStore(store_root).read("scale", "train", "model", mmap=True)
if mode == "in_memory":
    features = np.array(entry.features, dtype=np.float32)  # the whole [N, D] array in memory
    value = float(M.score(metric, features=features, labels=np.asarray(entry.labels)))
else:
    value = float(S.score_streaming(metric, entry, chunk_size=chunk))
seconds = time.perf_counter() - start
stop.set()
print(json.dumps(dict(metric=metric, mode=mode, seconds=seconds, score=value,
                      peak_rss_mib=rss_kib("VmHWM") / 1024, peak_anon_mib=peak_anon[0] / 1024,
                      anon_before_mib=baseline_anon / 1024)))
"""


def sharding_table(num_rows: int, dim: int, num_classes: int, repeats: int) -> str:
    """(a): score_zoo on a 1-device vs an all-device mesh for zoos of 1, 4, 8 models."""
    import jax
    import numpy as np

    from mspider_jax import metrics as M
    from mspider_jax import sharding
    from mspider_jax.metrics import benchmark

    devices = jax.devices()
    one, every = sharding.mesh(devices[:1]), sharding.mesh(devices)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, num_rows)
    centres = rng.normal(size=(num_classes, dim)).astype(np.float32)
    lines = [f"### (a) Sharded zoo scoring: N={num_rows}, D={dim}, C={num_classes}, "
             f"{len(devices)} {devices[0].platform} devices", "",
             "| metric | models | 1 device (s) | %d devices (s) | ratio 1/%d |" % (len(devices), len(devices)),
             "|---|---:|---:|---:|---:|"]
    for metric in ("hscore", "logme"):
        for num_models in (1, 4, 8):
            zoo = [(centres[labels] + rng.normal(size=(num_rows, dim))).astype(np.float32) for _ in range(num_models)]
            timed = {}
            for label, mesh in (("one", one), ("every", every)):
                call = lambda mesh=mesh: M.score_zoo(metric, features=zoo, labels=labels, mesh=mesh)  # noqa: E731
                call()  # compile
                timed[label] = benchmark.median_time(call, repeats)
            lines.append(f"| {metric} | {num_models} | {timed['one']:.3f} | {timed['every']:.3f} | "
                         f"{timed['one'] / timed['every']:.2f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def write_scale_store(root: pathlib.Path, num_rows: int, dim: int, num_classes: int, chunk: int) -> None:
    """Generates the features chunk by chunk into a memory map and writes them as one store entry."""
    import numpy as np

    from mspider_jax.features import FeatureStore

    store = FeatureStore(root)
    if store.has("scale", "train", "model"):
        entry = store.read("scale", "train", "model")
        if entry.features.shape == (num_rows, dim):
            return
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, num_rows)
    centres = rng.normal(size=(num_classes, dim)).astype(np.float32)
    mixing = (rng.normal(size=(dim, dim)) / np.sqrt(dim)).astype(np.float32)
    with tempfile.NamedTemporaryFile(dir=root.parent, suffix=".f32") as scratch:
        features = np.memmap(scratch.name, dtype=np.float32, mode="w+", shape=(num_rows, dim))
        for start in range(0, num_rows, chunk):
            rows = slice(start, min(start + chunk, num_rows))
            noise = rng.normal(size=(rows.stop - rows.start, dim)).astype(np.float32)
            features[rows] = 0.5 * centres[labels[rows]] + noise @ mixing
        features.flush()
        store.write("scale", "train", "model", features=features, labels=labels, overwrite=True,
                    provenance={"architecture": "synthetic (scripts/benchmark_scale.py)"})
        del features


def streaming_table(store_root: pathlib.Path, num_rows: int, dim: int, chunk: int, repeats: int) -> str:
    """(b): each path in a fresh process (peak memory is per process); medians over `repeats`."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env.pop("XLA_FLAGS", None)
    rows = {}
    for metric in ("logme", "hscore"):
        for mode in ("in_memory", "streaming"):
            runs = []
            for _ in range(repeats):
                result = subprocess.run([sys.executable, "-c", _CHILD, str(store_root), metric, mode, str(chunk)],
                                        check=True, capture_output=True, text=True, env=env, cwd=REPO)
                runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
            rows[metric, mode] = runs
            print(metric, mode, runs[-1], flush=True)
    size_mib = num_rows * dim * 4 / 2**20
    lines = [f"### (b) Streaming vs in-memory: N={num_rows}, D={dim}, C=100, float32 store of "
             f"{size_mib:.0f} MiB, chunks of {chunk} rows (each run a fresh process; times include "
             "reading the store and compiling)", "",
             "| metric | path | time (s, median) | peak RSS (MiB) | peak anonymous RSS (MiB) | score |",
             "|---|---|---:|---:|---:|---:|"]
    for metric in ("logme", "hscore"):
        for mode in ("in_memory", "streaming"):
            runs = rows[metric, mode]
            lines.append(f"| {metric} | {mode} | {statistics.median(r['seconds'] for r in runs):.2f} | "
                         f"{max(r['peak_rss_mib'] for r in runs):.0f} | {max(r['peak_anon_mib'] for r in runs):.0f} | "
                         f"{runs[-1]['score']:.6g} |")
        ratio = (statistics.median(r["seconds"] for r in rows[metric, "streaming"])
                 / statistics.median(r["seconds"] for r in rows[metric, "in_memory"]))
        lines.append(f"| {metric} | streaming / in-memory time | {ratio:.2f}x | | | |")
    lines += ["", "Peak anonymous RSS is the process's own memory (JAX runtime included), beyond the "
              "store's file pages; peak RSS also counts the mapped store pages read from the page cache."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="sharding,streaming")
    parser.add_argument("--rows", type=int, default=100_000, help="N of the streaming part")
    parser.add_argument("--dim", type=int, default=2048, help="D of the streaming part")
    parser.add_argument("--chunk", type=int, default=8192, help="rows per streamed chunk")
    parser.add_argument("--zoo_rows", type=int, default=4000, help="N of the sharding part")
    parser.add_argument("--zoo_dim", type=int, default=512, help="D of the sharding part")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", default=None, help="store directory for (b) (default: a temp dir, removed)")
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if unknown := parts - {"sharding", "streaming"}:
        parser.error(f"unknown parts: {sorted(unknown)}")

    sections = []
    if "sharding" in parts:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={FAKE_DEVICES}".strip()
        sections.append(sharding_table(args.zoo_rows, args.zoo_dim, 50, args.repeats))
    if "streaming" in parts:
        with tempfile.TemporaryDirectory(prefix="mspider_scale_") as tmp:
            root = pathlib.Path(args.store) if args.store else pathlib.Path(tmp) / "store"
            root.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            write_scale_store(root, args.rows, args.dim, 100, args.chunk)
            print(f"store written in {time.perf_counter() - start:.1f} s", flush=True)
            sections.append(streaming_table(root, args.rows, args.dim, args.chunk, args.repeats))
    report = "\n\n".join(sections) + "\n"
    print(report)
    if args.out:
        from mspider_jax.evaluation._io import write_text_atomic

        write_text_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
