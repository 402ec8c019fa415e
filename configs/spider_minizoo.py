"""Model Spider on the offline mini zoo (`data/minizoo/`, built by scripts/build_minizoo.py).

  python scripts/train.py --config=configs/spider_minizoo.py --workdir=/tmp/spider_minizoo
  python scripts/train.py --config=configs/spider_minizoo.py:label_source=linear_probe,\
label_store=MINIZOO_WORKDIR/store --workdir=/tmp/spider_minizoo_probe
  python scripts/train.py --config=configs/spider_minizoo.py:smoke --workdir=/tmp/smoke \
      --config.data.models="('m0','m1')" \
      --config.data.train.bank=... --config.data.train.ground_truth=... \
      --config.data.targets.bank=... --config.data.targets.ground_truth=...

The mini zoo is small (few PTMs, low-dimensional features), so the ranker is narrow (width 128): the
checkpoint is a few MB and training takes minutes on CPU. `smoke` is a seconds-long run on data that
the caller provides (the tests build a tiny synthetic bank); its paths are set on the command line.
"""

import ml_collections

from configs import common
from configs import spider_base
from mspider_jax import minizoo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, smoke=False, seed=0, label_source="finetune", label_store="")
    config = spider_base.base_config(arg.seed)
    config.data.zoo = "minizoo"
    # Training labels (spider/label_sources.py): "finetune" (measured, the ground truth), or
    # "linear_probe" / "metrics_borda" computed from the training tasks' features in label_store
    # (the mini-zoo build's WORKDIR/store; store datasets are named like the training tasks).
    config.data.label_source = arg.label_source
    config.data.label_options.store = arg.label_store
    config.data.num_val_tasks = 12
    artifact = minizoo.artifact_dir()  # data/minizoo, or $MSPIDER_MINIZOO_DIR
    config.data.train = spider_base.task_source(
        bank=str(artifact / minizoo.TRAINING_BANK),
        ground_truth=str(artifact / minizoo.GROUND_TRUTH_FILES["training"]))
    # Targets: store datasets mz_<target>, named so in the ground truth too.
    config.data.targets = spider_base.task_source(
        store="minizoo", ground_truth=str(artifact / minizoo.GROUND_TRUTH_FILES["targets"]))
    config.model.width = 128
    # Epochs chosen on the validation tasks (12 held-out training tasks, seed 0): best validation
    # weighted tau 0.80 after 200 epochs, 0.857 after 400, 0.865 after 800 (30 epochs: 0.60, the
    # ranker had not left the constant prior). 120 tasks x 800 epochs = 5600 steps, ~5 min on 2 cores.
    config.train.epochs = 800
    config.train.eval_every_epochs = 10
    config.train.batch_size = 16
    # Source-affinity prior (spider/source_affinity.py): OFF. On the leave-one-domain-group-out folds
    # of the training tasks weight 1.0 was best (fold rankers 0.632 alone, 0.799 with it), but the one
    # evaluation on the targets that followed gave 0.584 / 0.589 (stage 1 / k=3) against the ranker
    # alone's 0.699 / 0.727: the folds' tasks are made of the PTMs' own pretraining data, the targets
    # are not (results/spider_minizoo.md). Opt in with --config.prior.source_affinity_weight=1.0.
    # {source: [S, Dg]} of the shipped build's sources (scripts/source_affinity_study.py --write_source_prototypes)
    config.prior.source_prototypes = spider_base.repo_path("data/minizoo_source_prototypes.npz")
    if arg.smoke:
        config.prior.source_prototypes = ""
        config.data.zoo = ""
        config.data.num_val_tasks = 2
        config.data.train = spider_base.task_source()
        config.data.targets = spider_base.task_source()
        config.model.width = 16
        config.model.num_heads = 2
        config.train.epochs = 2
        config.train.eval_every_epochs = 1
        config.train.batch_size = 4
        config.train.k_max = 2
        config.train.log_every_steps = 1
        config.train.checkpoint_every_steps = 2
        config.eval.batch_size = 4
        config.eval.latency_repeats = 0
    return config
