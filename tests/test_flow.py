"""Flow matching (dit_jax/diffusion/flow.py): diffusers' flow-matching schedulers as the oracle, the exact
flow of Gaussian data, the loss against NumPy, editing and guidance, config checks, and one toy run."""

import dataclasses
import json
import os
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from ml_collections import ConfigDict

from dit_jax import sampling
from dit_jax.diffusion import flow
from dit_jax.diffusion.generate import generate_flow
from dit_jax.training import trainer as trainer_lib
from dit_jax.training.checks import validate
from test_checks import tiny

X_T = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
A = np.array([0.9, 1.1, 0.7], np.float32)
B = np.array([0.5, -0.3, 0.8], np.float32)


# A smooth, nonlinear stand-in for a velocity network, once per framework; t is the timestep (sigma * 1000).
def toy_jax(x, t):
    return jnp.tanh(A * x + B * jnp.sin(t.astype(jnp.float32)[:, None, None, None] / 100.0)) - 0.5 * x


def toy_torch(x, t):
    """NCHW, one scalar timestep."""
    a, b = (torch.from_numpy(c).view(1, -1, 1, 1) for c in (A, B))
    return torch.tanh(a * x + b * torch.sin(torch.as_tensor(t, dtype=x.dtype) / 100.0)) - 0.5 * x


def nchw(x):
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).float()


def nhwc(x):
    return x.permute(0, 2, 3, 1).double().numpy()


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (4, 1.0), (10, 3.0), (25, 1.5)])
def test_sigmas_timesteps_and_euler_steps_match_diffusers(steps, shift):
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    sigmas = flow.flow_sigmas(steps, shift)
    np.testing.assert_allclose(sigmas, ref.sigmas.double().numpy(), rtol=1e-6, atol=1e-7)
    x, ref_steps = nchw(X_T), []
    for t in ref.timesteps:
        x = ref.step(toy_torch(x, t), t, x).prev_sample
        ref_steps.append(nhwc(x))
    ours, trajectory = flow.euler_sample(toy_jax, X_T, sigmas, return_trajectory=True)
    np.testing.assert_allclose(trajectory.t, ref.timesteps.double().numpy(), rtol=1e-6)
    for i, ref_x in enumerate(ref_steps):
        assert np.abs(np.asarray(trajectory.x[i]) - ref_x).max() <= 1e-5, f"step {i}"
    np.testing.assert_array_equal(ours, trajectory.x[-1])


def test_heun_matches_diffusers_flow_match_heun():
    ref = FlowMatchHeunDiscreteScheduler(shift=2.0)
    ref.set_timesteps(6)
    x = nchw(X_T)
    for t in ref.timesteps:  # 2N - 1 calls: the last step is Euler's
        x = ref.step(toy_torch(x, t), t, x).prev_sample
    ours = flow.heun_sample(toy_jax, X_T, flow.flow_sigmas(6, 2.0))
    assert np.abs(np.asarray(ours) - nhwc(x)).max() <= 1e-5


# Gaussian data N(MU, COV): on any path x_t = a x0 + s eps is Gaussian, so E[x0 | x_t], E[eps | x_t] and
# the velocity a' E[x0 | x_t] + s' E[eps | x_t] are closed form, and the ODE carries eps to MU + COV^(1/2) eps.
MU = np.array([0.5, -1.0], np.float32)
COV = np.array([[1.0, 0.6], [0.6, 0.8]], np.float32)


def gaussian_velocity(path):
    def fn(x, timestep):
        a, s, da, ds = flow.coefficients(timestep[0] / flow.T_SCALE, path)
        c = a**2 * COV + s**2 * jnp.eye(2)
        r = jnp.linalg.solve(c, (x - a * MU).T).T
        return da * MU + r @ (da * a * COV + ds * s * jnp.eye(2))
    return fn


def exact_map(eps):
    w, u = np.linalg.eigh(COV.astype(np.float64))
    return MU + eps @ (u * np.sqrt(w)) @ u.T


@pytest.mark.parametrize("path", flow.PATHS)
def test_heun_follows_the_exact_flow_of_gaussian_data(path):
    eps = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4000, 2)))
    exact = exact_map(eps)
    sample = jax.jit(lambda sampler, steps: sampler(gaussian_velocity(path), eps, flow.flow_sigmas(steps),
                                                    path=path), static_argnums=(0, 1))
    heun = np.asarray(sample(flow.heun_sample, 20))
    heun_error = np.abs(heun - exact).max()
    assert heun_error < 5e-3, heun_error
    assert np.abs(np.asarray(sample(flow.euler_sample, 20)) - exact).max() > 5 * heun_error  # second order pays
    np.testing.assert_allclose(heun.mean(0), MU, atol=0.05)
    np.testing.assert_allclose(np.cov(heun.T), COV, atol=0.08)


def test_euler_maruyama_samples_gaussian_data():
    eps = jax.random.normal(jax.random.PRNGKey(1), (4000, 2))
    x = np.asarray(jax.jit(lambda: flow.euler_maruyama_sample(gaussian_velocity("linear"), eps,
                                                              jax.random.PRNGKey(2), flow.flow_sigmas(50)))())
    np.testing.assert_allclose(x.mean(0), MU, atol=0.06)
    np.testing.assert_allclose(np.cov(x.T), COV, atol=0.1)
    assert np.abs(x - exact_map(np.asarray(eps))).mean() > 0.1  # stochastic: not the ODE's map
    noise = np.zeros((3, 4000, 2), np.float32)  # no noise: the drift alone, still a valid (different) sampler
    quiet = flow.euler_maruyama_sample(gaussian_velocity("linear"), eps, None, flow.flow_sigmas(3), noise=noise)
    assert np.isfinite(np.asarray(quiet)).all()


@pytest.mark.parametrize("path", flow.PATHS)
def test_loss_against_numpy(path):
    rng = np.random.default_rng(0)
    x0, noise, out = (rng.standard_normal((3, 4, 4, 2)).astype(np.float32) for _ in range(3))
    t = np.array([0.0, 0.3, 0.9], np.float32)
    if path == "linear":
        target = noise - x0
    else:
        ts = t.astype(np.float64)[:, None, None, None]
        target = -np.pi / 2 * np.sin(np.pi / 2 * ts) * x0 + np.pi / 2 * np.cos(np.pi / 2 * ts) * noise
    expected = ((target - out) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(flow.flow_loss(jnp.asarray(out), x0, noise, jnp.asarray(t), path), expected,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="learn_sigma"):
        flow.flow_loss(jnp.concatenate([out, out], -1), x0, noise, jnp.asarray(t), path)


def test_the_trainer_selects_the_flow_loss():
    """loss_fn with diffusion.objective=flow: the model sees x_t and t * 1000 at logit-normal, shifted times."""
    seen = {}

    def model(x_t, t, **kwargs):
        seen.update(x_t=x_t, t=t)
        return 0.5 * x_t

    d = dict(objective="flow", flow_path="linear", time_sampling="logit_normal", logit_mean=0.5, logit_std=0.7,
             shift=2.0)
    fake = types.SimpleNamespace(config=ConfigDict(dict(diffusion=d, model=dict(learn_sigma=False))),
                                 model=lambda params, frozen=None: model, schedule=None, controlnet=None)
    x0 = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 4, 4, 3)), jnp.float32)
    key = jax.random.PRNGKey(3)
    loss = trainer_lib.loss_fn(fake, None, {"image": x0}, key)
    k_t, k_noise, _ = jax.random.split(key, 3)
    noise = np.asarray(jax.random.normal(k_noise, x0.shape))
    n = np.asarray(jax.random.normal(k_t, (4,)))
    t = 1 / (1 + np.exp(-(0.5 + 0.7 * n)))
    t = 2 * t / (1 + t)
    np.testing.assert_allclose(seen["t"], t * 1000, rtol=1e-5)
    x_t = (1 - t[:, None, None, None]) * np.asarray(x0) + t[:, None, None, None] * noise
    np.testing.assert_allclose(seen["x_t"], x_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, ((noise - np.asarray(x0) - 0.5 * x_t) ** 2).mean(), rtol=1e-5)


def test_time_sampling_moments():
    key, n = jax.random.PRNGKey(0), 200_000
    logits = np.log(np.asarray(flow.sample_time(key, n, "logit_normal", mean=-0.4, std=1.3), np.float64))
    logits -= np.log1p(-np.exp(logits))
    assert abs(logits.mean() + 0.4) < 0.02 and abs(logits.std() - 1.3) < 0.02
    uniform = np.asarray(flow.sample_time(key, n))
    assert abs(uniform.mean() - 0.5) < 0.01 and uniform.min() >= 0 and uniform.max() < 1
    shifted = np.asarray(flow.sample_time(key, n, shift=3.0))
    np.testing.assert_allclose(shifted, 3 * uniform / (1 + 2 * uniform), rtol=1e-6)
    assert abs(np.median(shifted) - 0.75) < 0.01  # shift 3 moves the median time 0.5 to 0.75: noisier
    np.testing.assert_allclose(flow.unshift_time(flow.shift_time(uniform[:100], 3.0), 3.0), uniform[:100],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="unknown time sampling"):
        flow.sample_time(key, 2, "beta")


def toy_model(x, t, y=None, drop=None, **kwargs):
    """A class-conditional velocity field: -x, plus y's offset where the condition is not dropped."""
    offset = jnp.where(drop, 0.0, y.astype(jnp.float32) + 1.0)[:, None, None, None]
    return -0.5 * x + offset * jnp.sin(t.astype(jnp.float32) / 300.0)[:, None, None, None]


GEN = dict(cond={"y": jnp.asarray([0, 2])}, shape=(2, 4, 4, 3), key=jax.random.PRNGKey(4))


def run_flow(**kw):
    return generate_flow(toy_model, GEN["cond"], GEN["shape"], GEN["key"], **kw)


def test_guidance_mixes_the_velocities():
    """One Euler step from t = 1 to 0: x_0 = x_T - v, with v = uncond + scale * (cond - uncond)."""
    x_T = jax.random.normal(jax.random.split(GEN["key"])[0], GEN["shape"])
    out = run_flow(sampler="euler", steps=1, cfg_scale=3.0)
    offset = (np.array([1.0, 3.0]) * np.sin(1000 / 300))[:, None, None, None]
    np.testing.assert_allclose(out, x_T - (-0.5 * x_T + 3.0 * offset), rtol=1e-5, atol=1e-6)


def test_inpainting_keeps_the_known_region_exactly(sampler="euler_maruyama"):
    """The blend is the samplers' shared scan body: checked on the stochastic one."""
    image = jax.random.uniform(jax.random.PRNGKey(5), (4, 4, 3), minval=-1, maxval=1)
    mask = np.zeros((4, 4, 1), np.float32)
    mask[1:3, :2] = 1
    out = np.asarray(run_flow(sampler=sampler, steps=3, cfg_scale=2.0, image=image, mask=mask))
    keep = np.broadcast_to(mask == 0, out.shape)
    np.testing.assert_allclose(out[keep], np.broadcast_to(image, out.shape)[keep], atol=1e-6)
    plain = np.asarray(run_flow(sampler=sampler, steps=3, cfg_scale=2.0))
    np.testing.assert_allclose(out[~keep], plain[~keep], atol=1e-6)  # a pixel-wise model: the rest is plain sampling
    assert not np.allclose(out[keep], plain[keep])


def test_img2img_starts_at_strength():
    image = jax.random.uniform(jax.random.PRNGKey(5), (4, 4, 3), minval=-1, maxval=1)
    kw = dict(sampler="heun", steps=4, shift=2.0, image=image)
    np.testing.assert_array_equal(run_flow(strength=1.0, **kw), run_flow(sampler="heun", steps=4, shift=2.0))
    np.testing.assert_array_equal(run_flow(strength=0.0, **kw), jnp.broadcast_to(image, GEN["shape"]))
    _, trajectory = run_flow(strength=0.5, return_trajectory=True, **kw)
    np.testing.assert_allclose(trajectory.t, flow.flow_sigmas(2, 2.0, start=0.5)[:-1] * 1000, rtol=1e-6)
    assert abs(trajectory.t[0] - 500) < 1e-3 and len(trajectory.t) == 2
    _, start = flow.img2img_start(image, X_T[0, :, :, :3], 4, 2.0, 0.5)
    np.testing.assert_allclose(start, 0.5 * image + 0.5 * X_T[0], rtol=1e-6)
    with pytest.raises(ValueError, match="resample is RePaint's"):
        run_flow(sampler="euler", image=image, mask=np.ones((4, 4, 1)), resample=2)


def flow_config(**diffusion):
    config = tiny()
    config.diffusion.update({"objective": "flow", **diffusion})
    config.model.learn_sigma = False
    config.sample.sampler = "heun"
    return config


BAD = [
    (dict(), dict(sampler="dpmpp_2m"), "sample.sampler: dpmpp_2m is a DDPM sampler but the model is trained with "
     "flow matching"),
    (dict(), dict(learn_sigma=True), "model.learn_sigma learns DDPM variances"),
    (dict(shift=0.0), dict(), "diffusion.shift=0.0 must be above 0"),
    (dict(logit_std=0.0), dict(), "diffusion.logit_std=0.0 must be above 0"),
    (dict(logit_mean=float("nan")), dict(), "diffusion.logit_mean=nan must be a finite number"),
    (dict(time_sampling="beta"), dict(), "Unknown diffusion.time_sampling 'beta'"),
    (dict(flow_path="vp"), dict(), "diffusion.flow_path: unknown flow path 'vp'"),
    (dict(objective="score"), dict(), "Unknown diffusion.objective 'score'"),
    (dict(objective="ddpm"), dict(learn_sigma=True), "sample.sampler: heun is a flow-matching sampler"),
]


@pytest.mark.parametrize("diffusion, other, message", BAD, ids=[m[:30] for _, _, m in BAD])
def test_bad_flow_config_fails_in_one_line(diffusion, other, message):
    config = flow_config(**diffusion)
    config.sample.sampler = other.get("sampler", "heun")
    config.model.learn_sigma = other.get("learn_sigma", False)
    with pytest.raises(ValueError) as error:
        validate(config)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_sampling_settings_follow_the_objective():
    validate(flow_config(time_sampling="logit_normal", shift=3.0))
    with pytest.raises(ValueError, match="ddim is a DDPM sampler but the model is trained with flow matching"):
        sampling.check_settings(sampling.Settings(sampler="ddim"), objective="flow")
    with pytest.raises(ValueError, match="euler is a flow-matching sampler but the model is trained with DDPM"):
        sampling.check_settings(sampling.Settings(sampler="euler"), objective="ddpm")
    with pytest.raises(ValueError, match="spacing picks DDPM timesteps"):
        sampling.check_settings(sampling.Settings(sampler="euler", spacing="trailing"))


def test_toy_flow_run_trains_exports_and_samples_with_euler(tmp_path):
    """In-process train (2 steps of a DiT with one block) with logit-normal times, then `sample` from its export."""
    from dit_jax import train as train_cli
    from dit_jax.sample import Options, run
    config = flow_config(time_sampling="logit_normal")
    config.update(steps=2, batch_size=8)
    config.data.max_examples = 64
    config.model.update(hidden_size=32, depth=1, patch_size=8)
    config.checkpoint.every, config.log.every, config.sample.every = 0, 1, 0
    workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "data")
    handler = signal.getsignal(signal.SIGINT)
    try:
        train_cli.train(config, workdir, data_dir)
    finally:
        signal.signal(signal.SIGINT, handler)  # train's StopSignal took Ctrl-C
    losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert len(losses) == 2 and np.isfinite(losses).all()
    record = json.load(open(os.path.join(workdir, "export", sampling.SAMPLING_FILE)))
    assert (record["objective"], record["flow_path"], record["shift"]) == ("flow", "linear", 1.0)

    options = Options(workdir=workdir, data_dir=data_dir, prompt=["red apple"], num_images=2, sampler="euler",
                      steps=1, batch_size=8, npz=str(tmp_path / "s.npz"))
    images, _ = run(options)
    assert images.shape == (2, 32, 32, 3) and len({im.tobytes() for im in images}) == 2
    with pytest.raises(ValueError, match="dpmpp_2m is a DDPM sampler"):
        run(dataclasses.replace(options, sampler="dpmpp_2m"))
