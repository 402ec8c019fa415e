"""Builds (or resumes) the offline mini zoo and writes its artifact (default: data/minizoo/).

  python scripts/build_minizoo.py --config configs/minizoo.py --workdir /tmp/minizoo_work
  python scripts/build_minizoo.py --config configs/minizoo.py:tiny --workdir /tmp/t --output /tmp/t/out

Re-running with the same --workdir skips every finished item. See converters/minizoo/build.py.
"""

import os
import pathlib
import signal
import sys

# OpenMP threads that spin while waiting are 10-50x slower when other processes share the cores;
# this must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from converters.minizoo import build  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Mini-zoo config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (caches every stage; resumable).",
                               required=True)
_OUTPUT = flags.DEFINE_string("output", str(pathlib.Path(__file__).resolve().parents[1] / "data" / "minizoo"),
                              "Where the artifact is written.")
_STAGES = flags.DEFINE_list("stages", list(build.STAGES), f"Stages to run, in order: {build.STAGES}.")
_ALLOW = flags.DEFINE_bool("allow_config_change", False,
                           "Continue a work directory made with another config (delete stale stages first).")


def _raise_interrupt(signum, frame):
    del signum, frame
    raise KeyboardInterrupt("terminated")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.INFO)
    # `kill` interrupts like Ctrl-C, so the stage in progress records its time before exiting.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    build.build(_CONFIG.value, _WORKDIR.value, _OUTPUT.value, _STAGES.value, _ALLOW.value)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
