"""Gaussian diffusion for DiT: schedules, losses, samplers and guidance (pure JAX + numpy)."""

from dit_jax.diffusion.classifier_guidance import classifier_gradient
from dit_jax.diffusion.guidance import classifier_free_guidance
from dit_jax.diffusion.losses import (
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    mean_flat,
    min_snr_weight,
    normal_kl,
    q_sample,
    variational_bound,
)
from dit_jax.diffusion.prediction import PREDICTIONS, split_output, to_x0_eps, training_target
from dit_jax.diffusion.samplers import VARIANCES, Trajectory, ddim_sample, ddpm_sample, dpm_solver_pp_sample
from dit_jax.diffusion.schedules import (
    BETA_SCHEDULES,
    SPACINGS,
    Posterior,
    Schedule,
    beta_schedule,
    posterior,
    respace,
    sampling_grid,
    space_timesteps,
    spaced_timesteps,
)

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTIONS",
    "SPACINGS",
    "VARIANCES",
    "Posterior",
    "Schedule",
    "Trajectory",
    "beta_schedule",
    "classifier_free_guidance",
    "classifier_gradient",
    "ddim_sample",
    "ddpm_sample",
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "dpm_solver_pp_sample",
    "mean_flat",
    "min_snr_weight",
    "normal_kl",
    "posterior",
    "q_sample",
    "respace",
    "sampling_grid",
    "space_timesteps",
    "spaced_timesteps",
    "split_output",
    "to_x0_eps",
    "training_target",
]
