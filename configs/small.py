"""DiT-S/4 on emoji at 64px with MiniLM text: a GPU-sized recipe that still needs no download.

  python -m dit_jax.train --config=configs/small.py --workdir=DIR
"""

from dit_jax.training.recipe import apply_runlocal, base_config


def get_config(arg=None):
    c = base_config()
    c.data.update(name="emoji", resolution=64)
    c.text.update(encoder="minilm", max_length=32)
    c.model.update(patch_size=4, hidden_size=384, depth=12, num_heads=6, dtype="bfloat16")
    c.batch_size = 256
    c.steps = 50_000
    c.optim.update(lr=2e-4, schedule="warmup_cosine", warmup_steps=1000)
    return apply_runlocal(c) if arg == "runlocal" else c
