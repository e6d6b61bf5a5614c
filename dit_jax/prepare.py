"""Precomputes a recipe's dataset: text embeddings, pixels or VAE latents, in ArrayRecord shards.

  python -m dit_jax.prepare --config=configs/tiny.py [--data_dir=DIR] [--config.data.max_examples=512]

Resumable: run it again after a kill and it continues where it stopped.
Several hosts: run it on each with the same flags (--coordinator_address/--num_processes/--process_id, or a TPU
pod or SLURM job found by itself) and each writes its share of the shards into the shared --data_dir.
A distributed engine: --runner=DirectRunner|DataflowRunner|FlinkRunner|SparkRunner runs it as an Apache Beam
pipeline (dit_jax/data/beam_prepare.py), with Beam's own options in --beam_options, e.g.
  --runner=DirectRunner --beam_options="--direct_num_workers=2 --direct_running_mode=multi_processing"
`python -m dit_jax.train` runs it itself when the data is missing.
"""

import importlib.util
import json
import os

from absl import app, flags
from ml_collections import config_flags

from dit_jax.data import prepare
from dit_jax.utils import distributed, paths

# Apache Beam runners that --runner names.
RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/tiny.py[:runlocal].", lock_config=True)
    flags.mark_flags_as_required(["config"])
    flags.DEFINE_string("runner", "", f"An Apache Beam runner ({', '.join(RUNNERS)}); empty: in this process "
                        "(or in each process of a multi-process job).")
    flags.DEFINE_string("beam_options", "", "With --runner: Beam's pipeline options as one command line, e.g. "
                        "\"--direct_num_workers=2 --direct_running_mode=multi_processing\" or a cluster's "
                        "--project/--region/--temp_location (every worker must see --data_dir).")
    distributed.define_flags()  # --data_dir and the multi-process flags
    flags.adopt_module_key_flags(distributed)  # so --help lists them


BEAM_INSTALL = ("pip install --no-deps apache-beam==2.77.0 beartype==0.22.9 dnspython==2.9.2 fastavro==1.13.1 "
                "fasteners==0.20 grpcio==1.85.3 httplib2==0.32.1 jsonpickle==4.1.4 objsize==0.7.1 proto-plus==1.29.0 "
                "pymongo==4.20.1 pyparsing==3.3.3 zstandard==0.25.0")


def check_runner(runner):
    """An unknown runner, or a known one without Apache Beam installed, fails in one line before any work."""
    if not runner:
        return
    if runner not in RUNNERS:
        raise SystemExit(f"prepare: unknown --runner={runner!r}; use one of {', '.join(RUNNERS)}, or none to "
                         "prepare in this process.")
    if importlib.util.find_spec("apache_beam") is None:
        raise SystemExit(f"prepare: --runner={runner} needs Apache Beam: {BEAM_INSTALL} (--no-deps: every "
                         "apache-beam release caps a package this stack has newer, e.g. pillow<13, protobuf<7).")


def main(argv):
    del argv
    check_runner(flags.FLAGS.runner)
    # The text encoder and VAE run in PyTorch; JAX joins the processes (and runs REPA's encoder) and must not
    # take most of a GPU's memory up front, as it would by default.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    try:
        paths.check(flags.FLAGS.data_dir, "--data_dir")
        if flags.FLAGS.runner:  # Beam spreads the work; this process only launches the pipeline
            from dit_jax.data import beam_prepare  # pylint: disable=import-outside-toplevel
            manifest = beam_prepare.run(flags.FLAGS.config, flags.FLAGS.data_dir, flags.FLAGS.runner,
                                        flags.FLAGS.beam_options)
        else:
            distributed.initialize()
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
