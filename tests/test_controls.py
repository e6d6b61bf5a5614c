"""Control images (canny against OpenCV, silhouette, tile, gray, depth and pose through tiny random transformers
models), the circles dataset, and controls stored by `prepare` and delivered by the loader."""

import functools
import json
import logging
import os

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from dit_jax.data import canny_agreement, circles, controls, emoji, images, pipeline, prepare, sources
from test_data import save_tiny_vae
from test_prepare import tiny_config


@pytest.fixture(scope="module", autouse=True)
def encoder_loaded_once():
    """Every `prepare` here loads the same MiniLM: load it once (the encoder keeps no state between calls)."""
    from dit_jax.text import encoders
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encoders, "load", functools.lru_cache(maxsize=2)(encoders.load))
        yield


# ------------------------------------------------------------------------------------------------------ canny

def test_canny_agrees_with_opencv_on_real_images():
    pytest.importorskip("cv2")
    sets = canny_agreement.image_sets(6)
    assert len(sets) >= 2
    for name, batch in sets.items():
        for sigma, low, high, aperture, l2 in canny_agreement.SETTINGS:
            f1, worst, pixels = canny_agreement.agreement(batch, sigma, low, high, aperture, l2)
            assert pixels > 100, (name, sigma)  # real edges to agree on
            # The issue asks for F1 >= 0.95; with the blur in OpenCV's exact integer arithmetic (and the pinned
            # OpenCV) the edges are the same, pixel for pixel, on every image.
            assert f1 == 1.0 and worst == 1.0, (name, sigma, low, high, aperture, l2, f1, worst)


def test_canny_on_a_step_and_a_ramp():
    step = np.zeros((16, 16), np.uint8)
    step[:, 8:] = 200
    edges = controls.canny(step, sigma=0)[..., 0] > 0
    # One pixel wide, the whole height; of the two equal maxima astride the step, the first (OpenCV's tie rule).
    assert edges.sum(1).tolist() == [1] * 16 and edges[:, 7].all()
    assert not controls.canny(np.full((16, 16, 3), 77, np.uint8)).any()
    weak = step // 10  # a Sobel magnitude of 80 across the step: under low=100, over low=50
    assert not controls.canny(weak, sigma=0).any()
    assert controls.canny(weak, low=50, high=70, sigma=0).any()
    # Hysteresis: a weak stretch is kept where it touches a strong one.
    mixed = np.zeros((16, 16), np.uint8)
    mixed[:, 8:] = 20
    mixed[:4, 8:] = 200
    kept = controls.canny(mixed, low=50, high=300, sigma=0)[..., 0] > 0
    assert kept[6:, 7].all()  # the weak stretch, far below the strong one, through the chain of candidates
    assert not controls.canny(mixed[8:], low=50, high=300, sigma=0).any()  # the weak part alone
    batch = np.stack([step[..., None], 255 - step[..., None]])
    assert controls.canny(batch).shape == (2, 16, 16, 1)
    with pytest.raises(ValueError, match="aperture"):
        controls.canny(step, aperture=4)


def test_edge_f1():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert controls.edge_f1(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert controls.edge_f1(a, b) == pytest.approx(2 * 1 / 4)


# ------------------------------------------------------------------------------------------------------ the others

def test_silhouette_alpha_or_background():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[2:6, 3:5] = (255, 255, 255, 200)  # white on a transparent (composited: white) background
    mask = controls.silhouette(np.zeros((8, 8, 3), np.uint8), alpha=[rgba[..., 3]])[..., 0] > 0
    np.testing.assert_array_equal(mask, rgba[..., 3] >= 128)
    ring = np.full((12, 12, 3), 255, np.uint8)
    ring[2:10, 2:10] = (200, 0, 0)
    ring[4:8, 4:8] = 255  # white inside the red: enclosed, so foreground
    np.testing.assert_array_equal(controls.silhouette(ring)[..., 0] > 0, np.pad(np.ones((8, 8), bool), 2))


def test_silhouette_of_emoji_on_white_matches_their_alpha():
    """The emoji dataset stores them composited on white: the threshold against white recovers the alpha mask
    on most (a pale glyph, or one mostly white, loses to the background: measured, not hidden)."""
    folder = emoji._png_dir()  # pylint: disable=protected-access
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))[::40]
    ious = []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        alpha = np.asarray(images.alpha(data)) >= 128
        mask = controls.silhouette(np.asarray(images.decode(data)))[..., 0] > 0
        ious.append((mask & alpha).sum() / (mask | alpha).sum())
    assert len(ious) > 100 and np.median(ious) > 0.95 and np.mean(ious) > 0.85, (np.median(ious), np.mean(ious))


def test_tile_and_gray():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    tiled = controls.tile(image, factor=4)
    assert tiled.shape == image.shape and tiled.dtype == np.uint8
    # Smooth content stays; detail (noise) goes.
    y, x = np.mgrid[:32, :32] * (2 * np.pi / 32)
    smooth = np.rint(128 + 100 * np.sin(x) * np.cos(y))[None, ..., None].repeat(3, -1).astype(np.uint8)
    assert np.abs(controls.tile(smooth).astype(float) - smooth).mean() < 8
    assert tiled.std() < image.std() / 4
    np.testing.assert_array_equal(controls.tile(np.full((16, 16, 1), 90, np.uint8)), 90)
    np.testing.assert_array_equal(controls.gray(image[0])[..., 0], np.asarray(Image.fromarray(image[0]).convert("L")))
    assert controls.gray(image[0, ..., :1]).shape == (32, 32, 1)


def test_registry_and_bad_names():
    image = circles.example(0, 0)[0]
    for name in ("canny", "silhouette", "tile", "gray"):
        out = controls.compute_control(name, image)
        assert out.shape == (32, 32, controls.channels(name, 3)) and out.dtype == np.uint8
    np.testing.assert_array_equal(controls.compute_control("canny", image, low=20, high=40, sigma=0),
                                  controls.canny(image, 20, 40, 0))
    with pytest.raises(ValueError) as error:
        controls.compute_control("sketch", image)
    assert "canny, depth, gray, pose, silhouette, tile" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="options: low, high, sigma"):
        controls.compute_control("canny", image, threshold=3)
    assert controls.options_from_config({"canny_low": 5, "tile_factor": 2, "model_path": "depth=A,pose=B"},
                                        "canny") == {"low": 5}
    assert controls.options_from_config({"model_path": "depth=A,pose=B"}, "pose") == {"model_path": "B"}


# ------------------------------------------------------------------------------------------------------ models

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A DPT depth model and a VitPose model, randomly initialised and tiny, saved with their processors."""
    import torch
    from transformers import (DPTConfig, DPTForDepthEstimation, DPTImageProcessor, VitPoseBackboneConfig,
                              VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    DPTForDepthEstimation(DPTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=32, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=8, head_in_index=-1, use_auxiliary_head=False)).save_pretrained(folder / "depth")
    DPTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder / "depth")
    backbone = VitPoseBackboneConfig(image_size=[32, 24], patch_size=[8, 8], hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, out_indices=[2])
    VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).save_pretrained(folder / "pose")
    VitPoseImageProcessor(size={"height": 32, "width": 24}).save_pretrained(folder / "pose")
    return folder


def test_depth_through_a_saved_model(tiny_models):
    from transformers import pipeline as hf_pipeline
    batch = np.stack([circles.example(0, i)[0] for i in range(2)])
    out = controls.compute_control("depth", batch, model_path=str(tiny_models / "depth"))
    assert out.shape == (2, 32, 32, 1) and out.dtype == np.uint8
    # transformers' own depth-estimation pipeline on each image, scaled to 0..255.
    estimator = hf_pipeline("depth-estimation", model=str(tiny_models / "depth"))
    for image, ours in zip(batch, out):
        d = estimator(Image.fromarray(image))["predicted_depth"].float().numpy()
        expected = 255 * (d - d.min()) / (d.max() - d.min())
        assert d.shape == (32, 32) and np.abs(ours[..., 0] - expected).max() <= 1.0


def test_pose_through_a_saved_model(tiny_models):
    batch = np.stack([circles.example(0, i)[0] for i in range(2)])
    out = controls.compute_control("pose", batch, model_path=str(tiny_models / "pose"), threshold=0.0)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8 and out.any()
    # The skeleton: COCO's limbs in colour between the keypoints, nothing where a score is under the threshold.
    points = np.array([[2 + i, 2 + i % 5] for i in range(17)], float)  # in the top rows...
    points[5], points[7] = (5, 20), (25, 20)  # left shoulder -> left elbow: a horizontal limb
    drawn = controls.draw_skeleton(points, np.ones(17), (32, 32))
    assert drawn[20, 10:20].any(-1).all() and not drawn[28:, 28:].any()
    scores = np.ones(17)
    scores[7] = 0.1
    assert not controls.draw_skeleton(points, scores, (32, 32))[20, 14:20].any()


def test_model_paths_that_do_not_load_fail_in_one_line(tmp_path, tiny_models):
    for name, path, words in (("depth", "", "controls.model_path is empty"),
                              ("depth", str(tmp_path / "nothing"), "does not exist"),
                              ("depth", str(tmp_path), "Cannot load a depth model"),
                              ("depth", str(tiny_models / "pose"), "Cannot load a depth model"),
                              ("pose", str(tiny_models / "depth"), "Cannot load a pose model")):
        with pytest.raises(ValueError) as error:
            controls.control_fn(name, model_path=path)
        assert words in str(error.value) and "\n" not in str(error.value), str(error.value)


# ------------------------------------------------------------------------------------------------------ circles

def circles_data(examples=12, seed=0, resolution=32):
    return ml_collections.ConfigDict(dict(name="circles", source_dir="", resolution=resolution,
                                          circles=dict(examples=examples, seed=seed)))


def test_circles_are_deterministic_and_right():
    a, b = circles.example(3, 5), circles.example(3, 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(circles.example(4, 5)[0], a[0])
    for i in range(20):
        image, control, circle, background, (cx, cy, r) = circles.example(0, i)
        assert circle != background
        assert tuple(image[int(cy), int(cx)]) == circles.PALETTE[circle]  # the centre has the circle's colour
        assert tuple(image[0, 0]) == circles.PALETTE[background]
        assert circles.caption(circle, background) == f"a {circle} circle on a {background} background"
        # The control is the boundary of the region in the circle's colour...
        mask = (image == circles.PALETTE[circle]).all(-1)
        ring = control[..., 0] > 0
        np.testing.assert_array_equal(ring, mask & ~np.all([np.roll(mask, s, a) for s in (1, -1) for a in (0, 1)], 0))
        # ... and lies on the circle: within a pixel inside its radius.
        y, x = np.nonzero(ring)
        d = np.hypot(x + 0.5 - cx, y + 0.5 - cy)
        assert (d <= r).all() and (d > r - 1).all() and ring.sum() > 3 * r


def test_circles_builder(tmp_path):
    source = sources.load(circles_data(), str(tmp_path))
    assert len(source) == 12 and source.has_control and source.class_names == circles.COLOURS
    assert source.extra_labels == {"background": circles.COLOURS}
    again = sources.load(circles_data(), str(tmp_path / "again"))
    for i in range(len(source)):
        ex = source[i]
        image = np.asarray(images.decode(ex["image"]))
        circle, background = circles.COLOURS[ex["label"]], circles.COLOURS[ex["labels"]["background"]]
        assert ex["captions"] == [circles.caption(circle, background)]
        expected = circles.example(0, int(ex["key"].split("_")[1]))
        np.testing.assert_array_equal(image, expected[0])
        np.testing.assert_array_equal(np.asarray(images.decode(ex["control"], 1))[..., None], expected[1])
        assert ex["image"] == again[i]["image"]


# ------------------------------------------------------------------------------------------------------ prepare

def circles_config(controls_=("outline", "canny"), examples=12, **data):
    config = tiny_config(name="circles", max_examples=0, **data)
    config.data.circles.examples = examples
    config.data.controls = controls_
    return config


@pytest.fixture(scope="module")
def circles_prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("circles")
    config = circles_config(flip=True, rotation=20.0)
    return config, prepare.prepare(config, folder), folder


def test_prepare_stores_controls_and_the_loader_delivers_them(circles_prepared):
    config, manifest, _ = circles_prepared
    assert manifest["controls"] == ["outline", "canny"] and manifest["examples"] == 12
    assert manifest["control_shapes"] == {"outline": [32, 32, 1], "canny": [32, 32, 1]}
    assert manifest["control_options"]["canny"] == {"low": 100.0, "high": 200.0, "sigma": 1.0, "aperture": 3,
                                                    "l2_gradient": False}
    assert manifest["extra_labels"] == {"background": circles.COLOURS}
    rows = pipeline.read_prepared(manifest, range(12))
    for row in rows:
        expected = circles.example(0, int(row["key"].split("_")[1]))  # tfds shuffles: its index is not the seed's
        np.testing.assert_array_equal(row["control_outline"], expected[1])
        np.testing.assert_array_equal(row["control_canny"], controls.canny(expected[0]))
        assert circles.COLOURS[row["label_background"]] == expected[3]
    pipeline.check_compatible(manifest, config)
    loader = pipeline.make_loader(config, manifest, global_batch_size=12, seed=0,
                                  sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    batch = next(loader)
    assert batch["control_outline"].shape == batch["control_canny"].shape == (12, 32, 32, 1)
    # Flipped and rotated with the image (both interpolated alike): where the outline is drawn, the image is
    # nearer the circle's colour than the background's (a control not flipped with it would fall off the circle).
    for image, outline in zip(np.asarray(batch["image"]), np.asarray(batch["control_outline"])):
        background = image[0, 0]
        circle = np.median(image[np.abs(image - background).sum(-1) > 0.5], 0)
        ring = outline[..., 0] > 0
        on_ring = image[ring]
        assert ring.sum() > 10
        assert (np.abs(on_ring - circle).sum(-1) < np.abs(on_ring - background).sum(-1)).all()


def test_prepared_controls_must_match_the_config(circles_prepared):
    config, manifest, _ = circles_prepared
    config = circles_config(controls_=("outline",))
    with pytest.raises(ValueError) as error:
        pipeline.check_compatible(manifest, config)
    message = str(error.value)
    assert "data.controls=('outline',) but the data has controls ('canny', 'outline')" in message
    assert "\n" not in message
    assert prepare.prepared_dir(config, "/d") != manifest["dir"]  # other controls, another folder


def test_bad_controls_fail_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the controls were checked")
    monkeypatch.setattr(prepare.sources, "load", no_work)
    for names, words in ((("sketch",), "Unknown control type 'sketch'; use one of canny, depth"),
                         (("user",), "data.name=emoji has none"),
                         (("canny", "canny"), "names a control twice")):
        with pytest.raises(ValueError, match=words):
            prepare.prepare(tiny_config(controls=names), tmp_path)
    config = tiny_config(controls=("depth",))
    config.controls.model_path = str(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match="depth model path"):
        prepare.prepare(config, tmp_path)
    config = tiny_config(controls=("canny",))
    config.controls.canny_low = 5.0
    assert prepare.prepared_dir(config, tmp_path) != prepare.prepared_dir(tiny_config(controls=("canny",)), tmp_path)
    assert prepare.prepared_dir(tiny_config(), tmp_path).endswith("emoji_32px_minilm32_n512")


def test_latent_controls(tmp_path):
    save_tiny_vae(tmp_path / "vae")
    config = circles_config(controls_=("outline",), examples=4, flip=True)
    config.vae.path = str(tmp_path / "vae")
    manifest = prepare.prepare(config, tmp_path / "data")
    assert manifest["control_shapes"] == {"outline": [16, 16, 4]}
    from dit_jax.data import latents
    vae = latents.Vae(config.vae.path)
    row = pipeline.read_prepared(manifest, [0])[0]
    outline = np.repeat(circles.example(0, int(row["key"].split("_")[1]))[1], 3, -1)[None]
    np.testing.assert_allclose(row["control_outline"].astype(np.float32), vae.encode(outline)[0][0], atol=2e-3)
    np.testing.assert_allclose(row["control_outline_flip"].astype(np.float32), vae.encode(outline[:, :, ::-1])[0][0],
                               atol=2e-3)
    batch = next(pipeline.make_loader(config, manifest, global_batch_size=4, seed=0,
                                      sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])))
    assert batch["control_outline"].shape == (4, 16, 16, 4)


def test_image_folder_conditioning_images(tmp_path, caplog):
    folder = tmp_path / "images"
    os.makedirs(folder / "conditioning")
    rows = []
    for i, size in enumerate((40, 40, 24)):
        image = np.zeros((40, 40, 3), np.uint8)
        image[10:30, 10 + i:30 + i] = 255
        Image.fromarray(image).save(folder / f"x{i}.png")
        edges = np.zeros((size, size), np.uint8)
        edges[:size // 2] = 255  # the top half
        Image.fromarray(edges).save(folder / "conditioning" / f"x{i}.png")
        rows.append({"file_name": f"x{i}.png", "text": f"square {i}", "conditioning_image": f"conditioning/x{i}.png"})
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "lonely.png")
    rows.append({"file_name": "lonely.png", "text": "no control"})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = tiny_config(name="image_folder", source_dir=str(folder), max_examples=0, controls=("user", "silhouette"))
    with caplog.at_level(logging.WARNING):
        manifest = prepare.prepare(config, tmp_path / "data")
    resized = [r for r in caplog.records if "another size" in r.getMessage()]
    assert len(resized) == 1 and "x2.png" in resized[0].getMessage()  # said once
    # The conditioning images are controls, not examples; the image without one is skipped and counted.
    assert manifest["examples"] == 3 and manifest["skipped"] == 1
    assert manifest["skipped_items"][0] == {"key": "lonely.png", "error": "ValueError: no conditioning image"}
    assert manifest["control_shapes"] == {"user": [32, 32, 3], "silhouette": [32, 32, 1]}
    for row in pipeline.read_prepared(manifest, range(3)):
        user = row["control_user"]
        assert user.shape == (32, 32, 3) and user[:14].min() > 200 and user[18:].max() < 50
        assert row["control_silhouette"][16, 16, 0] == 255 and row["control_silhouette"][2, 2, 0] == 0
    config.controls.user_name = "depth"
    config.data.controls = ("depth",)
    renamed = prepare.prepare(config, tmp_path / "data")
    assert renamed["controls"] == ["depth"] and renamed["control_options"] == {"depth": {"given": True}}
    before = {r["key"]: r["control_user"] for r in pipeline.read_prepared(manifest, range(3))}
    for row in pipeline.read_prepared(renamed, range(3)):
        np.testing.assert_array_equal(row["control_depth"], before[row["key"]])
