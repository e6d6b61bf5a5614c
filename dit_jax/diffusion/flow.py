"""Flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023): the objective of SiT and SD3.

Time t runs from 0 (data) to 1 (noise) on a path x_t = alpha(t) x0 + sigma(t) eps:
"linear" is alpha = 1 - t, sigma = t (rectified flow, SD3, SiT's default);
"gvp" is SiT's variance-preserving alpha = cos(pi t / 2), sigma = sin(pi t / 2).
The network regresses the path's velocity v = dx_t/dt = alpha' x0 + sigma' eps
(eps - x0 on the linear path), and sampling integrates dx/dt = v from t = 1 to 0.
The network sees t * T_SCALE as its timestep, as SiT and SD3 feed theirs.

Samplers walk a descending sigma grid (`flow_sigmas`, diffusers' FlowMatchEulerDiscreteScheduler's,
with SD3's shift) in one `jax.lax.scan`, like dit_jax/diffusion/samplers.py. They take `model_fn(x, t)`
with t float32 (B,) = sigma * T_SCALE, returning the velocity (C channels).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.losses import mean_flat
from dit_jax.diffusion.samplers import Trajectory

PATHS = ("linear", "gvp")
TIME_SAMPLINGS = ("uniform", "logit_normal")
FLOW_SAMPLERS = ("euler", "heun", "euler_maruyama")
T_SCALE = 1000.0  # the timestep the network sees is t * T_SCALE (SiT, SD3), the range its embedder was built for


def check_path(path):
    if path not in PATHS:
        raise ValueError(f"unknown flow path {path!r}; valid: {', '.join(PATHS)}")


def coefficients(t, path="linear"):
    """(alpha, sigma, d alpha / dt, d sigma / dt) at t; numpy in, numpy (float64) out, else jax."""
    check_path(path)
    xp = jnp if isinstance(t, jax.Array) else np
    if path == "linear":
        return 1.0 - t, t, -xp.ones_like(t), xp.ones_like(t)
    half_pi = math.pi / 2
    c, s = xp.cos(half_pi * t), xp.sin(half_pi * t)
    return c, s, -half_pi * s, half_pi * c


def _expand(t, ndim):
    return t.reshape((-1,) + (1,) * (ndim - 1))


def interpolate(x0, noise, t, path="linear"):
    """x_t = alpha(t) x0 + sigma(t) eps, t (B,)."""
    alpha, sigma, _, _ = coefficients(_expand(t, x0.ndim), path)
    return alpha * x0 + sigma * noise


def velocity_target(x0, noise, t, path="linear"):
    """v = alpha'(t) x0 + sigma'(t) eps: eps - x0 on the linear path."""
    _, _, d_alpha, d_sigma = coefficients(_expand(t, x0.ndim), path)
    return d_alpha * x0 + d_sigma * noise


def to_x0_eps(v, x, t, path="linear"):
    """Data and noise estimates implied by a velocity at x_t: the 2x2 system x = a x0 + s eps, v = a' x0 + s' eps
    (determinant 1 on the linear path, pi/2 on gvp, so it never vanishes)."""
    alpha, sigma, d_alpha, d_sigma = coefficients(t, path)
    det = alpha * d_sigma - sigma * d_alpha
    return (d_sigma * x - sigma * v) / det, (alpha * v - d_alpha * x) / det


def shift_time(t, shift):
    """SD3's resolution-dependent shift t' = shift t / (1 + (shift - 1) t): shift > 1 moves time towards noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def unshift_time(t, shift):
    """The inverse of `shift_time`."""
    return t / (shift - (shift - 1.0) * t)


def sample_time(key, batch, sampling="uniform", mean=0.0, std=1.0, shift=1.0):
    """Training times (B,) in [0, 1]: uniform, or logit-normal sigmoid(mean + std n) (SD3), then shifted."""
    if sampling not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time sampling {sampling!r}; valid: {', '.join(TIME_SAMPLINGS)}")
    if sampling == "uniform":
        t = jax.random.uniform(key, (batch,), jnp.float32)
    else:
        t = jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), jnp.float32))
    return t if shift == 1 else shift_time(t, shift)


def flow_loss(model_output, x0, noise, t, path="linear"):
    """Per-example MSE between the predicted and the path's velocity."""
    if model_output.shape != x0.shape:
        raise ValueError(f"a flow model predicts a velocity shaped like its input {x0.shape}, got "
                         f"{model_output.shape} (learn_sigma's extra channels?)")
    return mean_flat((velocity_target(x0, noise, t, path) - model_output) ** 2)


def training_loss(model_fn, x0, noise, key, *, path="linear", sampling="uniform", mean=0.0, std=1.0, shift=1.0):
    """Per-example flow-matching loss of `model_fn(x_t, timestep)` at times drawn with `key`."""
    t = sample_time(key, x0.shape[0], sampling, mean, std, shift)
    return flow_loss(model_fn(interpolate(x0, noise, t, path), t * T_SCALE), x0, noise, t, path)


def flow_sigmas(steps, shift=1.0, start=1.0, num_train_timesteps=1000):
    """The descending levels sampled, steps + 1 of them ending at 0 (float64).

    With start=1 these are diffusers' FlowMatchEulerDiscreteScheduler's sigmas
    (`set_timesteps(steps)` with `shift`): evenly spaced in unshifted time from
    1 to its sigma_min = shift_time(1 / num_train_timesteps) (which diffusers
    then shifts once more), shifted, and 0 appended. A smaller `start`
    (img2img) spaces the same way from the level `start` itself.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < start <= 1:
        raise ValueError(f"start must be in (0, 1], got {start}")
    first = unshift_time(start, shift)
    u = np.linspace(first, min(first, shift_time(1.0 / num_train_timesteps, shift)), steps)
    return np.append(shift_time(u, shift), 0.0)


def img2img_start(image, noise, steps, shift, strength, path="linear"):
    """SDEdit for flows: the sigmas of round(strength * steps) steps from t = strength, and `image` moved to that
    level with `noise`. Strength 1 is plain sampling from `noise`; 0 (or fewer than half a step) keeps the image."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    kept = int(round(strength * steps))
    if kept == 0:
        return np.zeros((0,)), image
    if strength == 1:
        return flow_sigmas(steps, shift), noise
    alpha, sigma, _, _ = coefficients(np.float64(strength), path)
    return flow_sigmas(kept, shift, start=strength), np.float32(alpha) * image + np.float32(sigma) * noise


def _velocity(model_fn, x, t):
    v = model_fn(x, jnp.full((x.shape[0],), t, jnp.float32))
    if v.shape != x.shape:
        raise ValueError(f"a flow model returns a velocity shaped like x {x.shape}, got {v.shape}")
    return v


def _scan(step, x_T, sigmas, path, rows, known, mask, return_trajectory):
    """Runs `step(x, row) -> (x_next, v)` over the grid (`rows`: more per-step inputs); with `known` and `mask`
    (1 = regenerate), inpaints: after each step the kept region is `known` moved to the new level along the
    path with x_T's noise, as diffusers' SD3 inpainting does, so at t = 0 it is `known` exactly."""
    sigmas = np.asarray(sigmas, np.float64)
    alpha, sigma, _, _ = coefficients(sigmas, path)
    table = dict(s=sigmas[:-1], s_next=sigmas[1:], alpha_next=alpha[1:], sigma_next=sigma[1:])
    table = {k: jnp.asarray(v, jnp.float32) for k, v in table.items()}
    table.update(rows)
    x_T = jnp.asarray(x_T, jnp.float32)
    keep = None if mask is None else 1.0 - jnp.asarray(mask, jnp.float32)

    def body(x, row):
        x_next, v = step(x, row)
        if keep is not None:
            x_next = keep * (row["alpha_next"] * known + row["sigma_next"] * x_T) + (1.0 - keep) * x_next
        if not return_trajectory:
            return x_next, None
        return x_next, (x_next, to_x0_eps(v, x, row["s"], path)[0])

    x, outputs = jax.lax.scan(body, x_T, table)
    if not return_trajectory:
        return x
    return x, Trajectory(jnp.asarray(sigmas[:-1] * T_SCALE, jnp.float32), *outputs)


def euler_sample(model_fn, x_T, sigmas, *, path="linear", known=None, mask=None, return_trajectory=False):
    """Euler on dx/dt = v: x_next = x + (s_next - s) v(x, s). On the linear path with diffusers' sigmas this is
    FlowMatchEulerDiscreteScheduler.step."""

    def step(x, row):
        v = _velocity(model_fn, x, row["s"] * T_SCALE)
        return x + (row["s_next"] - row["s"]) * v, v

    return _scan(step, x_T, sigmas, path, {}, known, mask, return_trajectory)


def heun_sample(model_fn, x_T, sigmas, *, path="linear", known=None, mask=None, return_trajectory=False):
    """Heun (trapezoid) steps; the last, to sigma = 0, is an Euler step (EDM; diffusers'
    FlowMatchHeunDiscreteScheduler), so N steps cost 2N - 1 model calls."""

    def step(x, row):
        dt = row["s_next"] - row["s"]
        v = _velocity(model_fn, x, row["s"] * T_SCALE)
        x_euler = x + dt * v

        def heun(x_euler):
            return x + 0.5 * dt * (v + _velocity(model_fn, x_euler, row["s_next"] * T_SCALE))

        return jax.lax.cond(row["s_next"] > 0, heun, lambda x_euler: x_euler, x_euler), v

    return _scan(step, x_T, sigmas, path, {}, known, mask, return_trajectory)


def euler_maruyama_sample(model_fn, x_T, key, sigmas, *, path="linear", diffusion=1.0, noise=None, known=None,
                          mask=None, return_trajectory=False):
    """SiT's SDE sampler, Euler-Maruyama with its default diffusion w(t) = `diffusion` * sigma(t).

    In sampling time tau = 1 - t the SDE dx = (-v + w score) dtau + sqrt(2 w) dW
    has the ODE's marginals for any w >= 0; score = -eps_hat / sigma, so with
    w = c sigma the drift is -(v + c eps_hat) and never divides by zero. As in
    SiT ("Mean"), the last step, to t = 0, adds no noise. Unlike SiT (uniform
    steps, the last 0.04 long) the grid is `sigmas`. `noise` (steps, *x_T.shape)
    replaces the draws from `key`.
    """
    sigmas = np.asarray(sigmas, np.float64)
    steps = len(sigmas) - 1
    _, sigma, _, _ = coefficients(sigmas[:-1], path)
    scale = np.sqrt(2.0 * diffusion * sigma * (sigmas[:-1] - sigmas[1:]))
    scale[-1] = 0.0
    if noise is not None:
        noise = jnp.asarray(noise, jnp.float32)
        if noise.shape != (steps, *x_T.shape):
            raise ValueError(f"noise must have shape {(steps, *x_T.shape)}, got {noise.shape}")
        draw = lambda z: z
    else:
        if key is None:
            raise ValueError("euler_maruyama needs `key` or `noise`")
        noise, draw = jax.random.split(key, steps), lambda k: jax.random.normal(k, x_T.shape, jnp.float32)

    def step(x, row):
        v = _velocity(model_fn, x, row["s"] * T_SCALE)
        eps = to_x0_eps(v, x, row["s"], path)[1]
        return x + (row["s_next"] - row["s"]) * (v + diffusion * eps) + row["scale"] * draw(row["z"]), v

    rows = dict(scale=jnp.asarray(scale, jnp.float32), z=noise)
    return _scan(step, x_T, sigmas, path, rows, known, mask, return_trajectory)


FLOW_SAMPLE = {"euler": euler_sample, "heun": heun_sample}


def flow_sample(sampler, model_fn, x_T, sigmas, *, key=None, path="linear", known=None, mask=None,
                return_trajectory=False):
    """One of FLOW_SAMPLERS by name; only euler_maruyama reads `key`."""
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"unknown flow sampler {sampler!r}; valid: {', '.join(FLOW_SAMPLERS)}")
    common = dict(path=path, known=known, mask=mask, return_trajectory=return_trajectory)
    if sampler == "euler_maruyama":
        return euler_maruyama_sample(model_fn, x_T, key, sigmas, **common)
    return FLOW_SAMPLE[sampler](model_fn, x_T, sigmas, **common)
