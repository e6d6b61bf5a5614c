"""The command-line programs: importable together (tests and tools do), and each defines its own flags."""

import importlib
import subprocess
import sys

# A flag of each, as absl's --help lists it ("--name: help"); docstrings never write it so.
CLIS = {"train": "--workdir:", "sample": "--cfg_scale:", "prepare": "--data_dir:", "convert": "--numerics:",
        "bench": "--peak_size:", "evaluate": "--num_samples:"}

# `python -m dit_jax.NAME --help` for each NAME in one process (one start-up instead of six): each program
# runs as __main__, prints absl's help and exits; the flags it defined are removed before the next one.
HELP_EACH = """
import contextlib, io, runpy, sys
from absl import app, flags
app.define_help_flags()  # kept: only the flags each program defines are removed
for name in sys.argv[1:]:
    before, out = set(flags.FLAGS), io.StringIO()
    sys.argv = [f"dit_jax.{name}", "--help"]
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module(f"dit_jax.{name}", run_name="__main__")
        except SystemExit:  # absl's --help exits with status 1
            pass
    for flag in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, flag)
    print(f"=== {name}", out.getvalue(), sep="\\n")
"""


def test_all_import_in_one_process():
    for name in CLIS:
        importlib.import_module(f"dit_jax.{name}")


def test_help_lists_its_flags():
    result = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", HELP_EACH, *CLIS],
                            capture_output=True, text=True, timeout=300)
    helps = dict(part.split("\n", 1) for part in result.stdout.split("=== ")[1:])
    assert list(helps) == list(CLIS), result.stderr[-2000:]
    for name, flag in CLIS.items():
        assert flag in helps[name], (name, helps[name][-2000:], result.stderr[-2000:])
