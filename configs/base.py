"""DiT-B/2 text-to-image on COCO captions at 256px, in SD-VAE latents, with CLIP ViT-L/14 text.

  python -m dit_jax.train --config=configs/base.py --workdir=DIR --config.data.source_dir=TFDS_MANUAL_DIR
  python -m dit_jax.train --config=configs/base.py:variant=DiT-B/4 ...

Cosine warm restarts from a first period of 10 epochs (3,234 steps of 256 of
the 82,783 training images), each next one twice as long; after 1,000 warm-up
steps, 7 periods (411,718 steps in all) end where the rate is lowest.
Parameters and optimizer state are sharded over all devices (FSDP), so one
device or many run it unchanged.
"""

from dit_jax.training.recipe import (base_config, coco_latents_256, cosine_restarts, emoji_minilm, parse_arg,
                                     runlocal_toy, variant)


def get_config(arg=None):
    arg = parse_arg(arg, variant="DiT-B/2", runlocal=False)
    c = coco_latents_256(base_config())
    c.model.update(variant(arg.variant), attention="auto", dtype="bfloat16")
    c.mesh.update(data=1, fsdp=-1)
    c.batch_size = 256
    c.optim.update(lr=1e-4, warmup_steps=1000)
    cosine_restarts(c, epochs=10, mult=2, cycles=7)

    if arg.runlocal:  # a toy of this recipe: 512 emoji in pixels with MiniLM, DiT-Toy/4 in float32, 200 steps
        emoji_minilm(c, resolution=32, max_examples=512)
        runlocal_toy(c, dtype="float32")
        c.ema.decay = 0.999
    return c
