"""Precomputes a recipe's dataset: text embeddings, pixels or VAE latents, in ArrayRecord shards.

  python -m dit_jax.prepare --config=configs/tiny.py [--data_dir=DIR] [--config.data.max_examples=512]

Resumable: run it again after a kill and it continues where it stopped.
`python -m dit_jax.train` runs it itself when the data is missing.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from dit_jax.data import prepare
from dit_jax.utils import distributed, paths


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/tiny.py[:runlocal].", lock_config=True)
    flags.mark_flags_as_required(["config"])
    distributed.define_data_dir()
    flags.adopt_module_key_flags(distributed)  # so --help lists it


def main(argv):
    del argv
    try:
        paths.check(flags.FLAGS.data_dir, "--data_dir")
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
