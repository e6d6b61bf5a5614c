"""Fashion-MNIST from text prompts ("a photo of a sneaker"), trained on a CPU within an hour.

  python -m dit_jax.train --config=configs/fashion_tiny.py --workdir=/tmp/fashion
  python -m dit_jax.evaluate --workdir=/tmp/fashion --fid_samples=1000

The quality benchmark of BENCHMARKS.md: prompt adherence (a classifier trained
by `evaluate`) and FID-1k against the test set. Data: the 60,000 training
images of the Debian package `dataset-fashion-mnist`, padded to 32x32, with
MiniLM embeddings of one caption template per image.
"""

from dit_jax.training.recipe import apply_runlocal, base_config


def get_config(arg=None):
    c = base_config()
    c.data.update(name="fashion_mnist", resolution=32)
    c.text.update(encoder="minilm", max_length=16)
    c.model.update(patch_size=4, hidden_size=128, depth=4, num_heads=4, scan_blocks=False)  # see configs/tiny.py
    c.diffusion.update(prediction="v", min_snr_gamma=5.0)  # see configs/tiny.py
    c.batch_size = 64
    c.steps = 3000
    c.optim.update(lr=5e-4, schedule="warmup_cosine", warmup_steps=200)
    c.ema.decay = 0.999
    c.checkpoint.update(every=500, keep=2, keep_every=0)
    c.log.every = 50
    c.sample.update(every=1000, steps=25, cfg_scale=3.0,
                    prompts=["a photo of a t-shirt", "a photo of a trouser", "a photo of a pullover",
                             "a photo of a dress", "a photo of a coat", "a photo of a sandal", "a photo of a shirt",
                             "a photo of a sneaker", "a photo of a bag", "a photo of a ankle boot"])
    return apply_runlocal(c) if arg == "runlocal" else c
