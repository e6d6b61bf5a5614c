"""Classifier guidance (Dhariwal & Nichol 2021): a classifier of noisy inputs steers any model toward a class.

With p(x_t | y) proportional to p(x_t) p(y | x_t), the conditional score is
the model's score plus grad log p(y | x_t, t); scale s weights the second
term (s = 1 is exact Bayes; larger s sharpens toward the class). The
samplers take the gradient as `cond_fn(x, t) -> s * grad` and apply it
where each sampler's step allows:
  DDPM (ancestral)     the mean moves by its variance times the gradient
                       (guided-diffusion's `condition_mean`);
  DDIM, DPM-Solver++   eps' = eps - sqrt(1 - acp) * s * grad, and x0 from eps'
                       (the paper's Algorithm 2, guided-diffusion's `condition_score`).
With classifier-free guidance the model's output is first mixed, then corrected.
"""

import jax
import jax.numpy as jnp


def classifier_gradient(logits_fn, y, scale):
    """`cond_fn(x, t)` for the samplers: scale * grad_x log softmax(logits_fn(x, t))[y], each image's own.

    `logits_fn(x, t) -> (B, K)` is any noise-aware classifier taking the model's
    timesteps t (int32, (B,)); `y` int (B,) the target classes. The gradient
    of the batch's summed log-probabilities is each image's own gradient, as
    long as the classifier treats the images of a batch independently.
    """
    y = jnp.asarray(y, jnp.int32)

    def log_prob(x, t):
        log_p = jax.nn.log_softmax(logits_fn(x, t).astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(log_p, y[:, None], axis=-1).sum()

    def cond_fn(x, t):
        return scale * jax.grad(log_prob)(x, t)

    return cond_fn


def condition_mean(mean, variance, gradient):
    """DDPM: the ancestral step's mean moved by its variance times the (scaled) gradient."""
    return mean + variance * gradient


def condition_score(x, eps, gradient, alpha, sigma):
    """DDIM / DPM-Solver++: (x0, eps) with eps corrected by -sigma * gradient, x0 re-derived from it."""
    eps = eps - sigma * gradient
    return (x - sigma * eps) / alpha, eps
