"""Host-side input checks for the metrics (NumPy, before anything is traced).

Every problem is a `ValueError` that names the input and the metric; nothing is allowed to turn into
a silent NaN later. Conventions:

* target type: integer (or bool) labels [N] -> "classification"; float labels [N] or [N, K] ->
  "regression" (a 1-D float target is reshaped to [N, 1]);
* classification labels are remapped to contiguous 0..C-1 (sorted order of the original values),
  with a `UserWarning` when the remap changes anything;
* float inputs must be finite; features/logits keep their float dtype (float16/bfloat16 and integer
  arrays become float32).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import numpy as np

CLASSIFICATION = "classification"
REGRESSION = "regression"


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    """The `warnings.warn` stacklevel of the first frame outside mspider_jax/metrics (the caller)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        frame, level = frame.f_back, level + 1
    return level


def infer_target_type(labels: Any) -> str:
    """Integer/bool labels -> "classification"; float labels -> "regression"."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iub":
        return CLASSIFICATION
    if labels.dtype.kind == "f":
        return REGRESSION
    raise ValueError(f"labels: expected an integer (classification) or float (regression) array, got dtype {labels.dtype}")


def as_float_array(name: str, x: Any, *, ndim: int, metric: str = "", check_finite: bool = True) -> np.ndarray:
    """Converts `x` to a finite float array with `ndim` dims (float32 unless already float32/64).

    check_finite=False leaves the NaN/inf check to the caller (e.g. one that reads only some values).
    """
    where = f"{metric}: " if metric else ""
    if x is None:
        raise ValueError(f"{where}input {name!r} is required")
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{where}{name}: expected a numeric array, got dtype {x.dtype}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if x.ndim != ndim:
        raise ValueError(f"{where}{name}: expected {ndim} dimensions, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{where}{name}: empty array of shape {x.shape}")
    if check_finite and not all_finite(x):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{where}{name}: contains {bad} non-finite values (NaN or inf)")
    return x


def all_finite(x: np.ndarray) -> bool:
    """Whether every element of the float array x is finite (no NaN, no ±inf).

    Elementwise on purpose. A BLAS row-sum screen (x @ ones: IEEE sums carry any NaN/inf) took 2 ms
    instead of 12 at 10000 x 2048 float32, but OpenBLAS's worker threads keep spinning after the
    call and slowed the metric computed right after it on 2 cores (interleaved: H-Score 1.12x, LEEP
    1.43x slower), so it is not used; numpy's own reductions were no faster than this.
    """
    return bool(np.isfinite(x).all())


# JAX's CPU client adopts a NumPy buffer without copying when its data start on this boundary; any
# other buffer it copies, slowly: 57-72 ms for 10000 x 2048 float32 on the 2-core dev machine, against
# 13-21 ms for NumPy's own copy (and NumPy's allocator aligns to 16 bytes only).
ZERO_COPY_ALIGNMENT = 64


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = ZERO_COPY_ALIGNMENT) -> np.ndarray:
    """An uninitialised C-contiguous array whose data start on an `alignment`-byte boundary."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buffer = np.empty(nbytes + alignment, np.uint8)
    start = (-buffer.ctypes.data) % alignment
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def take_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x[rows] gathered into an aligned buffer (see `zero_copy_ready`): no second copy on CPU."""
    out = _aligned_empty((len(rows), *x.shape[1:]), x.dtype)
    np.take(x, rows, axis=0, out=out)
    return out


def zero_copy_ready(x: np.ndarray, alignment: int = ZERO_COPY_ALIGNMENT) -> np.ndarray:
    """`x` itself when it is C-contiguous and starts on an `alignment`-byte boundary, else such a copy.

    Feeding the CPU backend through this saves its slower copy (`_dispatch` does so for every
    per-model input); values and dtype are unchanged.
    """
    x = np.asarray(x)
    if x.flags.c_contiguous and x.ctypes.data % alignment == 0:
        return x
    out = _aligned_empty(x.shape, x.dtype, alignment)
    np.copyto(out, x)
    return out


def remap_labels(labels: Any, *, name: str = "labels", metric: str = "") -> tuple[np.ndarray, int, np.ndarray]:
    """Classification labels [N] -> (contiguous int32 labels 0..C-1, C, class counts [C]).

    Warns (UserWarning) when the labels were not already 0..C-1 with every class present.
    """
    where = f"{metric}: " if metric else ""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{where}{name}: classification labels must be 1-D [N], got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{where}{name}: empty")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"{where}{name}: classification labels must be integers, got dtype {labels.dtype}")
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    num_classes = len(values)
    if not np.array_equal(values, np.arange(num_classes)):
        shown = values if num_classes <= 10 else f"{values[:5]} ... {values[-5:]}"
        warnings.warn(
            f"{where}{name} are not contiguous 0..{num_classes - 1} (values {shown}); remapped to 0..{num_classes - 1} in sorted order",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
    return inverse.reshape(-1).astype(np.int32), num_classes, counts


def regression_targets(labels: Any, *, metric: str = "") -> np.ndarray:
    """Float targets [N] or [N, K] -> finite float array [N, K]."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    return as_float_array("labels", labels, ndim=2, metric=metric)


def check_num_rows(metric: str, name: str, x: np.ndarray, n: int) -> None:
    if x.shape[0] != n:
        raise ValueError(f"{metric}: {name} has {x.shape[0]} rows but labels have {n}")


def check_class_sizes(metric: str, counts: np.ndarray, min_size: int, *, name: str = "labels") -> None:
    """Every class must have at least `min_size` samples."""
    small = np.flatnonzero(counts < min_size)
    if small.size:
        raise ValueError(
            f"{metric}: {small.size} class(es) of {name} have fewer than {min_size} samples "
            f"(remapped class ids {small[:10].tolist()}, counts {counts[small[:10]].tolist()}); "
            "drop them or collect more samples"
        )
