"""The benchmark with every target subsampled to n labelled samples per class (mspider_jax/benchmark/sample_size.py).

  python scripts/sample_size_study.py --config configs/benchmark_minizoo.py --workdir runs/sample_size \\
      --per_class 10,20,40,80 --repeats 3 --out results/spider_minizoo_sample_size.md
  python scripts/sample_size_study.py --config configs/benchmark_minizoo.py:smoke --workdir /tmp/s \\
      --per_class 3 --repeats 2                                                   # seconds

Writes OUT (markdown table), OUT with .png (plot) and .json (per-target values). Default metrics:
every registered metric but N-LEEP (its EM fit costs ~20 s per target and draw on the mini zoo;
add it with --config.metrics.names). Subsamples and metric scores are cached in the workdir, so an
interrupted run resumes.
"""

import pathlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/benchmark_minizoo.py",
                                          "A benchmark config (configs/benchmark_*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Subsampled store, metric cache, outputs.")
_PER_CLASS = flags.DEFINE_list("per_class", ["10", "20", "40", "80"], "Samples per class kept.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Draws per (target, n).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the draws.")
_OUT = flags.DEFINE_string("out", None, "Markdown output (default WORKDIR/sample_size.md).")
flags.mark_flags_as_required(["workdir"])

SLOW_METRICS = ("nleep",)


def main(argv: list[str]) -> None:
    from mspider_jax import script_setup

    script_setup.start(argv)
    from mspider_jax import metrics
    from mspider_jax.benchmark import sample_size

    config = _CONFIG.value
    if not config.metrics.names:
        with config.unlocked():
            config.metrics.names = tuple(n for n in metrics.names() if n not in SLOW_METRICS)
    result = sample_size.run_study(config, _WORKDIR.value,
                                   per_class=[int(n) for n in _PER_CLASS.value],
                                   repeats=_REPEATS.value, seed=_SEED.value,
                                   progress=lambda line: logging.info("%s", line))
    out = pathlib.Path(_OUT.value or pathlib.Path(_WORKDIR.value) / "sample_size.md")
    report = sample_size.format_report(result)
    from mspider_jax.evaluation._io import write_text_atomic

    write_text_atomic(out, f"# {result.info['name']}: ranking quality against labelled samples per "
                           f"class\n\n![plot]({out.with_suffix('.png').name})\n\n{report}")
    sample_size.plot(result, out.with_suffix(".png"))
    sample_size.save_json(result, out.with_suffix(".json"))
    print(report)
    print(f"wrote {out} (+ .png, .json)")


if __name__ == "__main__":
    app.run(main)
