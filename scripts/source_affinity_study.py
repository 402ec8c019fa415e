"""Source affinity on the mini zoo's leave-one-domain-group-out folds (mspider_jax/spider/source_affinity.py):
rank the zoo by how close each training task is to each PTM's pretraining data in the generic
encoder's space, and compare with the ranker and the metrics on the same held-out training tasks.

  python scripts/source_affinity_study.py --source_store SOURCE_STORE \\
      --domain_holdout results/spider_minizoo_domain_holdout.json --out results/spider_minizoo_source_affinity.md \\
      [--fold_runs DOMAIN_HOLDOUT_WORKDIR]   # the fold rankers plus the prior at --weights

SOURCE_STORE is a feature store with the generic encoder's features of each source's pretraining
data, as datasets `src_<source>` (split train, model `generic`). With --build_workdir (the mini-zoo
build's WORKDIR) the missing ones are extracted first from WORKDIR/data/sources/<source>_train.npz
(PyTorch, through converters/). No target is used.
"""

import json
import pathlib

from absl import app
from absl import flags

_SOURCE_STORE = flags.DEFINE_string("source_store", None, "Feature store with datasets src_<source> (model generic).")
_BUILD_WORKDIR = flags.DEFINE_string("build_workdir", "", "Mini-zoo build WORKDIR: extract missing sources into --source_store.")
_DOMAIN_HOLDOUT = flags.DEFINE_string("domain_holdout", "", "A domain_holdout_study JSON: adds its ranker and metric columns.")
_OUT = flags.DEFINE_string("out", None, "Markdown output; the summary goes next to it as .json.")
_FOLD_RUNS = flags.DEFINE_string("fold_runs", "", "The domain-holdout study's WORKDIR (one ranker per fold): "
                                  "adds the fold rankers with the prior at --weights.")
_WEIGHTS = flags.DEFINE_list("weights", ["0", "0.5", "1", "1.5", "2", "5"], "Prior weights tried with --fold_runs.")
_WRITE_PROTOTYPES = flags.DEFINE_string("write_source_prototypes", "",
                                        "Also write the sources' generic prototypes here (the npz that "
                                        "config.prior.source_prototypes reads, e.g. data/minizoo_source_prototypes.npz).")
flags.mark_flags_as_required(["source_store"])


DESCRIPTION = """# Source affinity on the mini zoo's unseen-domain folds (training tasks only)

Mean weighted tau over each fold's held-out training tasks (the folds of
`results/spider_minizoo_domain_holdout.md`). *affinity*: each PTM scored by how close the task's
generic-encoder class prototypes are to those of the PTM's pretraining data (mean over the task's
classes of the largest cosine similarity; the four architectures of one source tie). *group prior*:
the architectures' mean standardised accuracy on the training tasks outside the fold. Neither is
trained on the fold's domains, and neither runs a PTM on the task (stage 1 inputs only). The other
columns are the fold's ranker (trained without the fold's domains) and the metrics (every PTM run
on the task), copied from the domain-holdout study. No target was used.

Caveat: the folds' held-out tasks are built from the PTMs' own pretraining datasets, which favours
the affinity by construction; on the 8 targets (other data) the ranker plus this prior did worse than
the ranker alone (0.584 vs 0.699 at stage 1; results/spider_minizoo.md)."""


def _extract_sources(store, sources: list[str], source_dir: pathlib.Path) -> None:
    """The generic encoder's features of each source's pretraining split, for those not in the store."""
    from converters import extract
    from converters.minizoo import zoo

    for source in sources:
        if store.has(f"src_{source}", "train", "generic"):
            continue
        data = extract.NpzSource(str(source_dir / f"{source}_train.npz"), "train")
        extract.extract_to_store([zoo.generic_entry()], data, store, dataset_name=f"src_{source}", batch_size=250,
                                 device="cpu", offline=True, progress=False)


def main(argv: list[str]) -> None:
    from mspider_jax import script_setup

    script_setup.start(argv)
    import numpy as np

    from mspider_jax import minizoo
    from mspider_jax.evaluation._io import write_text_atomic
    from mspider_jax.features.store import FeatureStore
    from mspider_jax.spider import domain_holdout, prototypes, source_affinity

    manifest = minizoo.load_manifest()
    models = minizoo.model_names()
    by_name = {m["name"]: m for m in manifest["models"]}
    sources = [by_name[m]["source"] for m in models]
    groups = [by_name[m]["arch"] for m in models]
    store = FeatureStore(_SOURCE_STORE.value)
    if _BUILD_WORKDIR.value:
        _extract_sources(store, sorted(set(sources)), pathlib.Path(_BUILD_WORKDIR.value) / "data" / "sources")
    source_prototypes = {}
    for source in sorted(set(sources)):
        entry = store.read(f"src_{source}", "train", "generic")
        source_prototypes[source], _ = prototypes.class_prototypes(np.asarray(entry.features), np.asarray(entry.labels))
    if _WRITE_PROTOTYPES.value:
        from mspider_jax.evaluation._io import write_npz_atomic

        write_npz_atomic(_WRITE_PROTOTYPES.value, {s: np.asarray(p, np.float32) for s, p in source_prototypes.items()})
    bank = {t.name: t.generic for t in minizoo.training_bank()}
    tasks, table = minizoo.ground_truth_table("training")
    accuracies = dict(zip(tasks, table))
    folds = domain_holdout.minizoo_domain_folds()
    summary = source_affinity.fold_study(bank, accuracies, sources, groups, source_prototypes, folds)
    extra = {}
    if _DOMAIN_HOLDOUT.value:
        holdout = json.loads(pathlib.Path(_DOMAIN_HOLDOUT.value).read_text())
        columns = {"ranker, best step (optimistic)": "best_on_fold", "stage 2, k=24": "stage 2, k=24",
                   **{m: m for m in holdout.get("metrics", [])}}
        extra = {name: {f["fold"]: f[key] for f in holdout["folds"] if key in f} for name, key in columns.items()}
    if _FOLD_RUNS.value:
        from configs import spider_minizoo

        weights = [float(w) for w in _WEIGHTS.value]
        fusion = source_affinity.fusion_fold_study(spider_minizoo.get_config(), _FOLD_RUNS.value, folds, sources, groups,
                                                   source_prototypes, weights)
        summary["fold_rankers_with_prior"] = fusion
        for weight in weights:
            extra[f"fold ranker + prior x{weight:g}"] = {f: fusion["folds"][f][weight] for f in folds}
    report = source_affinity.markdown_report(summary, extra)
    if _OUT.value:
        out = pathlib.Path(_OUT.value)
        write_text_atomic(out, DESCRIPTION + "\n\n" + report + "\n")
        write_text_atomic(out.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    print(report)


if __name__ == "__main__":
    app.run(main)
