"""Prints a config after the command-line overrides: `python scripts/show_config.py --config=configs/x.py:smoke`."""

from absl import app
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)


def main(argv: list[str]) -> None:
    del argv
    print(_CONFIG.value.to_json_best_effort(indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
