"""ControlNet on circles (the ControlNet tutorial's "fill50k" task): a base first, then its ControlNet.

  python -m dit_jax.train --config=configs/controlnet_circles.py:base --workdir=/tmp/circles_base
  python -m dit_jax.train --config=configs/controlnet_circles.py --workdir=/tmp/circles_cn \
      --config.controlnet.base=/tmp/circles_base
  python -m dit_jax.sample --workdir=/tmp/circles_cn --prompt="a red circle on a light blue background" \
      --control=outline.png
  python -m dit_jax.evaluate --workdir=/tmp/circles_cn --metrics=control

Data: 20,000 generated circles at 32 px (dit_jax/data/circles.py), a circle of
one of 10 named colours on a background of another, captioned "a red circle on
a light blue background", with its one-pixel outline stored as the control
`outline`. The base (`:base`) learns colours from the caption, the circle
anywhere; the ControlNet (copies of the base's first 2 of 4 blocks) learns to
put the circle where the outline is. Both prepare the same data (with the
outline), so it is prepared once. Model, loss and EMA: `cpu_text_to_image`
(DiT-T/4) in dit_jax/training/recipe.py. Each run's steps are the 30-minute
budget of the idle 2-core CPU (about 4.5 steps/s at batch 32 for the base,
BENCHMARKS.md; the ControlNet step runs the base and the copies).
"""

from dit_jax.training.recipe import base_config, cpu_text_to_image, parse_arg, variant

PROMPTS = ["a red circle on a light blue background", "a yellow circle on a blue background",
           "a white circle on a black background", "a green circle on a pink background",
           "a purple circle on a orange background", "a black circle on a white background",
           "a blue circle on a yellow background", "a orange circle on a green background"]


def get_config(arg=None):
    arg = parse_arg(arg, base=False, runlocal=False)
    c = cpu_text_to_image(base_config())
    c.data.update(name="circles", resolution=32, controls=("outline",), circles=dict(examples=20_000, seed=0))
    c.text.update(encoder="minilm", max_length=16)
    c.batch_size = 32
    c.optim.update(schedule="warmup_cosine", warmup_steps=200, min_lr=1e-5)
    c.sample.update(prompts=PROMPTS, cfg_scale=3.0)
    if arg.base:
        c.steps = 8000
        c.sample.every = 2000
    else:
        # Classifier-free guidance on the control too: 10% of controls are blanked (zeros), as the captions
        # are (model.caption_dropout_prob), so a zero control means "no control".
        c.controlnet.update(base="", num_blocks=2, control_type="outline", conditioning_dropout_prob=0.1)
        c.steps = 5000
        c.sample.every = 0  # a ControlNet run draws no grids; `sample --control` does

    if arg.runlocal:  # a toy: 256 circles at 16 px, DiT-Toy/4 (its two blocks: one copied), a few steps
        c.data.update(resolution=16, circles=dict(examples=256, seed=0))
        c.model.update(variant("DiT-Toy/4"))
        c.batch_size, c.steps = 8, 4
        c.optim.update(warmup_steps=1)
        c.checkpoint.every, c.log.every, c.sample.every = 0, 2, 0
        if not arg.base:
            c.controlnet.num_blocks = 1
    return c
