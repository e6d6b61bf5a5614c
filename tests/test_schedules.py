import numpy as np
import pytest
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

from dit_jax.diffusion import (
    SPACINGS,
    Schedule,
    beta_schedule,
    posterior,
    respace,
    sampling_grid,
    space_timesteps,
    spaced_timesteps,
)

# diffusers' DPM-Solver calls np.array on a tensor, which numpy 2 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DIFFUSERS_SPACINGS = ("leading", "trailing", "linspace")  # SPACINGS adds DiT's "dit", which diffusers lacks

# ours -> (diffusers' name, beta_start, beta_end)
DIFFUSERS_CASES = {
    "linear": ("linear", 1e-4, 0.02),
    "scaled_linear": ("scaled_linear", 0.00085, 0.012),
    "cosine": ("squaredcos_cap_v2", 1e-4, 0.02),
}


@pytest.mark.parametrize("name", sorted(DIFFUSERS_CASES))
def test_beta_schedules_match_diffusers(name):
    diffusers_name, beta_start, beta_end = DIFFUSERS_CASES[name]
    ours = Schedule(beta_schedule(name, beta_start=beta_start, beta_end=beta_end))
    ref = DDPMScheduler(beta_schedule=diffusers_name, beta_start=beta_start, beta_end=beta_end)
    assert ours.betas.dtype == np.float64
    # diffusers' tables are float32: betas round once, the cumprod accumulates a little more
    # (and cosine's 1 - 0.999 on the last step loses 4 digits; that acp is 2e-9).
    np.testing.assert_allclose(ours.betas, ref.betas.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=3e-6, atol=1e-12)
    if name == "cosine":
        assert ours.betas.max() == pytest.approx(0.999)


def test_unknown_beta_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="linear, scaled_linear, cosine"):
        beta_schedule("quadratic")


def test_schedule_helpers():
    s = Schedule(beta_schedule("linear", num_timesteps=10))
    assert len(s) == 10
    np.testing.assert_array_equal(s.timesteps, np.arange(10))
    np.testing.assert_allclose(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_allclose(s.snr, s.alphas_cumprod / (1 - s.alphas_cumprod))


def test_posterior_on_adjacent_steps_is_the_ddpm_posterior():
    s = Schedule(beta_schedule("linear"))
    acp, acp_prev = s.alphas_cumprod, s.alphas_cumprod_prev
    post = posterior(acp, acp_prev)
    np.testing.assert_allclose(post.beta, s.betas, rtol=1e-9)
    np.testing.assert_allclose(post.variance, s.betas * (1 - acp_prev) / (1 - acp), rtol=1e-9)
    np.testing.assert_allclose(post.coef_x0, s.betas * np.sqrt(acp_prev) / (1 - acp), rtol=1e-9)
    np.testing.assert_allclose(post.coef_xt, (1 - acp_prev) * np.sqrt(1 - s.betas) / (1 - acp), rtol=1e-9)


def reference_space_timesteps(num_timesteps, spec):
    """Improved DDPM's space_timesteps, transcribed as loops (a running float index, rounded)."""
    if spec.startswith("ddim"):
        count = int(spec[4:])
        stride = next(i for i in range(1, num_timesteps) if len(range(0, num_timesteps, i)) == count)
        return list(range(0, num_timesteps, stride))
    counts = [int(c) for c in spec.split(",")]
    size_per, extra = num_timesteps // len(counts), num_timesteps % len(counts)
    steps, start = [], 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


@pytest.mark.parametrize("spec", ["1000", "250", "100", "50", "25", "21", "10", "1", "10,10", "10,10,5", "1,2,3",
                                  "7,300", "ddim50", "ddim25", "ddim10", "ddim1000"])
def test_space_timesteps_matches_reference(spec):
    np.testing.assert_array_equal(space_timesteps(1000, spec), reference_space_timesteps(1000, spec))


def test_space_timesteps_known_outputs():
    np.testing.assert_array_equal(space_timesteps(1000, "ddim50"), np.arange(0, 1000, 20))
    half = [0, 55, 111, 166, 222, 277, 333, 388, 444, 499]
    np.testing.assert_array_equal(space_timesteps(1000, "10,10"), half + [500 + h for h in half])
    np.testing.assert_array_equal(space_timesteps(1000, [10, 10]), space_timesteps(1000, "10,10"))
    # 10 * (999 / 20) rounds to 500, but the running sum DiT uses lands just below 499.5
    assert space_timesteps(1000, "21")[10] == 499


def test_space_timesteps_errors():
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError):
        space_timesteps(10, "6,6")


def test_respace_keeps_marginals_and_maps_timesteps():
    base = Schedule(beta_schedule("linear"))
    spaced = respace(base, "10,10,5")
    keep = space_timesteps(1000, "10,10,5")
    np.testing.assert_array_equal(spaced.timesteps, keep)
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[keep], rtol=1e-12)
    acp = base.alphas_cumprod[keep]
    np.testing.assert_allclose(spaced.betas, 1 - acp / np.append(1.0, acp[:-1]), rtol=1e-12)
    twice = respace(spaced, "ddim5")  # indices 0, 5, 10, 15, 20 of the respaced schedule
    np.testing.assert_array_equal(twice.timesteps, keep[[0, 5, 10, 15, 20]])
    np.testing.assert_allclose(twice.alphas_cumprod, base.alphas_cumprod[twice.timesteps], rtol=1e-12)


def test_dit_respacing_equals_diffusers_spacings():
    base = Schedule(beta_schedule("linear"))
    for n in (25, 50, 100, 250):
        np.testing.assert_array_equal(respace(base, str(n)).timesteps, spaced_timesteps(n, "linspace")[::-1])
    np.testing.assert_array_equal(respace(base, "ddim50").timesteps, spaced_timesteps(50, "leading")[::-1])


@pytest.mark.parametrize("spacing", DIFFUSERS_SPACINGS)
@pytest.mark.parametrize("num_steps", [1, 7, 10, 25, 50, 250, 1000])
def test_spaced_timesteps_match_ddpm_scheduler(spacing, num_steps):
    ref = DDPMScheduler(timestep_spacing=spacing)
    ref.set_timesteps(num_steps)
    np.testing.assert_array_equal(spaced_timesteps(num_steps, spacing), ref.timesteps.numpy())


def test_leading_steps_offset_matches_ddpm_scheduler():
    ref = DDPMScheduler(timestep_spacing="leading", steps_offset=1)
    ref.set_timesteps(50)
    np.testing.assert_array_equal(spaced_timesteps(50, "leading", steps_offset=1), ref.timesteps.numpy())


@pytest.mark.parametrize("spacing", DIFFUSERS_SPACINGS)
@pytest.mark.parametrize("num_steps", [1, 7, 10, 20, 25, 50, 250])
def test_spaced_timesteps_match_dpm_solver_grid(spacing, num_steps):
    ref = DPMSolverMultistepScheduler(timestep_spacing=spacing)
    ref.set_timesteps(num_steps)
    np.testing.assert_array_equal(spaced_timesteps(num_steps, spacing, exclude_zero=True), ref.timesteps.numpy())


@pytest.mark.parametrize("num_steps", [1, 2, 10, 21, 25, 50, 100, 250, 999, 1000])
def test_dit_spacing_is_dits_respaced_grid(num_steps):
    """spacing="dit" walks DiT's space_timesteps(1000, "N") (the oracle above) from the top: t = 999 included."""
    grid = spaced_timesteps(num_steps, "dit")
    np.testing.assert_array_equal(grid, reference_space_timesteps(1000, str(num_steps))[::-1])
    if num_steps > 1:
        assert grid[0] == 999 and grid[-1] == 0
    # DPM-Solver's grid: built on one point more, the smallest dropped (its last step goes to sigma = 0)
    if num_steps < 1000:
        np.testing.assert_array_equal(spaced_timesteps(num_steps, "dit", exclude_zero=True),
                                      reference_space_timesteps(1000, str(num_steps + 1))[::-1][:-1])


def test_dit_spacing_differs_from_leading_and_linspace_where_dit_says():
    assert SPACINGS == DIFFUSERS_SPACINGS + ("dit",)
    assert (spaced_timesteps(250, "dit") != spaced_timesteps(250, "leading")).sum() == 208  # the count
    assert spaced_timesteps(10, "leading")[0] == 900 and spaced_timesteps(10, "dit")[0] == 999
    dit, linspace = spaced_timesteps(21, "dit"), spaced_timesteps(21, "linspace")
    assert (dit[10], linspace[10]) == (499, 500) and (np.delete(dit, 10) == np.delete(linspace, 10)).all()


def test_spacing_errors():
    with pytest.raises(ValueError, match="leading, trailing, linspace"):
        spaced_timesteps(10, "uniform")
    with pytest.raises(ValueError):
        spaced_timesteps(1001, "leading")


def test_sampling_grid():
    s = Schedule(beta_schedule("linear", num_timesteps=20))
    np.testing.assert_array_equal(sampling_grid(s, None, "leading"), np.arange(20)[::-1])
    np.testing.assert_array_equal(sampling_grid(s, 4, "leading"), [15, 10, 5, 0])
    np.testing.assert_array_equal(sampling_grid(s, [19, 7, 3], "leading"), [19, 7, 3])
    for bad in ([3, 7], [20, 3], [5, 5], []):
        with pytest.raises(ValueError):
            sampling_grid(s, bad, "leading")
