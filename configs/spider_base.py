"""Defaults shared by the Model Spider configs (`configs/spider_*.py`), = the paper's protocol.

Spec shared/specs/model_spider.md §4 (architecture) and §6.2 (optimisation). Not a config file on
its own: `get_config` returns these defaults with empty data sources (fill `data`).
"""

import pathlib

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]


def repo_path(relative: str) -> str:
    """An absolute path inside the repository (configs work from any working directory)."""
    return str(REPO / relative)


def task_source(**overrides) -> ml_collections.ConfigDict:
    """Where one split's tasks come from: a prototype bank OR a feature store, plus a ground truth.

    bank: prototype bank .npz (mspider_jax.spider.prototypes); store: feature store root ("minizoo" =
    the offline mini zoo's target store); split: store split; store_prefix: task t is store dataset
    store_prefix + t; tasks: task names (empty = all tasks of the bank, or of the ground truth for a
    store); ground_truth: long CSV read with task_column / model_column / value_column, keeping the
    rows that match `where` ("column=value,...").
    """
    source = ml_collections.ConfigDict(dict(
        bank="", store="", split="train", store_prefix="", tasks=(), ground_truth="",
        task_column="dataset", model_column="model", value_column="accuracy", where=""))
    source.update(overrides)
    return source


def base_config(seed: int = 0) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = seed
    config.data = ml_collections.ConfigDict(dict(
        zoo="",                 # "minizoo": the zoo order is mspider_jax.minizoo.model_names()
        models=(),              # the zoo, in the order of every score vector
        label="rank",           # training labels: "rank" (paper) or "accuracy"
        # Where training labels come from (spider/label_sources.py): "finetune" (the ground truth),
        # "linear_probe" or "metrics_borda" (computed from the training tasks' stored features).
        label_source="finetune",
        label_options=ml_collections.ConfigDict(dict(
            store="", split="train", store_prefix="", cache_dir="",
            metrics=("logme", "nce", "hscore", "leep"), convention="paper",
            held_out_fraction=0.3, regularization=1.0, seed=0)),
        generic_model="generic",  # store model name of the generic (task) encoder
        val_tasks=(),           # held-out TRAINING tasks for model selection (never targets) ...
        num_val_tasks=2,        # ... or this many drawn with the seed when val_tasks is empty
        train=task_source(),
        targets=task_source(),
    ))
    config.model = ml_collections.ConfigDict(dict(
        width=1024, num_heads=1, depth=1, dropout=0.1,
        # P_h: rows kept of each PTM-specific block; 0 = the largest class count of training tasks.
        specific_length=0,
    ))
    config.loss = ml_collections.ConfigDict(dict(name="plackett_luce", listnet_temperature=1.0))
    config.optim = ml_collections.ConfigDict(
        dict(lr=2.5e-4, final_lr=5e-6, b1=0.9, b2=0.999, eps=1e-8))
    config.train = ml_collections.ConfigDict(dict(
        epochs=30, batch_size=16,
        k_min=0, k_max=10,      # PTMs enriched with their own tokens per batch: k ~ U{k_min..k_max}
        log_every_steps=50, eval_every_epochs=1, checkpoint_every_steps=500, max_checkpoints=2,
        stop_after_step=-1,     # > 0: stop after this step as if killed (tests of resuming)
        # Non-empty: train one run per seed in WORKDIR/seed<s> (same validation tasks, those of the
        # first seed), combine them into an ensemble (spider/ensemble.py) and evaluate it.
        ensemble_seeds=(),
    ))
    # Source-affinity prior (spider/source_affinity.py), off by default (not part of the paper): with
    # a weight > 0, training fits it to the best checkpoint and saves it next to best/, and every
    # `checkpointing.load_ranker` of the run adds it to the ranker's scores.
    config.prior = ml_collections.ConfigDict(dict(
        source_affinity_weight=0.0,
        source_prototypes="",   # npz {source: [S, Dg]}: generic prototypes of each pretraining source
        model_sources=(),       # [M] each model's source (default for the mini zoo: its manifest)
        model_groups=(),        # [M] each model's group, e.g. architecture (mini zoo: manifest)
    ))
    config.eval = ml_collections.ConfigDict(dict(
        rerank_k=3,                    # fixed stage-2 depth
        choose_k_on_validation=True,   # also report k chosen on the validation tasks ...
        k_choices=(),                  # ... among these (empty = 0..train.k_max)
        paper_compat=True,             # also report the released code's OPTIMISTIC test-chosen k
        metric_scores="",              # optional CSV dataset,model,metric,score on the targets
        batch_size=16,                 # tasks per scoring batch (every batch padded to it)
        latency_repeats=3,             # timed rank_task calls per target (0 = do not measure)
    ))
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return base_config()
