"""Shared test set-up: CPU only, 4 fake devices available, deterministic seeds, no network."""

import os

# Must happen before jax is imported anywhere: tests that need several devices get 4 fake CPU ones.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed (each test gets a fresh one)."""
    return np.random.default_rng(0)
