"""Conditions to images: a DiT, classifier-free guidance and a named sampler, optionally editing an image."""

import functools

import jax
import jax.numpy as jnp

from dit_jax.diffusion import editing, flow
from dit_jax.diffusion.composition import composed_model
from dit_jax.diffusion.flow import FLOW_SAMPLERS
from dit_jax.diffusion.guidance import classifier_free_guidance
from dit_jax.diffusion.samplers import Trajectory, ddim_sample, ddpm_sample, dpm_solver_pp_sample
from dit_jax.diffusion.schedules import SPACINGS, sampling_grid

SAMPLERS = ("ddpm", "ddim", "ddim_diffusers", "dpmpp_2m", "dpmpp_3m")
# Both take eta. ddim steps to the next grid point and ends on clean data (DiT); ddim_diffusers steps as diffusers'
# DDIMScheduler with set_alpha_to_one=False (from t to t - T // N, the last to alphas_cumprod[0]).
DDIM_SAMPLERS = ("ddim", "ddim_diffusers")
INPAINT_SAMPLERS = ("ddpm", "ddim")  # RePaint's steps: DDIM with eta 1 (ddpm) or the given eta
# Those whose steps take classifier guidance: ddpm moves its mean, the others correct eps (classifier_guidance.py).
CLASSIFIER_SAMPLERS = ("ddpm", "ddim", "ddim_diffusers", "dpmpp_2m", "dpmpp_3m")
# The one home of the sampling defaults: generate's, the commands' flags and the recipes' sample.* keys.
SAMPLER, STEPS, CFG_SCALE = "dpmpp_2m", 25, 4.0
# Each sampler's spacing when none is asked for: diffusers' default for its scheduler.
DEFAULT_SPACING = {"ddpm": "leading", "ddim": "leading", "ddim_diffusers": "leading", "dpmpp_2m": "linspace",
                   "dpmpp_3m": "linspace"}


OBJECTIVES = ("ddpm", "flow")  # what the model was trained for: DDPM's noise levels, or flow matching (flow.py)
FLOW_SAMPLER = "heun"  # generate_flow's default


def check_sampler(name, inpaint=False, classifier=False):
    if name not in SAMPLERS + FLOW_SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; choose one of {SAMPLERS + FLOW_SAMPLERS}.")
    if inpaint and name not in INPAINT_SAMPLERS + FLOW_SAMPLERS:
        raise ValueError(f"Inpainting takes ddpm or ddim steps (RePaint) or a flow sampler, not {name!r}.")
    if classifier and name not in CLASSIFIER_SAMPLERS:
        raise ValueError(f"Classifier guidance takes {', '.join(CLASSIFIER_SAMPLERS)} steps, not {name!r}: "
                         "pick one of those or drop the classifier.")


def check_objective(objective, sampler):
    """A DDPM model samples with the DDPM samplers, a flow model with the flow ones."""
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {objective!r}; choose one of {OBJECTIVES}.")
    if objective == "flow" and sampler not in FLOW_SAMPLERS:
        raise ValueError(f"{sampler} is a DDPM sampler but the model is trained with flow matching: sample with "
                         f"{' | '.join(FLOW_SAMPLERS)}.")
    if objective == "ddpm" and sampler in FLOW_SAMPLERS:
        raise ValueError(f"{sampler} is a flow-matching sampler but the model is trained with DDPM: sample with "
                         f"{' | '.join(SAMPLERS)}.")


def check_spacing(spacing):
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"Unknown spacing {spacing!r}; choose one of {SPACINGS}.")


def sampler_grid(schedule, sampler, steps, spacing=None):
    """The descending schedule indices `sampler` visits in `steps` steps; spacing None: the sampler's default."""
    spacing = spacing or DEFAULT_SPACING[sampler]
    return sampling_grid(schedule, steps, spacing, exclude_zero=sampler.startswith("dpmpp"))


def guided_model(model, cond, batch, cfg_scale, guidance_channels=None):
    """`fn(x, t)` for the samplers: the model under `cond`, guided against its null condition unless cfg_scale is 1."""
    def model_fn(x, t, c):
        return model(x, t, **c)

    cond = dict(cond, drop=jnp.zeros((batch,), bool))
    if not isinstance(cfg_scale, jax.Array) and cfg_scale == 1:  # a traced scale (serve) always guides
        return functools.partial(model_fn, c=cond)
    null = dict(cond, drop=jnp.ones((batch,), bool))
    return classifier_free_guidance(model_fn, cond, null, cfg_scale, guidance_channels)


def guided(model, cond, batch, cfg_scale, guidance_channels=None, guidance=None):
    """Classifier-free guidance, or with `guidance` {condition: weight} composable guidance."""
    if guidance:
        return composed_model(model, cond, guidance, guidance_channels)
    return guided_model(model, cond, batch, cfg_scale, guidance_channels)


def generate(model, cond, shape, key, schedule, *, sampler=SAMPLER, steps=STEPS, spacing=None, eta=0.0,
             cfg_scale=CFG_SCALE, guidance_channels=None, prediction="eps", learn_sigma=True, clip_x0=None,
             return_trajectory=False, image=None, mask=None, strength=1.0, resample=1, x_T=None, cond_fn=None,
             guidance=None):
    """Samples `shape` = (B, H, W, C) from the model under `cond` (dict of y / text / text_mask / pooled).

    `spacing` (leading | trailing | linspace | dit) picks the timesteps, None each sampler's diffusers
    default (DEFAULT_SPACING); `eta` is DDIM's noise (0: deterministic). sampler="ddim_diffusers" with
    spacing="trailing" is diffusers' DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False).
    Guidance runs the conditional and null halves in one batched call; cfg_scale 1 skips the null half.
    clip_x0=1 keeps each step's predicted image in [-1, 1], as DiT and diffusers do for pixels.
    Editing (`image` in the model's space, broadcast against `shape`): with `mask` (1 = regenerate)
    inpaint with ddpm (eta 1) or ddim (`eta`) steps and `resample` RePaint passes; without, SDEdit from `strength`.
    The key gives the same starting noise either way, so strength 1 is exactly plain sampling.
    `x_T` replaces the starting noise drawn from the key (e.g. noise drawn per image).
    `cond_fn(x, t)` (classifier_guidance.classifier_gradient) adds classifier guidance to every step, editing
    included, on top of the classifier-free guided output.
    `guidance` {condition: weight} replaces classifier-free guidance by composable guidance, one term a
    condition (composition.composed_model; cfg_scale is then unused).
    """
    check_sampler(sampler, inpaint=mask is not None, classifier=cond_fn is not None)
    check_objective("ddpm", sampler)
    fn = guided(model, cond, shape[0], cfg_scale, guidance_channels, guidance)
    k_init, k_steps = jax.random.split(key)
    x_T = jax.random.normal(k_init, shape, jnp.float32) if x_T is None else x_T
    check_spacing(spacing)
    grid = sampler_grid(schedule, sampler, steps, spacing)
    common = dict(prediction=prediction, clip_x0=clip_x0, return_trajectory=return_trajectory, cond_fn=cond_fn)
    if mask is not None:
        image = jnp.broadcast_to(image, shape)
        return editing.inpaint(fn, x_T, k_steps, schedule, grid, image, mask, eta=1.0 if sampler == "ddpm" else eta,
                               resample=resample, **common)
    if image is not None:
        grid, x_T = editing.sdedit_start(jnp.broadcast_to(image, shape), x_T, schedule, grid, strength)
        if len(grid) == 0:
            empty = jnp.zeros((0, *shape), jnp.float32)
            return (x_T, Trajectory(jnp.zeros((0,), jnp.int32), empty, empty)) if return_trajectory else x_T
    if sampler == "ddpm":
        return ddpm_sample(fn, x_T, k_steps, schedule, grid,
                           variance="learned_range" if learn_sigma else "fixed_small", **common)
    if sampler in DDIM_SAMPLERS:
        diffusers = sampler == "ddim_diffusers"  # its stride is T // N for all N steps, SDEdit's few included
        return ddim_sample(fn, x_T, k_steps if eta else None, schedule, grid, eta=eta,
                           stride=len(schedule) // steps if diffusers else None, set_alpha_to_one=not diffusers,
                           **common)
    return dpm_solver_pp_sample(fn, x_T, schedule, grid, order=2 if sampler == "dpmpp_2m" else 3, **common)


def generate_flow(model, cond, shape, key, *, sampler=FLOW_SAMPLER, steps=STEPS, shift=1.0, path="linear",
                  cfg_scale=CFG_SCALE, guidance_channels=None, return_trajectory=False, image=None, mask=None,
                  strength=1.0, resample=1, x_T=None, guidance=None):
    """`generate` for a flow-matching model: euler | heun | euler_maruyama over `flow.flow_sigmas(steps, shift)`.

    Guidance (classifier-free, or composable with `guidance`) mixes the velocities. Editing: with `mask` (1 = regenerate) the
    kept region follows `image` along the path with the starting noise (no
    RePaint resampling); without, img2img from t = strength. Predicted images
    are not clipped (SiT and SD3 do not).
    """
    check_sampler(sampler, inpaint=mask is not None)
    check_objective("flow", sampler)
    if resample != 1:
        raise ValueError(f"resample is RePaint's (ddpm/ddim inpainting); flow inpainting takes 1, not {resample}.")
    fn = guided(model, cond, shape[0], cfg_scale, guidance_channels, guidance)
    k_init, k_steps = jax.random.split(key)
    x_T = jax.random.normal(k_init, shape, jnp.float32) if x_T is None else x_T
    sigmas, known = flow.flow_sigmas(steps, shift), None
    if mask is not None:
        known = jnp.broadcast_to(image, shape)
    elif image is not None:
        sigmas, x_T = flow.img2img_start(jnp.broadcast_to(image, shape), x_T, steps, shift, strength, path)
        if len(sigmas) == 0:
            empty = jnp.zeros((0, *shape), jnp.float32)
            return (x_T, Trajectory(jnp.zeros((0,), jnp.float32), empty, empty)) if return_trajectory else x_T
    return flow.flow_sample(sampler, fn, x_T, sigmas, key=k_steps, path=path, known=known, mask=mask,
                            return_trajectory=return_trajectory)
