"""Feature store: per (dataset, split, model) features, logits and labels with provenance manifests.

See `mspider_jax.features.store` for the layout and integrity guarantees. No torch import.
"""

from mspider_jax.features.store import (
    MANIFEST,
    PROVENANCE_FIELDS,
    STORAGE_DTYPES,
    Entry,
    EntryKey,
    FeatureStore,
    StoreError,
    decode_name,
    encode_name,
    sha256_file,
)

__all__ = [
    "MANIFEST",
    "PROVENANCE_FIELDS",
    "STORAGE_DTYPES",
    "Entry",
    "EntryKey",
    "FeatureStore",
    "StoreError",
    "decode_name",
    "encode_name",
    "sha256_file",
]
