"""ControlNet around the model: the circles recipe, sampling with controls (`sample --control`), control-adherence
scores (`evaluate --metrics=control`, dit_jax/evaluation/control.py) and the one-line errors for bad input."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import controlnet_circles, controlnet_emoji, tiny
from dit_jax import evaluate, sample, sampling, train
from dit_jax.data import circles, controls
from dit_jax.evaluation import control
from dit_jax.models import controlnet
from dit_jax.models.pretrained import build_model, save_pretrained
from dit_jax.training import checks

# ---------------------------------------------------------------------------------------------- the scores


def test_f1_iou_rmse_known_values():
    a = np.zeros((3, 4, 4, 1), np.uint8)
    b = np.zeros((3, 4, 4, 1), np.uint8)
    a[0, 0, :2] = b[0, 0, :2] = 255  # identical
    a[1, 0, :2], b[1, 1, :2] = 255, 255  # disjoint
    a[2, 0, :3], b[2, 0, 1:4] = 255, 255  # 2 of 3 + 3 shared: F1 2*2/6, IoU 2/4
    np.testing.assert_allclose(control.f1(a, b), [1.0, 0.0, 2 / 3])
    np.testing.assert_allclose(control.iou(a, b), [1.0, 0.0, 0.5])
    assert control.f1(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))[0] == 1.0  # nothing to find, nothing found
    np.testing.assert_allclose(control.rmse(a[:1], a[:1]), [0.0])
    np.testing.assert_allclose(control.rmse(np.zeros((1, 2, 2)), np.full((1, 2, 2), 255)), [1.0])
    np.testing.assert_allclose(control.rmse(np.zeros((1, 2, 2)), np.array([[[255, 0], [0, 0]]])), [0.5])


def test_scores_of_real_circles_and_canny():
    """The generated circles themselves follow their outlines exactly (IoU 1) and have the captioned colours;
    a sample that moved or has other colours scores lower. Canny edges of the image itself give F1 1."""
    examples = [circles.example(0, i, size=32) for i in range(8)]
    images = np.stack([e[0] for e in examples])
    outlines = np.stack([e[1] for e in examples])
    names = [(e[2], e[3]) for e in examples]
    assert control.score("outline", outlines, images)["control_iou"] == 1.0
    shifted = np.roll(images, 4, axis=2)
    assert control.score("outline", outlines, shifted)["control_iou"] < 0.9
    palette = circles.PALETTE
    right = control.circle_colours(images, outlines, *zip(*names), palette)
    assert right == dict(colours_right=1.0, circle_colour_right=1.0, background_colour_right=1.0)
    swapped = control.circle_colours(images, outlines, *zip(*[(b, c) for c, b in names]), palette)
    assert swapped["colours_right"] == 0.0
    assert control.circle_colours(images, None, *zip(*names), palette)["colours_right"] == 1.0  # own mask
    edges = controls.canny(images)
    assert control.score("canny", edges, images)["control_f1"] == 1.0
    assert control.score("canny", edges, shifted)["control_f1"] < 0.5
    with pytest.raises(ValueError, match="not 'pose'"):
        control.score("pose", edges, images)


# ------------------------------------------------------------------------------------------ the recipe


def test_circles_recipe():
    base, net = controlnet_circles.get_config("base"), controlnet_circles.get_config()
    assert base.data.to_dict() == net.data.to_dict()  # prepared once for both
    assert not base.controlnet.control_type and net.controlnet.control_type == "outline"
    assert net.controlnet.conditioning_dropout_prob > 0
    toy = controlnet_circles.get_config("runlocal")
    assert toy.steps < 10 and toy.controlnet.num_blocks <= 2
    with pytest.raises(ValueError, match="controlnet.base is empty"):  # a ControlNet without its base
        checks.validate(net)
    manifest = dict(control_shapes={"outline": [32, 32, 1]})
    train.controlnet_from_data(net, manifest)
    assert (net.controlnet.control_channels, net.controlnet.control_size) == (1, 32)
    net.controlnet.control_type = "canny"
    with pytest.raises(ValueError, match="control_type='canny' but the data has controls \\['outline'\\]"):
        train.controlnet_from_data(net, manifest)


def test_emoji_recipe_fits_its_base():
    """The canny ControlNet's model and text keys are configs/tiny.py's, so a tiny run is its base (its
    runlocal toy: tiny's runlocal); its data adds the canny edges."""
    for arg in ("", "runlocal"):
        net, base = controlnet_emoji.get_config(arg), tiny.get_config(arg)
        assert net.model.to_dict() == base.model.to_dict() and net.text.to_dict() == base.text.to_dict()
        assert (net.data.name, net.data.max_examples, net.data.controls) == ("emoji", base.data.max_examples,
                                                                              ("canny",))
        assert net.controlnet.control_type == "canny" and net.controlnet.conditioning_dropout_prob > 0


# ------------------------------------------------------------------------------------------- sampling

TOY = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=0,
           text_dim=0, learn_sigma=True)


def random_weights(build, seed, scale=0.2):
    """The module `build` makes, every parameter drawn from NumPy: nothing is initialised or compiled by JAX."""
    module = nnx.eval_shape(build)
    leaves, tree = jax.tree.flatten(nnx.state(module, nnx.Variable))
    rng = np.random.RandomState(seed)
    nnx.update(module, jax.tree.unflatten(tree, [(scale * rng.randn(*x.shape)).astype(x.dtype) for x in leaves]))
    return module


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A random base export and a random 1-channel ControlNet on it (a ControlNet run's export), and controls."""
    root = tmp_path_factory.mktemp("controlnet_cli")
    base = random_weights(lambda: build_model(TOY), seed=0)
    save_pretrained(base, TOY, str(root / "base"))
    net = random_weights(lambda: controlnet.ControlNet(base, 1, 1, rngs=nnx.Rngs(1)), seed=1)
    cfg = dict(control_type="outline", base=str(root / "base"))
    controlnet.save_controlnet(net, type("C", (), cfg), str(root / "cn"))
    image, outline = circles.example(0, 3, size=16)[:2]
    Image.fromarray(outline[..., 0]).save(root / "outline16.png")
    Image.fromarray(image).save(root / "photo.png")
    return root


def options(root, **kw):
    values = dict(checkpoint=str(root / "base"), controlnet=[str(root / "cn")], steps=2, num_images=1,
                  cfg_scale=1.0, out=str(root / "out" / "grid.png"))
    return sample.Options(**{**values, **kw})


def test_sample_with_a_control(exports, capsys):
    """`sample --control` end to end on a toy base and ControlNet: a control of another size is resized (and
    said so, kept binary), and the grid shows the control beside the sample."""
    o = options(exports, control=[str(exports / "outline16.png")], control_scale=["0.8"])
    images, _ = sample.run(o)
    assert "Resizing the control outline16.png from 16x16 to the ControlNet's 8x8" in capsys.readouterr().out
    assert images.shape == (1, 8, 8, 3)
    grid = Image.open(o.out)
    plain = sample.captioned_grid(images, [""], columns=1)
    assert grid.size[0] == 2 * plain.size[0]  # the control's column, then the sample's
    setup = sample.read_setup(o)
    codec = sampling.Codec(setup)
    ctl = sample.read_controls(o, setup, codec)
    assert ctl[0].scale == 0.8 and ctl[0].image.shape == (8, 8, 1)
    assert set(np.unique(ctl[0].pixels)) <= {0, 255}  # an outline stays binary when resized


def test_null_control_blanks_the_controls_of_the_null_half():
    seen = {}

    def model(x, t, drop=None, controls=None):
        seen["controls"] = controls
        return x

    c = jnp.ones((4, 2, 2, 1))
    drop = jnp.array([False, False, True, True])
    sampling.with_controls(model, 1, "blank")(jnp.zeros(4), None, drop=drop, control_0=c)
    np.testing.assert_array_equal(seen["controls"][0][:, 0, 0, 0], [1, 1, 0, 0])
    sampling.with_controls(model, 1, "same")(jnp.zeros(4), None, drop=drop, control_0=c)
    np.testing.assert_array_equal(seen["controls"][0][:, 0, 0, 0], [1, 1, 1, 1])
    with pytest.raises(ValueError, match="Unknown null_control"):
        sampling.with_controls(model, 1, "zero")


def test_bad_control_input_fails_in_one_line(exports, tmp_path):
    """Each before any model loads or compiles."""
    png = str(exports / "outline16.png")
    with pytest.raises(ValueError, match="Unknown control type 'edges'"):
        sample.check_options(options(exports, control_from=[png], control_type=["edges"]))
    with pytest.raises(FileNotFoundError, match="Control image .*nothing.png not found"):
        sample.check_options(options(exports, control=[str(tmp_path / "nothing.png")]))
    with pytest.raises(ValueError, match="one --control_scale for all 1 controls or one each"):
        sample.check_options(options(exports, control=[png], control_scale=["1", "2"]))
    with pytest.raises(ValueError, match="--control_type says how to compute"):
        sample.check_options(options(exports, control=[png], control_type=["canny"]))
    o = options(exports, control_from=[str(exports / "photo.png")], control_type=["canny"])
    setup = sample.read_setup(o)
    codec = sampling.Codec(setup)
    with pytest.raises(ValueError, match="--control_type=canny but the ControlNet .* trained on 'outline'"):
        sample.read_controls(o, setup, codec)
    with pytest.raises(ValueError, match="1 ControlNets .* need one control each .* got 0"):
        sample.read_controls(options(exports), setup, codec)
    o = options(exports, controlnet=[], control_from=[str(exports / "photo.png")], control_type=["depth"],
                control_model_path=str(tmp_path / "no_model"))
    with pytest.raises(ValueError, match="0 ControlNets"):
        sample.read_controls(o, setup, codec)
    with pytest.raises(ValueError, match="depth model"):  # a depth model path that does not load
        sampling.compute_control("depth", np.zeros((8, 8, 3), np.uint8), sample.control_options(o, "depth"))
    # A ControlNet whose base is gone, and a workdir that is no ControlNet run.
    moved = tmp_path / "cn"
    os.makedirs(moved)
    for f in os.listdir(exports / "cn"):
        (moved / f).write_bytes((exports / "cn" / f).read_bytes())
    text = (moved / "config.json").read_text().replace(str(exports / "base"), str(tmp_path / "gone"))
    (moved / "config.json").write_text(text)
    with pytest.raises(FileNotFoundError, match="trained on the base .*gone.*which is gone"):
        sampling.controlnet_config(str(moved))
    circles_data, emoji_data = dict(space="pixel", dataset="circles", text={}), dict(space="pixel", dataset="emoji",
                                                                                    text={"dim": 384})
    assert evaluate.default_metrics(circles_data, None, dict(control_type="outline")) == ["fid", "control", "colours"]
    assert evaluate.default_metrics(circles_data, None) == ["fid", "colours"]  # a base: its own foreground
    assert evaluate.default_metrics(emoji_data, None, dict(control_type="pose")) == ["fid", "retrieval"]
    with pytest.raises(ValueError, match="--metrics=control scores a ControlNet run"):
        evaluate.check_metrics(["control"], dict(space="pixel", dataset="circles"), None, None)
    with pytest.raises(ValueError, match="scores circles"):
        evaluate.check_metrics(["colours"], dict(space="pixel", dataset="emoji"), None, None)
