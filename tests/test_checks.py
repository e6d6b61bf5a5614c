"""`checks.validate`: every enumerated or bounded key fails in one line that names it, before any loading."""

import importlib.util
import os
import subprocess
import sys

import pytest

from dit_jax import train as train_cli
from dit_jax.training.checks import validate
from conftest import FAST_COMPILE_FLAG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(arg="runlocal"):
    spec = importlib.util.spec_from_file_location("tiny", os.path.join(ROOT, "configs", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def with_value(key, value):
    config = tiny()
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value
    return config


# key, bad value, what the one-line error must say.
BAD = [
    ("diffusion.prediction", "score", "diffusion.prediction: unknown prediction 'score'"),
    ("diffusion.schedule", "quadratic", "diffusion.schedule: unknown beta schedule 'quadratic'"),
    ("diffusion.timesteps", 0, "diffusion.timesteps=0 must be at least 2"),
    ("diffusion.min_snr_gamma", -1.0, "diffusion.min_snr_gamma=-1.0 must be 0"),
    ("data.name", "nope", "Unknown data.name 'nope'"),
    ("data.name", "tfds:", "Unknown data.name 'tfds:'"),
    ("data.resolution", 30, "data.resolution 30 is not divisible by model.patch_size 4"),
    ("data.resolution", 0, "data.resolution=0 must be at least 1"),
    ("data.max_examples", -1, "data.max_examples=-1"),
    ("text.encoder", "gpt", "Unknown text.encoder 'gpt'"),
    ("text.layer", "middle", "text.layer must be 'last' or 'penultimate'"),
    ("text.max_length", 0, "text.max_length=0 must be at least 1"),
    ("steps", -3, "steps=-3 must be at least 1"),
    ("steps", 0, "steps=0 must be at least 1"),
    ("batch_size", 0, "batch_size=0 must be at least 1"),
    ("batch_size", 7, "batch_size 7 does not divide into 8 data-parallel devices"),
    ("optim.lr", 0.0, "optim.lr=0.0 must be above 0"),
    ("optim.lr", float("nan"), "optim.lr=nan must be above 0"),
    ("optim.name", "sgd", "optim: Unknown optimizer 'sgd'"),
    ("optim.schedule", "step", "optim: Unknown schedule 'step'"),
    ("optim.b2", 1.0, "optim.b2=1.0 must be in [0, 1)"),
    ("optim.warmup_steps", -1, "optim.warmup_steps=-1"),
    ("optim.accumulate", 0, "optim.accumulate=0 must be at least 1"),
    ("optim.min_lr", 1.0, "optim.min_lr 1.0 is above optim.lr"),
    ("ema.decay", 1.5, "ema.decay=1.5 must be in [0, 1]"),
    ("model.num_heads", 5, "not divisible by model.num_heads 5"),
    ("model.depth", 0, "model.depth=0 must be at least 1"),
    ("model.caption_dropout_prob", 1.0, "model.caption_dropout_prob=1.0 must be in [0, 1)"),
    ("model.attention", "flash9", "model.attention: Unknown attention backend 'flash9'"),
    ("model.remat", "all", "Unknown model.remat 'all'"),
    ("model.null_text", "empty", "model.null_text must be 'learned' or 'zeros'"),
    ("model.dtype", "int8", "model.dtype 'int8' is not a float type"),
    ("model.dtype", "bfloat17", "model.dtype 'bfloat17' is not a float type"),
    ("sample.sampler", "eulr", "sample.sampler: Unknown sampler 'eulr'"),
    ("sample.sampler", "euler", "sample.sampler: euler is a flow-matching sampler but the model is trained with DDPM"),
    ("sample.steps", 0, "sample.steps=0 must be at least 1"),
    ("sample.steps", 5000, "sample.steps 5000 exceeds diffusion.timesteps 1000"),
    ("sample.cfg_scale", 0.5, "sample.cfg_scale=0.5 must be 1"),
    ("sample.spacing", "even", "sample.spacing: Unknown spacing 'even'"),
    ("sample.eta", 0.5, "sample.eta is DDIM's; the dpmpp_2m sampler does not take it"),
    ("sample.eta", -1.0, "sample.eta=-1.0"),
    ("sample.guidance_channels", -1, "sample.guidance_channels=-1"),
    ("sample.every", -1, "sample.every=-1"),
    ("log.every", 0, "log.every=0 must be at least 1"),
    ("checkpoint.keep", 0, "checkpoint.keep=0 must be at least 1"),
    ("mesh.fsdp", 3, "does not fit 8 devices"),
]


def test_the_recipe_itself_validates():
    mesh = validate(tiny())
    assert mesh.shape["data"] * mesh.shape["fsdp"] == 8  # conftest's 8 CPU devices


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_bad_value_fails_in_one_line(key, value, message):
    with pytest.raises(ValueError) as error:
        validate(with_value(key, value))
    text = str(error.value)
    assert message in text and "\n" not in text, text


def test_restart_schedule_needs_a_period():
    config = with_value("optim.schedule", "cosine_restarts")
    config.optim.restart_period = 0
    with pytest.raises(ValueError, match="optim: Warm restarts need period >= 1"):
        validate(config)
    config.optim.update(restart_period=100, restart_mult=2)
    validate(config)


def test_train_validates_before_any_data_or_model(monkeypatch, tmp_path):
    def loaded(*args, **kwargs):
        raise AssertionError("data was prepared or loaded before the config was validated")
    monkeypatch.setattr(train_cli.pipeline, "ensure_prepared", loaded)
    monkeypatch.setattr(train_cli.trainer_lib, "create", loaded)
    with pytest.raises(ValueError, match="diffusion.prediction"):
        train_cli.train(with_value("diffusion.prediction", "score"), str(tmp_path / "run"), str(tmp_path / "data"))


def test_cli_reports_a_bad_value_in_one_line_before_any_work(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {FAST_COMPILE_FLAG}")
    result = subprocess.run(
        [sys.executable, "-m", "dit_jax.train", "--config=configs/tiny.py:runlocal", f"--workdir={tmp_path / 'run'}",
         f"--data_dir={tmp_path / 'data'}", "--config.steps=-3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "train: steps=-3 must be at least 1: set --config.steps."
    assert not os.path.exists(tmp_path / "data")  # nothing was prepared or read
