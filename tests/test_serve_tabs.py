"""`python -m dit_jax.serve`'s tabs for what a run supports: Control (a ControlNet run), Layout & style, Video
and Views (a novel-view model), each through gradio_client against the launched app and equal to what the
sampling library gives for the same request; a tab the run does not support has no endpoint.

One toy run of each kind (random weights, 8x8, 2 sampler steps), one app each.
"""

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from configs import controlnet_circles
from dit_jax import sampling, serve
from dit_jax.data import circles, prepare
from dit_jax.models import controlnet
from dit_jax.models.layout import parse_box
from dit_jax.models.pretrained import abstract_model, build_model, save_pretrained
from dit_jax.text import encoders
from dit_jax.text.encoders import resolve
from dit_jax.training.recipe import base_config, emoji_minilm
from test_controlnet_cli import TOY as BASE, random_weights
from test_serve import free_port, png, read
from test_video_cli import VIDEO, write_run
from test_video_model import randomize

gradio_client = pytest.importorskip("gradio_client", reason="the demo's extra is not installed: pip install -e .[test]")
STYLES = ["plain", "inverted"]
LAYOUT = dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=0,
              text_dim=384, text_len=16, text_pooled=True, num_styles=2, layout_max_boxes=2, learn_sigma=True)
NOVEL = dict(multiview=True, frames=2, novel_view=True, input_size=8, patch_size=4, in_channels=3, hidden_size=16,
             depth=1, num_heads=2, num_classes=3)


def serving(workdir, data_dir, tab):
    """Starts `workdir`'s app as the command does, but compiles only `tab`'s default request (the image tabs'
    are test_serve.py's); yields (demo, client), closes it after the module."""
    port = free_port()
    demo = serve.Demo(workdir, data_dir, max_images=2)
    demo.warm_up(tabs=(tab,))
    page = serve.build(demo)
    serve.launch(page, port=port, block=False)
    yield demo, gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    page.close()


def sample_config(config, **sample):
    config.sample.update(steps=2, sampler="ddim", seed=0, **sample)
    return config.to_dict()


@pytest.fixture(scope="module")
def control_app(tmp_path_factory):
    """A ControlNet run (controlnet_export/ on a random unconditional base, outline controls, no export/)."""
    root = tmp_path_factory.mktemp("serve_control")
    base = random_weights(lambda: build_model(BASE), seed=0)
    save_pretrained(base, BASE, str(root / "base"))
    net = random_weights(lambda: controlnet.ControlNet(base, 1, 1, rngs=nnx.Rngs(1)), seed=1)
    workdir = root / "run"
    controlnet.save_controlnet(net, type("C", (), dict(control_type="outline", base=str(root / "base"))),
                               str(workdir / sampling.CONTROLNET_EXPORT))
    config = sample_config(controlnet_circles.get_config("runlocal"), cfg_scale=1.0)
    (workdir / "run.json").write_text(json.dumps({"config": config}))
    yield from serving(str(workdir), str(root / "data"), "control")


@pytest.fixture(scope="module")
def layout_app(tmp_path_factory):
    """A text model with a style table (its data's style names) and a layout path of 2 boxes."""
    root = tmp_path_factory.mktemp("serve_layout")
    workdir, data_dir = root / "run", root / "data"
    config = emoji_minilm(base_config(), resolution=8, max_examples=64)
    save_pretrained(randomize(abstract_model(LAYOUT), 3), LAYOUT, str(workdir / "export"))
    (workdir / "run.json").write_text(json.dumps({"config": sample_config(config, cfg_scale=3.0)}))
    folder = prepare.prepared_dir(config, str(data_dir))
    os.makedirs(folder)
    text = dict(encoder="minilm", source=resolve("minilm", ""), dim=384, max_length=16, layer="last")
    with open(os.path.join(folder, prepare.MANIFEST), "w") as f:
        json.dump(dict(text=text, space="pixel", vae=None, image_shape=[8, 8, 3], class_names=[], styles=STYLES), f)
    yield from serving(str(workdir), str(data_dir), "layout")


@pytest.fixture(scope="module")
def video_app(tmp_path_factory):
    """A class-conditional clip model: 4 grey frames of 8x8."""
    root = tmp_path_factory.mktemp("serve_video")
    workdir = write_run(root, VIDEO)
    run = json.loads((root / "run.json").read_text())
    run["config"]["sample"].update(steps=2, sampler="ddim", cfg_scale=2.0)
    (root / "run.json").write_text(json.dumps(run))
    yield from serving(workdir, str(root / "data"), "video")


@pytest.fixture(scope="module")
def views_app(tmp_path_factory):
    """A class-conditional novel-view model: 2 views of 8x8, the first given."""
    root = tmp_path_factory.mktemp("serve_views")
    workdir = root / "run"
    save_pretrained(randomize(abstract_model(NOVEL), 7), NOVEL, str(workdir / "export"))
    config = emoji_minilm(base_config(), resolution=8)
    (workdir / "run.json").write_text(json.dumps({"config": sample_config(config, cfg_scale=2.0)}))
    yield from serving(str(workdir), str(root / "data"), "views")


def endpoints(client):
    return set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])


def gif_frames(path):
    with Image.open(path) as image:
        return [np.asarray(image.seek(i) or image.convert("RGB")) for i in range(image.n_frames)]


# ------------------------------------------------------------------------------------------------- Control

def test_control_is_the_librarys_sample_under_the_control_shown_beside_it(control_app, tmp_path):
    demo, client = control_app
    assert endpoints(client) == {"/generate", "/inpaint", "/img2img", "/control"}
    photo, outline = circles.example(0, 3, size=16)[:2]
    args = ("", None, "ddim", 2, 1.0, 4, 2)  # the run's sample block: what start-up compiled
    got = read(client.predict(*args, gradio_client.handle_file(png(tmp_path, "photo.png", photo)), "outline", 0.8,
                              api_name="/control"))
    assert list(demo.compiled) == [("ddim", 2, 1.0, 2, False, (), True)]  # the scale is an input: no compile
    assert len(got) == 3 and got[1].shape == (8, 8, 3) and not np.array_equal(got[1], got[2])
    # The control computed from the photo as `sample --control_from --control_type=outline` does.
    setup = demo.setup
    codec = sampling.Codec(setup)
    directory = setup.controlnets[0]
    pixels = sampling.compute_control("outline", sampling.read_image(str(tmp_path / "photo.png"), 8, 3), {})
    control = sampling.make_control(directory, sampling.controlnet_config(directory), codec, pixels, 0.8)
    np.testing.assert_array_equal(got[0], control.pixels[..., 0])
    want = sampling.sample_images(setup, sampling.Settings(sampler="ddim", steps=2, cfg_scale=1.0, seed=4), [""],
                                  None, num_images=2, controls=[control], verbose=False).images
    np.testing.assert_array_equal(np.stack(got[1:]), want)
    # A ready control image, as is (resized, kept binary).
    ready = gradio_client.handle_file(png(tmp_path, "outline.png", outline[..., 0]))
    unsteered = read(client.predict(*args, ready, serve.AS_IS, 0.0, api_name="/control"))
    np.testing.assert_array_equal(unsteered[0], sampling.fit_control(outline, (8, 8), 1)[..., 0])
    assert not np.array_equal(unsteered[1], got[1]) and len(demo.compiled) == 1


@pytest.mark.parametrize("change, message", [
    (dict(image=None), "Upload a control image"),
    (dict(kind="canny"), "canny is not in the list of choices"),
    (dict(scale=5.0), "greater than maximum value 2"),
])
def test_bad_control_requests_are_messages(control_app, tmp_path, change, message):
    image = gradio_client.handle_file(png(tmp_path, "c.png", np.zeros((8, 8, 3), np.uint8)))
    values = dict(dict(image=image, kind="outline", scale=1.0), **change)
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        control_app[1].predict("", None, "ddim", 2, 1.0, 0, 1, values["image"], values["kind"], values["scale"],
                               api_name="/control")
    assert message in str(e.value) and "Traceback" not in str(e.value)


# ------------------------------------------------------------------------------------------ Layout & style

def test_layout_and_style_is_the_librarys_composition(layout_app, monkeypatch):
    demo, client = layout_app
    monkeypatch.setattr(encoders, "load", lambda *args, **kwargs: demo.encoder)  # the library's, loaded once
    assert endpoints(client) == {"/generate", "/inpaint", "/img2img", "/layout"}
    boxes = "0.1,0.2,0.5,0.9:a sneaker\n0.5,0,1,0.5: a bag"
    got = read(client.predict("a sneaker AND a bag", None, "ddim", 2, 3.0, 1, 2, "inverted", boxes, 4.0, 3.0, 2.0,
                              2.0, api_name="/layout"))
    assert len(got) == 3 and got[2].shape[0] > 8  # the two images, then the boxes drawn on the first, enlarged
    spec = "text=4.0,style=3.0,layout=2.0"  # the model's conditions, in order; it has no class path
    setup = demo.setup
    composition = sampling.read_composition(setup, ["a sneaker AND a bag"], "inverted",
                                            [parse_box(b) for b in boxes.splitlines()], spec)
    want = sampling.sample_images(setup, sampling.Settings(sampler="ddim", steps=2, seed=1, guidance=spec),
                                  ["a sneaker AND a bag"], None, num_images=2, composition=composition,
                                  verbose=False).images
    np.testing.assert_array_equal(np.stack(got[:2]), want)
    # Start-up compiled the tab's default request; other weights, boxes and styles are inputs of that program.
    other = read(client.predict("a bag", None, "ddim", 2, 3.0, 1, 2, "none", "", 6.0, -1.0, 0.0, 0.0,
                                api_name="/layout"))
    assert len(other) == 2 and not np.array_equal(other[0], got[0])
    assert list(demo.compiled) == [("ddim", 2, 1.0, 2, True, ("text", "style", "layout"), False)]


@pytest.mark.parametrize("style, boxes, message", [
    ("inverted", "0.1,0.2,1.5,0.9:a sneaker", "outside the image: give x0,y0,x1,y1 in [0, 1]"),
    ("inverted", "0.1,0.2,0.5", "write x0,y0,x1,y1:phrase"),
    ("inverted", "0,0,1,1:a\n0,0,1,1:b\n0,0,1,1:c", "3 boxes but the model reads at most 2"),
    ("sepia", "", "sepia is not in the list of choices"),
])
def test_bad_layouts_are_messages(layout_app, style, boxes, message):
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        layout_app[1].predict("a bag", None, "ddim", 2, 3.0, 0, 1, style, boxes, 4.0, 3.0, 2.0, 2.0,
                              api_name="/layout")
    assert message in str(e.value) and "Traceback" not in str(e.value)


# ---------------------------------------------------------------------------------------------- Video, Views

def test_video_gives_the_librarys_clips_as_a_gif_and_frame_strips(video_app):
    demo, client = video_app
    assert endpoints(client) == {"/video"}
    animation, strips = client.predict("", "3", "ddim", 2, 2.0, 5, 2, api_name="/video")
    assert len(demo.compiled) == 1  # start-up's
    want = sampling.sample_images(demo.setup, sampling.Settings(sampler="ddim", steps=2, cfg_scale=2.0, seed=5),
                                  ["3"], [3], num_images=2, verbose=False).images
    assert want.shape == (2, 4, 8, 8, 1)
    for strip, clip in zip(read(strips), want):
        for t in range(4):
            np.testing.assert_array_equal(strip[:, t * 9:t * 9 + 8], clip[t, ..., 0])  # 1-pixel gaps
    frames = gif_frames(animation)
    assert len(frames) == 4 and frames[0].std() > 0
    np.testing.assert_array_equal(frames[1][:8 * 16:16, :8 * 16:16, 0], want[0, 1, ..., 0])  # enlarged 16x


def test_views_of_an_uploaded_image_are_the_librarys(views_app, tmp_path):
    demo, client = views_app
    assert endpoints(client) == {"/views"}
    front = np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8)
    upload = gradio_client.handle_file(png(tmp_path, "front.png", front))
    animation, strips = client.predict("", "1", "ddim", 2, 2.0, 3, 2, upload, api_name="/views")
    assert len(demo.compiled) == 1  # start-up's
    codec = sampling.Codec(demo.setup)
    given = codec.encode(sampling.read_image(str(tmp_path / "front.png"), 8, 3))
    want = sampling.sample_images(demo.setup, sampling.Settings(sampler="ddim", steps=2, cfg_scale=2.0, seed=3),
                                  ["1"], [1], num_images=2, inputs={"given": given[None]}, verbose=False).images
    assert want.shape == (2, 2, 8, 8, 3) and len(read(strips)) == 2
    np.testing.assert_array_equal(read(strips)[0], np.concatenate([want[0, 0], np.full((8, 1, 3), 255, np.uint8),
                                                                   want[0, 1]], axis=1))
    assert len(gif_frames(animation)) == 2
    with pytest.raises(gradio_client.exceptions.AppError, match="Upload the view to start from"):
        client.predict("", "1", "ddim", 2, 2.0, 3, 1, None, api_name="/views")


def test_a_text_to_views_model_has_only_the_views_tab_and_needs_no_upload(tmp_path):
    """Without the app (its requests are test_views_...'s): the tabs, and the views of a class."""
    config = dict(NOVEL, novel_view=False)
    save_pretrained(randomize(abstract_model(config), 8), config, str(tmp_path / "run" / "export"))
    run = {"config": sample_config(emoji_minilm(base_config(), resolution=8), cfg_scale=1.0)}
    (tmp_path / "run" / "run.json").write_text(json.dumps(run))
    demo = serve.Demo(str(tmp_path / "run"), str(tmp_path / "data"), max_images=1)
    assert demo.tabs == ("views",) and not demo.novel_view and "2 views (8x8)" in demo.describe()
    views = demo.sample("views", "", "2", "ddim", 2, 1.0, 0, 1)
    assert views.shape == (1, 2, 8, 8, 3) and not np.array_equal(views[0, 0], views[0, 1])
    with pytest.raises(ValueError, match="This run has no generate tab; it has views"):
        demo.sample("generate", "", "2", "ddim", 2, 1.0, 0, 1)
