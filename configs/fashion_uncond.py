"""Unconditional Fashion-MNIST (no text, no label): the model classifier guidance steers to a class.

  python -m dit_jax.train --config=configs/fashion_uncond.py --workdir=/tmp/fashion_uncond

configs/fashion_tiny.py without its conditions: the same data (the same
prepared folder; its caption embeddings go unread), DiT-T/4, loss and
schedule, with model.num_classes=0 and neither text path, so it samples
every class at random and configs/classifier_fashion.py's classifier can pick
one. Twice fashion_tiny's steps (6,000, about 25 minutes on the 2-core CPU):
guided by that classifier at scale 20 it draws the asked class 91.6% of the
time, against 88.8% at 3,000 steps (BENCHMARKS.md, issue 13). Its sample
grids are unguided (cfg_scale 1: there is no condition to drop).
"""

from dit_jax.training.recipe import (base_config, cosine_restarts, cpu_text_to_image, emoji_minilm, parse_arg,
                                     runlocal_toy)


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = cpu_text_to_image(base_config())
    c.data.update(name="fashion_mnist", resolution=32)
    c.text.update(encoder="minilm", max_length=16)  # unread; the key of fashion_tiny's prepared data
    c.model.update(num_classes=0, text_cross_attention=False, text_pooled=False)
    c.batch_size = 64
    c.steps = 6000
    c.optim.warmup_steps = 200
    cosine_restarts(c, epochs=10, mult=2)
    c.sample.update(every=1000, cfg_scale=1.0, prompts=["unconditional"] * 8)

    if arg.runlocal:  # a toy of this recipe on 512 emoji (no Debian package needed), DiT-Toy/4, 200 steps
        emoji_minilm(c, resolution=32, max_examples=512)
        runlocal_toy(c)
    return c
