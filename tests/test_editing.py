"""Inpainting (known-region replacement, RePaint resampling) and SDEdit, against closed forms where they exist."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit_jax.diffusion import Schedule, beta_schedule, ddim_sample
from dit_jax.diffusion.editing import inpaint, sdedit_start
from dit_jax.diffusion.generate import generate, sampler_grid
from dit_jax.models.pretrained import abstract_model, load_flat_weights

SCHEDULE = Schedule(beta_schedule("linear"))

# Gaussian data on 4 pixels (a 2x2 one-channel image) with strongly correlated pixels.
MU = np.array([0.3, -0.2, 0.1, 0.5])
L = np.array([[1, 0, 0, 0], [0.8, 0.6, 0, 0], [0.7, 0.3, 0.5, 0], [0.6, -0.4, 0.3, 0.4]]) * 0.5
COV = L @ L.T
KNOWN, UNKNOWN = [0, 1], [2, 3]


def optimal_eps(x, t):
    """The exact eps-prediction for Gaussian data: E[x0 | x_t] = mu + a S (a^2 S + s^2 I)^-1 (x_t - a mu)."""
    acp = jnp.asarray(SCHEDULE.alphas_cumprod, jnp.float32)[t][:, None]
    a, s = jnp.sqrt(acp), jnp.sqrt(1 - acp)
    flat = x.reshape(x.shape[0], 4)
    noisy_cov = a[:, :, None] ** 2 * COV + s[:, :, None] ** 2 * jnp.eye(4)
    x0 = MU + a * jnp.einsum("ij,bjk,bk->bi", COV, jnp.linalg.inv(noisy_cov), flat - a * MU)
    return ((flat - a * x0) / s).reshape(x.shape)


def known_and_mask():
    known, mask = np.zeros(4, np.float32), np.zeros(4, np.float32)
    known[KNOWN], mask[UNKNOWN] = [0.9, 0.4], 1.0
    return known.reshape(1, 2, 2, 1), mask.reshape(1, 2, 2, 1)


def test_inpainting_with_the_optimal_denoiser_approaches_the_gaussian_conditional():
    known, mask = known_and_mask()
    k, u = np.ix_(KNOWN, KNOWN), np.ix_(UNKNOWN, KNOWN)
    mean = MU[UNKNOWN] + COV[u] @ np.linalg.solve(COV[k], known.reshape(4)[KNOWN] - MU[KNOWN])
    var = np.diag(COV[np.ix_(UNKNOWN, UNKNOWN)] - COV[u] @ np.linalg.solve(COV[k], COV[u].T))
    n = 2000

    @functools.partial(jax.jit, static_argnums=1)
    def run(key, resample):
        x_T = jax.random.normal(key, (n, 2, 2, 1))
        return inpaint(optimal_eps, x_T, jax.random.fold_in(key, 1), SCHEDULE, 100, known, mask, resample=resample)

    for resample, mean_tol in ((10, 0.03), (1, None)):
        out = np.asarray(run(jax.random.PRNGKey(0), resample)).reshape(n, 4)
        np.testing.assert_array_equal(out[:, KNOWN], np.broadcast_to(known.reshape(4)[KNOWN], (n, 2)))
        error = np.abs(out[:, UNKNOWN].mean(0) - mean)
        if mean_tol:  # RePaint's resampling lets the generated pixels agree with the known ones...
            assert error.max() < mean_tol, error
            # ...with some loss of spread: each pass uses DDPM's posterior variance, which ignores Var[x0 | x_t].
            assert np.all((out[:, UNKNOWN].var(0) > 0.5 * var) & (out[:, UNKNOWN].var(0) < 1.1 * var))
        else:  # replacement alone leaves a large bias: the unknown pixels barely see the known ones
            assert error.max() > 0.08, error


def test_known_region_is_exact_and_nothing_known_is_plain_ddim():
    def model_fn(x, t):
        return jnp.tanh(x * 0.7 + t[:, None, None, None] / 1000.0)

    x_T = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 2))
    known = jax.random.uniform(jax.random.PRNGKey(2), (3, 4, 4, 2), minval=-1, maxval=1)
    mask = (jnp.arange(16).reshape(1, 4, 4, 1) % 3 == 0).astype(jnp.float32)

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def run(mask, eta, resample):
        return inpaint(model_fn, x_T, jax.random.PRNGKey(3), SCHEDULE, 6, known, mask, eta=eta, resample=resample,
                       clip_x0=1.0, return_trajectory=True)

    out, trajectory = run(mask, 1.0, 2)
    keep = np.broadcast_to(np.asarray(mask) == 0, out.shape)
    np.testing.assert_array_equal(np.asarray(out)[keep], np.asarray(known)[keep])
    assert not np.allclose(np.asarray(out)[~keep], np.asarray(known)[~keep])
    assert trajectory.x.shape == (6, 3, 4, 4, 2) and trajectory.t.shape == (6,)
    np.testing.assert_array_equal(trajectory.x[-1], out)
    everything, _ = run(jnp.ones((1, 4, 4, 1)), 0.0, 1)
    ddim = jax.jit(lambda x: ddim_sample(model_fn, x, None, SCHEDULE, 6, clip_x0=1.0))(x_T)
    np.testing.assert_allclose(everything, ddim, rtol=1e-5, atol=1e-5)


def test_sdedit_start_noises_the_image_to_the_first_kept_step():
    image, noise = np.full((1, 2, 2, 1), 0.5, np.float32), np.ones((1, 2, 2, 1), np.float32)
    grid = sampler_grid(SCHEDULE, "ddim", 10)
    kept, x = sdedit_start(image, noise, SCHEDULE, grid, 0.3)
    np.testing.assert_array_equal(kept, grid[7:])
    acp = SCHEDULE.alphas_cumprod[grid[7]]
    np.testing.assert_allclose(x, np.sqrt(acp) * 0.5 + np.sqrt(1 - acp), rtol=1e-6)
    with pytest.raises(ValueError, match="strength"):
        sdedit_start(image, noise, SCHEDULE, grid, 1.5)


@pytest.fixture(scope="module")
def toy_dit():
    """A class-conditional DiT with random weights everywhere (no zero-initialised output)."""
    model = abstract_model(dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                                num_classes=3, learn_sigma=True))
    rng = np.random.default_rng(0)
    names = {".".join(map(str, path)): var.shape for path, var in nnx.to_flat_state(nnx.state(model, nnx.Variable))}
    return load_flat_weights(model, {n: rng.normal(0, 0.1, shape).astype(np.float32) for n, shape in names.items()})


def test_sdedit_strength_one_is_plain_sampling_and_zero_the_input(toy_dit):
    """With ddpm, whose per-step noise must also match plain sampling's."""
    cond, shape, key = {"y": jnp.asarray([0, 2])}, (2, 8, 8, 3), jax.random.PRNGKey(4)
    image = jax.random.uniform(jax.random.PRNGKey(5), (8, 8, 3), minval=-1, maxval=1)
    kw = dict(sampler="ddpm", steps=4, cfg_scale=2.0, clip_x0=1.0)

    @functools.partial(jax.jit, static_argnums=1)
    def run(image, strength):
        return generate(toy_dit, cond, shape, key, SCHEDULE, image=image, strength=strength, **kw)

    plain = jax.jit(lambda: generate(toy_dit, cond, shape, key, SCHEDULE, **kw))()
    np.testing.assert_allclose(run(image, 1.0), plain, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(run(image, 0.0), jnp.broadcast_to(image, shape))
    half = run(image, 0.5)
    assert not np.allclose(half, plain) and not np.allclose(half, image)
