"""The noise-aware classifier (models/classifier.py), its objective and metrics, and a tiny run that resumes."""

import importlib.util
import json
import os
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dit_jax import convert as convert_cli, evaluate as evaluate_cli, sample as sample_cli, train as train_cli
from dit_jax.data import fashion_mnist
from dit_jax.diffusion import Schedule, beta_schedule
from dit_jax.models.classifier import Classifier, check_data, load_classifier
from dit_jax.models.pretrained import build_model, load_flat_weights, save_pretrained
from dit_jax.training import calibration, trainer as trainer_lib
from dit_jax.training.checks import validate
from test_data import write_idx_slice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=4, num_classes=5)


def recipe(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def random_weights(config, seed=0):
    """The model with random weights everywhere (adaLN-Zero's initial zeros would leave it blind to t)."""
    model = nnx.eval_shape(lambda: build_model(config))
    rng = np.random.default_rng(seed)
    names = {".".join(map(str, path)): var.shape for path, var in nnx.to_flat_state(nnx.state(model, nnx.Variable))}
    return load_flat_weights(model, {n: rng.normal(0, 0.3, s).astype(np.float32) for n, s in names.items()})


@pytest.fixture(scope="module")
def toy():
    model = random_weights(dict(TOY, model="classifier"))
    assert isinstance(model, Classifier)  # build_model reads the config's "model": "classifier"
    return model


def test_logits_have_one_value_per_class_and_depend_on_t(toy):
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 3))
    logits = nnx.jit(lambda m, x, t: m(x, t))
    early, late = logits(toy, x, jnp.array([10, 10, 10])), logits(toy, x, jnp.array([900, 900, 900]))
    assert early.shape == (3, 5) and early.dtype == jnp.float32
    assert np.abs(np.asarray(early - late)).max() > 1e-3  # t reaches the logits (through adaLN only)
    np.testing.assert_allclose(logits(toy, x, jnp.array(10)), early, atol=1e-6)  # a scalar t: every example's
    # The scanned blocks are the same network.
    scanned = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: Classifier(**TOY, scan_blocks=True, rngs=nnx.Rngs(0)))),
                        nnx.state(toy))
    np.testing.assert_allclose(logits(scanned, x, jnp.array(10)), early, atol=1e-5)


def fake_trainer(logits, smoothing, timesteps=1000):
    """What classifier_loss_fn reads of a Trainer, with a model that returns fixed logits."""
    config = types.SimpleNamespace(optim={"label_smoothing": smoothing})
    return types.SimpleNamespace(config=config, schedule=Schedule(beta_schedule("linear", timesteps)),
                                 model=lambda params: lambda x, t, rng: logits)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_loss_matches_numpy(smoothing):
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(0, 3, (6, 4)).astype(np.float32), np.array([0, 1, 2, 3, 1, 0], np.int32)
    batch = dict(image=jnp.zeros((6, 8, 8, 1)), label=jnp.asarray(labels))
    trainer = fake_trainer(jnp.asarray(logits), smoothing)
    loss, _ = jax.jit(lambda b: trainer_lib.classifier_loss_fn(trainer, None, b, jax.random.PRNGKey(0)))(batch)
    z = logits.astype(np.float64)
    log_p = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    target = np.full((6, 4), smoothing / 4) + (1 - smoothing) * np.eye(4)[labels]  # (1 - a) one-hot + a / K
    np.testing.assert_allclose(float(loss), -(target * log_p).sum(1).mean(), rtol=1e-5)


def numpy_metrics(logits, labels, t, timesteps, buckets=4, bins=15):
    """ECE and per-bucket accuracy, one prediction at a time."""
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = (confidence > lo) & (confidence <= hi)
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    width = timesteps / buckets
    accuracy = [correct[(t >= i * width) & (t < (i + 1) * width)].mean() for i in range(buckets)]
    return ece, accuracy, correct.mean()


def test_ece_and_bucket_accuracy_match_numpy():
    rng = np.random.default_rng(1)
    n = 64
    labels = rng.integers(0, 10, n)
    logits = rng.normal(0, 2, (n, 10))
    logits[np.arange(n), labels] += rng.uniform(0, 4, n)  # right more often than chance, confidences spread
    t = rng.integers(0, 1000, n)
    t[:4] = [0, 249, 250, 999]  # the buckets' edges
    stats = jax.jit(calibration.batch_stats, static_argnums=3)
    got = {k: float(v) for k, v in calibration.metrics(stats(logits.astype(np.float32), labels, t, 1000),
                                                        1000).items()}
    ece, accuracy, overall = numpy_metrics(logits, labels, t, 1000)
    assert 0.05 < ece and 0.2 < overall < 0.95  # not a degenerate case
    np.testing.assert_allclose(got["ece"], ece, rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], overall, rtol=1e-6)
    names = ["accuracy_t0-250", "accuracy_t250-500", "accuracy_t500-750", "accuracy_t750-1000"]
    np.testing.assert_allclose([got[name] for name in names], accuracy, rtol=1e-6)
    # The sums of two halves (gradient accumulation's micro-batches) give the whole batch's metrics.
    halves = [stats(logits[s].astype(np.float32), labels[s], t[s], 1000) for s in (slice(0, 32), slice(32, None))]
    summed = calibration.metrics(jax.tree.map(jnp.add, *halves), 1000)
    np.testing.assert_allclose(float(summed["ece"]), ece, rtol=1e-5)


def with_value(config, key, value):
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value
    return config


@pytest.mark.parametrize("key,value,message", [
    ("optim.label_smoothing", 1.0, "optim.label_smoothing=1.0 must be in [0, 1): set --config.optim.label_smoothing."),
    ("optim.label_smoothing", -0.1, "optim.label_smoothing=-0.1 must be in [0, 1)"),
    ("task", "regression", "Unknown task 'regression'; choose one of ('diffusion', 'classifier')"),
    ("model.num_classes", 0, "task=classifier needs classes: set --config.model.num_classes=-1"),
    ("sample.every", 100, "A classifier run draws no sample grids: set --config.sample.every=0."),
])
def test_bad_classifier_config_fails_in_one_line(key, value, message):
    with pytest.raises(ValueError) as error:
        validate(with_value(recipe("classifier_fashion", "runlocal"), key, value))
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_label_smoothing_on_a_diffusion_run_is_refused():
    with pytest.raises(ValueError, match="optim.label_smoothing is the classifier's"):
        validate(with_value(recipe("fashion_tiny", "runlocal"), "optim.label_smoothing", 0.1))


def test_classifier_on_data_without_labels_fails_before_any_model(monkeypatch, tmp_path):
    def built(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")
    manifest = dict(dataset="image_folder", num_classes=0, class_names=[])
    monkeypatch.setattr(train_cli.pipeline, "ensure_prepared", lambda config, data_dir: manifest)
    monkeypatch.setattr(train_cli.trainer_lib, "create", built)
    with pytest.raises(ValueError) as error:
        train_cli.train(recipe("classifier_fashion", "runlocal"), str(tmp_path / "run"), str(tmp_path / "data"))
    assert str(error.value).startswith("task=classifier needs labels, but the data 'image_folder' has none")
    with pytest.raises(ValueError, match="needs labels"):
        check_data(dict(dataset="x", num_classes=0))


@pytest.fixture
def keep_signal_handlers():
    """train installs its own SIGINT/SIGTERM handlers; pytest's come back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def metrics_rows(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR), reason="apt-get install dataset-fashion-mnist")
def test_tiny_run_logs_calibration_resumes_and_exports_a_loadable_classifier(tmp_path, keep_signal_handlers,
                                                                            capsys):
    """The recipe on 32 Fashion-MNIST images, in this process: 4 steps, then resumed to 6."""
    write_idx_slice(tmp_path / "idx", n_train=32)
    config = recipe("classifier_fashion")
    config.data.source_dir = str(tmp_path / "idx")
    config.update(steps=4, batch_size=8)
    config.model.update(hidden_size=32, patch_size=8)
    config.checkpoint.every, config.log.every = 0, 1  # saved at the last step only
    config.optim.label_smoothing = 0.1
    workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
    train_cli.train(config, workdir, data_dir)
    config.steps = 6
    train_cli.train(config, workdir, data_dir)
    assert "Resumed from step 4" in capsys.readouterr().out
    rows = metrics_rows(workdir)
    assert [row["step"] for row in rows] == list(range(1, 7))
    for row in rows:
        assert 0 <= row["ece"] <= 1 and 0 <= row["accuracy"] <= 1 and np.isfinite(row["loss"])
        buckets = [row.get(f"accuracy_t{lo}-{lo + 250}") for lo in (0, 250, 500, 750)]
        assert all(b is None or 0 <= b <= 1 for b in buckets)  # a bucket the batch did not draw is left out
        assert row["nll"] > 0
    assert rows[0]["loss"] == pytest.approx(np.log(10), rel=1e-5)  # the head starts at zero: uniform over 10

    model, meta = load_classifier(workdir)
    assert isinstance(model, Classifier)
    assert {k: meta[k] for k in ("resolution", "channels", "latent", "num_classes", "schedule", "timesteps")} == \
        dict(resolution=32, channels=1, latent=False, num_classes=10, schedule="linear", timesteps=1000)
    assert meta["class_names"][7] == "sneaker" and meta["label_smoothing"] == 0.1
    assert load_classifier(os.path.join(workdir, "export"))[1] == meta
    assert nnx.jit(lambda m, x, t: m(x, t))(model, jnp.zeros((2, 32, 32, 1)), jnp.array([5, 500])).shape == (2, 10)

    with pytest.raises(ValueError, match="is a noise-aware classifier .* sample cannot use it"):
        sample_cli.run(sample_cli.Options(workdir=workdir, data_dir=data_dir, classes=["0"]))
    with pytest.raises(ValueError, match="is a noise-aware classifier .* evaluate cannot use it"):
        evaluate_cli.evaluate(workdir, data_dir)
    with pytest.raises(ValueError, match="is a noise-aware classifier .* convert --from=dit_jax cannot use it"):
        convert_cli.export_dit(os.path.join(workdir, "export"), str(tmp_path / "model.pt"))


def test_loading_a_diffusion_model_as_a_classifier_fails_in_one_line(tmp_path):
    dit = dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=4, num_classes=0)
    save_pretrained(build_model(dit), dit, str(tmp_path / "export"))
    with pytest.raises(ValueError, match="holds a diffusion model, not a classifier"):
        load_classifier(str(tmp_path / "export"))
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_classifier(str(tmp_path / "nothing"))
