"""Recomputes the nine baseline rows of Model Spider's Table 1 from the published scores.

  python scripts/reproduce_table.py [--out=results/single_source_published]

Writes <out>.md (table, cell-by-cell comparison with the published table, notes), <out>.csv and
<out>.png, and prints the markdown.
"""

from absl import app, flags

from mspider_jax.evaluation import reproduce

_OUT = flags.DEFINE_string("out", "results/single_source_published", "Output prefix.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    reproduce.reproduce_single_source(_OUT.value)


if __name__ == "__main__":
    app.run(main)
