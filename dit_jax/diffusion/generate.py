"""Conditions to images: a DiT, classifier-free guidance and a named sampler."""

import functools

import jax
import jax.numpy as jnp

from dit_jax.diffusion.guidance import classifier_free_guidance
from dit_jax.diffusion.samplers import ddim_sample, ddpm_sample, dpm_solver_pp_sample

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "dpmpp_3m")


def check_sampler(name):
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {SAMPLERS}.")


def generate(model, cond, shape, key, schedule, *, sampler="dpmpp_2m", steps=20, cfg_scale=4.0,
             guidance_channels=None, prediction="eps", learn_sigma=True, clip_x0=None,
             return_trajectory=False):
    """Samples `shape` = (B, H, W, C) from the model under `cond` (dict of y / text / text_mask / pooled).

    Guidance runs the conditional and null halves in one batched call; cfg_scale 1 skips the null half.
    clip_x0=1 keeps each step's predicted image in [-1, 1], as DiT and diffusers do for pixels.
    """
    check_sampler(sampler)
    batch = shape[0]

    def model_fn(x, t, c):
        return model(x, t, **c)

    cond = dict(cond, drop=jnp.zeros((batch,), bool))
    if cfg_scale == 1:
        fn = functools.partial(model_fn, c=cond)
    else:
        null = dict(cond, drop=jnp.ones((batch,), bool))
        fn = classifier_free_guidance(model_fn, cond, null, cfg_scale, guidance_channels)
    k_init, k_steps = jax.random.split(key)
    x_T = jax.random.normal(k_init, shape, jnp.float32)
    common = dict(prediction=prediction, clip_x0=clip_x0, return_trajectory=return_trajectory)
    if sampler == "ddpm":
        return ddpm_sample(fn, x_T, k_steps, schedule, steps,
                           variance="learned_range" if learn_sigma else "fixed_small", **common)
    if sampler == "ddim":
        return ddim_sample(fn, x_T, None, schedule, steps, **common)
    return dpm_solver_pp_sample(fn, x_T, schedule, steps, order=2 if sampler == "dpmpp_2m" else 3, **common)
