"""Classifier guidance: guided-diffusion's own samplers as the oracle, a Gaussian mixture's exact classifier, the
sampling path and its one-line errors."""

import dataclasses
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit_jax import evaluate, sampling
from dit_jax.diffusion import Schedule, beta_schedule, classifier_gradient, generate
from dit_jax.diffusion.samplers import ddim_sample, ddpm_sample, dpm_solver_pp_sample
from dit_jax.sample import Options, run
from test_sample import TOY, class_checkpoint, save_random_model  # pylint: disable=unused-import

ORACLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "guided_diffusion_oracle.npz")


@pytest.fixture(scope="module")
def oracle():
    with np.load(ORACLE) as f:
        return dict(f)


def closed_form(o, learned=False):
    """The oracle's eps model and linear classifier (tests/data/make_guided_diffusion_oracle.py) in JAX."""
    T = len(o["betas"])
    w, b, v = (jnp.asarray(o[k], jnp.float32) for k in ("eps_w", "eps_b", "var_w"))
    cw, cb = jnp.asarray(o["cls_w"], jnp.float32), jnp.asarray(o["cls_b"], jnp.float32)

    def model_fn(x, t):
        eps = jnp.tanh(x @ w + b * t.astype(jnp.float32)[:, None, None, None] / T)
        return jnp.concatenate([eps, jnp.tanh(x @ v)], axis=-1) if learned else eps

    def logits_fn(x, t):
        return x.reshape(len(x), -1) @ cw / (1 + t.astype(jnp.float32)[:, None] / T) + cb

    return model_fn, logits_fn


def test_gradient_is_guided_diffusions_cond_fn(oracle):
    _, logits_fn = closed_form(oracle)
    cond_fn = classifier_gradient(logits_fn, oracle["y"], float(oracle["scale"]))
    gradient = cond_fn(jnp.asarray(oracle["x_T"], jnp.float32), jnp.asarray(oracle["gradient_t"], jnp.int32))
    np.testing.assert_allclose(gradient, oracle["gradient"], rtol=0, atol=1e-5)


CASES = {  # as in make_guided_diffusion_oracle.py: sampler, variance, eta, clip
    "ddpm_fixed_small": ("ddpm", "fixed_small", 0.0, True),
    "ddpm_fixed_large": ("ddpm", "fixed_large", 0.0, False),
    "ddpm_learned_range_spaced": ("ddpm", "learned_range", 0.0, True),
    "ddim_eta0": ("ddim", None, 0.0, True),
    "ddim_eta05_spaced": ("ddim", None, 0.5, False),
}


@pytest.mark.parametrize("case", CASES)
def test_samplers_match_guided_diffusion_step_by_step(oracle, case):
    """Every step's sample and x0 of guided-diffusion's p_sample / ddim_sample loops with cond_fn, the last
    (noise-free) step included, from the same start and step noise."""
    sampler, variance, eta, clip = CASES[case]
    model_fn, logits_fn = closed_form(oracle, learned=variance == "learned_range")
    cond_fn = classifier_gradient(logits_fn, oracle["y"], float(oracle["scale"]))
    schedule, grid = Schedule(oracle["betas"]), oracle[f"{case}/grid"]
    x_T, noise = (jnp.asarray(oracle[k], jnp.float32) for k in ("x_T", f"{case}/noise"))
    common = dict(clip_x0=1.0 if clip else None, noise=noise, return_trajectory=True)

    if sampler == "ddpm":
        _, trajectory = ddpm_sample(model_fn, x_T, None, schedule, grid, variance=variance, cond_fn=cond_fn, **common)
    else:
        _, trajectory = ddim_sample(model_fn, x_T, None, schedule, grid, eta=eta, cond_fn=cond_fn, **common)
    np.testing.assert_array_equal(trajectory.t, grid)
    np.testing.assert_allclose(trajectory.x, oracle[f"{case}/x"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(trajectory.x0, oracle[f"{case}/x0"], rtol=0, atol=1e-5)
    # guidance matters here, so a sampler that ignored cond_fn would fail the match
    assert np.abs(oracle[f"{case}/unguided"] - oracle[f"{case}/x"][-1]).max() > 0.05


@pytest.mark.parametrize("sampler, prediction", [("dpmpp_2m", "eps"), ("dpmpp_3m", "v"), ("ddim_diffusers", "x0")])
def test_score_samplers_equal_sampling_the_corrected_model(oracle, sampler, prediction):
    """DPM-Solver++ and diffusers' DDIM steps with cond_fn are those samplers run on a model whose eps is
    corrected by -sigma_t * gradient (Algorithm 2), written in the model's own prediction."""
    eps_fn, logits_fn = closed_form(oracle)
    schedule = Schedule(oracle["betas"])
    acp = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
    cond_fn = classifier_gradient(logits_fn, oracle["y"], float(oracle["scale"]))

    def written_as_prediction(eps, x, t):
        alpha, sigma = jnp.sqrt(acp[t])[:, None, None, None], jnp.sqrt(1 - acp[t])[:, None, None, None]
        return {"eps": eps, "v": (eps - sigma * x) / alpha, "x0": (x - sigma * eps) / alpha}[prediction]

    def model_fn(x, t):
        return written_as_prediction(eps_fn(x, t), x, t)

    def corrected(x, t):
        sigma = jnp.sqrt(1 - acp[t])[:, None, None, None]
        return written_as_prediction(eps_fn(x, t) - sigma * cond_fn(x, t), x, t)

    x_T = jnp.asarray(oracle["x_T"], jnp.float32)
    if sampler == "ddim_diffusers":
        def run_sampler(fn, **kw):
            return ddim_sample(fn, x_T, None, schedule, 5, spacing="trailing", stride=4, set_alpha_to_one=False,
                               prediction=prediction, **kw)
    else:
        def run_sampler(fn, **kw):
            return dpm_solver_pp_sample(fn, x_T, schedule, 6, order=2 if sampler == "dpmpp_2m" else 3,
                                        prediction=prediction, **kw)
    # the correction is large here, so a sampler that ignored cond_fn would fail
    np.testing.assert_allclose(run_sampler(model_fn, cond_fn=cond_fn), run_sampler(corrected), rtol=0, atol=1e-5)


MEANS = np.array([[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0]])
COVS = np.array([[[0.5, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.6]], [[0.4, 0.0], [0.0, 0.2]]])
WEIGHTS = np.array([0.5, 0.3, 0.2])


def mixture(schedule):
    """A 2-D Gaussian mixture's exact eps-prediction at every noise level, and its exact classifier: the logits
    log w_k + log N(x_t; alpha mu_k, alpha^2 S_k + sigma^2 I), whose softmax is p(k | x_t). Inputs (N, 1, 1, 2)."""
    acp = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
    means, covs = jnp.asarray(MEANS, jnp.float32), jnp.asarray(COVS, jnp.float32)

    def components(x, t):
        alpha, var = jnp.sqrt(acp[t])[:, None, None], (1.0 - acp[t])[:, None, None]
        cov = alpha[..., None] ** 2 * covs + var[..., None] * jnp.eye(2)  # (N, K, 2, 2)
        r = x.reshape(-1, 1, 2) - alpha * means  # (N, K, 2)
        det = cov[..., 0, 0] * cov[..., 1, 1] - cov[..., 0, 1] * cov[..., 1, 0]
        inverse = jnp.stack([jnp.stack([cov[..., 1, 1], -cov[..., 0, 1]], -1),
                             jnp.stack([-cov[..., 1, 0], cov[..., 0, 0]], -1)], -2) / det[..., None, None]
        solved = jnp.einsum("nkij,nkj->nki", inverse, r)  # cov^-1 (x - alpha mu)
        logits = jnp.log(jnp.asarray(WEIGHTS, jnp.float32)) - 0.5 * jnp.sum(r * solved, -1) - 0.5 * jnp.log(det)
        return logits, solved

    def eps_fn(x, t):  # eps = -sigma * score, score = -sum_k p(k | x) cov_k^-1 (x - alpha mu_k)
        logits, solved = components(x, t)
        score = -jnp.einsum("nk,nki->ni", jax.nn.softmax(logits, -1), solved)
        return (-jnp.sqrt(1.0 - acp[t])[:, None] * score).reshape(x.shape)

    return eps_fn, lambda x, t: components(x, t)[0]


@pytest.mark.parametrize("sampler, steps", [("ddpm", 200), ("ddim", 100), ("dpmpp_2m", 25)])
def test_exact_classifier_at_scale_one_samples_the_class_component(sampler, steps):
    """grad log p(x_t) + grad log p(y | x_t) = grad log p(x_t | y): with the exact pieces, guidance at scale 1
    samples component y of the mixture (mean and covariance), while unguided sampling gives the mixture."""
    schedule = Schedule(beta_schedule("linear", 1000))
    eps_fn, logits_fn = mixture(schedule)
    n, y = 4000, 1
    x_T = jax.random.normal(jax.random.PRNGKey(0), (n, 1, 1, 2))
    key = jax.random.PRNGKey(1)

    def sample(cond_fn):
        if sampler == "ddpm":
            x = ddpm_sample(eps_fn, x_T, key, schedule, steps, cond_fn=cond_fn)
        elif sampler == "ddim":
            x = ddim_sample(eps_fn, x_T, None, schedule, steps, cond_fn=cond_fn)
        else:
            x = dpm_solver_pp_sample(eps_fn, x_T, schedule, steps, cond_fn=cond_fn)
        return np.asarray(x, np.float64).reshape(n, 2)

    guided = sample(classifier_gradient(logits_fn, jnp.full((n,), y), 1.0))
    np.testing.assert_allclose(guided.mean(0), MEANS[y], atol=0.06)
    np.testing.assert_allclose(np.cov(guided.T), COVS[y], atol=0.06)
    if sampler == "ddim":  # the exact denoiser alone samples the whole mixture
        unguided = sample(None)
        mean = WEIGHTS @ MEANS
        cov = np.einsum("k,kij->ij", WEIGHTS, COVS + np.einsum("ki,kj->kij", MEANS, MEANS)) - np.outer(mean, mean)
        np.testing.assert_allclose(unguided.mean(0), mean, atol=0.06)
        np.testing.assert_allclose(np.cov(unguided.T), cov, atol=0.1)
        assert np.abs(unguided.mean(0) - MEANS[y]).max() > 1.0


META = dict(resolution=16, channels=3, num_classes=3, latent=False)


class BrightnessClassifier(nnx.Module):
    """A closed-form classifier of the toy DiT's inputs: class k favours mean value (k - 1) (dark, grey, bright).
    An nnx module, as load_classifier returns, so its weights go through sampling's split and merge."""

    def __init__(self):
        self.w = nnx.Param(jnp.asarray([-50.0, 0.0, 50.0]))

    def __call__(self, x, t):
        return x.mean(axis=(1, 2, 3))[:, None] * self.w[...]


@pytest.fixture
def classifier_dir(tmp_path, monkeypatch):
    """A classifier workdir that dit_jax.models.classifier.load_classifier reads as a BrightnessClassifier with
    metadata META (updated by setting `classifier_dir.meta`)."""
    path = tmp_path / "classifier"
    path.mkdir()
    found = types.SimpleNamespace(path=str(path), meta=dict(META), loaded=[])

    def load_classifier(directory):
        found.loaded.append(directory)
        return BrightnessClassifier(), dict(found.meta)

    module = types.ModuleType("dit_jax.models.classifier")
    module.load_classifier = load_classifier
    monkeypatch.setitem(sys.modules, "dit_jax.models.classifier", module)
    return found


@pytest.fixture(scope="module")
def unconditional_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("unconditional") / "export")
    save_random_model(dict(TOY, num_classes=0), path)
    return path


def test_sample_guides_an_unconditional_model_toward_each_class(unconditional_checkpoint, classifier_dir, tmp_path):
    base = Options(checkpoint=unconditional_checkpoint, sampler="ddim", steps=3, cfg_scale=1.0, batch_size=8,
                   npz=str(tmp_path / "samples.npz"))
    plain, captions = run(dataclasses.replace(base, num_images=4))  # images 0..3: the same starting noise
    assert captions == [""] * 4
    guided, captions = run(dataclasses.replace(base, classifier=classifier_dir.path, classifier_scale=4.0,
                                               classes=["0", "2"], num_images=2))
    assert captions == ["0", "0", "2", "2"] and classifier_dir.loaded == [classifier_dir.path]
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npz")["labels"], [0, 0, 2, 2])
    dark, bright = guided[:2].astype(float), guided[2:].astype(float)
    assert dark.mean() < plain[:2].mean() - 20 and bright.mean() > plain[2:].mean() + 20


@pytest.mark.parametrize("meta, message", [
    (dict(latent=True), "The classifier was trained on VAE latents but this model samples pixels"),
    (dict(resolution=32), "trained on inputs of side 32 but this model samples inputs of side 16"),
    (dict(channels=1), "trained on channels 1 but this model samples channels 3"),
    (dict(num_classes=10), "The classifier has 10 classes but this model's data has 3"),
    (dict(timesteps=500), "trained on 500 diffusion timesteps but this model on 1000"),
    (dict(schedule="cosine", timesteps=1000), "trained on the cosine beta schedule, this model on another"),
])
def test_a_classifier_of_other_data_fails_in_one_line(unconditional_checkpoint, class_checkpoint, classifier_dir,
                                                      meta, message):
    classifier_dir.meta.update(meta)
    # The class count is compared with a class-conditional model's (3); an unconditional one has none here.
    for path in (class_checkpoint,) if "num_classes" in meta else (class_checkpoint, unconditional_checkpoint):
        with pytest.raises(ValueError, match=message):
            run(Options(checkpoint=path, classifier=classifier_dir.path, classes=["1"], batch_size=8))


@pytest.mark.parametrize("change, error, message", [
    (dict(classes=["3"]), ValueError, r"Unknown class '3': the classifier has classes 0\.\.2"),
    (dict(classes=[]), ValueError, "Classifier guidance steers toward a class: pass --class"),
    (dict(classifier_scale=-1.0), ValueError, "classifier_scale must be >= 0"),
    (dict(classifier=None, classifier_scale=2.0), ValueError, "classifier_scale was given without a classifier"),
    (dict(classifier="/nonexistent/classifier"), FileNotFoundError, "Classifier /nonexistent/classifier not found"),
])
def test_bad_guidance_arguments_fail_in_one_line(unconditional_checkpoint, classifier_dir, change, error, message):
    options = Options(checkpoint=unconditional_checkpoint, classifier=classifier_dir.path, classes=["1"],
                      batch_size=8)
    with pytest.raises(error, match=message):
        run(dataclasses.replace(options, **change))


def test_a_class_beyond_the_classifiers_fails_for_a_class_conditional_model(classifier_dir):
    setup = sampling.Setup(None, dict(TOY, num_classes=5), None, None, Schedule(beta_schedule("linear")), "eps", [])
    with pytest.raises(ValueError, match=r"Class 4 is outside the classifier's classes 0\.\.2"):
        sampling.read_conditions(setup, [], ["4"], META)
    assert sampling.read_conditions(setup, [], ["2"], META) == (["2"], [2])


def test_a_sampler_that_cannot_take_classifier_guidance_is_refused(monkeypatch):
    monkeypatch.setattr(generate, "SAMPLERS", generate.SAMPLERS + ("euler",))  # a sampler without the hook
    generate.check_sampler("euler")
    with pytest.raises(ValueError, match="Classifier guidance takes ddpm, ddim, .* steps, not 'euler'"):
        sampling.check_settings(sampling.Settings(sampler="euler", classifier=__file__))
    for name in generate.CLASSIFIER_SAMPLERS:
        generate.check_sampler(name, inpaint=name in generate.INPAINT_SAMPLERS, classifier=True)


def test_evaluate_names_each_scale_and_plots_fid_against_it(tmp_path):
    assert evaluate.parse_scales(["0", "1.5"]) == [0.0, 1.5]
    with pytest.raises(ValueError, match="--classifier_scale takes numbers"):
        evaluate.parse_scales(["x"])
    results = [dict(sampler="ddim", steps=5, classifier="C", classifier_scale=s, fid_16=f)
               for s, f in ((0.0, 90.0), (1.0, 80.0), (4.0, 85.0))]
    evaluate.write_results(str(tmp_path), results, 7)
    assert [evaluate.run_name(r) for r in results] == ["ddim_5_cls0", "ddim_5_cls1", "ddim_5_cls4"]
    assert (tmp_path / "fid_vs_scale.png").exists() and not (tmp_path / "fid_vs_steps.png").exists()
