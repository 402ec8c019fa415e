"""Writes the shipped mini-zoo artifact (the `package` stage of converters/minizoo/build.py).

Artifact layout (all paths relative to the artifact folder, every file hashed in manifest.json):

  manifest.json                 models, targets, training tasks, versions, config, build time, sha256
  README.md                     generated: the zoo, its tables, how to rebuild
  models/<model>.npz            float16 state dict of a PTM (torchvision key names); generic.npz too
  targets/<target>.npz          training split of a target: images uint8 [N, 32, 32, 1|3], labels,
                                class_names, grayscale
  training_tasks.npz            class prototypes of the training tasks (generic + every PTM)
  source_prototypes.npz         generic class prototypes of each pretraining source (builds after 2026-11-27)
  ground_truth_targets.csv      fine-tuning accuracy (percent), 3 seeds, linear probe
  ground_truth_training.csv     the same on the training tasks (1 seed)
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import pathlib
import platform
import shutil
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from converters.minizoo.build import Builder

CSV_COLUMNS = ("dataset", "model", "accuracy", "accuracy_std", "num_seeds", "seed_accuracies",
               "linear_probe")
MANIFEST_NAME = "manifest.json"
APT_LINE = ("apt-get install -y dataset-fashion-mnist fonts-noto-core fonts-noto-color-emoji "
            "fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-freefont-ttf fonts-urw-base35 "
            "fonts-bwht fonts-dkg-handwriting fonts-humor-sans")

TARGET_DESCRIPTIONS = {
    "digits": "scikit-learn's real handwritten digits (8x8, upsampled)",
    "greek": "24 lower-case Greek letters, print fonts",
    "cyrillic": "32 upper-case Cyrillic letters, print fonts",
    "gurmukhi": "33 Gurmukhi letters, Noto fonts (a script related to the Devanagari source)",
    "handwriting": "26 Latin letters in handwriting fonts (no handwriting font is in a source)",
    "emoji": "5 emoji categories (Noto Color Emoji) on random backgrounds",
    "patches": "which grayscale photo/texture photo a patch comes from (none used by a source)",
    "fmnist_coarse": "Fashion-MNIST test images, 4 coarse classes",
    "orientation": "direction of an arrow (8 bins of 45 degrees)",
}
SOURCE_DESCRIPTIONS = {
    "fmnist": "Fashion-MNIST (10 classes, half of the official train split)",
    "latin": "26 upper-case Latin letters in ~80 print fonts",
    "devanagari": "Devanagari letters (Noto + FreeFont)",
    "photo": "which of 10 colour photos a patch comes from",
    "shapes": "8 dSprites-like shapes, random pose and colours",
    "textures": "10 procedural texture families",
}


def write_csv(path: pathlib.Path, records: list[dict]) -> None:
    from converters.minizoo.build import atomic_write_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_bytes(path, buffer.getvalue().encode())


def versions() -> dict[str, str]:
    import PIL
    import torch
    import torchvision

    return dict(python=platform.python_version(), torch=torch.__version__,
                torchvision=torchvision.__version__, numpy=np.__version__, pillow=PIL.__version__,
                platform=platform.platform())


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_artifact(builder: Builder) -> pathlib.Path:
    """Assembles the artifact in <workdir>/artifact, then copies it to builder.output atomically-ish
    (a temporary sibling folder renamed into place)."""
    from converters.minizoo import build as build_lib

    config = builder.config
    staging = builder.workdir / "artifact"
    (staging / "models").mkdir(parents=True, exist_ok=True)
    (staging / "targets").mkdir(parents=True, exist_ok=True)
    models = []
    for spec in builder.models:
        info = builder.model_info(spec.name)
        shutil.copyfile(builder._model_path(spec.name), staging / "models" / f"{spec.name}.npz")
        models.append(dict(name=spec.name, arch=spec.arch, source=spec.source,
                           num_classes=info["num_classes"], feature_dim=info["feature_dim"],
                           num_parameters=info["num_parameters"],
                           source_test_accuracy=info["source_test_accuracy"],
                           chance_accuracy=info["chance_accuracy"], file=f"models/{spec.name}.npz"))
    generic_info = builder.model_info(build_lib.GENERIC)
    shutil.copyfile(builder._model_path(build_lib.GENERIC), staging / "models" / "generic.npz")
    generic = dict(name=build_lib.GENERIC, arch=generic_info["arch"],
                   num_classes=generic_info["num_classes"], feature_dim=generic_info["feature_dim"],
                   num_parameters=generic_info["num_parameters"],
                   source_test_accuracy=generic_info["source_test_accuracy"],
                   file="models/generic.npz")
    targets = []
    for target in config.targets:
        train = builder.load_set("targets", f"{target}_train")
        test = builder.load_set("targets", f"{target}_test")
        build_lib.atomic_save_npz(staging / "targets" / f"{target}.npz", **train.to_arrays())
        targets.append(dict(name=target, dataset=build_lib.target_dataset(target),
                            num_classes=train.num_classes, class_names=train.class_names,
                            num_train=len(train), num_test=len(test), grayscale=train.grayscale,
                            description=TARGET_DESCRIPTIONS.get(target, ""),
                            file=f"targets/{target}.npz"))
    target_records = builder.ground_truth("targets")
    training_records = builder.ground_truth("training")
    write_csv(staging / "ground_truth_targets.csv", target_records)
    write_csv(staging / "ground_truth_training.csv", training_records)
    tasks = [dict(name=spec["name"], classes=[f"{d}:{n}" for d, n, _ in spec["classes"]])
             for spec in builder.task_specs()]
    timings_path = builder.workdir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    if timings and "wall" not in timings:  # first format: {stage: wall seconds}
        timings = dict(wall=timings, cpu={})
    wall, cpu = timings.get("wall", {}), timings.get("cpu", {})
    from mspider_jax import minizoo as library

    summary = library.acceptance_summary(target_records, [m["name"] for m in models])
    try:  # LogME on the build's features of the targets' training splits (same as the shipped ones)
        summary["logme_weighted_tau"], summary["logme_weighted_tau_per_target"] = \
            library.metric_weighted_tau(builder.store(), target_records, [m["name"] for m in models])
    except (ImportError, ValueError) as err:  # e.g. a constant ranking on a tiny build
        build_lib.log.warning("LogME weighted tau not computed: %s", err)
        summary["logme_weighted_tau"] = None
    manifest = dict(
        format=build_lib.ARTIFACT_FORMAT, name=config.name, accuracy_unit="percent",
        preprocessing=build_lib.PREPROCESSING, models=models, generic=generic, targets=targets,
        training_tasks=tasks, sources={s: SOURCE_DESCRIPTIONS.get(s, "") for s in config.sources},
        versions=versions(), config=build_lib.config_to_dict(config),
        build=dict(finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   stage_seconds=wall, total_seconds=round(sum(wall.values()), 1),
                   stage_cpu_seconds=cpu, total_cpu_seconds=round(sum(cpu.values()), 1),
                   # CPU seconds of the process that ran this package stage (and its workers).
                   process_cpu_seconds=round(build_lib.cpu_seconds(), 1),
                   threads=config.threads, notes=timings.get("notes", "")),
        summary=summary)
    (staging / "README.md").write_text(render_readme(manifest))
    for path in staging.rglob("*"):  # some writers create 0600 files; shipped files are public
        if path.is_file():
            path.chmod(0o644)
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
                   and not p.name.startswith("."))
    manifest["files"] = {str(p.relative_to(staging)): build_lib.sha256_of(p) for p in files}
    manifest["total_bytes"] = sum(p.stat().st_size for p in files)
    build_lib.atomic_write_json(staging / MANIFEST_NAME, manifest)
    # Replace the output folder by the staging copy (the folder holds nothing else of value).
    output = builder.output
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.parent / f".{output.name}.new"
    if temporary.exists():
        shutil.rmtree(temporary)
    shutil.copytree(staging, temporary)
    if output.exists():
        old = output.parent / f".{output.name}.old"
        if old.exists():
            shutil.rmtree(old)
        output.rename(old)
        temporary.rename(output)
        shutil.rmtree(old)
    else:
        temporary.rename(output)
    size = manifest["total_bytes"] / 2 ** 20
    build_lib.log.info("artifact written to %s (%.1f MB, %d files)", output, size, len(files) + 1)
    return output


def render_readme(manifest: dict) -> str:
    """The artifact's README.md (generated from the manifest so that its tables match the files)."""
    models, targets, config = manifest["models"], manifest["targets"], manifest["config"]
    archs, sources = config["architectures"], list(config["sources"])
    by_name = {m["name"]: m for m in models}
    source_rows = []
    for arch in archs:
        source_rows.append([arch] + [f"{by_name[f'{arch}_{s}']['source_test_accuracy']:.1f}"
                                     for s in sources])
    source_rows.append(["*chance*"] + [f"{by_name[f'{archs[0]}_{s}']['chance_accuracy']:.1f}"
                                       for s in sources])
    param_rows = [[arch, by_name[f"{arch}_{sources[0]}"]["feature_dim"],
                   f"{by_name[f'{arch}_{sources[0]}']['num_parameters'] / 1e3:.0f} k"] for arch in archs]
    summary = manifest["summary"]
    target_rows = [[t["name"], t["dataset"], t["num_classes"], t["num_train"], t["num_test"],
                    summary["best_model"].get(t["dataset"], ""),
                    f"{summary['best_accuracy'].get(t['dataset'], float('nan')):.1f}",
                    t["description"]] for t in targets]
    build = manifest["build"]
    source_table = _markdown_table(["arch \\ source"] + sources, source_rows)
    from converters.minizoo.build import STAGES

    stage_times = ", ".join(
        f"{stage} {build['stage_seconds'][stage]:.0f} / "
        + (f"{build['stage_cpu_seconds'][stage]:.0f}" if stage in build["stage_cpu_seconds"] else "n/a")
        for stage in STAGES if stage in build["stage_seconds"])
    build_notes = f"\nBuild notes: {build['notes']}." if build.get("notes") else ""
    text = f"""# The offline mini zoo

A small but real model zoo, built offline on a 2-core CPU and shipped in the repository: it is the
embedded default of `make demo`, of the tests and of the Model Spider config. It mirrors Model
Spider's multi-source zoo (architectures x source datasets; Zhang et al., NeurIPS 2023, spec §1.2)
at laptop scale: {len(archs)} torchvision architecture families x {len(sources)} source domains =
**{len(models)} PTMs**, {len(targets)} held-out **targets** with fine-tuning ground truth (mean of
{config['finetune_seeds']} seeds), and **{len(manifest['training_tasks'])} training tasks** for the
ranker (ground truth from {config['tasks']['seeds']} seed(s), smaller and shorter fine-tunes).
Everything is generated by `scripts/build_minizoo.py` from `configs/minizoo.py`; this file is
generated too.

Images are 32x32 RGB uint8. Model names are `<arch>_<source>` (zoo order = `models` in
`manifest.json`: by source, then architecture); the generic task encoder (`generic`, a ResNet
trained on the union of the sources) is not part of the zoo. Preprocessing of every model:
`(x / 255 - 0.5) / 0.25` per channel at 32x32; its feature is the input of its last Linear layer.

## PTMs: accuracy (%) on their own source's test split

{source_table}

Architectures (real torchvision classes shrunk for 32x32, see `converters/minizoo/architectures.py`):

{_markdown_table(["arch", "feature dim", "parameters"], param_rows)}

Sources: {"; ".join(f"`{s}`: {d}" for s, d in manifest["sources"].items())}.
The generic encoder reaches {manifest['generic']['source_test_accuracy']:.1f}% on the union of the
source test splits ({manifest['generic']['num_classes']} classes, feature dim
{manifest['generic']['feature_dim']}).

## Targets

{_markdown_table(["target", "store dataset", "classes", "train", "test", "best PTM", "best acc.",
                  "what"], target_rows)}

Only the training split of each target is shipped (`targets/<target>.npz`; grayscale targets keep
one channel). `mspider_jax.minizoo.ensure_target_store()` extracts every PTM's and the generic
encoder's features of them into a local cached feature store at first use (needs torch).

## Ground truth

`ground_truth_targets.csv` and `ground_truth_training.csv`, long format, one row per (dataset,
model): `accuracy` is the test accuracy in **percent** after full fine-tuning (mean over
`num_seeds`; `seed_accuracies` lists each seed, `accuracy_std` is their sample standard deviation),
`linear_probe` the test accuracy (percent) of a logistic regression on the frozen features (a
second, cheaper label). Targets: {config['finetune_seeds']} seeds, {config['finetune']['epochs']}
epochs, SGD lr {config['finetune']['learning_rate']}; training tasks: {config['tasks']['seeds']}
seed, {config['tasks']['finetune']['epochs']} epochs, {config['tasks']['train_per_class']} training
images per class.

How task-dependent the rankings are (targets): the most frequent best PTM wins
{summary['max_wins']} of {summary['num_targets']} targets; mean Kendall tau between the targets'
rankings {_fmt(summary['mean_between_target_tau'])}; mean seed-to-seed Kendall tau
{_fmt(summary['mean_seed_tau'])}; LogME's mean weighted tau {_fmt(summary.get('logme_weighted_tau'))}.

## Training tasks

`training_tasks.npz` is a prototype bank (`mspider_jax.spider.prototypes.load_prototype_bank`):
for each task `mz_task<k>`, the class prototypes of the generic encoder and of every PTM (float16)
and the class counts. Each task is a random subset of {config['tasks']['min_classes']} to
{config['tasks']['max_classes']} classes of 1 to {config['tasks']['max_domains']} domains (the
source domains with fresh images, and scripts that no target uses); `manifest.json` lists their
classes.

## Rebuilding

The fonts and Fashion-MNIST come from Debian packages:

```bash
{APT_LINE}
pip install -e '.[torch,dev]'      # torch, torchvision, scikit-learn, scikit-image
python scripts/build_minizoo.py --config configs/minizoo.py --workdir /tmp/minizoo_work
```

The build resumes from its work directory after an interruption and keeps every intermediate
output there (including the features of every training task for every PTM, in
`<workdir>/store`, for metric-based labels). This artifact took
{build['total_seconds'] / 60:.0f} min of wall-clock build time (summed over resumed runs) with
{build['threads']} threads and {config['finetune_workers']} fine-tuning worker processes, on a
2-core machine shared with other jobs. Per stage, wall / CPU seconds (CPU of all threads and
workers; "n/a" where a run predates the CPU accounting): {stage_times}.{build_notes}
Versions: {", ".join(f"{k} {v}" for k, v in manifest['versions'].items())}.

## Licences of the sources

Fashion-MNIST: MIT (Zalando Research). scikit-learn's digits (UCI optical recognition of handwritten
digits, CC BY 4.0) and sample photos (CC BY 2.0; pretraining only, not shipped); scikit-image's data
images (public domain / CC0 / "no known copyright restrictions" as documented in
`skimage/data/_fetchers.py`; moon and page state none and come with scikit-image, BSD-3; the
motorcycle photo is from the Middlebury 2014 stereo benchmark, pretraining only). See data/README.md. Fonts: Noto (SIL OFL 1.1), DejaVu (Bitstream Vera licence),
Liberation (SIL OFL 1.1), GNU FreeFont (GPL-3+ with font exception), URW base35 (AGPL-3 with font
exception), Because We (bwht, SIL OFL 1.1), dkg handwriting (SIL OFL 1.1), Humor Sans (SIL OFL
1.1). The procedural data (shapes, arrows, textures) is generated. The models and ground truth are
released with this repository.
"""
    return text
