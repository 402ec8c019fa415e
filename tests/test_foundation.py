"""The package skeleton: CLI, configs, and importing without torch."""

import pathlib
import subprocess
import sys

import pytest

import mspider_jax
from mspider_jax import cli
from mspider_jax.commands import COMMANDS

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert mspider_jax.__version__ in capsys.readouterr().out


def test_info_runs_a_compiled_check(capsys):
    assert cli.main(["info"]) == 0
    assert "trace(X X^T) = 506.0" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = pathlib.Path(sys.executable).parent / "mspider"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True)
    assert "info" in result.stdout


def test_library_imports_without_torch():
    # A meta-path finder that refuses torch makes `import torch` fail as if it were not installed.
    code = (
        "import sys, importlib, pkgutil\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.') or name.startswith('torchvision'):\n"
        "            raise ImportError('torch blocked for this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import mspider_jax\n"
        "for info in pkgutil.walk_packages(mspider_jax.__path__, 'mspider_jax.'):\n"
        "    importlib.import_module(info.name)\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
