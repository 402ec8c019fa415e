"""Ensembles of Model Spider rankers: one ranking from the mean of several rankers' scores.

Not part of Model Spider as published. Rankers trained with different seeds (initialisation, batch
order, dropout) on the same tasks differ a lot on tasks unlike their training tasks: on the mini
zoo's 8 targets, three seeds gave stage-1 mean weighted tau 0.699, 0.629 and 0.646 (validation
0.865, 0.851, 0.848), and the mean of their scores 0.712 (validation 0.864); results/spider_minizoo.md.

Conventions: the ensemble's score of a PTM is the plain mean of the members' raw scores, at stage 1
and at stage 2 alike. The members share one head type and loss, so their scores live on comparable
scales, and a re-ranked PTM's mean stage-2 score stays comparable with the others' mean stage-1
scores (a per-member standardisation over the zoo would not keep that). Stage 2 re-ranks the top-k
of the ensemble's stage-1 ranking. Members must agree on the zoo (names and order), the feature
dimensions, the PTM-specific token length and the generic encoder.

`config.train.ensemble_seeds` trains the members and writes the ensemble in one run
(`train_lib.train_and_evaluate`); `mspider ensemble` combines runs trained separately.

An ensemble directory holds `ensemble.json`: {"members": [run directories, relative to it or
absolute]}. `checkpointing.load_ranker(directory)` returns the `RankerEnsemble` and the first
member's config, so every command that takes a trained ranker (`mspider rank`, the benchmark's
`config.spider.checkpoint`, `inference.rank_store_task`) takes an ensemble too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

MANIFEST = "ensemble.json"


@dataclasses.dataclass(frozen=True)
class RankerEnsemble:
    """Rankers of one zoo whose scores are averaged (`rank.score_batch`)."""

    members: tuple[Any, ...]

    def __post_init__(self) -> None:
        members = tuple(self.members)
        object.__setattr__(self, "members", members)
        if not members:
            raise ValueError("an ensemble needs at least one ranker")
        first = members[0]
        for index, member in enumerate(members[1:], start=1):
            for attribute in ("num_models", "generic_dim", "model_dims"):
                if getattr(member, attribute) != getattr(first, attribute):
                    raise ValueError(
                        f"ensemble member {index} has {attribute}={getattr(member, attribute)}, "
                        f"member 0 has {getattr(first, attribute)}")

    @property
    def num_models(self) -> int:
        return self.members[0].num_models

    @property
    def generic_dim(self) -> int:
        return self.members[0].generic_dim

    @property
    def model_dims(self) -> tuple[int, ...]:
        return self.members[0].model_dims


# The settings members must share: the zoo and how a task is tokenised for them.
_SHARED_SETTINGS = (("model_names",), ("model", "specific_length"), ("data", "generic_model"))


def _setting(config: ml_collections.ConfigDict, path: tuple[str, ...]) -> Any:
    value: Any = config
    for key in path:
        value = value.get(key) if hasattr(value, "get") else None
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_agreement(configs: Sequence[ml_collections.ConfigDict], names: Sequence[str]) -> None:
    for path in _SHARED_SETTINGS:
        values = [_setting(c, path) for c in configs]
        if any(v != values[0] for v in values[1:]):
            shown = ", ".join(f"{n}: {v}" for n, v in zip(names, values))
            raise ValueError(f"ensemble members disagree on {'.'.join(path)} ({shown})")


def write_ensemble(directory: str | os.PathLike, members: Sequence[str | os.PathLike]) -> pathlib.Path:
    """Writes `directory/ensemble.json` naming trained runs (workdirs or exported rankers).

    Every member is loaded first (they must exist and agree on the zoo and tokenisation); member
    paths are stored relative to `directory` when they lie under it, else absolute. Atomic.

    Returns:
      The manifest's path.
    """
    from mspider_jax import checkpointing
    from mspider_jax.evaluation._io import write_text_atomic

    directory = pathlib.Path(directory)
    if not members:
        raise ValueError("an ensemble needs at least one member run")
    resolved = [pathlib.Path(m).resolve() for m in members]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"ensemble members repeat: {[str(m) for m in members]}")
    configs = []
    for member in resolved:
        if (member / MANIFEST).exists():
            raise ValueError(f"{member} is itself an ensemble; list its members instead")
        configs.append(checkpointing.load_ranker_config(member))
    _check_agreement(configs, [str(m) for m in members])
    directory.mkdir(parents=True, exist_ok=True)
    base = directory.resolve()
    stored = [str(m.relative_to(base)) if m.is_relative_to(base) else str(m) for m in resolved]
    path = directory / MANIFEST
    write_text_atomic(path, json.dumps({"members": stored}, indent=1) + "\n")
    return path


def is_ensemble(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds an ensemble manifest."""
    return (pathlib.Path(directory) / MANIFEST).is_file()


def member_paths(directory: str | os.PathLike) -> list[pathlib.Path]:
    """The member run directories named by `directory/ensemble.json`."""
    directory = pathlib.Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        members = manifest["members"]
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise TypeError("members must be a non-empty list of paths")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"corrupt ensemble manifest {path}: {err}") from err
    return [directory / m for m in members]


def load_ensemble(directory: str | os.PathLike) -> tuple[RankerEnsemble, ml_collections.ConfigDict]:
    """(the ensemble of `directory`, its first member's config with `model_names`)."""
    from mspider_jax import checkpointing

    members = member_paths(directory)
    loaded = []
    for member in members:
        if not member.is_dir():
            raise FileNotFoundError(f"ensemble member {member} (from {pathlib.Path(directory) / MANIFEST}) "
                                    "does not exist")
        loaded.append(checkpointing.load_ranker(member))
    _check_agreement([config for _, config in loaded], [str(m) for m in members])
    return RankerEnsemble(tuple(ranker for ranker, _ in loaded)), loaded[0][1]
