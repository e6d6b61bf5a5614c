"""The embedded default: a small text-to-image DiT on the emoji that ship in packages, on CPU.

    python -m dit_jax.train --config=configs/tiny.py --workdir=/tmp/tiny
    python -m dit_jax.train --config=configs/tiny.py:runlocal --workdir=/tmp/smoke   # toy, ~2 min
"""

import ml_collections


def get_config(arg=None):
    runlocal = arg == "runlocal"
    c = ml_collections.ConfigDict()
    c.seed = 0

    # Data: real text-image pairs (Twemoji, CC-BY 4.0) captioned from emoji names.
    c.data = dict(
            name="emoji",            # emoji | fashion_mnist | image_folder | tfds:<name>
            resolution=32,
            source_dir="",           # image_folder: the directory; fashion_mnist: the idx files
            max_examples=512 if runlocal else 0,  # 0: all
            flip=False,              # captions never speak of sides for emoji, but glyphs have them
            color_jitter=0.0,
            rotation=0.0,            # degrees
            prefetch=2,
    )
    # Text encoder run once by `prepare`; training reads its embeddings.
    c.text = dict(encoder="minilm", path="", max_length=32, layer="last")
    c.vae = dict(path="", scale=0.18215)  # empty path: pixel space

    c.model = dict(
            patch_size=4 if runlocal else 2, hidden_size=64 if runlocal else 256,
            depth=2 if runlocal else 8, num_heads=4, mlp_ratio=4.0,
            num_classes=0, learn_sigma=True,
            text_cross_attention=True, text_pooled=True, null_text="learned",
            caption_dropout_prob=0.1, dropout=0.0,
            attention="xla", remat="none", dtype="float32",
    )
    c.diffusion = dict(schedule="linear", timesteps=1000, prediction="eps", min_snr_gamma=0.0)

    c.batch_size = 32 if runlocal else 64
    c.steps = 200 if runlocal else 6000
    c.optim = dict(name="adamw", lr=3e-4 if runlocal else 2e-4, b1=0.9, b2=0.999, weight_decay=0.0,
                                 grad_clip=1.0, accumulate=1, schedule="warmup_cosine", warmup_steps=20 if runlocal else 500,
                                 restart_period=0, restart_mult=1, min_lr=0.0)
    c.ema = dict(decay=0.999 if runlocal else 0.9999, warmup=True)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)

    c.checkpoint = dict(every=100 if runlocal else 1000, keep=2, keep_every=0)
    c.log = dict(every=20 if runlocal else 100, tensorboard=True, wandb=False, mlflow=False)
    c.sample = dict(every=c.steps, sampler="dpmpp_2m", steps=20, cfg_scale=3.0, seed=0,
                                    prompts=["red apple", "cat face", "smiling face with sunglasses", "rocket",
                                                     "green heart", "pizza", "snowman", "thumbs up"])
    return c
