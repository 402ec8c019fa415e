"""Model Spider on the LLM zoo: 186 public LLMs x 94 leaderboard sub-tasks (`mspider_jax.llm`).

  python scripts/train.py --config=configs/spider_llm.py --workdir=/tmp/spider_llm
  python scripts/train.py --config=configs/spider_llm.py:smoke --workdir=/tmp/spider_llm_smoke

`scripts/train.py` dispatches on `config.data.zoo == "llm"` to `mspider_jax.llm.experiment.run`:
leave-one-group-out over {BBH}, {MATH}, {MUSR + GPQA}, hyper-parameters chosen by inner
leave-one-group-out on the training tasks only (`llm.grid`), then the unseen-model test.

Data (shipped in data/llm/, see data/README.md): the Sloth score table and the task-token prototype
bank (all-MiniLM-L6-v2 embeddings of task descriptions and sampled BBH inputs, converters/text.py).
The ranker is small (width 64, one head, one block): the data is 94 tasks. Its size, the 150 epochs
and the learning-rate range were set on a split of the MMLU subjects only (never a held-out group).
"""

import ml_collections

from configs import common
from configs import spider_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = common.parse_arg(arg, smoke=False, seed=0)
    config = spider_base.base_config(arg.seed)
    config.data.zoo = "llm"
    config.data.label = "accuracy"   # raw sub-task scores; missing cells are masked in the loss
    config.model.width = 64
    config.model.num_heads = 1
    config.model.depth = 1
    config.model.dropout = 0.1
    config.model.tokens = "learned+metadata"   # "learned" | "metadata" | "learned+metadata"
    # Training drops a model's learned vector with this probability (its metadata part remains).
    config.model.learned_token_dropout = 0.25
    config.optim.lr = 1e-2
    config.optim.final_lr = 1e-5
    config.train.epochs = 150
    config.train.batch_size = 16
    config.train.k_min = config.train.k_max = 0  # LLMs have no per-model task features: no stage 2
    config.eval.rerank_k = 0
    config.eval.choose_k_on_validation = False
    config.eval.paper_compat = False
    config.llm = ml_collections.ConfigDict(dict(
        table=spider_base.repo_path("data/llm/sloth_data_v1.csv"),
        bank=spider_base.repo_path("data/llm/task_prototypes.npz"),
        folds=("bbh", "math", "musr_gpqa"),
        # "description": one token per task (its description); "all": + the BBH input prototype.
        task_text="description",
        min_family_size=3,        # families with fewer (reference) models share the "other" column
        # Candidates, chosen per fold on held-out TRAINING groups: "field=v1|v2;field=v1|v2".
        # On a tie (e.g. BBH held out: no training task has inputs) the first candidate wins.
        grid="optim.lr=1e-2|3e-3;llm.task_text=description|all",
        knn_ks=(1, 3, 5, 10, 20),
        unseen_fraction=0.2,      # models hidden from training in the unseen-model test
        unseen_seed=0,
        unseen_tokens="learned+metadata",  # unseen models have no learned vector: metadata alone
        ridge=1.0,                # metadata prior's L2 penalty
    ))
    if arg.smoke:
        config.model.width = 16
        config.train.epochs = 2
        config.llm.folds = ("musr_gpqa",)
        config.llm.grid = "optim.lr=1e-2|3e-3"
        config.llm.knn_ks = (1, 3)
    return config
