"""DiT-S/4 on emoji at 64px with MiniLM text: a GPU-sized recipe that still needs no download.

  python -m dit_jax.train --config=configs/small.py --workdir=DIR
  python -m dit_jax.train --config=configs/small.py:variant=DiT-B/4 --workdir=DIR

Cosine warm restarts from a first period of 10 epochs (148 steps), each next
one twice as long; after 1,000 warm-up steps, 8 periods (38,740 steps in all)
end where the rate is lowest.
Parameters and optimizer state are sharded over all devices (FSDP), so one
device or many run it unchanged.
"""

from dit_jax.training.recipe import base_config, cosine_restarts, emoji_minilm, parse_arg, runlocal_toy, variant


def get_config(arg=None):
    arg = parse_arg(arg, variant="DiT-S/4", runlocal=False)
    c = emoji_minilm(base_config(), resolution=64)
    c.model.update(variant(arg.variant), attention="auto", dtype="bfloat16")
    c.mesh.update(data=1, fsdp=-1)
    c.batch_size = 256
    c.optim.update(lr=2e-4, warmup_steps=1000)
    cosine_restarts(c, epochs=10, mult=2, cycles=8)

    if arg.runlocal:  # a toy of this recipe: 512 emoji at 32px, DiT-Toy/4 in float32, 200 steps
        emoji_minilm(c, resolution=32, max_examples=512)
        runlocal_toy(c, dtype="float32")
        c.ema.decay = 0.999
    return c
