import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dit_jax.diffusion import Schedule, beta_schedule, classifier_free_guidance, ddim_sample

B, C = 3, 4


def text_model(calls):
    """A toy conditional model with dict conditioning and 2C outputs; records each call's batch size."""
    def model_fn(x, t, cond):
        calls.append(x.shape[0])
        masked = jnp.sum(cond["tokens"] * cond["mask"], axis=1).astype(jnp.float32)  # (batch,)
        h = masked[:, None, None, None] * 0.01 + cond["pooled"][:, None, None, :C] + t[:, None, None, None] / 1000.0
        return jnp.concatenate([jnp.tanh(x + h), jnp.sin(x * h)], axis=-1)
    return model_fn


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((B, 2, 2, C)), jnp.float32)
    t = jnp.asarray([999, 500, 3], jnp.int32)
    cond = {"tokens": jnp.asarray(rng.integers(1, 100, (B, 5))), "mask": jnp.asarray(rng.random((B, 5)) > 0.3),
            "pooled": jnp.asarray(rng.standard_normal((B, 8)), jnp.float32)}
    null = {"tokens": jnp.zeros((B, 5), jnp.int32), "mask": jnp.zeros((B, 5), bool),
            "pooled": jnp.zeros((B, 8), jnp.float32)}
    return x, t, cond, null


@pytest.mark.parametrize("channels, scale", [(None, 4.0), (3, 4.0), (1, 1.5), (None, 0.0)])
def test_one_batched_call_equals_two_separate_calls(channels, scale):
    x, t, cond, null = inputs()
    calls = []
    guided = classifier_free_guidance(text_model(calls), cond, null, scale, channels)(x, t)
    assert calls == [2 * B]  # a single model call on the doubled batch
    c = np.asarray(text_model([])(x, t, cond))
    u = np.asarray(text_model([])(x, t, null))
    k = C if channels is None else channels
    assert guided.shape == (B, 2, 2, 2 * C)
    np.testing.assert_allclose(guided[..., :k], u[..., :k] + scale * (c[..., :k] - u[..., :k]), rtol=1e-6, atol=1e-6)
    # everything from channel k on, learned-variance channels included, is the conditional output
    np.testing.assert_array_equal(guided[..., k:], c[..., k:])


def test_scale_one_is_the_conditional_output():
    x, t, cond, null = inputs(1)
    guided = classifier_free_guidance(text_model([]), cond, null, 1.0)(x, t)
    np.testing.assert_allclose(guided, text_model([])(x, t, cond), rtol=1e-6, atol=1e-6)


def test_class_labels_and_use_inside_a_jitted_sampler():
    schedule = Schedule(beta_schedule("linear"))
    labels, null = jnp.asarray([1, 7, 3]), jnp.full((B,), 10)

    def class_model(x, t, y):
        return jnp.tanh(x * 0.5 + y[:, None, None, None] / 10.0 - t[:, None, None, None] / 2000.0)

    sample = jax.jit(lambda x: ddim_sample(classifier_free_guidance(class_model, labels, null, 4.0), x, None,
                                           schedule, 5))
    x_T = jnp.asarray(np.random.default_rng(2).standard_normal((B, 2, 2, C)), jnp.float32)
    out = sample(x_T)
    assert out.shape == x_T.shape and bool(jnp.all(jnp.isfinite(out)))
    unguided = ddim_sample(lambda x, t: class_model(x, t, labels), x_T, None, schedule, 5)
    assert float(jnp.abs(out - unguided).max()) > 1e-3
