"""mspider-jax: rank pre-trained models for a new task (Model Spider + transferability metrics, in JAX).

The package imports without PyTorch; only `converters/` needs it.
"""

__version__ = "0.1.0"
