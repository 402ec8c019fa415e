"""PyTorch side of mspider-jax: runs zoo models once over a dataset and writes a feature store.

This is the only package that imports torch.
"""
