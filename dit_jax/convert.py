"""Convert DiT weights between facebookresearch/DiT, diffusers and dit_jax.

    python -m dit_jax.convert --from=dit --src=DiT-XL-2-256x256.pt --out=DIR
    python -m dit_jax.convert --from=diffusers --src=DIR_WITH_CONFIG_JSON --out=DIR
    python -m dit_jax.convert --from=dit_jax --src=DIR --out=model.pt   # back to DiT's format
    python -m dit_jax.convert --from=latte --src=LATTE_DIR_OR_SAFETENSORS --out=DIR   # a video DiT

DIR then holds config.json + model.safetensors, which sampling loads, and
sampling.json, which records the source: DiT's weights sample on DiT's
respaced grid by default (and, from --from=dit, guide 3 channels as DiT). Each
source keeps its own numerics by default (--numerics=source); diffusers' port
differs slightly from the original (timestep frequency shift 1, MLP LayerNorm
eps 1e-5), and --numerics=dit or =diffusers picks one explicitly. --from=latte reads diffusers'
LatteTransformer3DModel (safetensors only) into the video DiT (models/latte.py).
"""

import io

import numpy as np
from absl import app, flags

from dit_jax.models import classifier, convert, latte
from dit_jax.models.pretrained import (
    abstract_model,
    flat_weights,
    load_flat_weights,
    load_pretrained,
    save_pretrained,
)
from dit_jax.sampling import CHECKPOINT_DEFAULTS, converted_record, write_sampling_record
from dit_jax.utils import paths


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    flags.DEFINE_enum("from", None, ["dit", "diffusers", "dit_jax", "latte"], "Format of --src.")
    flags.DEFINE_string(
        "src", None, "A DiT .pt/.safetensors file, a diffusers directory, or a dit_jax directory."
    )
    flags.DEFINE_string("out", None, "Output directory (dit_jax) or .pt file (when --from=dit_jax).")
    flags.DEFINE_enum(
        "numerics",
        "source",
        ["source", "dit", "diffusers"],
        "Timestep-frequency shift and MLP LayerNorm eps to use.",
    )
    flags.DEFINE_integer("num_heads", None, "Attention heads, for DiT widths other than the named sizes.")
    flags.DEFINE_integer("text_len", 120, "--from=latte: the caption tokens it reads (Latte's pipeline: 120).")
    flags.mark_flags_as_required(["from", "src", "out"])


FLAGS = flags.FLAGS


def import_weights(source, src, numerics="source", num_heads=None, text_len=120):
    """(model, config) converted from a DiT, diffusers or Latte checkpoint."""
    if source == "latte":
        if numerics != "source":
            raise ValueError("--numerics is for DiT weights; Latte's are converted with their own.")
        state_dict, latte_config = latte.read_latte(src)
        config = latte.latte_model_kwargs(latte_config, text_len)
        return load_flat_weights(abstract_model(config), latte.from_latte(state_dict, latte_config)), config
    if source == "dit":
        state_dict = convert.read_state_dict(src)
        config = convert.dit_config(state_dict, num_heads)
        config.update(convert.NUMERICS["dit"])
    else:
        state_dict, config = convert.diffusers_to_dit(*convert.read_diffusers(src))
    if numerics != "source":
        config.update(convert.NUMERICS[numerics])
    weights = convert.from_dit(state_dict, config)
    model = load_flat_weights(abstract_model(config), weights)
    return model, config


def convert_to_dir(source, src, out, numerics="source", num_heads=None, text_len=120):
    """Writes `out`: config.json and model.safetensors, and sampling.json naming the source."""
    model, config = import_weights(source, src, numerics, num_heads, text_len)
    save_pretrained(model, config, out)
    # Latte samples with each sampler's default spacing; DiT's weights with DiT's respaced grid.
    write_sampling_record(out, dict(CHECKPOINT_DEFAULTS, source=source) if source == "latte"
                          else converted_record(source))


def export_dit(src, out):
    """Writes a dit_jax model as a DiT state dict (plain tensors, loadable with weights_only=True)."""
    model, config = load_pretrained(src)
    classifier.refuse(config, "convert --from=dit_jax")  # DiT's format has no classifier
    import torch
    state_dict = convert.to_dit(flat_weights(model), config)
    buffer = io.BytesIO()
    torch.save({k: torch.tensor(np.array(v)) for k, v in state_dict.items()}, buffer)
    paths.write_bytes(out, buffer.getvalue())


def main(argv):
    del argv
    source = getattr(FLAGS, "from")
    try:
        paths.check(FLAGS.src, "--src")
        paths.check(FLAGS.out, "--out")
        if source == "dit_jax":
            export_dit(FLAGS.src, FLAGS.out)
        else:
            with paths.local_copy(FLAGS.src) as src:  # the torch and diffusers readers read local files
                convert_to_dir(source, src, FLAGS.out, FLAGS.numerics, FLAGS.num_heads, FLAGS.text_len)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line, no traceback
        raise SystemExit(f"convert: {e}") from None
    print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
