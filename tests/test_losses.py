import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion import (
    Schedule,
    beta_schedule,
    diffusion_loss,
    min_snr_weight,
    q_sample,
    to_x0_eps,
    training_target,
    variational_bound,
)

SCHEDULE = Schedule(beta_schedule("linear"))
T = np.array([0, 0, 1, 10, 500, 999])
SHAPE = (len(T), 4, 4, 3)


def make_batch(seed=0):
    """Data on the 256-level grid of [-1, 1] (so edge bins are hit), its noise and x_t, all float64."""
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, 256, SHAPE) / 127.5 - 1.0
    noise = rng.standard_normal(SHAPE)
    acp = SCHEDULE.alphas_cumprod[T].reshape(-1, 1, 1, 1)
    x_t = np.sqrt(acp) * x0 + np.sqrt(1 - acp) * noise
    return x0, noise, x_t, acp, rng


def f32(*arrays):
    return [jnp.asarray(a, jnp.float32) for a in arrays]


def test_q_sample():
    x0, noise, x_t, _, _ = make_batch()
    np.testing.assert_allclose(q_sample(*f32(x0), T, *f32(noise), SCHEDULE), x_t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_mse_against_hand_computation(prediction):
    x0, noise, x_t, acp, rng = make_batch()
    output = rng.standard_normal(SHAPE)
    target = {"eps": noise, "v": np.sqrt(acp) * noise - np.sqrt(1 - acp) * x0, "x0": x0}[prediction]
    expected = ((target - output) ** 2).mean(axis=(1, 2, 3))
    loss = diffusion_loss(*f32(output, x0, x_t), T, *f32(noise), SCHEDULE, prediction=prediction)
    assert loss.shape == (len(T),)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_targets_round_trip(prediction):
    x0, noise, x_t, acp, _ = make_batch()
    a, s = np.sqrt(acp), np.sqrt(1 - acp)
    pred = training_target(x0, noise, a, s, prediction)
    x0_back, eps_back = to_x0_eps(pred, x_t, a, s, prediction)
    np.testing.assert_allclose(x0_back, x0, atol=1e-9)
    np.testing.assert_allclose(eps_back, noise, atol=1e-9)


def test_min_snr_weights_closed_form():
    snr = np.array([0.01, 0.5, 1.0, 5.0, 20.0, 1000.0])
    gamma = 5.0
    np.testing.assert_allclose(min_snr_weight(snr, gamma, "eps"), [1, 1, 1, 1, 0.25, 0.005], rtol=1e-6)
    np.testing.assert_allclose(min_snr_weight(snr, gamma, "v"),
                               [0.01 / 1.01, 0.5 / 1.5, 0.5, 5 / 6, 5 / 21, 5 / 1001], rtol=1e-6)
    np.testing.assert_allclose(min_snr_weight(snr, gamma, "x0"), [0.01, 0.5, 1, 5, 5, 5], rtol=1e-6)


def test_min_snr_weighting_is_min_snr_times_x0_error_for_every_parametrization():
    """The point of the per-parametrization weights: one model estimate of x0, expressed as
    eps, v or x0, gets the same weighted loss, min(snr, gamma) * |x0_hat - x0|^2."""
    x0, noise, x_t, acp, rng = make_batch()
    a, s = np.sqrt(acp), np.sqrt(1 - acp)
    x0_hat = x0 + 0.1 * rng.standard_normal(SHAPE)
    eps_hat = (x_t - a * x0_hat) / s
    outputs = {"eps": eps_hat, "v": a * eps_hat - s * x0_hat, "x0": x0_hat}
    snr = SCHEDULE.snr[T]
    expected = np.minimum(snr, 5.0) * ((x0_hat - x0) ** 2).mean(axis=(1, 2, 3))
    for prediction, output in outputs.items():
        loss = diffusion_loss(*f32(output, x0, x_t), T, *f32(noise), SCHEDULE, prediction=prediction,
                              min_snr_gamma=5.0)
        np.testing.assert_allclose(loss, expected, rtol=1e-4, err_msg=prediction)


# --- The variational bound, against a float64 numpy transcription of improved DDPM's formulas. ---

def numpy_vb_bits_per_dim(output, x0, x_t, t, betas, prediction):
    acp = np.cumprod(1 - betas)
    acp_prev = np.append(1.0, acp[:-1])
    posterior_variance = betas * (1 - acp_prev) / (1 - acp)
    posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    mean_coef1 = betas * np.sqrt(acp_prev) / (1 - acp)
    mean_coef2 = (1 - acp_prev) * np.sqrt(1 - betas) / (1 - acp)

    def at(table):
        return table[t].reshape(-1, 1, 1, 1)

    c = x0.shape[-1]
    pred, var_values = output[..., :c], output[..., c:]
    a, s = np.sqrt(at(acp)), np.sqrt(1 - at(acp))
    pred_x0 = {"eps": (x_t - s * pred) / a, "v": a * x_t - s * pred, "x0": pred}[prediction]
    model_mean = at(mean_coef1) * pred_x0 + at(mean_coef2) * x_t
    frac = (var_values + 1) / 2
    model_log_var = frac * at(np.log(betas)) + (1 - frac) * at(posterior_log_variance_clipped)
    true_mean = at(mean_coef1) * x0 + at(mean_coef2) * x_t
    true_log_var = at(posterior_log_variance_clipped)

    kl = 0.5 * (-1.0 + model_log_var - true_log_var + np.exp(true_log_var - model_log_var)
                + (true_mean - model_mean) ** 2 * np.exp(-model_log_var))

    def cdf(v):
        return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))

    inv_std = np.exp(-0.5 * model_log_var)
    cdf_plus = cdf(inv_std * (x0 - model_mean + 1 / 255))
    cdf_min = cdf(inv_std * (x0 - model_mean - 1 / 255))
    log_probs = np.where(
        x0 < -0.999, np.log(np.maximum(cdf_plus, 1e-12)),
        np.where(x0 > 0.999, np.log(np.maximum(1 - cdf_min, 1e-12)), np.log(np.maximum(cdf_plus - cdf_min, 1e-12))))
    kl_bits = kl.mean(axis=(1, 2, 3)) / np.log(2.0)
    nll_bits = -log_probs.mean(axis=(1, 2, 3)) / np.log(2.0)
    return np.where(t == 0, nll_bits, kl_bits)


def learned_variance_output(prediction, seed=0):
    """A prediction of x0 off by ~0.3 of the noise level (so at t = 0 the decoder NLL sees probable
    bins; far-off bins are float32 cancellation), in the given parametrization, plus variance values."""
    x0, noise, x_t, acp, rng = make_batch(seed)
    a, s = np.sqrt(acp), np.sqrt(1 - acp)
    x0_hat = x0 + 0.3 * s * rng.standard_normal(SHAPE)
    eps_hat = (x_t - a * x0_hat) / s
    pred = {"eps": eps_hat, "v": a * eps_hat - s * x0_hat, "x0": x0_hat}[prediction]
    var_values = rng.uniform(-1, 1, SHAPE)
    return np.concatenate([pred, var_values], axis=-1), x0, noise, x_t


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_variational_bound_matches_numpy(prediction):
    output, x0, _, x_t = learned_variance_output(prediction)
    expected = numpy_vb_bits_per_dim(output, x0, x_t, T, SCHEDULE.betas, prediction)
    vb = variational_bound(*f32(output, x0, x_t), T, SCHEDULE, prediction)
    assert np.all(expected > 0) and np.all(expected[:2] > 1.0)  # decoder NLL at t = 0, KL elsewhere
    np.testing.assert_allclose(vb[:4], expected[:4], rtol=2e-5)
    # At t = 500, 999 the posterior barely depends on x0: KLs of 1e-5 to 1e-8 bits, where float32
    # log-variance differences leave ~3 digits.
    np.testing.assert_allclose(vb[4:], expected[4:], rtol=1e-3)


def test_hybrid_loss_is_mse_plus_vb():
    output, x0, noise, x_t = learned_variance_output("eps")
    output, x0, noise, x_t = f32(output, x0, noise, x_t)
    mse = ((noise - output[..., :3]) ** 2).mean(axis=(1, 2, 3))
    loss = diffusion_loss(output, x0, x_t, T, noise, SCHEDULE, learn_sigma=True)
    np.testing.assert_allclose(loss, mse + variational_bound(output, x0, x_t, T, SCHEDULE), rtol=1e-6)
    # min-SNR weights only the MSE term
    weighted = diffusion_loss(output, x0, x_t, T, noise, SCHEDULE, learn_sigma=True, min_snr_gamma=5.0)
    w = min_snr_weight(jnp.asarray(SCHEDULE.snr[T], jnp.float32), 5.0)
    np.testing.assert_allclose(weighted, w * mse + variational_bound(output, x0, x_t, T, SCHEDULE), rtol=1e-6)


def test_vb_trains_only_the_variance_channels():
    output, x0, noise, x_t = f32(*learned_variance_output("eps"))
    grad = jax.jit(jax.grad(lambda o: variational_bound(o, x0, x_t, T, SCHEDULE).sum()))(output)
    assert np.all(np.asarray(grad[..., :3]) == 0.0)
    assert np.all(np.abs(np.asarray(grad[..., 3:])).max(axis=(1, 2, 3)) > 0)
    # so the hybrid loss's gradient on the mean channels is the MSE's alone
    def grad(**kwargs):
        return jax.jit(jax.grad(lambda o: diffusion_loss(o, x0, x_t, T, noise, SCHEDULE, **kwargs).sum()))(output)

    hybrid, mse = grad(learn_sigma=True), grad()
    np.testing.assert_allclose(hybrid[..., :3], mse[..., :3], rtol=1e-6)


def test_loss_argument_errors():
    output, x0, noise, x_t = f32(*learned_variance_output("eps"))
    with pytest.raises(ValueError, match="2C channels"):
        diffusion_loss(output[..., :3], x0, x_t, T, noise, SCHEDULE, learn_sigma=True)
    with pytest.raises(ValueError, match="valid: eps, v, x0"):
        diffusion_loss(output, x0, x_t, T, noise, SCHEDULE, prediction="epsilon")
    assert math.isfinite(float(diffusion_loss(output, x0, x_t, T, noise, SCHEDULE).sum()))
