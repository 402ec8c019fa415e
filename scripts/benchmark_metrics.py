"""Times every transferability metric against this machine's floor (FᵀF + eigh); markdown output.

  python scripts/benchmark_metrics.py [--sizes small,medium,large] [--metrics hscore,logme]
                                      [--repeats 3] [--zoo_size 10] [--zoo_rounds 3] [--out FILE]

Sizes (N, D, C, Cs): small (2000, 256, 10, 100), medium (10000, 2048, 100, 1000),
large (50000, 2048, 100, 1000). Run it on a quiet machine: timings are wall-clock medians.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium", help="comma-separated: small, medium, large")
    parser.add_argument("--metrics", default=None, help="comma-separated metric names (default: every registered metric)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per metric after compilation (median)")
    parser.add_argument("--zoo_size", type=int, default=10, help="models in the score_zoo comparison (0: skip it)")
    parser.add_argument("--zoo_metrics", default="hscore,logme,leep", help="metrics timed on the zoo")
    parser.add_argument("--zoo_rounds", type=int, default=3,
                        help="rounds of the zoo comparison (each times score_zoo and the loop, in alternating order)")
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    args = parser.parse_args(argv)

    from mspider_jax.evaluation._io import write_text_atomic
    from mspider_jax.metrics import benchmark

    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    report = benchmark.run(
        sizes=split(args.sizes),
        metrics=split(args.metrics) if args.metrics else None,
        repeats=args.repeats,
        zoo_size=args.zoo_size,
        zoo_metrics=split(args.zoo_metrics),
        zoo_rounds=args.zoo_rounds,
        log=lambda line: print(line, flush=True),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.out:
        write_text_atomic(args.out, report)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
