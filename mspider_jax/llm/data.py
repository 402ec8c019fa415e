"""The LLM zoo: 197 public LLMs x 94 benchmark sub-tasks, their metadata and the task groups.

Model Spider (Zhang et al., NeurIPS 2023, arXiv 2306.03900) ranks a zoo of pre-trained models for a
new task; the paper also ranks Large Language Models. Here the zoo is the score table of Sloth (Maia
Polo et al., arXiv 2412.06540; `data/llm/sloth_data_v1.csv`, MIT licence; provenance in
data/README.md): 197 LLMs (37 families, base and instruct) with scores (fraction correct, in [0, 1],
higher = better) on 94 sub-tasks of the Open LLM Leaderboard:

  group  sub-tasks  table columns
  mmlu   57         hendrycksTest-<subject>
  bbh    24         bbh_<task>            (BIG-Bench-Hard)
  math   7          math_<subset>_hard    (MATH, hardest level)
  musr   3          musr_<task>
  gpqa   3          gpqa_<subset>

About 31% of the cells are missing (152 models have the 57 MMLU subjects, 112 the 37 others). A
missing cell is NaN and is masked wherever it would be a label. The 11 models with no sub-task score
at all carry no information and are dropped (`load_zoo(drop_unlabelled=True)`), leaving 186.

The table's aggregate columns (MMLU, BBH, MATH Lvl 5, ...) are never read: they summarise the very
groups that are held out in the evaluation.

Conventions: every [T, M] array has tasks in table-column order and models in table-row order; model
metadata (`model_metadata`) is what a user knows about a model without evaluating it: log
parameters, log pre-training tokens (unknown for 13 models: imputed with the mean, plus an "unknown"
flag), family one-hot (families with fewer than `min_family_size` reference models share "other")
and the instruct flag.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from mspider_jax.spider import data as spider_data
from mspider_jax.spider import prototypes as prototypes_lib

DATA_DIR = pathlib.Path(__file__).resolve().parents[2] / "data" / "llm"
DEFAULT_TABLE = DATA_DIR / "sloth_data_v1.csv"
DEFAULT_BANK = DATA_DIR / "task_prototypes.npz"
DEFAULT_DESCRIPTIONS = DATA_DIR / "task_descriptions.csv"

# Column prefix of each group's sub-tasks, and how many sub-tasks the table must have.
GROUP_PREFIXES: dict[str, str] = {
    "mmlu": "hendrycksTest-", "bbh": "bbh_", "math": "math_", "musr": "musr_", "gpqa": "gpqa_"}
GROUP_SIZES: dict[str, int] = {"mmlu": 57, "bbh": 24, "math": 7, "musr": 3, "gpqa": 3}

# Leave-one-group-out evaluation: each fold holds out these groups and trains on all the others.
FOLDS: dict[str, tuple[str, ...]] = {
    "bbh": ("bbh",), "math": ("math",), "musr_gpqa": ("musr", "gpqa")}

MODEL_COLUMN, FAMILY_COLUMN, INSTRUCT_COLUMN = "Model", "Family", "Instruct"
PARAMS_COLUMN, TOKENS_COLUMN = "#Params (B)", "Pretraining Data Size (T)"

# Store / bank conventions of the task texts (converters/text.py writes them).
TEXT_MODEL = "minilm_l6_v2"      # feature-store model name of the sentence encoder
DESCRIPTION_CLASS = 0            # label of the task-description embedding
INPUTS_CLASS = 1                 # label of the sampled task-input embeddings (BBH only)
TASK_TEXT_CHOICES = ("description", "all")


def store_dataset_name(task: str) -> str:
    """Feature-store dataset name of a sub-task ("llm:<table column>")."""
    return f"llm:{task}"


def task_group(column: str) -> str | None:
    """The group of a table column ("bbh_navigate" -> "bbh"), or None for a non-sub-task column."""
    for group, prefix in GROUP_PREFIXES.items():
        if column.startswith(prefix):
            return group
    return None


@dataclasses.dataclass(frozen=True)
class LLMZoo:
    """Scores and metadata of a zoo of LLMs on benchmark sub-tasks.

    Attributes:
      model_names: [M] model names (zoo order).
      task_names: [T] sub-task names (table columns).
      task_groups: [T] group of each sub-task (keys of GROUP_SIZES).
      scores: [T, M] float64 fraction correct, NaN = not evaluated.
      params_b: [M] parameters in billions (> 0).
      tokens_t: [M] pre-training tokens in trillions, NaN = unknown.
      families: [M] model family names.
      instruct: [M] bool, instruction-tuned.
    """

    model_names: tuple[str, ...]
    task_names: tuple[str, ...]
    task_groups: tuple[str, ...]
    scores: np.ndarray
    params_b: np.ndarray
    tokens_t: np.ndarray
    families: tuple[str, ...]
    instruct: np.ndarray

    @property
    def num_models(self) -> int:
        return len(self.model_names)

    def task_indices(self, groups: Sequence[str]) -> np.ndarray:
        """Indices of the sub-tasks of `groups` (ValueError for an unknown group)."""
        unknown = sorted(set(groups) - set(GROUP_SIZES))
        if unknown:
            raise ValueError(f"unknown task groups {unknown}; known: {sorted(GROUP_SIZES)}")
        return np.flatnonzero(np.isin(np.asarray(self.task_groups), list(groups)))

    def select_models(self, indices: Sequence[int]) -> "LLMZoo":
        """The zoo restricted to these models (in this order)."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self, model_names=tuple(self.model_names[i] for i in indices),
            scores=self.scores[:, indices], params_b=self.params_b[indices],
            tokens_t=self.tokens_t[indices], families=tuple(self.families[i] for i in indices),
            instruct=self.instruct[indices])


def _number(text: str, what: str, line: int, path) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise ValueError(f"{path}:{line}: {what}={text!r} is not a number") from err
    if not np.isfinite(value):
        raise ValueError(f"{path}:{line}: {what}={text!r} is not finite")
    return value


def load_zoo(path: str | os.PathLike = DEFAULT_TABLE, *, drop_unlabelled: bool = True) -> LLMZoo:
    """Reads the Sloth score table (one row per LLM) into an `LLMZoo`.

    Args:
      path: the CSV (columns Model, Family, Instruct, #Params (B), Pretraining Data Size (T) and the
        94 sub-task columns; other columns are ignored).
      drop_unlabelled: drop models without any sub-task score.

    Raises:
      ValueError: missing columns, a group with the wrong number of sub-tasks, a duplicated model,
        a non-numeric or out-of-range value (scores must lie in [0, 1], parameters and tokens > 0).
    """
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or ())
        needed = {MODEL_COLUMN, FAMILY_COLUMN, INSTRUCT_COLUMN, PARAMS_COLUMN, TOKENS_COLUMN}
        absent = needed - set(columns)
        if absent:
            raise ValueError(f"{path}: missing columns {sorted(absent)}")
        task_names = [c for c in columns if task_group(c) is not None]
        groups = [task_group(c) for c in task_names]
        for group, size in GROUP_SIZES.items():
            if groups.count(group) != size:
                raise ValueError(f"{path}: {groups.count(group)} columns of group {group!r}, "
                                 f"expected {size}")
        names, families, instruct, params, tokens, scores = [], [], [], [], [], []
        for line, row in enumerate(reader, start=2):
            name = row[MODEL_COLUMN].strip()
            if not name:
                raise ValueError(f"{path}:{line}: empty model name")
            if name in names:
                raise ValueError(f"{path}:{line}: model {name!r} appears twice")
            names.append(name)
            families.append(row[FAMILY_COLUMN].strip() or "unknown")
            flag = row[INSTRUCT_COLUMN].strip().lower()
            if flag not in ("true", "false"):
                raise ValueError(
                    f"{path}:{line}: Instruct={row[INSTRUCT_COLUMN]!r} is not True/False")
            instruct.append(flag == "true")
            params.append(_number(row[PARAMS_COLUMN], PARAMS_COLUMN, line, path))
            text = row[TOKENS_COLUMN].strip()
            tokens.append(_number(text, TOKENS_COLUMN, line, path) if text else np.nan)
            if params[-1] <= 0 or tokens[-1] <= 0:
                raise ValueError(f"{path}:{line}: parameters and tokens must be > 0")
            values = []
            for task in task_names:
                text = row[task].strip()
                value = _number(text, task, line, path) if text else np.nan
                if not np.isnan(value) and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{path}:{line}: {task}={value} is outside [0, 1]")
                values.append(value)
            scores.append(values)
    zoo = LLMZoo(tuple(names), tuple(task_names), tuple(groups),
                 np.asarray(scores, np.float64).T.copy(), np.asarray(params), np.asarray(tokens),
                 tuple(families), np.asarray(instruct, bool))
    if drop_unlabelled:
        zoo = zoo.select_models(np.flatnonzero(~np.isnan(zoo.scores).all(axis=0)))
    return zoo


# --------------------------------------------------------------------------------------------------
# Model metadata


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Model metadata features.

    Attributes:
      features: [M, K] float32.
      names: [K] feature names ("log_params", "log_tokens", "tokens_unknown", "instruct",
        "family=<name>", "family=other").
    """

    features: np.ndarray
    names: tuple[str, ...]


def _standardise(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    known = reference & ~np.isnan(values)
    mean, std = values[known].mean(), values[known].std()
    return (values - mean) / (std if std > 0 else 1.0)


def model_metadata(zoo: LLMZoo, *, reference: np.ndarray | None = None,
                   min_family_size: int = 3) -> Metadata:
    """Metadata features of every model of the zoo (what is known without evaluating a model).

    Args:
      zoo: the zoo.
      reference: [M] bool, the models that define the standardisation (mean/std of the log sizes)
        and the family vocabulary, e.g. the models seen in training; default all. A family gets its
        own column only if it has >= `min_family_size` reference models: a column without any
        training model would keep its random initial weights and add noise to an unseen model's
        token.
      min_family_size: see above; smaller families share the "family=other" column.

    Returns:
      `Metadata` with features [M, K]: log_params and log_tokens standardised over the reference
      models (unknown tokens -> 0, the mean, with tokens_unknown = 1), instruct in {0, 1}, family
      one-hot.
    """
    reference = np.ones(zoo.num_models, bool) if reference is None else np.asarray(reference, bool)
    if reference.shape != (zoo.num_models,) or not reference.any():
        raise ValueError(f"reference must be a non-empty [M={zoo.num_models}] bool mask")
    if min_family_size < 1:
        raise ValueError(f"min_family_size must be >= 1, got {min_family_size}")
    log_params = _standardise(np.log(zoo.params_b), reference)
    log_tokens = _standardise(np.log(zoo.tokens_t), reference)
    unknown_tokens = np.isnan(log_tokens)
    counts: dict[str, int] = {}
    for family, is_reference in zip(zoo.families, reference):
        counts[family] = counts.get(family, 0) + int(is_reference)
    vocabulary = sorted(f for f, n in counts.items() if n >= min_family_size)
    column = {family: i for i, family in enumerate(vocabulary)}
    one_hot = np.zeros((zoo.num_models, len(vocabulary) + 1))
    for row, family in enumerate(zoo.families):
        one_hot[row, column.get(family, len(vocabulary))] = 1.0
    features = np.column_stack([log_params, np.where(unknown_tokens, 0.0, log_tokens),
                                unknown_tokens, zoo.instruct, one_hot]).astype(np.float32)
    names = ("log_params", "log_tokens", "tokens_unknown", "instruct",
             *(f"family={f}" for f in vocabulary), "family=other")
    return Metadata(features, names)


# --------------------------------------------------------------------------------------------------
# Task tokens and task sets


def read_descriptions(path: str | os.PathLike = DEFAULT_DESCRIPTIONS) -> dict[str, tuple[str, str]]:
    """task -> (group, description) from data/llm/task_descriptions.csv (written for this repo)."""
    descriptions = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        absent = {"task", "group", "description"} - set(reader.fieldnames or ())
        if absent:
            raise ValueError(f"{path}: missing columns {sorted(absent)}")
        for line, row in enumerate(reader, start=2):
            if row["task"] in descriptions:
                raise ValueError(f"{path}:{line}: task {row['task']!r} appears twice")
            if not row["description"].strip():
                raise ValueError(f"{path}:{line}: empty description of {row['task']!r}")
            descriptions[row["task"]] = (row["group"], row["description"].strip())
    return descriptions


def load_task_prototypes(path: str | os.PathLike = DEFAULT_BANK, *, text: str = "all"
                         ) -> dict[str, prototypes_lib.TaskPrototypes]:
    """Task-token prototypes of the sub-tasks from the shipped prototype bank.

    The bank (written by converters/text.py from the feature store) holds, per sub-task, the
    sentence-encoder prototypes [C, 384]: row DESCRIPTION_CLASS = embedding of the task's name and
    description, row INPUTS_CLASS (BBH only) = mean embedding of sampled task inputs.

    Args:
      text: "all" keeps every prototype; "description" keeps only the description row (the same kind
        of token for every group).

    Returns:
      sub-task name -> TaskPrototypes (no per-model prototypes).
    """
    if text not in TASK_TEXT_CHOICES:
        raise ValueError(f"text must be one of {TASK_TEXT_CHOICES}, got {text!r}")
    prefix = store_dataset_name("")
    tasks = {}
    for task in prototypes_lib.load_prototype_bank(path):
        name = task.name[len(prefix):] if task.name.startswith(prefix) else task.name
        keep = slice(None) if text == "all" else slice(DESCRIPTION_CLASS, DESCRIPTION_CLASS + 1)
        tasks[name] = prototypes_lib.TaskPrototypes(name, task.generic[keep], task.counts[keep])
    return tasks


def task_set(zoo: LLMZoo, task_indices: Sequence[int],
             prototypes: Mapping[str, prototypes_lib.TaskPrototypes], *,
             hidden_models: np.ndarray | None = None) -> spider_data.TaskSet:
    """A Model Spider `TaskSet` of some sub-tasks: performance = scores, NaN (masked) where missing.

    Args:
      task_indices: sub-tasks of the zoo to include.
      prototypes: sub-task name -> task-token prototypes (`load_task_prototypes`).
      hidden_models: [M] bool, models whose scores are hidden (set NaN), e.g. unseen models.
    """
    names = [zoo.task_names[i] for i in task_indices]
    missing = [name for name in names if name not in prototypes]
    if missing:
        raise ValueError(f"no task-token prototypes for sub-tasks {missing}")
    performance = zoo.scores[np.asarray(task_indices, dtype=np.int64)].copy()
    if hidden_models is not None:
        performance[:, np.asarray(hidden_models, bool)] = np.nan
    return spider_data.TaskSet(zoo.model_names, [prototypes[name] for name in names], performance,
                               tuple(zoo.task_groups[i] for i in task_indices))


def split_unseen_models(zoo: LLMZoo, fraction: float, seed: int) -> np.ndarray:
    """[M] bool: a seeded random `fraction` of the models, held out from training as "unseen"."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    count = int(round(fraction * zoo.num_models))
    unseen = np.zeros(zoo.num_models, bool)
    unseen[np.random.default_rng([seed, 17]).choice(zoo.num_models, count, replace=False)] = True
    return unseen
