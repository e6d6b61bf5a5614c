"""DiT-XL/2 as the paper trains it: class-conditional ImageNet 256 in SD-VAE latents.

  python -m dit_jax.train --config=configs/xl.py --workdir=DIR --config.data.source_dir=TFDS_DATA_DIR

DiT's recipe: AdamW at a constant 1e-4, no warm-up, no weight decay, no
gradient clipping, batch 256, float32, EMA at a fixed 0.9999 from the first
step, learned sigma, 1000 linear diffusion steps, label dropout 0.1 for
guidance, random horizontal flips, 7M steps; its sample grids are drawn as
DiT's sample_ddp.py draws FID-50K (250 DDPM steps on DiT's respaced grid,
guidance 1.5 on the first three latent channels, as DiT guides them).
Weights it produces convert to and from facebookresearch/DiT.
Where it differs from DiT's train.py:
  - blocks are rematerialised (the same arithmetic, less memory), and
    parameters and optimizer state are sharded over all devices (FSDP);
  - latents are the VAE posterior stored once by `prepare` (of the image and
    of its mirror) and sampled each step, where DiT encodes each batch anew:
    the same distribution;
  - images are center-cropped and resized with PIL's bicubic filter and a
    box pre-reduction, close to but not bit-equal with ADM's center_crop_arr.
Needs imagenet2012 for tfds under data.source_dir and the VAE. Text
conditioning is off (labels only).
"""

from dit_jax.training.recipe import base_config, emoji_minilm, parse_arg, variant


def get_config(arg=None):
    arg = parse_arg(arg, variant="DiT-XL/2", runlocal=False)
    c = base_config()
    c.data.update(name="tfds:imagenet2012", resolution=256, flip=True)
    c.text.update(encoder="minilm", max_length=16)  # class names, stored but unused by the model
    c.vae.update(path="stabilityai/sd-vae-ft-ema")
    c.model.update(variant(arg.variant), num_classes=-1, text_cross_attention=False, text_pooled=False,
                   attention="auto", dtype="float32", remat="dots_no_batch")
    c.mesh.update(data=1, fsdp=-1)
    c.batch_size = 256
    c.steps = 7_000_000
    c.optim.update(lr=1e-4, schedule="constant", warmup_steps=0, grad_clip=0.0)
    c.ema.update(decay=0.9999, warmup=False)
    c.sample.update(sampler="ddpm", steps=250, cfg_scale=1.5, spacing="dit", guidance_channels=3)

    if arg.runlocal:  # a toy of this recipe: 512 emoji by category label, in pixels, DiT-Toy/4, 200 steps
        emoji_minilm(c, resolution=32, max_examples=512)
        c.model.update(variant("DiT-Toy/4"), remat="none")
        c.batch_size, c.steps = 32, 200
        c.optim.lr = 3e-4
        c.ema.decay = 0.999
        c.sample.steps = 25
        c.checkpoint.every, c.log.every, c.sample.every = 100, 20, 200
    return c
