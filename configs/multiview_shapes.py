"""Text-to-multi-view on shapes3d: 4 views of 32x32 of "a red cube", on cameras around it (MVDream's recipe).

  python -m dit_jax.prepare --config=configs/multiview_shapes.py
  python -m dit_jax.train --config=configs/multiview_shapes.py --workdir=/tmp/multiview_shapes
  python -m dit_jax.train --config=configs/multiview_shapes.py:novel --workdir=/tmp/novel_views

Data: `shapes3d` (dit_jax/data/shapes3d.py), 6 shapes in 8 colours and 3 sizes, rendered here from `views`
cameras evenly spaced in azimuth at 30 +- 10 degrees of elevation (random per view) and 3 units away, with MiniLM
text. The loader gives "image" (B, V, 32, 32, 3) and "cameras" (B, V, 16), each view's pose. The model is
configs/fashion_tiny.py's DiT-T/4 over all views at once (dit_jax/models/multiview.py); `novel` trains Zero123's
novel-view mode instead (the first view given, the others generated). Loss, schedule and EMA are
`cpu_text_to_image`'s. Views are never mirrored (data.flip off): a mirror would no longer fit its camera.
"""

from dit_jax.training.recipe import base_config, cpu_text_to_image, parse_arg, variant

PROMPTS = ["a red cube", "a blue torus", "a green sphere", "a yellow cone", "a purple pyramid", "an orange cylinder",
           "a pink torus", "a brown cube"]


def restarts(c, epochs=10, mult=2):
    """Cosine warm restarts over the objects this config renders (data.shapes3d.examples)."""
    period = round(epochs * c.data.shapes3d.examples / c.batch_size)
    c.optim.update(schedule="cosine_restarts", restart_period=period, restart_mult=mult)


def get_config(arg=None):
    arg = parse_arg(arg, views=4, novel=False, runlocal=False)
    c = cpu_text_to_image(base_config())
    c.data.update(name="shapes3d", resolution=32, flip=False)
    c.data.frames = arg.views  # the views travel as a clip's frames
    c.data.shapes3d = dict(examples=4000, seed=0, elevation=30.0, random_elevation=10.0, distance=3.0,
                           shapes="cube,sphere,cylinder,cone,torus,pyramid",
                           colours="red,orange,yellow,green,blue,purple,pink,brown")
    c.text.update(encoder="minilm", max_length=16)
    c.model.update(multiview=True, frames=arg.views, novel_view=arg.novel,
                   camera_elevation=30.0, camera_distance=3.0)  # the ring sampled when no cameras are given
    c.batch_size = 16
    c.steps = 3000
    c.optim.warmup_steps = 200
    restarts(c)
    c.sample.update(every=1000, prompts=PROMPTS)
    if arg.novel:  # training's sample grids have no input view to start from: sample --mode=views instead
        c.sample.every = 0

    if arg.runlocal:  # a toy: 64 objects, DiT-Toy/4, 30 steps
        c.data.shapes3d.examples = 64
        c.model.update(variant("DiT-Toy/4"))
        c.batch_size, c.steps = 8, 30
        c.optim.update(warmup_steps=5)
        restarts(c)
        c.checkpoint.every, c.log.every = 30, 10
        c.sample.every = 0 if arg.novel else 30
        c.sample.update(steps=5, prompts=PROMPTS[:2])
    return c
