"""Image editing with an unconditional-looking sampler: inpainting (RePaint) and image-to-image (SDEdit).

Neither needs a model trained for editing. Inpainting keeps the known pixels
by replacing them, after every step, with the original noised to that step's
level, and lets the model fill the rest (Lugmayr et al. 2022). Replacement
alone leaves seams, because the generated part never sees the known part's
actual noise; RePaint's resampling jumps back one step (re-noising the whole
image) and redoes it, `resample` times in all, so the two parts harmonise.
SDEdit (Meng et al. 2022) noises a whole image to an intermediate level and
denoises it under a new condition: the low frequencies of the input survive.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dit_jax.diffusion.prediction import check_prediction
from dit_jax.diffusion.samplers import Trajectory, ddim_predict, ddim_table, ddim_update
from dit_jax.diffusion.schedules import sampling_grid


def inpaint(model_fn, x_T, key, schedule, timesteps, known, mask, *, eta=1.0, resample=1, spacing="leading",
            prediction="eps", clip_x0=None, return_trajectory=False, cond_fn=None):
    """Regenerates where `mask` is 1 and keeps `known` where it is 0; the result equals `known` there exactly.

    Each step is a DDIM step with noise std eta * sqrt(posterior variance):
    eta = 1 is DDPM's ancestral step with the posterior ("fixed_small")
    variance, eta = 0 deterministic DDIM. After it, the known region is set to
    sqrt(acp_prev) known + sqrt(1 - acp_prev) z. With resample = R > 1 the step
    is done R times, each but the last followed by a jump back to the step's
    level: x_t = sqrt(acp_t / acp_prev) x_prev + sqrt(1 - acp_t / acp_prev) z,
    which is exactly the forward process between the two levels.
    `mask` broadcasts against x_T (e.g. (B, H, W, 1)); `timesteps` and
    `spacing` as in `ddpm_sample`; the trajectory keeps the last pass of each step.
    `cond_fn` (classifier guidance) corrects each step's eps, as in `ddim_sample`.
    """
    check_prediction(prediction)
    if resample < 1:
        raise ValueError(f"resample must be at least 1, got {resample}")
    grid = sampling_grid(schedule, timesteps, spacing)
    table = ddim_table(schedule, grid, eta)
    acp = schedule.alphas_cumprod[grid]
    acp_prev = np.append(acp[1:], 1.0)
    table.update(back_scale=np.sqrt(acp / acp_prev), back_noise=np.sqrt(1.0 - acp / acp_prev))
    rows = {name: jnp.asarray(v, jnp.float32) for name, v in table.items()}
    rows["t"] = jnp.asarray(schedule.timesteps[grid], jnp.int32)
    rows["key"] = jax.random.split(key, len(grid))
    known = jnp.asarray(known, jnp.float32)
    keep = 1.0 - jnp.asarray(mask, jnp.float32)

    def normal(key):
        return jax.random.normal(key, x_T.shape, jnp.float32)

    def denoise(x, row, key):
        """One step from level t to the next, then the known region put back at the new level."""
        x0, eps = ddim_predict(model_fn, x, row, prediction, clip_x0, cond_fn)
        k_step, k_known = jax.random.split(key)
        x_prev = ddim_update(x0, eps, row, normal(k_step))
        known_prev = row["alpha_prev"] * known + row["sigma_prev"] * normal(k_known)
        return keep * known_prev + (1.0 - keep) * x_prev, x0

    def step(x, row):
        def attempt(carry, r):
            x, _, _ = carry
            k_step, k_back = jax.random.split(jax.random.fold_in(row["key"], r))
            x_prev, x0 = denoise(x, row, k_step)
            x_back = row["back_scale"] * x_prev + row["back_noise"] * normal(k_back)  # unused after the last pass
            return (x_back, x_prev, x0), None

        (_, x_prev, x0), _ = jax.lax.scan(attempt, (x, x, jnp.zeros_like(x)), jnp.arange(resample))
        return x_prev, (x_prev, x0) if return_trajectory else None

    x, outputs = jax.lax.scan(step, jnp.asarray(x_T, jnp.float32), rows)
    return (x, Trajectory(rows["t"], *outputs)) if return_trajectory else x


def sdedit_start(image, noise, schedule, grid, strength):
    """Where SDEdit starts: the last round(strength * len(grid)) steps of `grid`, and `image` noised to the
    first of them with `noise`.

    Strength 0 keeps no step (the input comes back unchanged); strength 1 keeps
    every step and starts from `noise` itself, so it is plain sampling from that
    noise (the image's weight at the top of a schedule, sqrt(acp), is ~0.006 for DiT's).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    grid = np.asarray(grid)
    kept = grid[len(grid) - int(round(strength * len(grid))):]
    if len(kept) == len(grid):
        return kept, noise
    if len(kept) == 0:
        return kept, image
    acp = schedule.alphas_cumprod[kept[0]]
    return kept, np.sqrt(acp).astype(np.float32) * image + np.sqrt(1.0 - acp).astype(np.float32) * noise
