"""DiT-XL/2 exactly as the paper trains it: class-conditional ImageNet 256 in SD-VAE latents.

The reference recipe (AdamW, lr 1e-4 constant, no weight decay, batch 256,
EMA 0.9999, learned sigma, 1000 linear steps); weights it produces convert to
and from facebookresearch/DiT. Needs imagenet2012 for tfds under
data.source_dir and the VAE. Text conditioning is off (labels only).
"""

from dit_jax.training.recipe import apply_runlocal, base_config


def get_config(arg=None):
    c = base_config()
    c.data.update(name="tfds:imagenet2012", resolution=256, flip=True)
    c.text.update(encoder="minilm", max_length=16)  # class names, stored but unused by the model
    c.vae.update(path="stabilityai/sd-vae-ft-ema", scale=0.18215)
    c.model.update(patch_size=2, hidden_size=1152, depth=28, num_heads=16, num_classes=-1,
                   text_cross_attention=False, text_pooled=False, dtype="bfloat16", remat="dots_no_batch")
    c.mesh.update(data=-1, fsdp=8)
    c.batch_size = 256
    c.steps = 7_000_000
    c.optim.update(lr=1e-4, schedule="constant", warmup_steps=0, grad_clip=0.0)
    c.sample.update(cfg_scale=1.5)
    return apply_runlocal(c) if arg == "runlocal" else c
