"""The defaults every recipe under configs/ starts from, and the `runlocal` shrink.

A recipe names its data, text encoder, resolution and model; everything else
comes from here and can be overridden with --config.KEY=VALUE.
"""

import ml_collections

from dit_jax.training.sharding import DEFAULT_RULES

# What `:runlocal` turns any recipe into: a toy on the emoji that ship in packages, minutes on a CPU.
RUNLOCAL = dict(
    data=dict(name="emoji", resolution=32, source_dir="", max_examples=512),
    text=dict(encoder="minilm", path="", max_length=32, layer="last"),
    vae=dict(path=""),
    model=dict(patch_size=4, hidden_size=64, depth=2, num_heads=4, dtype="float32", remat="none"),
    batch_size=32, steps=200, mesh=dict(data=-1, fsdp=1, tensor=1),
    optim=dict(lr=3e-4, warmup_steps=20), ema=dict(decay=0.999),
    checkpoint=dict(every=100), log=dict(every=20), sample=dict(every=200),
)


def base_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = dict(
        name="emoji",            # emoji | fashion_mnist | image_folder | tfds:<name>
        resolution=32,
        source_dir="",           # image_folder: the directory; fashion_mnist: the idx files; tfds: manual_dir
        max_examples=0,          # 0: all
        flip=False,              # never applied to captions that speak of left or right
        color_jitter=0.0,
        rotation=0.0,            # degrees
        prefetch=2,
    )
    c.text = dict(encoder="minilm", path="", max_length=32, layer="last")  # run once by `prepare`
    c.vae = dict(path="", scale=0.18215)  # empty path: pixel space
    c.model = dict(
        patch_size=2, hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0,
        num_classes=0, class_dropout_prob=0.1, learn_sigma=True,
        text_cross_attention=True, text_pooled=True, null_text="learned", caption_dropout_prob=0.1,
        dropout=0.0, attention="xla", remat="none", scan_blocks=True, dtype="float32",
    )
    c.diffusion = dict(schedule="linear", timesteps=1000, prediction="eps", min_snr_gamma=0.0)
    c.batch_size = 256
    c.steps = 400_000
    c.optim = dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0, accumulate=1,
                   schedule="constant", warmup_steps=1000, restart_period=0, restart_mult=1, min_lr=0.0)
    c.ema = dict(decay=0.9999, warmup=True)
    c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1)
    # Logical parameter axis -> mesh axis (None: replicated); batches split over data x fsdp.
    c.sharding_rules = [list(rule) for rule in DEFAULT_RULES]
    c.checkpoint = dict(every=5000, keep=3, keep_every=50_000, restore_step=0)  # 0: the newest that reads
    c.log = dict(every=100, tensorboard=True, wandb=False, mlflow=False)
    c.sample = dict(every=10_000, sampler="dpmpp_2m", steps=25, cfg_scale=4.0, seed=0,
                    prompts=["red apple", "cat face", "smiling face with sunglasses", "rocket",
                             "green heart", "pizza", "snowman", "thumbs up"])
    return c


def apply_runlocal(c):
    """Shrinks a recipe in place to the toy that `:runlocal` promises."""
    for key, value in RUNLOCAL.items():
        if isinstance(value, dict):
            c[key].update(value)
        else:
            c[key] = value
    return c


def coco_latents_256(c):
    """COCO captions at 256px in SD-VAE latents with CLIP ViT-L/14 text (its penultimate layer, as Stable
    Diffusion and PixArt read it). Needs coco_captions prepared for tfds under data.source_dir (no
    download offline) and the VAE and CLIP as hub ids or local copies."""
    c.data.update(name="tfds:coco_captions", resolution=256, flip=True)
    c.text.update(encoder="clip", path="openai/clip-vit-large-patch14", max_length=77, layer="penultimate")
    c.vae.update(path="stabilityai/sd-vae-ft-ema", scale=0.18215)
    c.sample.prompts = ["a cat sitting on a sofa", "a red double-decker bus on a city street",
                        "a bowl of fruit on a wooden table", "a surfer riding a large wave",
                        "a plate of pasta with tomato sauce", "a train crossing a bridge at sunset",
                        "two dogs playing in the snow", "a kitchen with white cabinets"]
    return c
