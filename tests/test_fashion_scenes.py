"""fashion_scenes (issue 12): the scenes, their prepared layouts, the loader, and the layout and style judges."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit_jax.data import fashion_mnist, fashion_scenes, pipeline, prepare, sources
from dit_jax.evaluate import Judge, check_metrics, default_metrics
from dit_jax.evaluation import classifier, layout, style

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR),
                                reason="apt-get install dataset-fashion-mnist")
K = fashion_scenes.MAX_OBJECTS


def recipe(arg=None):
    spec = importlib.util.spec_from_file_location("fashion_scenes_recipe", os.path.join(ROOT, "configs",
                                                                                        "fashion_scenes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def as_arrays(scenes):
    """Scenes -> images (N, H, W, 3), boxes (N, K, 4), mask (N, K), labels (N, K; -1 masked), styles (N,)."""
    n = len(scenes)
    boxes, mask, labels = np.zeros((n, K, 4), np.float32), np.zeros((n, K), bool), np.full((n, K), -1)
    for i, s in enumerate(scenes):
        m = len(s["labels"])
        boxes[i, :m], mask[i, :m], labels[i, :m] = s["boxes"], True, s["labels"]
    return np.stack([s["image"] for s in scenes]), boxes, mask, labels, np.asarray([s["style"] for s in scenes])


@pytest.fixture(scope="module")
def real():
    return fashion_scenes.scenes("test", range(96))


class NearestMean(nnx.Module):
    """A Fashion-MNIST judge that needs no training (the trained CNN's compile alone would cost seconds): the
    class of the nearest of the ten class means of the training images, about 68% right on the test items."""

    def __init__(self, images, labels):
        flat = images.reshape(len(images), -1).astype(np.float32)
        self.means = nnx.Variable(jnp.asarray(np.stack([flat[labels == k].mean(0) for k in range(10)])))

    def __call__(self, images):
        flat = jnp.asarray(images, jnp.float32).reshape(images.shape[0], -1)
        return -((flat[:, None] - self.means[...][None]) ** 2).sum(-1)


@pytest.fixture(scope="module")
def judge():
    """(judge, its accuracy on the real Fashion-MNIST test items), as classifier.load_or_train returns them."""
    model = NearestMean(*classifier.load_split("train"))
    test_images, test_labels = classifier.load_split("test")
    return model, float(np.mean(classifier.predict(model, test_images) == test_labels))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The recipe's data, 24 training scenes, prepared with MiniLM (loaded once for the module)."""
    from dit_jax.text import encoders  # pylint: disable=import-outside-toplevel
    data_dir = str(tmp_path_factory.mktemp("scenes"))
    config = recipe()
    config.data.resolution = 64  # the builder's default canvas (the recipe trains at 32)
    config.data.fashion_scenes.update(train_examples=24, test_examples=4)
    loaded, load = [], encoders.load
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(encoders, "load", lambda *args, **kwargs: loaded.append(load(*args, **kwargs)) or loaded[-1])
        manifest = prepare.prepare(config, data_dir)
    phrases = [fashion_scenes.phrase(k) for k in range(10)]
    embeddings = dict(zip(phrases, loaded[0].encode(phrases)[2].astype(np.float32)))  # each phrase alone
    return config, manifest, data_dir, embeddings


def test_scenes_are_deterministic_and_hold_what_their_layout_says(real):
    again = fashion_scenes.scenes("test", range(8))
    other_seed = fashion_scenes.scenes("test", range(8), seed=1)
    assert all((a["image"] == b["image"]).all() and a["caption"] == b["caption"] for a, b in zip(real, again))
    assert sum((a["image"] != b["image"]).any() for a, b in zip(real, other_seed)) == 8
    assert (real[0]["image"] != fashion_scenes.scenes("train", [0])[0]["image"]).any()
    counts, styles = {len(s["labels"]) for s in real}, {s["style"] for s in real}
    assert counts == {1, 2, 3} and styles == set(range(len(fashion_scenes.STYLES)))
    for s in real:
        image, boxes, name = s["image"].astype(int), s["boxes"], fashion_scenes.STYLES[s["style"]]
        pixels = np.round(boxes * 64).astype(int)
        inside = np.zeros((64, 64), bool)
        for a, (x0, y0, x1, y1) in enumerate(pixels):
            assert 1 <= x0 < x1 <= 63 and 1 <= y0 < y1 <= 63
            for x0b, y0b, x1b, y1b in pixels[a + 1:]:  # a pixel apart
                assert x0 > x1b or x0b > x1 or y0 > y1b or y0b > y1
            inside[y0:y1, x0:x1] = True
        background = 255 if name == "inverted" else 0
        assert (image[~inside] == background).all()  # everything drawn lies in a box
        if name == "red tint":
            assert (image[..., 1:] <= image[..., :1] * 0.25 + 1).all() and image[..., 0].max() > 100
        if name == "blue outline":
            assert (image == fashion_scenes.BLUE).all(-1).any()
        # what is where: objects left to right, each phrase with its box's place on a 3x3 grid
        centres = (boxes[:, 0] + boxes[:, 2]) / 2
        assert (np.diff(centres) >= 0).all()
        parts = [f"{fashion_scenes.phrase(k)} {fashion_scenes.where(b)}" for k, b in zip(s["labels"], boxes)]
        assert s["caption"].replace(" and ", ", ").split(", ") == parts
        for part, (cx, cy) in zip(parts, zip(centres, (boxes[:, 1] + boxes[:, 3]) / 2)):
            assert ("left" in part) == (cx < 1 / 3) and ("right" in part) == (cx > 2 / 3)
            assert ("top" in part) == (cy < 1 / 3) and ("bottom" in part) == (cy > 2 / 3)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert s["label"] == s["labels"][int(np.argmax(areas))]
    assert fashion_scenes.phrase(9) == "an ankle boot" and fashion_scenes.phrase(7) == "a sneaker"


def test_missing_files_and_bad_sizes_fail_in_one_line(tmp_path):
    config = recipe()
    config.data.source_dir = str(tmp_path)
    with pytest.raises(ValueError, match="idx files missing in .*apt-get install dataset-fashion-mnist"):
        sources.load(config.data, str(tmp_path))
    config.data.update(source_dir="", resolution=8)
    with pytest.raises(ValueError, match="data.resolution >= 16; got 60000, 10000 and 8"):
        sources.load(config.data, str(tmp_path))


def test_prepared_records_hold_the_layout_per_the_interface(prepared):
    config, manifest, _, embedding = prepared
    assert manifest["styles"] == fashion_scenes.STYLES and manifest["layout_max_boxes"] == K == 3
    assert manifest["image_shape"] == [64, 64, 3] and manifest["examples"] == 24
    records = pipeline.read_prepared(manifest, range(24))
    for r in records:
        split, index = r["key"].split("_")
        s = fashion_scenes.scenes(split, [int(index)])[0]  # the builder's scene, drawn again
        n = len(s["labels"])
        np.testing.assert_array_equal(r["image"], s["image"])
        assert [str(c) for c in r["captions"]] == [s["caption"]] and r["style"] == s["style"]
        assert r["label"] == s["label"]
        assert r["layout_boxes"].shape == (K, 4) and r["layout_mask"].dtype == bool
        np.testing.assert_array_equal(r["layout_boxes"][:n], s["boxes"])
        assert r["layout_mask"].tolist() == [True] * n + [False] * (K - n)
        assert r["layout_labels"].tolist() == s["labels"] + [-1] * (K - n)
        assert not r["layout_boxes"][n:].any() and not r["layout_embeddings"][n:].any()
        for phrase, e in zip(s["phrases"], r["layout_embeddings"]):  # the run's encoder, pooled as captions are
            np.testing.assert_allclose(e.astype(np.float32), embedding[phrase], atol=2e-3)
    pipeline.check_compatible(manifest, config)
    assert pipeline.model_kwargs(manifest, config)["num_styles"] == 4
    assert pipeline.model_kwargs(manifest, config)["layout_max_boxes"] == 3


@pytest.mark.parametrize("key, value, message", [
    ("model.layout_max_boxes", 4, "model.layout_max_boxes=4 but the data has 3 boxes"),
    ("model.num_styles", 3, "model.num_styles=3 but the data has 4 (plain, inverted, red tint, blue outline)"),
    ("data.rotation", 5.0, "data.rotation and data.color_jitter are off"),
    ("data.color_jitter", 0.1, "data.rotation and data.color_jitter are off"),
])
def test_a_config_that_does_not_fit_the_data_fails_in_one_line(prepared, key, value, message):
    config, manifest, *_ = prepared
    config = config.copy_and_resolve_references()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ValueError) as error:
        pipeline.check_compatible(manifest, config)
    assert message in str(error.value) and "\n" not in str(error.value)
    plain = {k: v for k, v in manifest.items() if k not in ("styles", "layout_max_boxes")}  # data from before
    with pytest.raises(ValueError, match="model.num_styles=4 but the data has no styles; "
                                         "model.layout_max_boxes=3 but the data has no layouts"):
        pipeline.check_compatible(plain, recipe())


def test_loader_yields_the_layout_and_mirrors_boxes_with_flipped_images(prepared):
    config, manifest, *_ = prepared
    config = config.copy_and_resolve_references()
    config.data.flip = True  # captions without left or right are flipped at random
    loader = pipeline.make_loader(config, manifest, global_batch_size=24, seed=0,
                                  sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    batch = {k: np.asarray(v) for k, v in next(loader).items()}
    shapes = {k: (v.shape, v.dtype) for k, v in batch.items() if k.startswith(("layout", "style"))}
    assert shapes == {"style": ((24,), np.int32), "layout_boxes": ((24, K, 4), np.float32),
                      "layout_mask": ((24, K), bool), "layout_embeddings": ((24, K, 384), np.float32)}
    images = np.round((batch["image"] + 1) * 127.5).astype(np.uint8)
    stored = [r["image"] for r in pipeline.read_prepared(manifest, range(24))]
    flipped = [i for i, image in enumerate(images)
               if not any((image == s).all() for s in stored) and any((image == s[:, ::-1]).all() for s in stored)]
    assert flipped and len(flipped) < 24
    # Every garment lies in its box, flipped or not; the mirrored boxes of a flipped image would not fit unflipped.
    np.testing.assert_allclose(layout.ink_inside(images, batch["layout_boxes"], batch["layout_mask"]), 1.0, rtol=1e-6)
    unflipped = images[flipped][:, :, ::-1]
    assert layout.ink_inside(unflipped, batch["layout_boxes"][flipped], batch["layout_mask"][flipped]).min() < 0.99


def test_real_scenes_score_high_and_wrong_layouts_low(real, judge):
    model, judge_accuracy = judge
    images, boxes, mask, labels, _ = as_arrays(real)
    right = layout.scores(images, boxes, mask, labels, model, fashion_scenes.CLASSES)
    assert right["layout_box_accuracy"] >= judge_accuracy - 0.07 and judge_accuracy > 0.6
    assert right["layout_ink_inside"] > 0.999
    assert set(right["layout_box_accuracy_per_class"]) <= set(fashion_scenes.CLASSES)
    shifted = boxes.copy()
    shifted[..., [0, 2]] = np.clip(shifted[..., [0, 2]] + np.where(shifted[..., :1] < 0.4, 0.45, -0.45), 0, 1)
    wrong = layout.scores(images, shifted * mask[..., None], mask, labels, model)
    assert wrong["layout_ink_inside"] < 0.5 and wrong["layout_box_accuracy"] < 0.35
    # Swapped: several garments of different classes, each box given another's place.
    several = np.array([len(set(s["labels"])) == len(s["labels"]) > 1 for s in real])
    swapped = boxes[several].copy()
    for b, m in zip(swapped, mask[several]):
        b[:m.sum()] = np.roll(b[:m.sum()], 1, axis=0)
    swap = layout.scores(images[several], swapped, mask[several], labels[several], model)
    assert swap["layout_box_accuracy"] < 0.35
    blank = layout.scores(np.zeros_like(images[:4]), boxes[:4], mask[:4], labels[:4], model)
    assert blank["layout_ink_inside"] == 0.0


def test_ink_reads_every_style_as_the_plain_garment():
    """The judge sees the same garments whatever their style (blue outlines read as full ink)."""
    plain = layout.ink(np.stack([s["image"] for s in fashion_scenes.scenes("test", range(6), style=0)]))
    for k in range(1, len(fashion_scenes.STYLES)):
        styled = np.stack([s["image"] for s in fashion_scenes.scenes("test", range(6), style=k)])
        ink = layout.ink(styled)
        if fashion_scenes.STYLES[k] == "blue outline":
            outline = (styled == fashion_scenes.BLUE).all(-1)
            assert outline.any() and (ink[outline] == 1.0).all()
            ink, plain_k = ink[~outline], plain[~outline]
        else:
            plain_k = plain
        np.testing.assert_allclose(ink, plain_k, atol=1.01 / 255)


def test_style_judge_scores_real_scenes_high_and_other_styles_low(tmp_path, monkeypatch):
    """Trained for 80 steps on 32 px scenes (evaluate trains 300 at the run's resolution)."""
    model, accuracy = style.train(32, train_examples=256, test_examples=64, steps=80, batch_size=32, lr=1e-2)
    assert accuracy >= 0.95
    scenes = fashion_scenes.scenes("test", range(64, 160), size=32)  # others than its test scenes
    images, styles = np.stack([s["image"] for s in scenes]), np.asarray([s["style"] for s in scenes])
    predicted = style.predict(model, images)
    assert np.mean(predicted == styles) >= 0.95
    assert np.mean(predicted == (styles + 1) % 4) <= 0.05  # asked for another style
    calls = []
    monkeypatch.setattr(style, "train", lambda size, source_dir: calls.append(size) or (model, accuracy))
    first = style.load_or_train(str(tmp_path), 32)
    again, again_accuracy = style.load_or_train(str(tmp_path), 32)
    assert calls == [32] and first[1] == again_accuracy == accuracy
    np.testing.assert_array_equal(style.predict(again, images), predicted)


def test_evaluate_judges_layout_and_style_against_each_examples_request(prepared, judge, monkeypatch):
    config, manifest, data_dir, _ = prepared
    assert default_metrics(manifest, None) == ["fid", "layout", "style"]
    with pytest.raises(ValueError, match="--metrics=layout has judges for fashion_scenes only"):
        check_metrics(["layout"], dict(manifest, dataset="fashion_mnist"), None)
    monkeypatch.setattr(classifier, "load_or_train", lambda data_dir, source_dir="": judge)
    known_answers = lambda m, images: np.asarray(judged_styles)  # a style judge whose answers the test sets
    monkeypatch.setattr(style, "load_or_train", lambda data_dir, size, source_dir="": (None, 0.99))
    monkeypatch.setattr(style, "predict", known_answers)
    records = pipeline.read_prepared(manifest, range(24))
    images = np.stack([r["image"] for r in records])
    judged_styles = [r["style"] for r in records]
    judged_styles[:6] = [(s + 1) % 4 for s in judged_styles[:6]]
    scorer = Judge(["layout", "style"], manifest, data_dir, np.arange(24), [], None)
    result = scorer(images, [], [])
    boxes, mask, labels = (np.stack([r[k] for r in records]) for k in ("layout_boxes", "layout_mask", "layout_labels"))
    expected = layout.scores(images, boxes, mask, labels, judge[0], manifest["class_names"])
    assert {k: result[k] for k in expected} == expected and result["layout_ink_inside"] > 0.999
    assert result["style_accuracy"] == 18 / 24 and result["style_classifier_test_accuracy"] == 0.99
    reversed_images = scorer(images[::-1].copy(), [], [])  # each sample against another example's layout
    assert reversed_images["layout_box_accuracy"] < result["layout_box_accuracy"] - 0.2


def test_recipe_loads_and_names_the_conditions():
    c = recipe()
    assert (c.data.name, c.data.resolution, c.data.flip, c.model.patch_size) == ("fashion_scenes", 32, False, 4)
    assert (c.model.num_styles, c.model.layout_max_boxes, c.model.num_classes) == (4, 3, -1)
    assert c.model.layout_gate_init == 1.0  # trained from scratch: the layout path starts open
    assert c.model.layout_regions  # each image token also carries the boxes over it (models/layout.py)
    assert c.model.style_dropout_prob == c.model.layout_dropout_prob == 0.1
    toy = recipe("runlocal")
    assert (toy.data.resolution, toy.data.max_examples, toy.optim.restart_period) == (32, 512, 160)


def test_a_toy_run_trains_on_scenes_is_evaluated_and_sampled_with_their_styles_and_boxes(prepared, judge, tmp_path,
                                                                                         monkeypatch):
    """configs/fashion_scenes.py:runlocal on the prepared 24 scenes (64 px, patch 8, 2 steps): the loader's style
    and layout reach the model in the train step, `evaluate --metrics=layout,style` samples each example with
    its own style and boxes, and `sample --guidance=text=4,style=3,layout=2 --box=...` draws the boxes on its grid."""
    from PIL import Image
    from dit_jax import sample as sample_cli, sampling, train
    from dit_jax.evaluate import evaluate
    from dit_jax.training import sharding, trainer as trainer_lib
    from dit_jax.utils.visualization import COLORS
    config, manifest, data_dir, _ = prepared
    toy = recipe("runlocal")
    toy.data, toy.text = config.data, config.text  # the fixture's prepared scenes
    toy.model.patch_size = 8
    toy.batch_size, toy.steps, toy.optim.warmup_steps = 8, 2, 0
    toy.sample.every, toy.log.every, toy.checkpoint.every = 0, 1, 0
    created, create = [], trainer_lib.create
    monkeypatch.setattr(trainer_lib, "create", lambda *args: created.append(create(*args)) or created[-1])
    workdir = str(tmp_path / "run")
    state = train.train(toy, workdir, data_dir)

    # The train step's loss reads the batch's layout and style: the grounding tokens' weights get a gradient
    # (the gates moved in the 2 steps), none when every box is masked; another style changes the loss.
    trainer = created[0]
    loader = pipeline.make_loader(toy, manifest, global_batch_size=8, seed=0,
                                  sharding=sharding.batch_sharding(trainer.mesh))
    batch = dict(next(loader))
    loss_and_grad = jax.jit(jax.value_and_grad(lambda p, b: trainer_lib.loss_fn(trainer, p, b, jax.random.key(1))))
    params = state["params"]
    gates = [v for path, v in jax.tree_util.tree_leaves_with_path(params) if "alpha" in jax.tree_util.keystr(path)]
    assert gates and all(float(g) != toy.model.layout_gate_init for g in gates)

    def grounding_grad_norm(grads):
        return sum(float(jnp.abs(v).sum()) for path, v in jax.tree_util.tree_leaves_with_path(grads)
                   if "grounding" in jax.tree_util.keystr(path))
    loss, grads = loss_and_grad(params, batch)
    assert grounding_grad_norm(grads) > 0
    _, no_boxes = loss_and_grad(params, dict(batch, layout_mask=jnp.zeros_like(batch["layout_mask"])))
    assert grounding_grad_norm(no_boxes) == 0
    other_style, _ = loss_and_grad(params, dict(batch, style=(batch["style"] + 1) % 4))
    assert float(other_style) != float(loss)

    # evaluate: each example's own style and boxes reach the sampler, under the --guidance weights.
    seen, encode = [], sampling.encode_conditions
    monkeypatch.setattr(sampling, "encode_conditions", lambda *args: seen.append(encode(*args)) or seen[-1])
    monkeypatch.setattr(classifier, "load_or_train", lambda data_dir, source_dir="": judge)
    monkeypatch.setattr(style, "load_or_train", lambda data_dir, size, source_dir="": (None, 1.0))
    monkeypatch.setattr(style, "predict", lambda model, images: np.zeros(len(images), int))
    with pytest.raises(ValueError, match="Guidance weight text='four' is not a number"):
        evaluate(workdir, data_dir, samplers=[("ddim", 2)], num_samples=4, guidance="text=four")
    result, = evaluate(workdir, data_dir, samplers=[("ddim", 2)], num_samples=8, metrics=["layout", "style"],
                       batch_size=8, guidance="text=4,style=3,layout=2")
    records = pipeline.read_prepared(manifest, np.sort(np.random.default_rng(0).choice(24, 8, replace=False)))
    cond = seen[-1]
    np.testing.assert_array_equal(cond["style"], [r["style"] for r in records])
    for key in ("layout_boxes", "layout_mask", "layout_embeddings"):
        np.testing.assert_array_equal(cond[key], np.stack([r[key] for r in records]).astype(cond[key].dtype))
    assert result["guidance"] == "text=4,style=3,layout=2" and 0 <= result["layout_box_accuracy"] <= 1
    assert result["style_accuracy"] == np.mean([r["style"] == 0 for r in records])
    assert 0 <= result["layout_ink_inside"] <= 1 and (tmp_path / "run" / "eval" / "metrics.json").exists()

    # sample: one style and one box for every image, the box drawn on the grid only.
    out = str(tmp_path / "samples.png")
    images, _ = sample_cli.run(sample_cli.Options(
        workdir=workdir, data_dir=data_dir, prompt=["a bag on the left"], classes=["bag"], style="red tint",
        num_images=2, boxes=["0.05,0.25,0.45,0.75:a bag"], guidance="text=4,style=3,layout=2", sampler="ddim", steps=2,
        batch_size=8, out=out))
    assert seen[-1]["style"].tolist() == [2] and seen[-1]["layout_mask"].tolist() == [[True, False, False]]
    grid = np.asarray(Image.open(out).convert("RGB"))
    color = tuple(int(COLORS[0][i:i + 2], 16) for i in (1, 3, 5))
    for cell in (0, 128):  # 64 px pictures enlarged 2x: the box's left edge at x = 6.4, rows 32 to 96
        assert (grid[40:90, cell + 6:cell + 9] == color).all(-1).any(-1).all()
    np.testing.assert_array_equal(np.asarray(Image.open(str(tmp_path / "samples_0000.png"))), images[0])
    assert not (images == color).all(-1).any()


def test_per_example_conditions_replace_the_composition_and_bad_ones_fail_in_one_line():
    from dit_jax import sampling
    setup = sampling.Setup(None, dict(num_styles=4, layout_max_boxes=K, text_dim=8), None, None, None, "eps", [])
    records = [dict(style=np.int64(s), layout_boxes=np.full((K, 4), 0.1 * s, np.float16),
                    layout_mask=np.arange(K) < s, layout_embeddings=np.full((K, 8), s, np.float16)) for s in (1, 3)]
    own = sampling.example_conditions(setup, records)
    cond = sampling.encode_conditions(setup, ["", ""], None, sampling.Composition(style=0), own)
    assert cond["style"].tolist() == [1, 3] and cond["layout_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert cond["layout_boxes"].dtype == np.float32 and cond["layout_embeddings"][1].min() == 3
    with pytest.raises(ValueError, match="no layout_boxes, layout_mask, layout_embeddings for this model's"):
        sampling.example_conditions(setup, [dict(style=1)])
    with pytest.raises(ValueError, match="The records hold 2 boxes but the model reads 3"):
        sampling.example_conditions(setup, [{k: v[:2] if v.ndim else v for k, v in r.items()} for r in records])
    with pytest.raises(ValueError, match="Per-condition input 'style' \\(3 rows\\) is not one of"):
        sampling.encode_conditions(setup, ["", ""], None, None, dict(style=np.zeros(3)))
