"""`mspider info`: versions, devices and a tiny compiled computation (checks the install works)."""

import argparse

HELP = "print versions and the JAX devices, and run a tiny jit-compiled check"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    del args
    import importlib.metadata as md

    import jax
    import jax.numpy as jnp

    import mspider_jax

    print(f"mspider-jax {mspider_jax.__version__}")
    for dist in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch"):
        try:
            print(f"  {dist:18s} {md.version(dist)}")
        except md.PackageNotFoundError:
            print(f"  {dist:18s} (not installed)")
    print(f"  backend            {jax.default_backend()}")
    for device in jax.devices():
        print(f"  device             {device}")
    x = jnp.arange(12.0).reshape(3, 4)
    gram = jax.jit(lambda a: a @ a.T)(x)
    print(f"  jit check          trace(X X^T) = {float(jnp.trace(gram)):.1f} (expected 506.0)")
    return 0 if float(jnp.trace(gram)) == 506.0 else 1
