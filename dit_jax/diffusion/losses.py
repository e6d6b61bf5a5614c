"""Training losses: the simple MSE objective, DiT's hybrid loss for learned
variances, and min-SNR-gamma weighting. All return one value per example.

Images are NHWC; a learned-variance model emits 2C channels on the last axis,
the prediction first.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.prediction import check_prediction, split_output, to_x0_eps, training_target
from dit_jax.diffusion.schedules import posterior


def _at(table, t, ndim):
    """Gather a float64 schedule table at timesteps t (B,), shaped to broadcast over (B, ...)."""
    return jnp.asarray(table, jnp.float32)[t].reshape((-1,) + (1,) * (ndim - 1))


def _alpha_sigma(schedule, t, ndim):
    """sqrt(acp_t), sqrt(1 - acp_t), taken in float64: in float32, 1 - acp near t = 0 keeps only 3 digits."""
    acp = schedule.alphas_cumprod
    return _at(np.sqrt(acp), t, ndim), _at(np.sqrt(1.0 - acp), t, ndim)


def mean_flat(x):
    """Mean over all but the batch axis."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def q_sample(x0, t, noise, schedule):
    """x_t ~ q(x_t | x0) = N(sqrt(acp_t) x0, (1 - acp_t) I), with the given noise."""
    alpha, sigma = _alpha_sigma(schedule, t, x0.ndim)
    return alpha * x0 + sigma * noise


def min_snr_weight(snr, gamma, prediction="eps"):
    """Min-SNR-gamma (Hang et al. 2023): weight the x0-space error by min(snr, gamma),
    expressed for the loss actually computed (eps-MSE = x0-MSE * snr, v-MSE = x0-MSE * (snr + 1))."""
    check_prediction(prediction)
    clipped = jnp.minimum(snr, gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "v":
        return clipped / (snr + 1.0)
    return clipped


def normal_kl(mean1, log_var1, mean2, log_var2):
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)), elementwise, in nats."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-log_var2))


def _approx_standard_normal_cdf(x):
    """The tanh approximation of Phi used by DDPM / improved DDPM."""
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """log P(x) for data quantized to 256 levels in [-1, 1]: the Gaussian mass of x's bin
    (width 2/255), with the edge bins extended to -inf / +inf."""
    centered = x - mean
    inv_std = jnp.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_bin = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_bin))


def variational_bound(model_output, x0, x_t, t, schedule, prediction="eps"):
    """The learned-variance term L_vb of improved DDPM / DiT, in bits per dim.

    KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0 and the discretized
    decoder NLL -log p(x0 | x_1) at t == 0. The model mean is computed from a
    stop_gradient'ed prediction, so this term only trains the variance
    channels; the MSE trains the mean.
    """
    channels = x0.shape[-1]
    pred, var_values = split_output(model_output, channels)
    if var_values.shape != x0.shape:
        raise ValueError("the variational bound needs a model output with 2C channels")
    post = posterior(schedule.alphas_cumprod, schedule.alphas_cumprod_prev)
    # The posterior variance is 0 at t = 0; improved DDPM uses t = 1's there.
    log_var_clipped = np.log(np.append(post.variance[1], post.variance[1:]))

    def at(table):
        return _at(table, t, x0.ndim)

    alpha, sigma = _alpha_sigma(schedule, t, x0.ndim)
    x0_pred = to_x0_eps(jax.lax.stop_gradient(pred), x_t, alpha, sigma, prediction)[0]
    model_mean = at(post.coef_x0) * x0_pred + at(post.coef_xt) * x_t
    frac = (var_values + 1.0) / 2.0
    model_log_var = frac * at(np.log(schedule.betas)) + (1.0 - frac) * at(log_var_clipped)

    true_mean = at(post.coef_x0) * x0 + at(post.coef_xt) * x_t
    kl = mean_flat(normal_kl(true_mean, at(log_var_clipped), model_mean, model_log_var)) / math.log(2.0)
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
    return jnp.where(t == 0, nll, kl)


def diffusion_loss(model_output, x0, x_t, t, noise, schedule, prediction="eps", learn_sigma=False,
                   min_snr_gamma=None):
    """Per-example loss: (optionally min-SNR weighted) MSE on the prediction, plus
    the variational bound when the model learns its variance (DiT's default
    hybrid loss: mse + vb, vb not rescaled)."""
    check_prediction(prediction)
    channels = x0.shape[-1]
    pred, _ = split_output(model_output, channels)
    target = training_target(x0, noise, *_alpha_sigma(schedule, t, x0.ndim), prediction)
    loss = mean_flat((target - pred) ** 2)
    if min_snr_gamma is not None:
        loss = loss * min_snr_weight(_at(schedule.snr, t, 1), min_snr_gamma, prediction)
    if learn_sigma:
        loss = loss + variational_bound(model_output, x0, x_t, t, schedule, prediction)
    return loss
