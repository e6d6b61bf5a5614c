"""`evaluate --metrics=views` (dit_jax/evaluation/views.py): the view judges read true renders, the set scores
are high on true sets and low on shuffled or mislabelled ones, PSNR and SSIM against hand computations, the copy
baseline, evaluate end to end on toy multi-view runs, and init_from an image run into a multi-view model."""

import importlib.util
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit_jax.data import prepare, sources
from dit_jax.evaluate import check_metrics, default_metrics, evaluate
from dit_jax.evaluation import views
from dit_jax.models.pretrained import abstract_model, build_model, load_matching_weights
from dit_jax.training import init_from
from dit_jax.utils import cameras
from test_sample import save_random_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDE = 16
RING = dict(elevation=30.0, random_elevation=10.0, distance=3.0)  # configs/multiview_shapes.py's cameras


def multiview_config(arg="runlocal,views=2"):
    spec = importlib.util.spec_from_file_location("multiview_shapes", os.path.join(ROOT, "configs",
                                                                                   "multiview_shapes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.data.resolution, c.data.shapes3d.examples = SIDE, 6
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("views_data"))


@pytest.fixture(scope="module")
def judges(data_dir):
    """The view judges at 16 px, trained small (seconds) and cached where evaluate looks for them. (At 32 px on
    8,000 renders, evaluate's own, they read 100% of objects and 82% of azimuths, 93% within 5 degrees of a bin's
    centre, where a ring of 4 or 8 cameras sits.)"""
    return views.load_or_train(data_dir, SIDE, **RING, count=1000, test_count=200, steps=150, batch_size=128,
                               lr=5e-3)


@pytest.fixture(scope="module")
def true_sets():
    """24 objects the data never drew, each seen by 4 cameras at 0, 90, 180 and 270 degrees."""
    options = sources.shapes3d_options(multiview_config("views=4").data)
    return views.held_out(dict(options, num_examples=1000), 24)


def test_judges_read_held_out_renders_and_are_cached(judges, data_dir, monkeypatch):
    assert judges["object"][1] >= 0.85  # shape and colour: 48 classes
    assert judges["azimuth"][1] >= 0.4  # 8 bins (chance 1/8), from the light alone; small and fast here
    monkeypatch.setattr(views, "train", lambda *a, **k: pytest.fail("the cached judges were trained again"))
    again = views.load_or_train(data_dir, SIDE, **RING)
    assert again["object"][1] == judges["object"][1]
    x = views.renders(8, 9, SIDE, **RING)[0]
    np.testing.assert_array_equal(views.predict(again["azimuth"][0], x), views.predict(judges["azimuth"][0], x))


def test_azimuths_and_bins():
    poses = np.stack([cameras.look_at(20.0, a, 3.0) for a in (0.0, 44.0, 90.0, 200.0, 338.0)])
    np.testing.assert_allclose(views.azimuths(poses), [0, 44, 90, 200, 338], atol=1e-4)
    np.testing.assert_allclose(views.azimuths(poses.reshape(5, 16)), views.azimuths(poses))
    assert views.azimuth_bin(views.azimuths(poses)).tolist() == [0, 1, 2, 4, 0]


def test_true_sets_score_high_and_shuffled_or_wrong_ones_low(judges, true_sets):
    t = true_sets
    true = views.set_scores(t["views"], t["shapes"], t["colours"], t["poses"], judges)
    assert true["views_agree"] >= 0.75 and true["views_match"] >= 0.75 and true["camera_adherence"] >= 0.4
    n = len(t["views"])
    mixed = np.stack([t["views"][(np.arange(n) + j) % n, j] for j in range(4)], 1)  # view j of object i + j
    assert views.set_scores(mixed, t["shapes"], t["colours"], t["poses"], judges)["views_agree"] <= 0.3
    wrong = views.set_scores(t["views"], t["shapes"][1:] + t["shapes"][:1], t["colours"], t["poses"], judges)
    assert wrong["views_match"] <= 0.2 and wrong["views_match/colour"] == true["views_match/colour"]
    turned = views.set_scores(t["views"], t["shapes"], t["colours"], np.roll(t["poses"], 1, axis=1), judges)
    assert turned["camera_adherence"] <= 0.25  # each view held against its neighbour's camera, 90 degrees away
    with pytest.raises(ValueError, match=r"uint8 \(N, V, H, W, 3\)"):
        views.set_scores(t["views"][0], t["shapes"], t["colours"], t["poses"], judges)


def ssim_by_hand(x, y, data_range=255.0, k=11, sigma=1.5):
    """SSIM the slow way: every window position's weighted statistics, one channel at a time."""
    g = np.exp(-(np.arange(k) - (k - 1) / 2) ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for c in range(x.shape[-1]):
        for i in range(x.shape[0] - k + 1):
            for j in range(x.shape[1] - k + 1):
                a, b = x[i:i + k, j:j + k, c].astype(float), y[i:i + k, j:j + k, c].astype(float)
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb, cab = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
                scores.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(scores)


def test_psnr_and_ssim_identities_and_hand_computations():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)
    assert np.all(np.isinf(views.psnr(x, x))) and np.allclose(views.ssim(x, x), 1.0)
    zeros, tens = np.zeros((8, 8, 3)), np.full((8, 8, 3), 10.0)
    assert views.psnr(zeros, tens) == pytest.approx(10 * np.log10(255 ** 2 / 100))
    # Flat images: no variance, so SSIM is its luminance term alone, (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 100.0, 140.0, (0.01 * 255) ** 2
    assert views.ssim(np.full((12, 12, 1), a), np.full((12, 12, 1), b)) == pytest.approx(
        (2 * a * b + c1) / (a * a + b * b + c1))
    got = views.ssim(x, y)
    np.testing.assert_allclose(got, [ssim_by_hand(x[i], y[i]) for i in range(2)], rtol=1e-9)
    assert views.ssim(y, x) == pytest.approx(got) and np.all(got < 0.99)
    noisier = np.clip(x + rng.normal(0, 60, x.shape), 0, 255).astype(np.uint8)
    assert np.all(views.ssim(x, noisier) < got) and np.all(views.psnr(x, noisier) < views.psnr(x, y))
    # Images smaller than the window: the window shrinks to the largest odd size that fits (7 on 8 px).
    np.testing.assert_allclose(views.ssim(x[:, :8, :8], y[:, :8, :8]),
                               [ssim_by_hand(x[i, :8, :8], y[i, :8, :8], k=7) for i in range(2)], rtol=1e-9)


def test_novel_scores_and_the_copy_baseline(true_sets):
    truth = true_sets["views"][:6]
    perfect = views.novel_scores(truth, truth)
    assert np.isinf(perfect["novel_psnr"]) and perfect["novel_ssim"] == pytest.approx(1.0)
    by_hand = np.mean([views.psnr(truth[i, 0], truth[i, j]) for i in range(6) for j in (1, 2, 3)])
    assert perfect["copy_psnr"] == pytest.approx(by_hand)
    assert perfect["copy_ssim"] == pytest.approx(np.mean([views.ssim(truth[i, 0], truth[i, j]) for i in range(6)
                                                          for j in (1, 2, 3)]))
    copied = views.novel_scores(np.repeat(truth[:, :1], 4, axis=1), truth)  # a model that copies its input
    assert copied["psnr_gain"] == pytest.approx(0.0) and copied["novel_ssim"] == pytest.approx(copied["copy_ssim"])
    with pytest.raises(ValueError, match="V >= 2"):
        views.novel_scores(truth[:, :1], truth[:, :1])


# ---------------------------------------------------------------------------------------------------- evaluate

@pytest.fixture(scope="module")
def runs(data_dir, judges, tmp_path_factory):  # pylint: disable=unused-argument
    """A text-to-views run and a novel-view run on 6 prepared objects of 2 views, random toy models exported."""
    root, out = tmp_path_factory.mktemp("view_runs"), {}
    for name, arg in (("text", "runlocal,views=2"), ("novel", "runlocal,views=2,novel")):
        config = multiview_config(arg)
        config.diffusion.prediction = "eps"
        if name == "text":
            prepare.prepare(config, data_dir)
        model = dict(multiview=True, frames=2, novel_view=name == "novel", input_size=SIDE, patch_size=4,
                     in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=0, text_dim=384, text_len=16,
                     text_pooled=True)
        save_random_model(model, root / name / "export")
        (root / name / "run.json").write_text(json.dumps({"config": config.to_dict()}))
        out[name] = str(root / name)
    return out


def test_multiview_runs_are_scored_on_views():
    manifest = dict(dataset="shapes3d", space="pixel", frames=4, text={}, examples=6)
    assert default_metrics(manifest, None) == ["views"]
    with pytest.raises(ValueError, match="scored on its sets of views: pass --metrics=views"):
        check_metrics(["motion"], manifest, None)
    with pytest.raises(ValueError, match="are VAE latents"):
        check_metrics(["views"], dict(manifest, space="latent"), None)
    with pytest.raises(ValueError, match="scores multi-view runs"):
        check_metrics(["views"], dict(manifest, dataset="moving_fashion"), None)


@pytest.mark.parametrize("name", ["text", "novel"])
def test_evaluate_writes_the_view_metrics(runs, data_dir, name, tmp_path):
    out = str(tmp_path / "eval")
    result, = evaluate(runs[name], data_dir, samplers=[("ddim", 2)], num_samples=3, metrics=["views"],
                       batch_size=8, out=out)
    assert json.load(open(os.path.join(out, "metrics.json")))[0] == json.loads(json.dumps(result))
    for key in ("views_agree", "views_match", "camera_adherence", "views_agree_real", "camera_adherence_real"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["views_match_real"] >= 2 / 3  # the true renders, as the judges read them
    assert ("novel_psnr" in result) == (name == "novel")
    if name == "novel":
        assert result["copy_psnr"] > 5 and result["psnr_gain"] == pytest.approx(result["novel_psnr"] -
                                                                                 result["copy_psnr"])
    assert os.path.exists(os.path.join(out, "ddim_2.gif"))


# ---------------------------------------------------------------------------------------------------- init_from

IMAGE = dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=3)


@pytest.mark.parametrize("novel", [False, True])
def test_init_from_an_image_run_leaves_the_camera_mlp_fresh(tmp_path, novel):
    """The image DiT's weights load into a multi-view model (a novel-view one's patch kernel padded with zeros for
    the given view); with one view it then gives the image DiT's output, whatever the camera and given view."""
    save_random_model(IMAGE, tmp_path / "export")
    kwargs = dict(IMAGE, multiview=True, frames=1, novel_view=novel)
    weights = init_from.read(str(tmp_path), kwargs)
    init_from.check_weights(str(tmp_path), abstract_model(kwargs), weights)
    assert not any(n.startswith("camera_embedder.") for n in weights)
    built = lambda config, w: nnx.jit(lambda: load_matching_weights(build_model(config), w))()  # one compile
    mv, image = built(kwargs, weights), built(IMAGE, init_from.read(str(tmp_path), IMAGE))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 1, 8, 8, 3)), jnp.float32)
    t, y = jnp.array([5, 500]), jnp.array([0, 2])
    extra = dict(given=jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)) if novel else {}
    poses = jnp.asarray(rng.standard_normal((2, 1, 16)), jnp.float32)
    got = nnx.jit(lambda m, *a, **k: m(*a, **k))(mv, x, t, y, cameras=poses, **extra)
    np.testing.assert_allclose(got[:, 0], nnx.jit(lambda m, *a: m(*a))(image, x[:, 0], t, y), atol=1e-5)
