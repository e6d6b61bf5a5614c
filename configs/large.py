"""DiT-L/2 text-to-image on COCO captions at 256px, in SD-VAE latents, with CLIP ViT-L/14 text.

  python -m dit_jax.train --config=configs/large.py --workdir=DIR --config.data.source_dir=TFDS_MANUAL_DIR

Parameters and optimizer state are sharded over all devices (FSDP, from one
device up) and blocks are rematerialised. Cosine warm restarts as in
configs/base.py: a first period of 10 epochs (3,234 steps), each next one
twice as long, 7 periods after 1,000 warm-up steps (411,718 steps in all).
"""

from dit_jax.training.recipe import (base_config, coco_latents_256, cosine_restarts, emoji_minilm, parse_arg,
                                     runlocal_toy, variant)


def get_config(arg=None):
    arg = parse_arg(arg, variant="DiT-L/2", runlocal=False)
    c = coco_latents_256(base_config())
    c.model.update(variant(arg.variant), attention="auto", dtype="bfloat16", remat="dots_no_batch")
    c.mesh.update(data=1, fsdp=-1)
    c.batch_size = 256
    c.optim.update(lr=1e-4, warmup_steps=1000)
    cosine_restarts(c, epochs=10, mult=2, cycles=7)

    if arg.runlocal:  # a toy of this recipe: 512 emoji in pixels with MiniLM, DiT-Toy/4 in float32, 200 steps
        emoji_minilm(c, resolution=32, max_examples=512)
        runlocal_toy(c, dtype="float32", remat="none")
        c.ema.decay = 0.999
    return c
