"""DiT-L/2 (1024 wide, 24 deep, 16 heads) text-to-image on COCO captions at 256px, in SD-VAE latents.

Parameters and optimizer state are sharded 8-way (FSDP); blocks are rematerialised.

  python -m dit_jax.train --config=configs/large.py --workdir=DIR --config.data.source_dir=TFDS_MANUAL_DIR
"""

from dit_jax.training.recipe import apply_runlocal, base_config, coco_latents_256


def get_config(arg=None):
    c = coco_latents_256(base_config())
    c.model.update(patch_size=2, hidden_size=1024, depth=24, num_heads=16, dtype="bfloat16",
                   remat="dots_no_batch")
    c.mesh.update(data=-1, fsdp=8)
    c.batch_size = 256
    c.optim.update(lr=1e-4, schedule="constant", warmup_steps=1000)
    return apply_runlocal(c) if arg == "runlocal" else c
