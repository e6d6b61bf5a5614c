"""The command-line programs: importable together (tests and tools do), and each defines its own flags."""

import importlib
import subprocess
import sys

import pytest

# A flag of each, as absl's --help lists it ("--name: help"); docstrings never write it so.
CLIS = {"train": "--workdir:", "sample": "--cfg_scale:", "prepare": "--data_dir:", "convert": "--numerics:",
        "bench": "--peak_size:", "evaluate": "--num_samples:"}


def test_all_import_in_one_process():
    for name in CLIS:
        importlib.import_module(f"dit_jax.{name}")


@pytest.mark.parametrize("name", sorted(CLIS))
def test_help_lists_its_flags(name):
    result = subprocess.run([sys.executable, "-m", f"dit_jax.{name}", "--help"], capture_output=True, text=True,
                            timeout=300)
    assert CLIS[name] in result.stdout, result.stderr[-2000:]  # absl's --help exits with status 1
