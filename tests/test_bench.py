"""`python -m dit_jax.bench` runs each mode at toy size and prints a table and JSON lines."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dit_jax.utils import profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args, stdout=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, "-m", "dit_jax.bench", "--json", "--steps=1", "--warmup=0", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows and "device: cpu" in out.stdout
    if stdout is not None:
        stdout.append(out.stdout)
    return rows


def test_train_mode_against_torch_with_a_profile(tmp_path):
    stdout = []  # --vs-torch is an alias of --vs_torch
    row, = bench("--mode=train", "--vs-torch", "--batch=4", "--peak_size=512", "--config=configs/tiny.py:runlocal",
                 "--config.model.num_classes=10", "--config.model.text_cross_attention=False",
                 "--config.model.text_pooled=False", "--config.diffusion.prediction=eps",
                 "--config.diffusion.min_snr_gamma=0", "--remat=dots", f"--profile={tmp_path}", stdout=stdout)
    assert row["remat"] == "dots" and row["objective"].startswith("eps MSE + variational bound")
    assert row["img_per_s"] > 0 and row["torch_img_per_s"] > 0 and row["ratio_vs_torch"] > 0
    assert row["peak_source"] == "measured jnp.dot" and 0 < row["mfu"] < 1.5
    assert row["peak_memory_gb"] > 0 and row["compile_s"] > 0
    assert "Time per step by kind of op" in stdout[0]
    assert sum(profile.op_seconds(str(tmp_path), steps=1).values()) > 0  # the trace it wrote holds ops


def test_default_comparison_is_dit_s4_rematerialised_on_cpu(monkeypatch):
    from dit_jax.bench import default_config, model_kwargs
    from dit_jax.text import encoders
    monkeypatch.setattr(encoders, "resolve", None)  # a model without text needs no text encoder installed
    c = default_config()
    assert (c.model.hidden_size, c.model.depth, c.model.patch_size, c.batch_size) == (384, 12, 4, 32)
    assert c.model.dtype == "float32" and c.model.remat == "dots" and not c.model.scan_blocks  # the tests run on CPU
    kw = model_kwargs(c)  # the SD VAE's latents of 256px images, no text
    assert (kw["input_size"], kw["in_channels"], kw["text_dim"], kw["num_classes"]) == (32, 4, 0, 1000)


@pytest.mark.parametrize("text, vae, resolution, shapes", [
    (dict(encoder="t5", path="", max_length=120), "stabilityai/sd-vae-ft-ema", 256, (32, 4, 4096, 120)),  # xxl
    (dict(encoder="clip", path="", max_length=100), "stabilityai/sd-vae-ft-ema", 256, (32, 4, 768, 77)),  # ViT-L/14
    (dict(encoder="minilm", path="", max_length=32), "", 32, (32, 3, 384, 32)),  # pixels
])
def test_synthetic_shapes_are_the_prepared_datas(text, vae, resolution, shapes):
    from dit_jax.bench import model_kwargs, synthetic_batch
    from dit_jax.training.recipe import base_config
    config = base_config()
    config.text.update(text)
    config.vae.path, config.data.resolution = vae, resolution
    kw = model_kwargs(config)
    assert (kw["input_size"], kw["in_channels"], kw["text_dim"], kw["text_len"]) == shapes
    size, channels, width, length = shapes
    batch = synthetic_batch(kw, 2)
    assert batch["image"].shape == (2, size, size, channels) and batch["text"].shape == (2, length, width)
    assert batch["pooled"].shape == (2, width) and batch["text_mask"].shape == (2, length)


def test_text_and_latent_shapes_are_the_models(tmp_path):
    """What encoders.text_shape and latents.latent_shape read from the configs is what the models produce."""
    from dit_jax.data import latents
    from dit_jax.text import encoders
    from test_data import save_tiny_vae
    save_tiny_vae(tmp_path / "vae")
    side, channels = latents.latent_shape(str(tmp_path / "vae"), 32)
    mean, _ = latents.Vae(str(tmp_path / "vae"), device="cpu").encode(np.zeros((1, 32, 32, 3), np.uint8))
    assert mean.shape == (1, side, side, channels) == (1, 16, 16, 4)
    tokens, _, pooled = encoders.load("minilm", max_length=12, device="cpu").encode(["a red apple"])
    assert encoders.text_shape("minilm", max_length=12) == dict(dim=384, max_length=12)
    assert tokens.shape == (1, 12, 384) and pooled.shape == (1, 384)
    with pytest.raises(ValueError, match="VAE path 'no such dir' does not exist"):
        latents.latent_shape("no such dir", 256)


def test_profile_sums_op_kinds_per_step(tmp_path):
    # fusion.2 runs on another thread alongside fusion.1; nothing runs from 3500 to 4500 us.
    events = [dict(ph="X", name="fusion.1", ts=0, dur=1000), dict(ph="X", name="fusion.2", ts=500, dur=3000),
              dict(ph="X", name="dot", ts=4500, dur=2000), dict(ph="X", name="$train.py:10 run", dur=10**6),
              dict(ph="X", name="ThunkExecutor::Execute", dur=10**6), dict(ph="X", name="end: fusion", dur=7),
              dict(ph="i", name="marker")]
    folder = tmp_path / "plugins" / "profile" / "2026_11_26"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump(dict(traceEvents=events), f)
    totals = profile.op_seconds(str(tmp_path), steps=2)  # microseconds over 2 steps -> seconds per step
    assert totals == {"fusion": pytest.approx(0.002), "dot": pytest.approx(0.001),
                      profile.IDLE: pytest.approx(0.0005)}
    lines = profile.report(totals, step_seconds=0.004, top=1).splitlines()
    assert lines[0].split() == ["0.0020", "s", "50.0%", "fusion"]
    assert lines[1].split() == ["0.0015", "s", "37.5%", "(2", "other", "kinds)"]
    with pytest.raises(FileNotFoundError, match="create_perfetto_trace"):
        profile.op_seconds(str(tmp_path / "none"), steps=1)


def test_attention_mode():
    rows = bench("--mode=attention", "--backends=xla,pallas_flash", "--seq_lens=48", "--heads=2", "--head_dim=16")
    assert [(r["backend"], r["interpreted"]) for r in rows] == [("xla", False), ("pallas_flash", True)]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and "error" not in r for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--mode=attention", "--profile=/tmp/trace"], "bench: --profile traces train steps"),
    (["--model=DiT-Q/3"], "bench: Unknown DiT variant 'DiT-Q/3'"),
    (["--remat=bogus"], "flag --remat=bogus: value should be one of"),
    (["--vs_torch", "--config=configs/tiny.py:runlocal", "--config.model.num_classes=10",
      "--config.model.text_cross_attention=False", "--config.model.text_pooled=False"],
     "bench: --vs_torch writes out the eps-prediction loss without min-SNR"),  # tiny trains v, min-SNR
])
def test_bad_input_fails_in_one_line(args, message):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "dit_jax.bench", "--steps=1", "--warmup=0", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert message in out.stderr


@pytest.fixture(scope="module")
def both_sides():
    """diffusers' DiT (random, non-zero init) and ours with its weights converted; the bench's default recipe."""
    import torch
    from dit_jax import bench
    from dit_jax.models import convert
    from dit_jax.models.pretrained import abstract_model, load_flat_weights

    config = bench.default_config()
    config.data.resolution = 64  # 8x8x4 latents
    config.model.update(hidden_size=32, depth=2, num_heads=2, patch_size=2, num_classes=10)
    kw = bench.model_kwargs(config)
    torch.manual_seed(0)
    theirs = bench.torch_model(kw).eval()
    state = theirs.state_dict()
    for key in [k for k in state if ".0.norm1.emb." in k]:  # diffusers' blocks' embedders, shared as in DiT
        state[key.replace(".0.", ".1.")].copy_(state[key])
    weights, ours_kw = convert.diffusers_to_dit({k: v.numpy() for k, v in state.items()}, dict(theirs.config))
    ours = load_flat_weights(abstract_model(ours_kw), convert.from_dit(weights, ours_kw))
    return config, kw, theirs, ours


def test_both_sides_train_the_same_objective(both_sides):
    """The loss --vs_torch trains in torch equals ours on the same weights, batch, timesteps and noise."""
    import jax.numpy as jnp
    import numpy as np
    import torch
    from dit_jax import bench
    from dit_jax.diffusion import diffusion_loss, q_sample
    from dit_jax.training.trainer import diffusion_schedule

    config, kw, theirs, ours = both_sides
    assert bench.objective(config, kw).startswith("eps MSE + variational bound") and kw["learn_sigma"]
    schedule = diffusion_schedule(config.diffusion)
    rng = np.random.default_rng(0)
    x0 = np.clip(rng.standard_normal((5, 8, 8, 4)), -1, 1).astype(np.float32)  # some at +-1: the edge bins
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    t, y = np.array([0, 1, 10, 500, 999]), np.array([0, 3, 9, 1, 5])
    x_t = np.asarray(q_sample(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise), schedule))
    nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    nhwc = lambda tensor: jnp.asarray(tensor.numpy().transpose(0, 2, 3, 1))
    with torch.no_grad():
        out_torch = theirs(nchw(x_t), timestep=torch.from_numpy(t), class_labels=torch.from_numpy(y)).sample
    out_ours = ours(jnp.asarray(x_t), jnp.asarray(t), jnp.asarray(y))
    np.testing.assert_allclose(out_ours, nhwc(out_torch), atol=1e-4)

    def ours_loss(out, learn_sigma=kw["learn_sigma"]):  # as the trainer calls it for this config
        return diffusion_loss(out, x0, x_t, t, noise, schedule, prediction=config.diffusion.prediction,
                              learn_sigma=learn_sigma)

    def torch_loss(out, learn_sigma=kw["learn_sigma"]):
        args = nchw(x0), nchw(x_t), torch.from_numpy(t), nchw(noise), schedule.betas, learn_sigma
        return bench.torch_loss(out, *args).numpy()

    mse = ((out_torch[:, :4] - nchw(noise)) ** 2).mean((1, 2, 3)).numpy()
    assert np.all(torch_loss(out_torch) - mse > 1e-3)  # the variational bound is in, at every t
    np.testing.assert_allclose(torch_loss(out_torch), ours_loss(nhwc(out_torch)), rtol=1e-5)
    np.testing.assert_allclose(torch_loss(out_torch), ours_loss(out_ours), rtol=1e-4)  # each side's forward pass
    np.testing.assert_allclose(torch_loss(out_torch[:, :4], False), ours_loss(nhwc(out_torch)[..., :4], False),
                               rtol=1e-5)
