"""configs/common.py and the big_vision-style config flags."""

import subprocess
import sys
import json
import pathlib

import pytest

from configs import common

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_parse_arg_types_and_bare_flags():
    arg = common.parse_arg("smoke,seed=3,name=x,lr=0.5", smoke=False, seed=0, name="a", lr=1.0)
    assert arg.smoke is True
    assert arg.seed == 3 and isinstance(arg.seed, int)
    assert arg.name == "x"
    assert arg.lr == 0.5


def test_parse_arg_defaults_when_empty():
    arg = common.parse_arg(None, smoke=False, seed=7)
    assert arg.smoke is False and arg.seed == 7


@pytest.mark.parametrize(
    "text, message",
    [("smok", "unknown config arg"), ("seed", "needs a value"), ("seed=x", "cannot read"), ("smoke=maybe", "boolean")],
)
def test_parse_arg_rejects_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        common.parse_arg(text, smoke=False, seed=0)


def _show(*flags):
    return subprocess.run(
        [sys.executable, "scripts/show_config.py", *flags], cwd=REPO, capture_output=True, text=True
    )


def test_config_file_variant_and_override():
    result = _show("--config=configs/example.py:smoke", "--config.optim.lr=0.001")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["num_steps"] == 10
    assert config["optim"]["lr"] == 0.001


def test_config_is_locked_against_typos():
    result = _show("--config=configs/example.py", "--config.optim.lrr=0.001")
    assert result.returncode != 0
    assert "lrr" in result.stderr
