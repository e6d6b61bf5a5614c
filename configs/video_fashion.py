"""Text-to-video on moving Fashion-MNIST: 8 frames of 32x32, "a sneaker moving to the right".

  python -m dit_jax.prepare --config=configs/video_fashion.py
  python -m dit_jax.train --config=configs/video_fashion.py --workdir=/tmp/video_fashion

Data: 20,000 clips of `moving_fashion` (dit_jax/data/moving.py): one training
item at half the frame's size that moves right, left, up or down, bounces,
spins or zooms in, captioned so, with MiniLM text. A clip is one example: the
loader gives "image" (B, 8, 32, 32, 1). The model is the DiT-T/4 of
configs/fashion_tiny.py with frames (model.frames) and temporal patches of
model.t_patch frames; its loss, schedule and EMA are `cpu_text_to_image`'s.
"""

from dit_jax.training.recipe import base_config, cpu_text_to_image, parse_arg

PROMPTS = ["a sneaker moving to the right", "a bag moving to the left", "a trouser moving up", "a dress moving down",
           "an ankle boot bouncing", "a t-shirt spinning", "a pullover zooming in", "a sandal moving to the right"]


def restarts(c, epochs=10, mult=2):
    """`recipe.cosine_restarts` over the clips this config generates (data.moving.examples)."""
    period = round(epochs * c.data.moving.examples / c.batch_size)
    c.optim.update(schedule="cosine_restarts", restart_period=period, restart_mult=mult)


def get_config(arg=None):
    arg = parse_arg(arg, frames=8, runlocal=False)
    c = cpu_text_to_image(base_config())
    c.data.update(name="moving_fashion", resolution=32, flip=False)
    c.data.frames = arg.frames
    c.data.moving = dict(examples=20_000, seed=0, motions="right,left,up,down,bounce,spin,zoom")
    c.text.update(encoder="minilm", max_length=16)
    c.model.frames = arg.frames  # must equal data.frames
    c.model.t_patch = 1          # frames per temporal patch (tubelet); 1: per-frame patches
    c.batch_size = 32
    c.steps = 3000
    c.optim.warmup_steps = 200
    restarts(c)
    c.sample.update(every=1000, prompts=PROMPTS)

    if arg.runlocal:  # a toy: 256 clips, 100 steps
        c.data.moving.examples = 256
        c.batch_size, c.steps = 8, 100
        c.optim.update(warmup_steps=10)
        restarts(c)
        c.checkpoint.every, c.log.every, c.sample.every = 50, 10, 100
    return c
