"""A canny-edge ControlNet on the emoji DiT of configs/tiny.py.

  python -m dit_jax.train --config=configs/tiny.py --workdir=/tmp/tiny
  python -m dit_jax.train --config=configs/controlnet_emoji.py --workdir=/tmp/emoji_canny \
      --config.controlnet.base=/tmp/tiny
  python -m dit_jax.sample --workdir=/tmp/emoji_canny --prompt="red apple" --control_from=photo.png \
      --control_type=canny
  python -m dit_jax.evaluate --workdir=/tmp/emoji_canny --metrics=control,fid

The data are tiny's (3,778 emoji at 32 px, MiniLM captions) with the Canny
edges of each image stored beside it (OpenCV's thresholds 100 / 200 after a
blur of sigma 1: `controls.canny_*`); the model keys are tiny's, as the base's
must be. The ControlNet copies the base's first 2 of 4 blocks; 10% of controls
are blanked in training, so guidance's null half can drop the control.
`:runlocal` is the ControlNet of `configs/tiny.py:runlocal`.
"""

from dit_jax.training.recipe import base_config, cpu_text_to_image, emoji_minilm, parse_arg, variant


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = cpu_text_to_image(emoji_minilm(base_config(), resolution=32))
    c.data.controls = ("canny",)
    c.controlnet.update(base="", num_blocks=2, control_type="canny", conditioning_dropout_prob=0.1)
    c.batch_size = 32
    c.steps = 2000
    c.optim.update(schedule="warmup_cosine", warmup_steps=100, min_lr=1e-5)
    c.sample.every = 0  # a ControlNet run draws no grids; `sample --control` does

    if arg.runlocal:  # the ControlNet of configs/tiny.py:runlocal (512 emoji, DiT-Toy/4), a few steps
        c.data.max_examples = 512
        c.model.update(variant("DiT-Toy/4"))
        c.controlnet.num_blocks = 1
        c.batch_size, c.steps = 8, 4
        c.optim.update(warmup_steps=1)
        c.checkpoint.every, c.log.every = 0, 2
    return c
