"""Streaming transferability scores: sufficient statistics accumulated over row chunks.

A real target task has 10⁵–10⁶ samples; its [N, D] features need not fit in memory. The metrics
below are sums over samples at heart, so `score_streaming` reads the features (or logits) of one model
in row chunks from the memory-mapped feature store (or any array that can be sliced by rows),
accumulates the metric's sufficient statistics (`_stats`: Gram matrices, per-class sums and counts,
joint label counts, ...) and applies the *same* final formula as the in-memory `score`. Peak memory is
O(chunk·D + D² + C·D + C·Cs), independent of N; the labels are read whole (N integers, validated and
remapped exactly like `score`). Scores equal the in-memory ones up to float summation order (tests:
1e-6 relative in float64).

| metric | passes | statistics (memory) |
|---|---|---|
| hscore | 1 | moments: x̄, Σ(x−x̄)(x−x̄)ᵀ, class sums (D² + C·D) |
| logme | 1 | the same moments: FᵀF = S + n x̄x̄ᵀ, FᵀY from the class sums, ‖t‖² (D² + K·D); for N ≤ D the rows are read whole (N·D ≤ D²) and the in-memory kernel path runs |
| lfc | 1 | the same moments (‖ZᵀZ‖_F, class sums); model_spider's 45 000-row subset is a row mask drawn with the same key |
| nce | 1 | hard joint counts [C, Cs] |
| leep | 2 | pass 1: soft joint PᵀY and p_z (Cs·C); pass 2: Σ_i log (PQ)_{i,y_i} |
| pactran_dirichlet, pactran_gamma | 11 | A = a0 + Yᵀq (C·Cs): q_i depends on the previous A, so each of the 10 iterations recomputes q chunk by chunk; a final pass sums the KL (and log lw) terms |
| gbc | 2 | moments for the PCA (covariance; solvers "subspace"/"eigh" or an injected projection), then per-class scatters of the 64-dim projections (C·64²) |
| transrate | 2 | x̄, then the rows class by class (read by index from the memory map): each class Gram Z_kᵀZ_k (D² memory) is reduced to its log-determinant before the next class; their sum is the global ZᵀZ |

Not streamed, and why:
* sfda: exact in three passes (class means and pooled scatter of x; of the ConfMix features, which
  depend on per-sample first-fit probabilities recomputed chunk by chunk; then Σ_i p₂(y_i|x̃_i)), but
  not implemented yet;
* nleep: the Gaussian-mixture EM over PCA coordinates needs k-means++ seeding and per-sample
  responsibilities in every EM iteration (one pass per iteration plus a data-dependent PCA rank);
* otce: optimal transport couples every target sample with every source sample ([Ns, Nt] plan);
* pactran_gauss: an L-BFGS fit of a linear head (each function evaluation is a pass and the line search
  is sequential on the host);
* ncti, etran: zoo-relative (their scores exist only across a zoo); ncti's randomized PCA works on the
  rows themselves and etran's energy term is a bottom-0.5 % selection over all samples;
* ped: each of its ≤ 6 repulsion steps moves every sample before SFDA (one pass per step; not done);
* emms: NumPy's minimum-norm least squares on the standardised features (an SVD of F̂) is only equal to
  the normal equations when F̂ has full column rank.

Sample axis: with `mesh=`, each chunk's rows are split over the mesh's devices (`NamedSharding`) and
jit inserts the cross-device sums of the statistics, so one large model uses every device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mspider_jax import sharding
from mspider_jax.metrics import _dispatch
from mspider_jax.metrics import _linalg
from mspider_jax.metrics import _validation
from mspider_jax.metrics._registry import get, registered_names

DEFAULT_CHUNK_ROWS = 8192

# The per-model inputs a streaming metric may read in chunks.
STREAMED_INPUTS = ("features", "logits")

_STEPS: dict[tuple, Any] = {}


def streaming_names() -> tuple[str, ...]:
    """The registered metrics that have a streaming path."""
    return tuple(n for n in registered_names() if get(n).streaming is not None)


def _jitted(step: Callable[..., Any], static_names: tuple[str, ...]) -> Any:
    key = (step, static_names)
    if key not in _STEPS:
        _STEPS[key] = jax.jit(step, static_argnames=static_names)
    return _STEPS[key]


def _chunk_dtype(array: Any, dtype: Any) -> np.dtype:
    """float64 stays float64, every other float becomes float32 (like `score`'s validation), unless
    `dtype` asks for a specific one."""
    if dtype is not None:
        return np.dtype(dtype)
    return np.dtype(np.float64) if np.dtype(array.dtype) == np.float64 else np.dtype(np.float32)


class Stream:
    """Row chunks of one model's inputs and the shared labels, for metrics that pass over the data.

    Attributes:
      num_rows: N.
      labels: the validated labels as `score` gives them to a metric ([N] int32 in 0..C-1, or [N, K]
        float targets), read whole.
      chunk_size: rows per chunk (the final, ragged chunk is padded with masked rows).
      passes: how many passes over the data have been made.
    """

    def __init__(
        self,
        inputs: Mapping[str, Any],
        labels: np.ndarray,
        *,
        chunk_size: int = DEFAULT_CHUNK_ROWS,
        dtype: Any = None,
        device_mesh: Mesh | None = None,
        progress: Callable[[str], None] | None = None,
        name: str = "",
    ) -> None:
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.inputs = dict(inputs)
        self.labels = labels
        self.num_rows = int(labels.shape[0])
        self.dtype = dtype
        self.name = name
        self.progress = progress
        self.passes = 0
        self.device_mesh = device_mesh if device_mesh is not None and device_mesh.devices.size > 1 else None
        size = min(chunk_size, self.num_rows)
        if self.device_mesh is not None:
            size = sharding.round_up(size, self.device_mesh)
        self.chunk_size = size
        self._checked: set[tuple[str, int]] = set()

    def dim(self, input_name: str) -> int:
        """The column count of a streamed input."""
        return int(self.inputs[input_name].shape[1])

    def chunk_dtype(self, input_name: str) -> np.dtype:
        """The dtype the chunks of a streamed input arrive in."""
        return _chunk_dtype(self.inputs[input_name], self.dtype)

    def read_all(self, input_name: str) -> np.ndarray:
        """The whole input in memory (for small fallbacks, e.g. LogME with N <= D)."""
        array = self.inputs[input_name]
        out = np.asarray(array[:], dtype=_chunk_dtype(array, self.dtype))
        self._check_finite(input_name, 0, out)
        return out

    def _check_finite(self, input_name: str, start: int, block: np.ndarray) -> None:
        if (input_name, start) in self._checked:
            return
        if not _validation.all_finite(block):
            bad = int(block.size - np.count_nonzero(np.isfinite(block)))
            raise ValueError(f"{self.name}: {input_name} rows {start}..{start + len(block) - 1} contain {bad} non-finite values (NaN or inf)")
        self._checked.add((input_name, start))

    def chunks(self, input_names: Sequence[str] = ("features",)) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields (start row, {input: rows [n, ...], "labels": rows}) host chunks, unpadded.

        One call is one pass over the data (counted in `passes`, reported to `progress`).
        """
        started = time.perf_counter()
        for start in range(0, self.num_rows, self.chunk_size):
            stop = min(start + self.chunk_size, self.num_rows)
            chunk = {}
            for input_name in input_names:
                array = self.inputs[input_name]
                block = np.asarray(array[start:stop], dtype=_chunk_dtype(array, self.dtype))
                self._check_finite(input_name, start, block)
                chunk[input_name] = block
            chunk["labels"] = self.labels[start:stop]
            yield start, chunk
        self.passes += 1
        message = f"{self.name}: pass {self.passes} over {self.num_rows} rows in {time.perf_counter() - started:.1f}s"
        logging.debug(message)
        if self.progress is not None:
            self.progress(message)

    def gather(
        self, input_names: Sequence[str], blocks: Iterable[tuple[Any, np.ndarray]]
    ) -> Iterator[tuple[Any, dict[str, Any]]]:
        """One pass in a chosen row order: for each (tag, sorted row indices [<= chunk_size]) block,
        yields (tag, chunk) with the rows of the inputs, "labels" and "valid", padded to a power-of-two
        bucket (>= 64 rows, at most `chunk_size`) so that few shapes get compiled.

        Used to visit the rows class by class (TransRate's per-class Grams): memory-mapped rows are
        read by index, each at most once per pass.
        """
        started = time.perf_counter()
        for tag, indices in blocks:
            indices = np.asarray(indices)
            if len(indices) == 0:
                continue
            if len(indices) > self.chunk_size:
                raise ValueError(f"a block of {len(indices)} rows exceeds chunk_size={self.chunk_size}")
            chunk = {}
            for input_name in input_names:
                array = self.inputs[input_name]
                block = np.asarray(array[indices], dtype=_chunk_dtype(array, self.dtype))
                if not _validation.all_finite(block):
                    raise ValueError(f"{self.name}: {input_name} contains non-finite values (NaN or inf) in rows {indices[:5].tolist()}...")
                chunk[input_name] = block
            chunk["labels"] = self.labels[indices]
            bucket = min(self.chunk_size, max(64, 1 << (len(indices) - 1).bit_length()))
            if self.device_mesh is not None:
                bucket = sharding.round_up(bucket, self.device_mesh)
            yield tag, self._place(self._pad(chunk, np.ones(len(indices), bool), bucket))
        self.passes += 1
        message = f"{self.name}: pass {self.passes} over {self.num_rows} rows (by index) in {time.perf_counter() - started:.1f}s"
        logging.debug(message)
        if self.progress is not None:
            self.progress(message)

    def _pad(self, chunk: dict[str, np.ndarray], valid: np.ndarray, size: int | None = None) -> dict[str, np.ndarray]:
        """Pads every array of the chunk to `size` (default `chunk_size`) rows (zeros, valid False)."""
        size = self.chunk_size if size is None else size
        rows = len(valid)
        out = {"valid": valid}
        out.update(chunk)
        if rows < size:
            out = {k: np.concatenate([v, np.zeros((size - rows, *v.shape[1:]), v.dtype)]) for k, v in out.items()}
        return out

    def _place(self, chunk: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.device_mesh is None:
            return chunk
        rows = NamedSharding(self.device_mesh, PartitionSpec(self.device_mesh.axis_names[0]))
        return {k: jax.device_put(v, rows) for k, v in chunk.items()}

    def jitted(self, step: Callable[..., Any], **static: Any) -> Callable[..., Any]:
        """`step` compiled once per (function, static names), called with the static values bound."""
        compiled = _jitted(step, tuple(sorted(static)))
        return lambda *args: compiled(*args, **static)

    def reduce(
        self,
        step: Callable[..., Any],
        state: Any,
        input_names: Sequence[str] = ("features",),
        *,
        row_mask: np.ndarray | None = None,
        **static: Any,
    ) -> Any:
        """One pass: `state = step(state, chunk, **static)` for every chunk; returns the final state.

        `step` is jit-compiled once per (function, static names); `chunk` holds the padded inputs,
        "labels" and "valid" [chunk_size] bool (False on padding rows and where `row_mask` [N] is False).
        Chunks without a valid row are skipped.
        """
        compiled = _jitted(step, tuple(sorted(static)))
        if self.device_mesh is not None:
            state = jax.device_put(state, sharding.replicated(self.device_mesh))
        for start, chunk in self.chunks(input_names):
            rows = len(chunk["labels"])
            valid = np.ones(rows, bool) if row_mask is None else np.asarray(row_mask[start:start + rows], bool)
            if not valid.any():
                continue
            state = compiled(state, self._place(self._pad(chunk, valid)), **static)
        return state


def _check_streamed_input(name: str, input_name: str, array: Any, num_rows: int) -> None:
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name}: {input_name} must be a 2-D [N, D] array (or memmap), got shape {shape}")
    if shape[0] != num_rows:
        raise ValueError(f"{name}: {input_name} has {shape[0]} rows but labels have {num_rows}")
    if shape[1] == 0:
        raise ValueError(f"{name}: {input_name} is empty: shape {tuple(shape)}")
    if np.dtype(array.dtype).kind not in "fiu":
        raise ValueError(f"{name}: {input_name}: expected a numeric array, got dtype {array.dtype}")


def score_streaming(
    name: str,
    entry: Any = None,
    *,
    features: Any = None,
    logits: Any = None,
    labels: Any = None,
    convention: str = "paper",
    key: Any = None,
    chunk_size: int = DEFAULT_CHUNK_ROWS,
    dtype: Any = None,
    mesh: Mesh | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> float:
    """The score of one model computed from row chunks (same value as `score`, bounded memory).

    Args:
      name: a metric with a streaming path (`streaming_names()`).
      entry: a feature-store `Entry` (its memory-mapped features/logits and labels are used), or None.
      features, logits: [N, D] / [N, Cs] arrays sliceable by rows (np.memmap, np.ndarray), used when
        no entry is given.
      labels: [N] class labels or float targets (as for `score`); read whole.
      convention, key, **options: as for `score`.
      chunk_size: rows per chunk.
      dtype: compute dtype of the chunks (default: float64 input stays float64, anything else
        float32 like `score`); np.float64 computes everything in float64.
      mesh: split each chunk's rows over this mesh's devices (default: one device).
      progress: receives one line per pass over the data.

    Raises:
      ValueError: the metric does not stream (the message lists those that do), bad inputs (as
        `score`, plus non-finite rows found while streaming), or a non-finite result.
    """
    spec = get(name)
    if spec.streaming is None:
        raise ValueError(
            f"{name} has no streaming path (see mspider_jax.metrics.streaming for why); metrics that "
            f"stream: {', '.join(streaming_names())}"
        )
    if entry is not None:
        features, logits, labels = entry.features, entry.logits, entry.labels
    if labels is None:
        raise ValueError(f"{name}: input 'labels' is required")
    labels = np.asarray(labels)
    inputs = {"features": features, "logits": logits}
    prepared = _dispatch._prepare_shared(
        spec, labels=labels, source_labels=None, convention=convention, key=key, options=options,
        given={k: v is not None for k, v in inputs.items()},
    )
    streamed = {}
    for input_name in STREAMED_INPUTS:
        if input_name in spec.needs:
            _check_streamed_input(name, input_name, inputs[input_name], prepared.n)
            streamed[input_name] = inputs[input_name]
    shared = dict(prepared.shared)
    stream = Stream(
        streamed, np.asarray(shared.pop("labels")), chunk_size=chunk_size, dtype=dtype, device_mesh=mesh,
        progress=progress, name=name,
    )
    with _linalg.precision_scope():
        out = np.asarray(jax.device_get(spec.streaming(stream, **shared, **prepared.static)))
    _dispatch._check_finite(spec, out)
    if out.size != 1:
        raise ValueError(f"{name}: expected a scalar from the metric, got shape {out.shape}")
    return float(out.reshape(()))


__all__ = ["DEFAULT_CHUNK_ROWS", "Stream", "score_streaming", "streaming_names"]
