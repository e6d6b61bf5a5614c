"""The multi-view DiT: equal to the image DiT for one view, joint attention as the DiT's block over all views'
tokens, cameras and the given view, and its one-line errors."""

import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from dit_jax.models import multiview, variants
from dit_jax.models.dit import DiT, DiTBlock
from dit_jax.models.pretrained import abstract_model, save_pretrained
from dit_jax.sample import Options, run
from dit_jax.training.checks import validate
from dit_jax.utils import cameras

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

TOY = dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=3,
           text_dim=8, text_len=4, text_pooled=True)


def randomize(model, seed=0):
    """Every parameter drawn at random with NumPy (so adaLN-Zero's gates and the zero layers are not zero)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    rng = np.random.default_rng(seed)
    for _, var in flat:
        var.set_value(jnp.asarray(0.3 * rng.standard_normal(var.shape), var.dtype))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def random_model(cls, seed, **kw):
    """`cls(**kw)` with random weights, built abstractly (its own initialisation is what the tests skip)."""
    return randomize(nnx.eval_shape(lambda: cls(**kw, rngs=nnx.Rngs(0))), seed)


def jitted(model, **static):
    """The model's call, compiled (eager dispatch of every op is many times slower, even at toy sizes)."""
    graphdef, state = nnx.split(model)
    call = jax.jit(lambda state, *args, **kw: nnx.merge(graphdef, state)(*args, **kw, **static))
    return functools.partial(call, state)


def inputs(b, v, seed=1, size=8, c=3):
    rng = np.random.default_rng(seed)
    return dict(x=jnp.asarray(rng.standard_normal((b, v, size, size, c)), jnp.float32), t=jnp.array([3, 700][:b]),
                y=jnp.array([0, 2][:b]), text=jnp.asarray(rng.standard_normal((b, 4, 8)), jnp.float32),
                text_mask=jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]][:b], bool),
                pooled=jnp.asarray(rng.standard_normal((b, 8)), jnp.float32))


@pytest.fixture(scope="module")
def model3():
    return jitted(random_model(multiview.MultiViewDiT, 2, views=3, **TOY))


def test_one_view_with_a_zero_camera_embedding_is_the_image_dit():
    image = random_model(DiT, 3, **TOY)
    mv = random_model(multiview.MultiViewDiT, 4, views=1, **TOY)
    weights = dict(nnx.to_flat_state(nnx.state(image, nnx.Param)))
    flat = nnx.to_flat_state(nnx.state(mv, nnx.Param))
    for path, var in flat:
        if path[:2] == ("camera_embedder", "linear2"):  # a zero camera embedding
            var.set_value(jnp.zeros(var.shape, var.dtype))
        elif path[0] != "camera_embedder":
            var.set_value(weights[path][...])
    nnx.update(mv, nnx.from_flat_state(flat))
    assert len(weights) + 4 == len(flat)  # the camera MLP's two layers are all it adds
    a = inputs(2, 1)
    views = jitted(mv)(a["x"], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"])
    single = jitted(image)(a["x"][:, 0], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"])
    assert views.shape == (2, 1, 8, 8, 6)
    np.testing.assert_allclose(views[:, 0], single, atol=1e-6, rtol=0)


def test_multiview_block_is_the_dit_block_over_all_views_tokens():
    """With one condition for all of an object's views, the block equals DiT's block on the V*N tokens in a row."""
    kw = dict(cross_attention=True, mlp_norm_eps=1e-6, dropout=0.0, attention="xla", dtype=jnp.float32,
              param_dtype=jnp.float32)
    block = random_model(multiview.MultiViewBlock, 4, hidden_size=16, num_heads=2, mlp_ratio=2.0, **kw)
    reference = nnx.eval_shape(lambda: DiTBlock(16, 2, 2.0, **kw, rngs=nnx.Rngs(1)))
    nnx.update(reference, nnx.state(block))
    b, v, n = 2, 3, 5
    rng = np.random.default_rng(5)
    x, c, context = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((b * v, n, 16), (b, 16), (b, 4, 16)))
    mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    out = jitted(block, views=v)(x, jnp.repeat(c, v, 0), jnp.repeat(context, v, 0), jnp.repeat(mask, v, 0))
    joint = jitted(reference)(x.reshape(b, v * n, 16), c, context, mask)
    np.testing.assert_allclose(out.reshape(b, v * n, 16), joint, atol=2e-5, rtol=1e-5)


def test_views_attend_to_each_other_and_permute_with_their_cameras(model3):
    a = inputs(2, 3)
    poses = jnp.asarray(np.stack([cameras.ring(3, 20.0, 3.0, azimuth=az)[3] for az in (0.0, 50.0)]))
    out = model3(a["x"], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"], cameras=poses)
    order = jnp.array([2, 0, 1])
    permuted = model3(a["x"][:, order], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"],
                      cameras=poses[:, order])
    np.testing.assert_allclose(permuted, out[:, order], atol=1e-4, rtol=1e-4)
    # Another view 2 changes view 0's prediction (joint attention); other cameras change it too.
    x2 = a["x"].at[:, 2].add(1.0)
    moved = model3(x2, a["t"], a["y"], a["text"], a["text_mask"], a["pooled"], cameras=poses)
    assert float(jnp.abs(moved[:, 0] - out[:, 0]).max()) > 1e-3
    turned = model3(a["x"], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"], cameras=poses[:, ::-1])
    assert float(jnp.abs(turned[:, 0] - out[:, 0]).max()) > 1e-3
    # No cameras: the default ring (elevation 30, distance 3), as the data renders it.
    ring = jnp.asarray(np.broadcast_to(cameras.ring(3, 30.0, 3.0)[3], (2, 3, 4, 4)))
    np.testing.assert_allclose(model3(a["x"], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"]),
                               model3(a["x"], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"], cameras=ring),
                               atol=1e-6)


def test_novel_view_reads_the_given_view_and_relative_cameras():
    model = multiview.MultiViewDiT(views=2, novel_view=True, **{**TOY, "depth": 1}, rngs=nnx.Rngs(0))
    assert model.x_embedder.proj.kernel.shape == (4, 4, 6, 32)
    # The given view and the cameras start with no effect; the noisy view's patch weights are DiT's (not zero).
    assert not np.any(model.x_embedder.proj.kernel[:, :, 3:]) and np.all(np.any(model.x_embedder.proj.kernel[:, :, :3]))
    assert not np.any(model.camera_embedder.linear2.kernel[...]) and np.any(model.camera_embedder.linear1.kernel[...])
    model = jitted(randomize(model, 6))
    a = inputs(2, 2)
    given = jnp.asarray(np.random.default_rng(9).standard_normal((2, 8, 8, 3)), jnp.float32)
    call = lambda poses, g=given: model(a["x"], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"],
                                        cameras=jnp.asarray(poses), given=g)
    ring = np.broadcast_to(cameras.ring(2, 20.0, 3.0)[3], (2, 2, 4, 4))
    out = call(ring)
    # The same cameras relative to the first: the same prediction (Zero123's relative cameras).
    turned = np.broadcast_to(cameras.ring(2, 20.0, 3.0, azimuth=75.0)[3], (2, 2, 4, 4))
    np.testing.assert_allclose(call(turned), out, atol=1e-4)
    assert float(jnp.abs(call(ring, given + 1.0) - out).max()) > 1e-3
    with pytest.raises(ValueError, match="novel-view model: pass `given`"):
        call(ring, None)
    with pytest.raises(ValueError, match=r"given view is \(4, 4, 3\).*resize the input image to 8x8"):
        call(ring, given[:, :4, :4])


def test_bad_views_and_cameras_fail_in_one_line(model3):
    a = inputs(2, 3)
    with pytest.raises(ValueError, match=r"trained on 3 views of 8x8x3, got 4 views.*--views=3"):
        model3(jnp.zeros((2, 4, 8, 8, 3)), a["t"], a["y"], a["text"], a["text_mask"], a["pooled"])
    with pytest.raises(ValueError, match="got 3 views of 16x16x3"):
        model3(jnp.zeros((2, 3, 16, 16, 3)), a["t"], a["y"], a["text"], a["text_mask"], a["pooled"])
    with pytest.raises(ValueError, match=r"cameras \(2, 2, 16\) do not fit"):
        model3(a["x"], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"], cameras=jnp.zeros((2, 2, 16)))
    with pytest.raises(ValueError, match="for a novel-view model"):
        model3(a["x"], a["t"], a["y"], a["text"], a["text_mask"], a["pooled"], given=jnp.zeros((2, 8, 8, 3)))


def test_build_model_and_config_checks():
    kw = {**TOY, "frames": 2, "t_patch": 1, "camera_elevation": 10.0}
    assert isinstance(abstract_model({**kw, "multiview": True}), multiview.MultiViewDiT)
    assert type(abstract_model({**TOY, "multiview": False, "novel_view": False})) is DiT  # pylint: disable=unidiomatic-typecheck
    c = ml_collections.ConfigDict(dict(model=dict(multiview=True, frames=4), data=dict(name="shapes3d", flip=True),
                                       vae=dict(path="")))
    with pytest.raises(ValueError, match="set data.flip=False"):
        multiview.check_config(c)
    c.data.flip = False
    multiview.check_config(c)
    c.data.name = "moving_fashion"
    with pytest.raises(ValueError, match="data with cameras"):
        multiview.check_config(c)


def load_config(arg):
    spec = importlib.util.spec_from_file_location("multiview_shapes", os.path.join(CONFIGS, "multiview_shapes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_the_config_validates_and_bad_settings_fail_before_any_work():
    c = load_config("runlocal")
    assert (c.model.multiview, c.model.frames, c.data.frames, c.data.flip) == (True, 4, 4, False)
    validate(c)
    assert load_config("views=2,novel").model.novel_view
    c.data.shapes3d.colours = "red,teal"
    with pytest.raises(ValueError, match="Unknown colour 'teal' in data.shapes3d.colours"):
        validate(c)
    c = load_config("runlocal")
    c.data.frames = 3
    with pytest.raises(ValueError, match="data.frames=3 but model.frames=4"):
        validate(c)


def test_sample_cli_writes_novel_views_of_a_given_image_and_checks_its_flags(tmp_path):
    config = dict(multiview=True, frames=2, novel_view=True, input_size=8, patch_size=4, in_channels=3,
                  hidden_size=16, depth=1, num_heads=2, num_classes=3)
    model = randomize(abstract_model(config), 7)
    save_pretrained(model, config, str(tmp_path / "export"))
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "front.png")
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "big.png")
    options = dict(checkpoint=str(tmp_path / "export"), classes=["1"], mode="views", image=str(tmp_path / "front.png"),
                   sampler="ddim", steps=2, num_images=1, batch_size=8, out=str(tmp_path / "views.gif"))
    images, captions = run(Options(**options))
    assert images.shape == (1, 2, 8, 8, 3) and captions == ["1"]
    assert {"views.gif", "views.png"} <= set(os.listdir(tmp_path))
    for change, message in ((dict(views=3), "--views=3 but this model was trained on 2 cameras"),
                            (dict(image=str(tmp_path / "big.png")), "is 16x16; this model takes 8x8 views"),
                            (dict(mode="sample", image=None), "novel-view model: pass --mode=views")):
        with pytest.raises(ValueError, match=message):
            run(Options(**{**options, **change}))


def test_forward_macs_counts_the_joint_attention():
    image = variants.forward_macs(**TOY)
    n, d = 4, 32  # 8x8 input, patch 4: 4 tokens a view
    assert multiview.forward_macs(frames=1, **TOY) == image + 16 * d + d * d
    assert multiview.forward_macs(frames=3, **TOY) == 3 * (image + 16 * d + d * d) + 2 * 2 * n * n * d * 6
    assert variants.train_flops_per_image({**TOY, "multiview": True, "frames": 3}) == 6 * multiview.forward_macs(
        frames=3, **TOY)
