"""Samplers: DDPM (ancestral), DDIM and DPM-Solver++ multistep.

Each walks a descending grid of schedule indices in one `jax.lax.scan`, so the
loop body is traced and compiled once whatever the step count, and the whole
sampler can sit inside the caller's `jax.jit`. Per-step coefficients are
computed up front in float64 numpy and enter the loop as float32 rows.

`model_fn(x, t)` receives t as int32 of shape (B,) holding ORIGINAL training
timesteps (`schedule.timesteps`), and returns C channels (the prediction) or
2C (the prediction, then learned-variance values, which only DDPM's
"learned_range" reads). The step after the last grid point lands on clean
data (acp = 1), like diffusers' set_alpha_to_one / final_sigmas_type="zero"
(DDIM can also stop at index 0, as set_alpha_to_one=False does).
Each sampler takes an optional `cond_fn(x, t)`, the scaled gradient of a
classifier's log p(y | x_t) (classifier_guidance.py), and applies it where
its step allows: DDPM shifts the mean, DDIM and DPM-Solver++ correct eps.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.classifier_guidance import condition_mean, condition_score
from dit_jax.diffusion.prediction import check_prediction, split_output, to_x0_eps
from dit_jax.diffusion.schedules import posterior, sampling_grid

VARIANCES = ("fixed_small", "fixed_large", "learned_range")


class Trajectory(NamedTuple):
    """Per step: the timestep the model saw, the sample after the step, the x0 prediction."""

    t: jax.Array
    x: jax.Array
    x0: jax.Array


def _rows(t, **tables):
    """Per-step float64 tables -> scan inputs: float32 coefficients plus int32 timesteps."""
    rows = {name: jnp.asarray(table, jnp.float32) for name, table in tables.items()}
    rows["t"] = jnp.asarray(t, jnp.int32)
    return rows


def _noise_rows(key, noise, num_steps, shape):
    """Per-step standard normals: the injected `noise` rows, or one key per step drawn inside the loop
    (so a 250-step run never holds 250 noise tensors)."""
    if noise is not None:
        noise = jnp.asarray(noise, jnp.float32)
        if noise.shape != (num_steps, *shape):
            raise ValueError(f"noise must have shape {(num_steps, *shape)}, got {noise.shape}")
        return noise, lambda z: z
    if key is None:
        raise ValueError("a stochastic sampler needs `key` or `noise`")
    return jax.random.split(key, num_steps), lambda k: jax.random.normal(k, shape, jnp.float32)


def _predict(model_fn, x, t, channels):
    return split_output(model_fn(x, jnp.full((x.shape[0],), t, jnp.int32)), channels)


def _gradient(cond_fn, x, t):
    return cond_fn(x, jnp.full((x.shape[0],), t, jnp.int32))


def _clip(x0, clip_x0):
    return x0 if clip_x0 is None else jnp.clip(x0, -clip_x0, clip_x0)


def _run(step, carry, rows, t, return_trajectory):
    """Scan `step(carry, row) -> (carry, (x, x0))`; keep the per-step outputs only when asked."""

    def body(carry, row):
        carry, outputs = step(carry, row)
        return carry, outputs if return_trajectory else None

    carry, outputs = jax.lax.scan(body, carry, rows)
    x = carry[0] if isinstance(carry, tuple) else carry
    if not return_trajectory:
        return x
    return x, Trajectory(jnp.asarray(t, jnp.int32), *outputs)


def ddpm_sample(model_fn, x_T, key, schedule, timesteps=None, *, spacing="leading", variance="fixed_small",
                prediction="eps", clip_x0=None, noise=None, return_trajectory=False, cond_fn=None):
    """Ancestral sampling: x_prev ~ N(posterior mean at the predicted x0, model variance).

    variance "fixed_small" is the posterior variance, "fixed_large" the beta
    between the two grid points, "learned_range" interpolates their logs with
    the model's extra channels v in [-1, 1] (improved DDPM / DiT):
    log var = frac * log(beta) + (1 - frac) * log(posterior variance), frac = (v + 1) / 2.
    No noise is added on the last step, whatever timestep it starts from
    (diffusers adds it whenever that timestep is > 0, e.g. with "trailing").
    `timesteps`: None = every index of `schedule` (DiT: respace(s, "250")),
    int = that many steps with `spacing` (DiT's "250" is spacing="dit"),
    or explicit descending indices. `noise` (num_steps, *x_T.shape) replaces
    the draws from `key`; its last row is unused. `cond_fn` moves the mean by
    the step's variance times its gradient, with guided-diffusion's variances
    also on the last step, where no noise is drawn: fixed_small's is the
    posterior variance, 0 there; fixed_large and learned_range's lower end take
    the step before's posterior variance there (its "clipped" log variance).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; valid: {', '.join(VARIANCES)}")
    check_prediction(prediction)
    grid = sampling_grid(schedule, timesteps, spacing)
    acp = schedule.alphas_cumprod[grid]
    post = posterior(acp, np.append(acp[1:], 1.0))
    z_rows, draw = _noise_rows(key, noise, len(grid), x_T.shape)
    last = post.variance[-2] if len(grid) > 1 else post.beta[-1]
    rows = _rows(
        schedule.timesteps[grid],
        alpha=np.sqrt(acp),
        sigma=np.sqrt(1.0 - acp),
        coef_x0=post.coef_x0,
        coef_xt=post.coef_xt,
        min_log=np.log(np.append(post.variance[:-1], last)),  # 0 on the last step: guided-diffusion's stand-in
        max_log=np.log(post.beta),
        fixed_var=post.variance if variance == "fixed_small" else np.append(post.beta[:-1], last),
        noise_scale=np.arange(len(grid)) < len(grid) - 1,
    )
    rows["z"] = z_rows
    channels = x_T.shape[-1]

    def step(x, row):
        pred, var_values = _predict(model_fn, x, row["t"], channels)
        x0 = _clip(to_x0_eps(pred, x, row["alpha"], row["sigma"], prediction)[0], clip_x0)
        mean = row["coef_x0"] * x0 + row["coef_xt"] * x
        if variance == "learned_range":
            if var_values.shape != x.shape:
                raise ValueError("variance='learned_range' needs a model output with 2C channels")
            frac = (var_values + 1.0) / 2.0
            log_var = frac * row["max_log"] + (1.0 - frac) * row["min_log"]
        else:
            log_var = row["min_log"] if variance == "fixed_small" else row["max_log"]
        if cond_fn is not None:
            var = jnp.exp(log_var) if variance == "learned_range" else row["fixed_var"]
            mean = condition_mean(mean, var, _gradient(cond_fn, x, row["t"]))
        x = mean + row["noise_scale"] * jnp.exp(0.5 * log_var) * draw(row["z"])
        return x, (x, x0)

    return _run(step, jnp.asarray(x_T, jnp.float32), rows, schedule.timesteps[grid], return_trajectory)


def ddim_table(schedule, grid, eta, stride=None, set_alpha_to_one=True):
    """Per-step DDIM coefficients (float64) on descending indices `grid`.

    stride None steps to the next grid point (DiT; diffusers' default too
    whenever the grid is evenly strided); an int steps from index t to
    t - stride, as diffusers' DDIMScheduler always does with stride T // N,
    which leaves the grid when it is not evenly strided ("trailing",
    "linspace"). Below index 0 the level is clean data (acp = 1) or, with
    set_alpha_to_one=False, index 0.
    """
    if stride is not None and (int(stride) != stride or stride < 1):
        raise ValueError(f"stride must be a positive integer (diffusers: T // N) or None, got {stride}")
    grid = np.asarray(grid)
    acp_all = schedule.alphas_cumprod
    acp = acp_all[grid]
    to = np.append(grid[1:], -1) if stride is None else grid - int(stride)
    acp_prev = np.where(to >= 0, acp_all[np.maximum(to, 0)], 1.0 if set_alpha_to_one else acp_all[0])
    std = eta * np.sqrt(posterior(acp, acp_prev).variance)
    return dict(alpha=np.sqrt(acp), sigma=np.sqrt(1.0 - acp), alpha_prev=np.sqrt(acp_prev),
                sigma_prev=np.sqrt(1.0 - acp_prev), direction=np.sqrt(1.0 - acp_prev - std**2), std=std)


def ddim_predict(model_fn, x, row, prediction, clip_x0, cond_fn=None):
    """(x0, eps) at a step's level; with clip_x0, eps is re-derived from the clipped x0 (DiT; diffusers'
    use_clipped_model_output=True); with cond_fn, eps is then corrected and x0 re-derived from it."""
    pred, _ = _predict(model_fn, x, row["t"], x.shape[-1])
    x0, eps = to_x0_eps(pred, x, row["alpha"], row["sigma"], prediction)
    if clip_x0 is not None:
        x0 = _clip(x0, clip_x0)
        eps = (x - row["alpha"] * x0) / row["sigma"]
    if cond_fn is not None:
        x0, eps = condition_score(x, eps, _gradient(cond_fn, x, row["t"]), row["alpha"], row["sigma"])
    return x0, eps


def ddim_update(x0, eps, row, z=None):
    """DDIM's move to the step's next level: alpha_prev x0 + direction eps, plus std z when noise is drawn."""
    x = row["alpha_prev"] * x0 + row["direction"] * eps
    return x if z is None else x + row["std"] * z


def ddim_sample(model_fn, x_T, key, schedule, timesteps=None, *, spacing="leading", eta=0.0, prediction="eps",
                clip_x0=None, stride=None, set_alpha_to_one=True, noise=None, return_trajectory=False,
                cond_fn=None):
    """DDIM: x_prev = sqrt(acp_prev) x0 + sqrt(1 - acp_prev - s^2) eps + s z, s = eta * sqrt(posterior variance).

    eta = 0 is deterministic (`key` may be None); eta = 1 has DDPM's
    fixed_small marginals. `timesteps` and `noise` as in `ddpm_sample`; DiT's
    "ddim50" is 50 steps with spacing="leading". `stride` and
    `set_alpha_to_one` as in `ddim_table`: stride=T // N and
    set_alpha_to_one=False is diffusers' DDIMScheduler so configured (with
    N steps of its spacing, e.g. "trailing").
    """
    check_prediction(prediction)
    grid = sampling_grid(schedule, timesteps, spacing)
    table = ddim_table(schedule, grid, eta, stride, set_alpha_to_one)
    rows = _rows(schedule.timesteps[grid], **table)
    stochastic = eta != 0
    if stochastic:
        rows["z"], draw = _noise_rows(key, noise, len(grid), x_T.shape)

    def step(x, row):
        x0, eps = ddim_predict(model_fn, x, row, prediction, clip_x0, cond_fn)
        x = ddim_update(x0, eps, row, draw(row["z"]) if stochastic else None)
        return x, (x, x0)

    return _run(step, jnp.asarray(x_T, jnp.float32), rows, schedule.timesteps[grid], return_trajectory)


def _dpm_orders(num_steps, solver_order):
    """Step orders as diffusers: warm up while history is short, first order on the final
    step to sigma = 0, and at most second order before it when there are fewer than 15 steps."""
    orders = np.minimum(np.arange(1, num_steps + 1), solver_order)
    if 2 <= num_steps < 15:
        orders[-2] = min(orders[-2], 2)
    orders[-1] = 1
    return orders


def dpm_solver_pp_sample(model_fn, x_T, schedule, timesteps=None, *, order=2, spacing="linspace",
                         prediction="eps", clip_x0=None, return_trajectory=False, cond_fn=None):
    """DPM-Solver++ multistep (Lu et al. 2022): data prediction, diffusers' "midpoint" second order.

    In lambda = log(alpha / sigma) the exact step from s to t is
    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral of e^lambda x0(lambda) d lambda;
    an order-k step expands x0 with divided differences of the last k
    predictions (D0, D1, D2 below). An int `timesteps` uses diffusers' DPM grid
    (`spaced_timesteps(..., exclude_zero=True)`); the final step goes to sigma = 0.
    `cond_fn` corrects each step's eps, so the x0 the solver integrates.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    check_prediction(prediction)
    grid = sampling_grid(schedule, timesteps, spacing, exclude_zero=True)
    acp = schedule.alphas_cumprod[grid]
    alpha = np.append(np.sqrt(acp), 1.0)
    sigma = np.append(np.sqrt(1.0 - acp), 0.0)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # +inf at the final sigma = 0
    h = np.diff(lam)  # step sizes in lambda; +inf on the last step, where only first order is used
    exp_neg_h = np.exp(-h)
    rows = _rows(
        schedule.timesteps[grid],
        alpha=alpha[:-1],
        sigma=sigma[:-1],
        ratio=sigma[1:] / sigma[:-1],
        phi1=alpha[1:] * (1.0 - exp_neg_h),
        phi2=alpha[1:] * ((exp_neg_h - 1.0) / h + 1.0),
        phi3=alpha[1:] * ((exp_neg_h - 1.0) / h**2 + 1.0 / h - 0.5),  # (e^-h - 1 + h) / h^2 - 1/2, finite at h = inf
        r0=np.append(1.0, h[:-1]) / h,  # previous step size relative to this one (placeholder where unused)
        r1=np.append([1.0, 1.0], h[:-2])[: len(h)] / h,
    )
    rows["order"] = jnp.asarray(_dpm_orders(len(grid), order), jnp.int32)

    def first(x, m0, m1, m2, row):
        return row["ratio"] * x + row["phi1"] * m0

    def second(x, m0, m1, m2, row):
        d1 = (m0 - m1) / row["r0"]
        return row["ratio"] * x + row["phi1"] * (m0 + 0.5 * d1)

    def third(x, m0, m1, m2, row):
        r0, r1 = row["r0"], row["r1"]
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return row["ratio"] * x + row["phi1"] * m0 + row["phi2"] * d1 - row["phi3"] * d2

    def step(carry, row):
        x, m1, m2 = carry  # m1, m2: the previous two x0 predictions
        m0, _ = ddim_predict(model_fn, x, row, prediction, clip_x0, cond_fn)
        x = jax.lax.switch(row["order"] - 1, (first, second, third), x, m0, m1, m2, row)
        return (x, m0, m1), (x, m0)

    x_T = jnp.asarray(x_T, jnp.float32)
    carry = (x_T, jnp.zeros_like(x_T), jnp.zeros_like(x_T))
    return _run(step, carry, rows, schedule.timesteps[grid], return_trajectory)
