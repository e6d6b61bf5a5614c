"""`python -m dit_jax.evaluate` on a Fashion-MNIST slice: the judges, their wiring, outputs and one-line errors."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit_jax import sampling
from dit_jax.data import fashion_mnist, pipeline, prepare
from dit_jax.evaluate import Judge, default_metrics, evaluate, parse_samplers
from dit_jax.evaluation import classifier, retrieval
from dit_jax.training.recipe import base_config
from test_data import write_idx_slice
from test_sample import save_random_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR),
                                reason="apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A Fashion-MNIST slice prepared with MiniLM, and a run on it with a random toy model exported."""
    root = tmp_path_factory.mktemp("evaluate")
    idx, data_dir, workdir = root / "idx", str(root / "data"), root / "run"
    write_idx_slice(idx, n_train=32, n_test=16)
    config = base_config()
    config.data.update(name="fashion_mnist", source_dir=str(idx))
    config.text.update(max_length=16)
    config.steps = 7
    manifest = prepare.prepare(config, data_dir)
    save_random_model(dict(input_size=32, patch_size=8, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                           learn_sigma=True, num_classes=0, text_dim=384, text_len=16, text_pooled=True),
                      workdir / "export")
    (workdir / "run.json").write_text(json.dumps({"config": config.to_dict()}))
    return str(workdir), data_dir, manifest


def test_top_k_hits_by_hand():
    gallery = np.eye(4) + 0.1  # query i is nearest to gallery i, then to the others in a tie (broken by index)
    queries = np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 1.0, 0.9, 0]])
    hits = retrieval.top_k_hits(queries, gallery, targets=[{0}, {2}, {2}], ks=(1, 2))
    assert hits == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3)}


def test_default_metrics_follow_the_data():
    emoji = dict(dataset="emoji", space="pixel", text={"encoder": "minilm"}, num_classes=8)
    assert default_metrics(emoji, None) == ["fid", "retrieval"]
    assert default_metrics(dict(emoji, dataset="fashion_mnist"), "clip-dir") == ["fid", "adherence", "clip"]
    assert default_metrics(dict(emoji, space="latent"), None) == []


class BrightnessClassifier(nnx.Module):
    """A judge with known outputs: an image of mean brightness b is class round(b / 20), at most 9."""

    def __call__(self, images):
        brightness = jnp.asarray(images, jnp.float32).mean((1, 2, 3))
        return -jnp.abs(brightness[:, None] - 20.0 * jnp.arange(10))


def brightness_classes(images):
    """BrightnessClassifier's answers, in NumPy."""
    return np.abs(images.astype(np.float64).mean((1, 2, 3))[:, None] - 20.0 * np.arange(10)).argmin(1)


@pytest.fixture
def known_classifier(monkeypatch):
    """The Judge's classifier (loaded or trained by classifier.load_or_train) becomes BrightnessClassifier."""
    monkeypatch.setattr(classifier, "load_or_train", lambda data_dir, source_dir="": (BrightnessClassifier(), 0.875))


def test_judge_scores_real_images_as_perfect(run_dir):
    """The reference's own images: FID 0, retrieval finds each one first."""
    workdir, data_dir, manifest = run_dir
    examples = pipeline.read_prepared(manifest, range(16))
    captions = [str(e["captions"][0]) for e in examples]
    judge = Judge(["fid", "retrieval"], manifest, data_dir, np.arange(16), captions, None)
    images = np.stack([e["image"] for e in examples])
    labels = [int(e["label"]) for e in examples]
    result = judge(images, captions, labels)
    assert abs(result["fid_16"]) < 1e-3
    assert np.load(os.path.join(manifest["dir"], "fid_inception_done.npy")).all()  # the retrieval gallery: all 32
    assert result["retrieval_top1"] == 1.0
    shuffled = judge(images[::-1], [], labels)  # wrong images for their prompts
    assert shuffled["fid_16"] < 1e-3 and shuffled["retrieval_top1"] < 0.5


def test_adherence_is_the_share_judged_as_the_prompted_class(run_dir, known_classifier):
    _, data_dir, manifest = run_dir
    judge = Judge(["adherence"], manifest, data_dir, np.arange(8), [], None)
    labels = [0, 0, 1, 2, 4, 4, 6, 7]  # what the prompts asked for
    judged = [0, 9, 1, 2, 4, 9, 6, 0]  # what the classifier says
    images = np.stack([np.full((32, 32, 1), 20 * k, np.uint8) for k in judged])
    result = judge(images, [], labels)
    assert result["adherence"] == 5 / 8
    names = fashion_mnist.CLASSES
    assert result["adherence_per_class"] == {names[0]: 0.5, names[1]: 1.0, names[2]: 1.0, names[4]: 0.5,
                                             names[6]: 1.0, names[7]: 0.0}
    assert result["classifier_test_accuracy"] == 0.875


def test_evaluate_writes_metrics_samples_and_plot(run_dir, tmp_path, monkeypatch, known_classifier):
    workdir, data_dir, manifest = run_dir
    results = evaluate(workdir, data_dir, samplers=[("ddim", 2), ("dpmpp_2m", 3)], num_samples=16, batch_size=8,
                       metrics=["fid", "adherence"], out=str(tmp_path))
    assert [(r["sampler"], r["steps"]) for r in results] == [("ddim", 2), ("dpmpp_2m", 3)]
    label_of = {str(e["captions"][0]): int(e["label"]) for e in pipeline.read_prepared(manifest, range(32))}
    for r in results:
        assert r["fid_16"] > 1.0  # random weights: far from the data
        samples = np.load(tmp_path / f"{r['sampler']}_{r['steps']}.npz")  # each image judged against its prompt
        labels = [label_of[str(c)] for c in samples["captions"]]
        assert r["adherence"] == np.mean(brightness_classes(samples["arr_0"]) == labels)
    assert json.loads((tmp_path / "metrics.json").read_text()) == results
    samples = np.load(tmp_path / "ddim_2.npz")
    assert samples["arr_0"].shape == (16, 32, 32, 1) and samples["arr_0"].dtype == np.uint8
    assert all(str(c).split(" ")[-1] in " ".join(fashion_mnist.CLASSES) for c in samples["captions"])
    assert (tmp_path / "fid_vs_steps.png").exists() and (tmp_path / "ddim_2.png").exists()
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))

    def no_sampling(setup, settings, *args, **kwargs):
        raise RuntimeError(f"sampled {settings.sampler} again")
    monkeypatch.setattr(sampling, "sample_images", no_sampling)
    with pytest.raises(RuntimeError, match="sampled ddpm again"):  # the saved two are reused, the third is new
        evaluate(workdir, data_dir, samplers=[("ddim", 2), ("dpmpp_2m", 3), ("ddpm", 2)], num_samples=16,
                 metrics=["fid", "adherence"], out=str(tmp_path), reuse_samples=True)
    assert json.loads((tmp_path / "metrics.json").read_text()) == results  # written after each sampler


def test_classifier_learns_and_is_cached(run_dir, monkeypatch):
    _, data_dir, manifest = run_dir
    model, accuracy = classifier.train(epochs=1, limit=12800)  # the real files, a fifth of them once
    assert accuracy > 0.7
    calls = []
    monkeypatch.setattr(classifier, "train", lambda source_dir: calls.append(source_dir) or (model, accuracy))
    cache = os.path.join(data_dir, "cache_test")
    first, first_accuracy = classifier.load_or_train(cache)
    again, again_accuracy = classifier.load_or_train(cache)
    assert calls == [""] and first_accuracy == again_accuracy == accuracy
    images, _ = classifier.load_split("test")
    np.testing.assert_array_equal(classifier.predict(again, images[:200]), classifier.predict(model, images[:200]))


def test_bad_input_fails_in_one_line(run_dir, tmp_path):
    workdir, data_dir, _ = run_dir
    with pytest.raises(ValueError, match="sampler:steps"):
        parse_samplers(["ddim"])
    with pytest.raises(ValueError, match="exceeds"):
        evaluate(workdir, data_dir, num_samples=10_000)
    with pytest.raises(ValueError, match="--clip_model"):
        evaluate(workdir, data_dir, metrics=["clip"])
    with pytest.raises(FileNotFoundError, match="No prepared data"):
        evaluate(workdir, str(tmp_path))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "dit_jax.evaluate", f"--workdir={tmp_path}/none"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("evaluate:") and "training run" in result.stderr


def test_clip_score_is_100_times_the_models_own_cosine(tmp_path):
    """A tiny random CLIP with the real tokenizer: our score equals CLIPModel's logits / logit scale, floored at 0."""
    import torch
    import transformers
    from PIL import Image
    from dit_jax.evaluation.clip_score import clip_score
    from test_text import write_clip_tokenizer

    folder = str(tmp_path)
    write_clip_tokenizer(folder)
    tokenizer = transformers.CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                      crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.CLIPConfig(text_config=dict(small, max_position_embeddings=77),
                                     vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(folder)

    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    captions = ["a red apple", "a rocket", "a green heart", "a cat face"]
    mean, scores = clip_score(images, captions, folder, batch_size=3)
    inputs = transformers.CLIPProcessor.from_pretrained(folder)(
        text=captions, images=[Image.fromarray(x) for x in images], return_tensors="pt", padding=True)
    with torch.no_grad():
        cosine = torch.diagonal(model(**inputs).logits_per_image) / model.logit_scale.exp()
    np.testing.assert_allclose(scores, np.maximum(100 * cosine.numpy(), 0), rtol=1e-4, atol=1e-4)
    assert mean == pytest.approx(scores.mean())
    grey = images[..., :1]  # Fashion-MNIST: one channel, scored as RGB
    np.testing.assert_allclose(clip_score(grey, captions, folder)[1],
                               clip_score(grey.repeat(3, -1), captions, folder)[1])
    with pytest.raises(FileNotFoundError, match="CLIP model"):
        clip_score(images, captions, str(tmp_path / "missing"))


def test_spacing_and_eta_flags_reach_sampling(run_dir, tmp_path, monkeypatch):
    """The command's --spacing and --eta, parsed as its flags, reach every sampler's Settings (eta the ddim ones
    only) and the results; a bad spacing fails in one line before sampling."""
    from absl import flags
    from absl.testing import flagsaver
    from dit_jax import evaluate as command
    workdir, data_dir, _ = run_dir
    seen = []

    def record(setup, settings, captions, labels, num_images, batch_size, classifier=None):
        seen.append(setup.resolve(settings))
        return sampling.Samples(np.zeros((len(captions), 32, 32, 1), np.uint8), captions, labels, None)

    monkeypatch.setattr(sampling, "sample_images", record)
    monkeypatch.setattr(command, "Judge", lambda *args: lambda images, captions, labels: {})
    if "samplers" not in flags.FLAGS:
        command.define_flags()
    argv = ["evaluate", f"--workdir={workdir}", f"--data_dir={data_dir}", f"--out={tmp_path}", "--num_samples=16",
            "--samplers=ddim:2,ddim_diffusers:3,dpmpp_2m:3", "--spacing=trailing", "--eta=0.5"]
    with flagsaver.flagsaver():
        flags.FLAGS(argv)
        command.main(argv[:1])
    assert [(s.sampler, s.steps, s.spacing, s.eta) for s in seen] == [
        ("ddim", 2, "trailing", 0.5), ("ddim_diffusers", 3, "trailing", 0.5), ("dpmpp_2m", 3, "trailing", 0.0)]
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert [(r["spacing"], r["eta"]) for r in results] == [("trailing", 0.5), ("trailing", 0.5), ("trailing", 0.0)]

    seen.clear()
    with flagsaver.flagsaver(), pytest.raises(SystemExit, match="^evaluate: Unknown spacing 'even'"):
        flags.FLAGS(argv[:-2] + ["--spacing=even"])
        command.main(argv[:1])
    assert not seen


def test_classifier_scales_are_evaluated_in_turn_toward_each_examples_class(run_dir, tmp_path, monkeypatch):
    """--classifier with several scales: every sampler at every scale, each image's classifier target its
    example's label (the text model reads its caption), results and files named by the scale."""
    import types
    workdir, data_dir, manifest = run_dir
    module = types.ModuleType("dit_jax.models.classifier")
    module.load_classifier = lambda path: (None, dict(resolution=32, channels=1, num_classes=10, latent=False))
    monkeypatch.setitem(sys.modules, "dit_jax.models.classifier", module)
    seen = []

    def record(setup, settings, captions, labels, num_images, batch_size, classifier=None):
        seen.append((settings.sampler, settings.classifier_scale, list(labels), classifier[1]["num_classes"]))
        return sampling.Samples(np.zeros((len(captions), 32, 32, 1), np.uint8), captions, labels, None)

    monkeypatch.setattr(sampling, "sample_images", record)
    monkeypatch.setattr("dit_jax.evaluate.Judge", lambda *args: lambda images, captions, labels: {"fid_16": 1.0})
    results = evaluate(workdir, data_dir, samplers=[("ddim", 2)], num_samples=16, out=str(tmp_path),
                       classifier_path=str(tmp_path), classifier_scales=[0.0, 2.0])
    chosen = np.sort(np.random.default_rng(0).choice(manifest["examples"], 16, replace=False))
    labels = [int(e["label"]) for e in pipeline.read_prepared(manifest, chosen)]
    assert seen == [("ddim", 0.0, labels, 10), ("ddim", 2.0, labels, 10)]
    assert [r["classifier_scale"] for r in results] == [0.0, 2.0]
    assert (tmp_path / "ddim_2_cls2.npz").exists() and (tmp_path / "fid_vs_scale.png").exists()
