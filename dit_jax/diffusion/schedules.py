"""Noise schedules, timestep respacing and the timestep grids samplers walk.

Tables are float64 numpy: they are built once, compared against diffusers and
respaced by ratios of cumulative products, where float32 would drift. Losses
and samplers cast what they need to float32 at use.
"""

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace", "dit")


def beta_schedule(name, num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
    """Per-step betas. "linear" is DiT's; "scaled_linear" is Stable Diffusion's;
    "cosine" is improved DDPM's (diffusers' "squaredcos_cap_v2")."""
    if name == "linear":
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    if name == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2
    if name == "cosine":
        return _cosine_betas(num_timesteps)
    raise ValueError(f"unknown beta schedule {name!r}; valid: {', '.join(BETA_SCHEDULES)}")


def _cosine_betas(num_timesteps, offset=0.008, max_beta=0.999):
    """alpha_bar(s) = cos^2((s + offset) / (1 + offset) * pi / 2) on s in [0, 1];
    betas are capped because alpha_bar(1) = 0 would make the last step singular."""
    s = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((s + offset) / (1 + offset) * np.pi / 2) ** 2
    return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete VP process: x_t = sqrt(acp_t) x0 + sqrt(1 - acp_t) eps, acp = cumprod(1 - betas).

    `timesteps[i]` is the training timestep that index i stands for: arange(T)
    for a full schedule, a subset after `respace`. Models are always called with
    these original values, never with the index.
    """

    betas: np.ndarray
    timesteps: np.ndarray | None = None

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        timesteps = np.arange(len(betas)) if self.timesteps is None else self.timesteps
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "timesteps", np.asarray(timesteps, dtype=np.int64))
        if betas.ndim != 1 or self.timesteps.shape != betas.shape:
            raise ValueError("betas and timesteps must be 1-D and of equal length")

    def __len__(self):
        return len(self.betas)

    @property
    def alphas_cumprod(self):
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self):
        """acp of the step before each index; 1 before the first (the clean data)."""
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def snr(self):
        """Signal-to-noise ratio acp / (1 - acp) of each index."""
        acp = self.alphas_cumprod
        return acp / (1.0 - acp)


class Posterior(NamedTuple):
    """q(x_prev | x_t, x0) = N(coef_x0 * x0 + coef_xt * x_t, variance); beta = 1 - acp_t / acp_prev."""

    coef_x0: np.ndarray
    coef_xt: np.ndarray
    variance: np.ndarray
    beta: np.ndarray


def posterior(acp_t, acp_prev):
    """The DDPM posterior between any two noise levels acp_t < acp_prev.

    Written on cumulative alphas, so the same formulas serve the training chain
    (prev = t - 1) and every respaced or sampler grid (prev = the next grid point).
    """
    alpha = acp_t / acp_prev
    beta = 1.0 - alpha
    coef_x0 = np.sqrt(acp_prev) * beta / (1.0 - acp_t)
    coef_xt = np.sqrt(alpha) * (1.0 - acp_prev) / (1.0 - acp_t)
    variance = beta * (1.0 - acp_prev) / (1.0 - acp_t)
    return Posterior(coef_x0, coef_xt, variance, beta)


def space_timesteps(num_timesteps, spec):
    """Sorted indices kept by improved DDPM / DiT respacing.

    spec "ddimN": the stride s for which range(0, T, s) has N elements.
    spec "a,b,c" (or a list of counts): split [0, T) into equal sections (the
    first T % len sections one longer) and take that many evenly strided
    indices from each, rounding a running sum of the stride as the original
    does (rounding i * stride instead picks different indices for many counts).
    """
    if isinstance(spec, str) and spec.startswith("ddim"):
        count = int(spec[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == count:
                return np.arange(0, num_timesteps, stride)
        raise ValueError(f"no stride gives exactly {count} of {num_timesteps} timesteps")
    counts = [int(c) for c in spec.split(",")] if isinstance(spec, str) else list(spec)
    size, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        section = size + (i < extra)
        if count > section:
            raise ValueError(f"cannot take {count} steps from a section of {section}")
        stride = (section - 1) / (count - 1) if count > 1 else 1.0
        offsets = np.cumsum(np.append(0.0, np.full(count - 1, stride)))
        kept.append(start + np.round(offsets).astype(np.int64))
        start += section
    return np.unique(np.concatenate(kept))


def respace(schedule, spec):
    """A shorter process on a subset of timesteps with the same marginals.

    New betas are 1 - acp[t_i] / acp[t_{i-1}], so acp at every kept timestep
    is unchanged; `timesteps` maps each new index to its original timestep.
    """
    keep = space_timesteps(len(schedule), spec)
    acp = schedule.alphas_cumprod[keep]
    betas = 1.0 - acp / np.append(1.0, acp[:-1])
    return Schedule(betas, schedule.timesteps[keep])


def spaced_timesteps(num_steps, spacing="leading", num_timesteps=1000, steps_offset=0, exclude_zero=False):
    """Descending indices visited in `num_steps` steps: diffusers' spacings, or DiT's respacing.

    "leading" (diffusers' DDPM/DDIM default) is DiT's "ddimN"; "trailing"
    starts at T - 1 and strides T / N; "linspace" rounds N evenly spaced points
    of [0, T - 1]; "dit" is DiT's `space_timesteps(T, "N")`, the grid its
    sample.py walks (evenly spaced, T - 1 included, rounding a running sum, so
    it differs from "linspace" at some N, e.g. 21). exclude_zero reproduces
    DPMSolverMultistepScheduler, which builds the non-trailing grids on
    num_steps + 1 points and drops the smallest, because its last step goes to
    sigma = 0 anyway.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    if not 0 < num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if exclude_zero and spacing != "trailing":
        return spaced_timesteps(num_steps + 1, spacing, num_timesteps, steps_offset)[:-1]
    if spacing == "dit":
        steps = space_timesteps(num_timesteps, str(num_steps))[::-1]
    elif spacing == "linspace":
        steps = np.linspace(0, num_timesteps - 1, num_steps).round()[::-1]
    elif spacing == "leading":
        steps = np.arange(num_steps)[::-1] * (num_timesteps // num_steps) + steps_offset
    else:
        steps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)) - 1
    return steps.astype(np.int64)


def sampling_grid(schedule, timesteps, spacing, exclude_zero=False):
    """Resolve a sampler's `timesteps` argument into descending schedule indices.

    None: every index (e.g. of a respaced schedule); int: that many steps with
    `spacing`; a sequence: explicit descending indices.
    """
    if timesteps is None:
        return np.arange(len(schedule))[::-1]
    if isinstance(timesteps, (int, np.integer)):
        return spaced_timesteps(int(timesteps), spacing, len(schedule), exclude_zero=exclude_zero)
    grid = np.asarray(timesteps, dtype=np.int64)
    if grid.ndim != 1 or len(grid) == 0 or np.any(np.diff(grid) >= 0):
        raise ValueError("explicit timesteps must be a non-empty, strictly descending 1-D sequence")
    if grid[0] >= len(schedule) or grid[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {len(schedule)})")
    return grid
