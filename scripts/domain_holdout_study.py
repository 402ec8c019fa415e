"""Leave-one-domain-group-out validation of Model Spider on the mini zoo's training tasks
(mspider_jax/spider/domain_holdout.py): one ranker per held-out domain group, curves of the
held-out weighted tau over epochs, and the metrics on the same tasks.

  python scripts/domain_holdout_study.py --config configs/spider_minizoo.py --workdir runs/domain_holdout \\
      --store MINIZOO_BUILD_WORKDIR/store --out results/spider_minizoo_domain_holdout.md

--store (the mini-zoo build's WORKDIR/store, with every training task's features) adds the
metrics' rows; without it only the ranker is measured. Folds resume from their checkpoints.
"""

import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/spider_minizoo.py", "A Model Spider config.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "One run per fold in WORKDIR/<fold>, and the reports.")
_STORE = flags.DEFINE_string("store", "", "The mini-zoo build's feature store (metrics on the training tasks).")
_METRICS = flags.DEFINE_list("metrics", ["hscore", "logme", "emms"], "Metrics compared (needs --store).")
_LABEL = flags.DEFINE_string("label", "", "A name for the config in the report.")
_OUT = flags.DEFINE_string("out", None, "Markdown output (default WORKDIR/domain_holdout.md); also .png, .json.")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    from mspider_jax import script_setup

    script_setup.start(argv)
    import shutil

    from mspider_jax import minizoo
    from mspider_jax.features.store import FeatureStore
    from mspider_jax.spider import domain_holdout

    config = _CONFIG.value
    folds = domain_holdout.minizoo_domain_folds()
    metric_taus = None
    if _STORE.value:
        tasks = sorted({t for fold in folds.values() for t in fold})
        metric_taus = domain_holdout.training_task_metric_taus(FeatureStore(_STORE.value), tasks,
                                                               minizoo.model_names(), _METRICS.value)
    summary = domain_holdout.domain_holdout_study(config, _WORKDIR.value, folds, metric_taus=metric_taus,
                                                  label=_LABEL.value)
    report = domain_holdout.markdown_report(summary)
    if _OUT.value:
        out = pathlib.Path(_OUT.value)
        from mspider_jax.evaluation._io import write_text_atomic

        write_text_atomic(out, f"![plot]({out.with_suffix('.png').name})\n\n{report}")
        workdir = pathlib.Path(_WORKDIR.value)
        for suffix in (".png", ".json"):
            shutil.copyfile(workdir / f"domain_holdout{suffix}", out.with_suffix(suffix))
    print(report)


if __name__ == "__main__":
    app.run(main)
