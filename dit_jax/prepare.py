"""Precomputes a recipe's dataset: text embeddings, pixels or VAE latents, in ArrayRecord shards.

  python -m dit_jax.prepare --config=configs/tiny.py [--data_dir=DIR] [--config.data.max_examples=512]

Resumable: run it again after a kill and it continues where it stopped.
Several hosts: run it on each with the same flags (--coordinator_address/--num_processes/--process_id, or a TPU
pod or SLURM job found by itself) and each writes its share of the shards into the shared --data_dir.
`python -m dit_jax.train` runs it itself when the data is missing.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from dit_jax.data import prepare
from dit_jax.utils import distributed

# Apache Beam runners that --runner names (check_runner says why none runs yet).
RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/tiny.py[:runlocal].", lock_config=True)
    flags.mark_flags_as_required(["config"])
    flags.DEFINE_string("runner", "", f"An Apache Beam runner ({', '.join(RUNNERS)}); empty: in this process "
                        "(or in each process of a multi-process job).")
    distributed.define_flags()  # --data_dir and the multi-process flags
    flags.adopt_module_key_flags(distributed)  # so --help lists them


def check_runner(runner):
    """An unknown runner fails in one line before any work; so, for now, does a known one (see RUNNERS)."""
    if not runner:
        return
    if runner not in RUNNERS:
        raise SystemExit(f"prepare: unknown --runner={runner!r}; use one of {', '.join(RUNNERS)}, or none to "
                         "prepare in this process.")
    raise SystemExit(f"prepare: --runner={runner} needs Apache Beam, which this build does not include (no "
                     "apache-beam release installs beside this stack: each caps a package it has newer, e.g. 2.77.0 pillow<13 "
                     "and protobuf<7); "
                     "leave --runner out, and spread the work over hosts with --num_processes instead.")


def main(argv):
    del argv
    check_runner(flags.FLAGS.runner)
    # The text encoder and VAE run in PyTorch; JAX joins the processes (and runs REPA's encoder) and must not
    # take most of a GPU's memory up front, as it would by default.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    distributed.initialize()
    try:
        manifest = prepare.prepare(flags.FLAGS.config, flags.FLAGS.data_dir)
    except ValueError as e:  # bad settings (an unknown motion word, a control the data cannot have): one line
        raise SystemExit(f"prepare: {e}") from None
    summary = {k: manifest[k] for k in ("dir", "dataset", "space", "image_shape", "examples", "skipped")}
    if manifest.get("frames"):
        summary["frames"] = manifest["frames"]
    summary["text"] = manifest["text"]
    if manifest.get("controls"):
        summary["controls"] = manifest["control_shapes"]
    if manifest.get("repa"):
        summary["repa"] = manifest["repa"]  # REPA's stored features: encoder, its input size, grid and width
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
