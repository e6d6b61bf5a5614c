"""DiT-B/2 (768 wide, 12 deep, 12 heads) text-to-image on COCO captions at 256px, in SD-VAE latents.

  python -m dit_jax.train --config=configs/base.py --workdir=DIR --config.data.source_dir=TFDS_MANUAL_DIR
"""

from dit_jax.training.recipe import apply_runlocal, base_config, coco_latents_256


def get_config(arg=None):
    c = coco_latents_256(base_config())
    c.model.update(patch_size=2, hidden_size=768, depth=12, num_heads=12, dtype="bfloat16")
    c.batch_size = 256
    c.optim.update(lr=1e-4, schedule="constant", warmup_steps=1000)
    return apply_runlocal(c) if arg == "runlocal" else c
